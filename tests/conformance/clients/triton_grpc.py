"""tritonclient.grpc with its defaults (raw_input_contents)."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient
from common import DTYPES, bad_rows, config, emit, error_of, text
from tritonclient.utils import InferenceServerException


def describe(e: BaseException) -> dict:
    if isinstance(e, InferenceServerException):
        return {"code": str(e.status()).removeprefix("StatusCode."), "message": e.message()}
    return {"code": type(e).__name__, "message": str(e)}


def main() -> None:
    cfg = config()
    model, version, rows = cfg["model"], cfg["version"], cfg["rows"]
    client = grpcclient.InferenceServerClient(url=cfg["grpc"])

    def infer(array, datatype, *, outputs=None, model_version="", name=model):
        tensor = grpcclient.InferInput("features", list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        requested = (
            None if outputs is None else [grpcclient.InferRequestedOutput(o) for o in outputs]
        )
        return client.infer(
            name, [tensor], outputs=requested, model_version=model_version, client_timeout=30
        )

    def answer(result) -> dict:
        response = result.get_response(as_json=True)
        names = [o["name"] for o in response["outputs"]]
        out = {"outputs": names, "model_version": response["model_version"]}
        if "predicted_species" in names:
            out["species"] = text(result.as_numpy("predicted_species"))
        if "probabilities" in names:
            out["proba"] = result.as_numpy("probabilities").astype(float).tolist()
        return out

    result = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "version_ready": client.is_model_ready(model, version),
        "server_metadata": client.get_server_metadata(as_json=True),
        "model_metadata": client.get_model_metadata(model, as_json=True),
        "version_metadata": client.get_model_metadata(model, version, as_json=True),
        "infer": {},
    }
    for datatype, dtype in DTYPES.items():
        result["infer"][f"{datatype}-raw"] = answer(infer(np.asarray(rows, dtype=dtype), datatype))
    one = np.asarray(rows[:2], dtype=np.float32)
    for output in ("probabilities", "predicted_species"):
        result["infer"][f"only-{output}"] = answer(infer(one, "FP32", outputs=[output]))
    result["infer"]["version"] = answer(infer(one, "FP32", model_version=version))
    errors = {
        name: error_of(lambda a=array, d=dt: infer(a, d), describe)
        for name, (array, dt) in bad_rows(rows).items()
    }
    errors["unknown_model"] = error_of(lambda: infer(one, "FP32", name="resnet"), describe)
    errors["unknown_version"] = error_of(lambda: infer(one, "FP32", model_version="999"), describe)
    errors["unknown_output"] = error_of(lambda: infer(one, "FP32", outputs=["logits"]), describe)
    result["errors"] = errors
    emit(result)


if __name__ == "__main__":
    main()
