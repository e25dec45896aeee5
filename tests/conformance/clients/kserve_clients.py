"""KServe's own Python clients: InferenceRESTClient (V2) and InferenceGRPCClient."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import numpy as np
from common import DTYPES, bad_rows, config, emit, text
from kserve import (
    InferenceGRPCClient,
    InferenceRESTClient,
    InferInput,
    InferRequest,
    RESTConfig,
)
from kserve.protocol.infer_type import RequestedOutput


def describe(e: BaseException) -> dict:
    if isinstance(e, httpx.HTTPStatusError):
        return {"code": str(e.response.status_code), "message": e.response.json()["error"]}
    if isinstance(e, grpc.RpcError):
        return {"code": e.code().name, "message": e.details()}
    return {"code": type(e).__name__, "message": str(e)}


def request(model, array, datatype, *, binary=True, outputs=None) -> InferRequest:
    tensor = InferInput("features", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    requested = (
        None
        if outputs is None
        else [RequestedOutput(o, parameters={"binary_data": binary}) for o in outputs]
    )
    return InferRequest(model, [tensor], request_id="k-1", request_outputs=requested)


def answer(response) -> dict:
    out = {"outputs": [o.name for o in response.outputs], "model_version": response.model_version}
    for o in response.outputs:
        if o.name == "predicted_species":
            out["species"] = text(o.as_numpy())
        else:
            out["proba"] = o.as_numpy().astype(float).tolist()
    return out


async def failure(call) -> dict:
    try:
        await call
    except Exception as e:  # noqa: BLE001
        return describe(e)
    return {"code": "OK", "message": ""}


async def rest(cfg: dict) -> dict:
    base, model, rows = f"http://{cfg['http']}", cfg["model"], cfg["rows"]
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    result = {
        "live": await client.is_server_live(base),
        "ready": await client.is_server_ready(base),
        "model_ready": await client.is_model_ready(base, model),
        "infer": {},
    }
    for datatype, dtype in DTYPES.items():
        for binary in (True, False):
            array = np.asarray(rows, dtype=dtype)
            key = f"{datatype}-{'binary' if binary else 'json'}"
            req = request(model, array, datatype, binary=binary)
            result["infer"][key] = answer(await client.infer(base, req, model_name=model))
    one = np.asarray(rows[:2], dtype=np.float32)
    for binary in (True, False):
        req = request(model, one, "FP32", binary=binary, outputs=["probabilities"])
        mode = "binary" if binary else "json"
        result["infer"][f"only-probabilities-{mode}"] = answer(
            await client.infer(base, req, model_name=model)
        )
    errors = {}
    for name, (array, dt) in bad_rows(rows).items():
        errors[name] = await failure(
            client.infer(base, request(model, array, dt), model_name=model)
        )
    errors["unknown_model"] = await failure(
        client.infer(base, request("resnet", one, "FP32"), model_name="resnet")
    )
    result["errors"] = errors
    await client.close()
    return result


async def over_grpc(cfg: dict) -> dict:
    model, rows = cfg["model"], cfg["rows"]
    client = InferenceGRPCClient(cfg["grpc"], timeout=30)
    result = {
        "live": await client.is_server_live(),
        "ready": await client.is_server_ready(),
        "model_ready": await client.is_model_ready(model),
        "infer": {},
    }
    for datatype, dtype in DTYPES.items():
        req = request(model, np.asarray(rows, dtype=dtype), datatype)
        result["infer"][f"{datatype}-raw"] = answer(await client.infer(req))
    one = np.asarray(rows[:2], dtype=np.float32)
    req = request(model, one, "FP32", outputs=["predicted_species"])
    result["infer"]["only-predicted_species"] = answer(await client.infer(req))
    errors = {}
    for name, (array, dt) in bad_rows(rows).items():
        errors[name] = await failure(client.infer(request(model, array, dt)))
    errors["unknown_model"] = await failure(client.infer(request("resnet", one, "FP32")))
    result["errors"] = errors
    await client.close()
    return result


async def main() -> None:
    cfg = config()
    emit({"rest": await rest(cfg), "grpc": await over_grpc(cfg)})


if __name__ == "__main__":
    asyncio.run(main())
