"""Request and response models of the HTTP API (they also generate the OpenAPI document)."""

from __future__ import annotations

from itertools import chain
from operator import itemgetter
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from typing_extensions import TypedDict

from training.schema import FEATURES, MAX_CM

Measurement = Annotated[
    float,
    Field(
        strict=True,  # 5 and 5.1 are numbers; "5.1", true and null are not
        gt=0,
        le=MAX_CM,
        allow_inf_nan=False,
        description=f"Centimetres, > 0 and <= {MAX_CM:g}.",
    ),
]

EXAMPLE = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
EXAMPLE_2 = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}


class IrisFeatures(BaseModel):
    """One flower's four measurements, in centimetres."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": EXAMPLE})

    sepal_length: Measurement
    sepal_width: Measurement
    petal_length: Measurement
    petal_width: Measurement


# A TypedDict validates to a plain dict, about twice as fast as a model instance: for a
# 10,000-flower batch that is most of the request's parsing time (benchmarks/README.md).
class FlowerRecord(TypedDict):
    """One flower's four measurements, in centimetres (the fields of IrisFeatures)."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    sepal_length: Measurement
    sepal_width: Measurement
    petal_length: Measurement
    petal_width: Measurement


Row = Annotated[
    list[Measurement],
    Field(
        min_length=4,
        max_length=4,
        description="sepal_length, sepal_width, petal_length, petal_width",
    ),
]


class BatchRequest(BaseModel):
    """Many flowers: either ``records`` (objects) or ``instances`` (rows of four numbers)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            # BentoML's OpenAPI model takes a single `example` (OpenAPI 3.0 style).
            "example": {"records": [EXAMPLE, EXAMPLE_2]},
            "oneOf": [{"required": ["records"]}, {"required": ["instances"]}],
        },
    )

    # Defaults of None mark "not given"; an explicit null is rejected like any non-list.
    records: list[FlowerRecord] = Field(None, min_length=1, description="One object per flower.")  # type: ignore[assignment]
    instances: list[Row] = Field(
        None, min_length=1, description="One row of four numbers per flower."
    )  # type: ignore[assignment]

    @model_validator(mode="after")
    def _exactly_one(self) -> BatchRequest:
        if (self.records is None) == (self.instances is None):
            raise ValueError("give exactly one of 'records' or 'instances'")
        return self


class ModelInfo(BaseModel):
    name: str = Field(
        description="Registered model name.", json_schema_extra={"example": "iris-classifier"}
    )
    version: str = Field(
        description="Registry version that answered.", json_schema_extra={"example": "3"}
    )
    alias: str = Field(
        description="Registry alias it was served under.", json_schema_extra={"example": "champion"}
    )
    runtime: str = Field(
        description="Inference runtime: onnx or sklearn.", json_schema_extra={"example": "onnx"}
    )


class Prediction(BaseModel):
    prediction_id: str = Field(
        description="Id of this prediction, for POST /feedback (also the X-Prediction-Id "
        "header of a single prediction; a batch's rows are <header id>-<row>).",
        json_schema_extra={"example": "01a22b46614d7f0399afd47b9928236c"},
    )
    species: str = Field(json_schema_extra={"example": "Iris-setosa"})
    probabilities: dict[str, float] = Field(
        description="Class probabilities; they sum to 1.",
        json_schema_extra={
            "example": {"Iris-setosa": 1.0, "Iris-versicolor": 0.0, "Iris-virginica": 0.0}
        },
    )


class PredictResponse(Prediction):
    model: ModelInfo


class BatchResponse(BaseModel):
    model: ModelInfo
    predictions: list[Prediction] = Field(description="One per input flower, in order.")


class ErrorDetail(BaseModel):
    field: str | None = Field(None, description="Offending field, e.g. petal_width.")
    row: int | None = Field(None, description="0-based index in the batch, for batch requests.")
    message: str


class ErrorBody(BaseModel):
    code: str = Field(
        description="Stable machine-readable code.",
        json_schema_extra={"example": "validation_error"},
    )
    message: str = Field(description="Human-readable summary naming the field (and row).")
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    """Every error the service returns, whatever its cause, has this shape."""

    error: ErrorBody


JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
"""Retrain job ids: a UUID4 as 32 lowercase hex digits (serving.job_store_sql)."""
JOB_ID_EXAMPLE = "0c5e6a4f3b2d4e1f9a8b7c6d5e4f3a2b"
JobState = Literal["queued", "running", "succeeded", "failed"]


class RetrainResponse(BaseModel):
    """The 202 answer of POST /retrain."""

    job_id: str = Field(pattern=JOB_ID_PATTERN, examples=[JOB_ID_EXAMPLE])
    state: JobState = Field(examples=["running"])
    status_url: str = Field(
        description="Where to follow the job (GET, admin token).",
        examples=[f"/jobs/{JOB_ID_EXAMPLE}"],
    )


class Promotion(BaseModel):
    promoted: bool | None = Field(description="Whether the new version became the champion.")
    reason: str | None = Field(description="Why it was (not) promoted.")


class JobStatus(BaseModel):
    """One retrain job as clients see it (``serving.jobs.Job.public``)."""

    id: str = Field(pattern=JOB_ID_PATTERN, examples=[JOB_ID_EXAMPLE])
    state: JobState
    created_at: str = Field(description="ISO 8601, UTC.", examples=["2026-11-29T21:04:05.123Z"])
    started_at: str | None = Field(description="ISO 8601, UTC; null while queued.")
    finished_at: str | None = Field(description="ISO 8601, UTC; null until it ends.")
    data_path: str = Field(description="File name of the training data.", examples=["Iris.csv"])
    result: dict[str, Any] | None = Field(description="The pipeline's full result, once done.")
    error: str | None = Field(description="Why it failed (null unless failed).")
    version: str | None = Field(description="Registry version it created.", examples=["2"])
    metrics: dict[str, float] | None = Field(description="Test metrics of that version.")
    promotion: Promotion | None


class JobList(BaseModel):
    jobs: list[JobStatus] = Field(description="Recent retrain jobs, newest first.")


class RetrainConflict(ErrorResponse):
    """409 of POST /retrain: the error shape plus the job that is already running."""

    job: JobStatus


_measurements = itemgetter(*FEATURES)


def feature_rows(records: list[dict] | None, instances: list[list[float]] | None) -> np.ndarray:
    """The (n, 4) float32 array of a validated batch, in model column order."""
    if instances is not None:
        return np.array(instances, dtype=np.float32)
    records = records or []
    n, width = len(records), len(FEATURES)
    # One flat pass over the values: 3x faster than np.array over a list of tuples.
    flat = chain.from_iterable(map(_measurements, records))
    return np.fromiter(flat, dtype=np.float32, count=n * width).reshape(n, width)


def prediction_objects(
    classes: tuple[str, ...], ids: list[str], names: list[str], proba: np.ndarray
) -> list:
    """One ``{"prediction_id", "species", "probabilities"}`` object per row, built as cheaply
    as Python allows.

    A dict display with three keys is twice as fast as ``dict(zip(...))``; at 10,000 rows
    that is 4 ms of a batch request (benchmarks/README.md).
    """
    rows = proba.tolist()
    if len(classes) == 3:
        a, b, c = classes
        return [
            {"prediction_id": pid, "species": name, "probabilities": {a: pa, b: pb, c: pc}}
            for pid, name, (pa, pb, pc) in zip(ids, names, rows, strict=True)
        ]
    return [
        {
            "prediction_id": pid,
            "species": name,
            "probabilities": dict(zip(classes, row, strict=True)),
        }
        for pid, name, row in zip(ids, names, rows, strict=True)
    ]
