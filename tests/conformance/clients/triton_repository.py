"""The model repository extension through tritonclient (HTTP and gRPC): index, unload,
load, with and without the admin token. Leaves the model loaded."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from common import config, emit, error_of
from tritonclient.utils import InferenceServerException


def describe(e: BaseException) -> dict:
    if isinstance(e, InferenceServerException):
        return {"code": str(e.status()).removeprefix("StatusCode."), "message": e.message()}
    return {"code": type(e).__name__, "message": str(e)}


def exercise(module, client, model: str, token: str, row: list[float]) -> dict:
    admin = {"authorization": f"Bearer {token}"}

    def infer():
        tensor = module.InferInput("features", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.asarray([row], dtype=np.float32))
        return client.infer(model, [tensor])

    def index():
        found = client.get_model_repository_index()
        if module is grpcclient:
            found = client.get_model_repository_index(as_json=True).get("models", [])
        return [{k: m.get(k, "") for k in ("name", "version", "state", "reason")} for m in found]

    result = {
        "index": index(),
        "unload_without_token": error_of(lambda: client.unload_model(model), describe),
        "unload_wrong_token": error_of(
            lambda: client.unload_model(model, headers={"authorization": "Bearer nope"}), describe
        ),
        "unload_unknown_model": error_of(
            lambda: client.unload_model("resnet", headers=admin), describe
        ),
    }
    client.unload_model(model, headers=admin)
    result["after_unload"] = {
        "model_ready": client.is_model_ready(model),
        "server_ready": client.is_server_ready(),
        "index": index(),
        "infer": error_of(infer, describe),
    }
    client.load_model(model, headers=admin)
    result["after_load"] = {
        "model_ready": client.is_model_ready(model),
        "index": index(),
        "infer": error_of(infer, describe),
    }
    return result


def main() -> None:
    cfg = config()
    row = cfg["rows"][0]
    emit(
        {
            "http": exercise(
                httpclient,
                httpclient.InferenceServerClient(cfg["http"]),
                cfg["model"],
                cfg["token"],
                row,
            ),
            "grpc": exercise(
                grpcclient,
                grpcclient.InferenceServerClient(cfg["grpc"]),
                cfg["model"],
                cfg["token"],
                row,
            ),
        }
    )


if __name__ == "__main__":
    main()
