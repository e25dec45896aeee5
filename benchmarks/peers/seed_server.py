"""Seed-style peer: FastAPI on uvicorn, the MLflow pyfunc straight from the registry.

How such a service usually starts: one process, the model loaded with
``mlflow.pyfunc.load_model("models:/iris-classifier@champion")``, one request per flower,
our request shape in and the species out. Benchmark peer only, not product code.

Run: ``uvicorn benchmarks.peers.seed_server:app --host 127.0.0.1 --port PORT`` with
``MLFLOW_TRACKING_URI`` pointing at the registry (and, as for ``mlflow models serve``,
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import mlflow.pyfunc
import pandas as pd
from fastapi import FastAPI

from serving.schemas import IrisFeatures
from training.schema import FEATURES

MODEL_URI = os.environ.get("SEED_MODEL_URI", "models:/iris-classifier@champion")
_state: dict[str, object] = {}


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    """Load the champion before uvicorn accepts connections."""
    model = mlflow.pyfunc.load_model(MODEL_URI)
    _state["model"] = model
    # The model predicts encoded labels; the training pipeline logs their names.
    _state["classes"] = list(model.metadata.metadata["class_names"])
    yield
    _state.clear()


app = FastAPI(title="iris seed-style peer", lifespan=lifespan)


@app.get("/health")
def health() -> dict:
    return {"status": "ok"}


@app.post("/predict")
def predict(features: IrisFeatures) -> dict:
    """One flower in, its species out (a sync endpoint: FastAPI runs it in a thread)."""
    frame = pd.DataFrame([features.model_dump()], columns=list(FEATURES))
    label = _state["model"].predict(frame)[0]
    return {"species": _state["classes"][int(label)]}
