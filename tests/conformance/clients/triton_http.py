"""tritonclient.http with its defaults (binary tensor data) and in JSON mode."""

from __future__ import annotations

import numpy as np
import tritonclient.http as httpclient
from common import DTYPES, bad_rows, config, emit, error_of, text
from tritonclient.utils import InferenceServerException


def describe(e: BaseException) -> dict:
    if isinstance(e, InferenceServerException):
        return {"code": e.status(), "message": e.message()}
    return {"code": type(e).__name__, "message": str(e)}


def main() -> None:
    cfg = config()
    model, version, rows = cfg["model"], cfg["version"], cfg["rows"]
    client = httpclient.InferenceServerClient(url=cfg["http"], network_timeout=30)

    def infer(array, datatype, *, binary=True, outputs=None, model_version="", name=model):
        tensor = httpclient.InferInput("features", list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        requested = (
            None
            if outputs is None
            else [httpclient.InferRequestedOutput(o, binary_data=binary) for o in outputs]
        )
        return client.infer(name, [tensor], outputs=requested, model_version=model_version)

    def answer(result) -> dict:
        out = {}
        names = [o["name"] for o in result.get_response()["outputs"]]
        if "predicted_species" in names:
            out["species"] = text(result.as_numpy("predicted_species"))
        if "probabilities" in names:
            out["proba"] = result.as_numpy("probabilities").astype(float).tolist()
        out["outputs"] = names
        out["model_version"] = result.get_response()["model_version"]
        return out

    result = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "version_ready": client.is_model_ready(model, version),
        "server_metadata": client.get_server_metadata(),
        "model_metadata": client.get_model_metadata(model),
        "version_metadata": client.get_model_metadata(model, version),
        "infer": {},
    }
    for datatype, dtype in DTYPES.items():
        for binary in (True, False):
            array = np.asarray(rows, dtype=dtype)
            key = f"{datatype}-{'binary' if binary else 'json'}"
            result["infer"][key] = answer(infer(array, datatype, binary=binary))
    one = np.asarray(rows[:2], dtype=np.float32)
    for binary in (True, False):
        mode = "binary" if binary else "json"
        for output in ("probabilities", "predicted_species"):
            result["infer"][f"only-{output}-{mode}"] = answer(
                infer(one, "FP32", binary=binary, outputs=[output])
            )
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
