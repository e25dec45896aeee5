"""Open Inference Protocol REST handlers, mounted at ``/v2`` beside our own API.

:mod:`serving.oip.routes` declares them as the routes of a FastAPI app, so that they
document themselves (models in :mod:`serving.oip.schemas`); every handler takes the raw
``Request`` and returns a ready ``Response``: FastAPI neither parses the infer body nor
serialises an answer.
"""

from __future__ import annotations

import numpy as np
from fastapi import Request
from pydantic_core import from_json, to_json
from starlette.responses import JSONResponse, Response

from serving.oip import binary, versions
from serving.oip import protocol as oip
from serving.oip.repository import get_repository
from serving.route_docs import ModelName, Version
from serving.runtime import get_runtime

STATUS = {"invalid": 400, "not_found": 404, "unavailable": 503}


def _error(exc: oip.InferError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=STATUS[exc.kind])


async def live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def ready(request: Request) -> Response:
    return JSONResponse({"ready": True})


async def server_metadata(request: Request) -> Response:
    return JSONResponse(oip.server_metadata())


async def model_metadata(model: ModelName) -> Response:
    return await _metadata(model, "")


async def version_metadata(model: ModelName, version: Version) -> Response:
    return await _metadata(model, version)


async def _metadata(model: str, version: str) -> Response:
    try:
        served = await versions.resolve(model, version)
    except oip.InferError as e:
        return _error(e)
    identity = served.identity
    return JSONResponse(oip.model_metadata(identity.name, identity.version, identity.runtime))


async def model_ready(model: ModelName) -> Response:
    return await _ready(model, "")


async def version_ready(model: ModelName, version: Version) -> Response:
    return await _ready(model, version)


async def _ready(model: str, version: str) -> Response:
    try:
        await versions.resolve(model, version)
    except oip.InferError as e:
        return _error(e)
    return JSONResponse({"name": model, "ready": True})


async def infer(request: Request, model: ModelName) -> Response:
    """Inference by the champion (see :data:`INFER`)."""
    return await _infer(request, model, "")


async def infer_version(request: Request, model: ModelName, version: Version) -> Response:
    """Inference by one registered version (see :data:`INFER`)."""
    return await _infer(request, model, version)


INFER = (
    "Inference: one FP32 or FP64 input tensor (`features`) of shape [N, 4], rows of"
    " sepal_length, sepal_width, petal_length, petal_width in cm; N is at most"
    " IRIS_MAX_BATCH_SIZE (the schema shows N = 1). The binary tensor data extension is"
    " accepted too: an `application/octet-stream` body holding a JSON header of"
    " `Inference-Header-Content-Length` bytes, then the raw tensors."
)


async def _infer(request: Request, model: str, version: str) -> Response:
    try:
        served = await versions.resolve(model, version)
        header, tail = binary.split_body(await request.body(), request.headers.get(binary.HEADER))
        body = _parse(header)
        if body.get("id") is not None and not isinstance(body["id"], str):
            raise oip.InferError("'id' must be a string")
        rows = _decode(body, binary.BinaryReader(tail))
        wanted = oip.requested([o.get("name", "") for o in binary.outputs_of(body)])
        as_binary = binary.binary_outputs(body)
    except oip.InferError as e:
        return _error(e)
    species, proba, prediction_id = await versions.classify(served, rows, "oip_rest")
    payload = {"model_name": served.identity.name, "model_version": served.identity.version}
    if isinstance(body.get("id"), str):
        payload["id"] = body["id"]
    # The protocol's response parameters carry our prediction id (rows: "<id>-<row>"),
    # for POST /feedback; so does the X-Prediction-Id header, as on /predict.
    payload["parameters"] = {"prediction_id": prediction_id}
    response = _answer(payload, oip.outputs(species, proba, wanted), as_binary)
    response.headers["X-Prediction-Id"] = prediction_id
    return response


def _answer(payload: dict, tensors: list[oip.Tensor], as_binary: dict[str, bool]) -> Response:
    """JSON, or a JSON header and the binary outputs after it when any were asked for."""
    outputs, blobs = [], []
    for t in tensors:
        out = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if as_binary.get(t.name, as_binary[""]):
            blob = binary.tensor_bytes(t)
            out["parameters"] = {binary.SIZE: len(blob)}
            blobs.append(blob)
        else:
            out["data"] = t.data.tolist()
        outputs.append(out)
    header = to_json({**payload, "outputs": outputs})
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *blobs]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def _parse(raw: bytes) -> dict:
    try:
        body = from_json(raw)  # pydantic-core: several times faster than json.loads on tensors
    except ValueError:
        raise oip.InferError("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise oip.InferError("request body must be a JSON object")
    return body


def _decode(body: dict, tail: binary.BinaryReader) -> np.ndarray:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise oip.InferError("'inputs' must be a list with exactly one tensor")
    tensor = inputs[0]
    if not isinstance(tensor.get("name"), str):
        raise oip.InferError("input 'name' must be a string")
    shape, datatype, data = tensor.get("shape"), tensor.get("datatype"), tensor.get("data")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise oip.InferError("input 'shape' must be a list of integers")
    raw = tail.take(tensor)
    tail.finish()
    if raw is not None:
        return oip.rows_from(str(datatype), shape, raw, _max_rows())
    if not isinstance(data, list):
        raise oip.InferError("input 'data' must be a (flat or nested) list of numbers")
    try:
        values = np.array(data)
    except ValueError:
        raise oip.InferError("input 'data' is ragged; nested lists must match the shape") from None
    if values.dtype.kind not in "fi":  # rejects strings, booleans, nulls, mixed types
        raise oip.InferError(f"input 'data' must hold only numbers for datatype {datatype!r}")
    return oip.rows_from(str(datatype), shape, values.astype(np.float64).ravel(), _max_rows())


def _max_rows() -> int:
    return get_runtime().settings.max_batch_size


async def repository_index(request: Request) -> Response:
    try:
        body = _parse(await request.body() or b"{}")
    except oip.InferError as e:
        return _error(e)
    ready_only = body.get("ready")
    if ready_only is not None and not isinstance(ready_only, bool):
        return _error(oip.InferError("'ready' must be true or false"))
    model = versions.get_versions().holder.current
    return JSONResponse(get_repository().index(model, ready_only=bool(ready_only)))


async def repository_load(request: Request, model: ModelName) -> Response:
    """Serve the model again (and look for a new champion now). Admin token."""
    return await _repository_change(request, model, load=True)


async def repository_unload(request: Request, model: ModelName) -> Response:
    """Stop serving the model: its routes answer 503 until load or restart. Admin token."""
    return await _repository_change(request, model, load=False)


async def _repository_change(request: Request, name: str, *, load: bool) -> Response:
    repository = get_repository()
    denied = repository.authorize(request.headers.get("authorization"))
    if denied is not None:
        headers = {"WWW-Authenticate": "Bearer"} if denied.status == 401 else None
        return JSONResponse({"error": denied.message}, status_code=denied.status, headers=headers)
    served = versions.get_versions().holder.current.identity.name
    try:
        repository.check_name(name, served)
    except oip.InferError as e:
        return _error(e)
    if load:
        repository.load()
        get_runtime().watcher.poke()  # a champion that moved meanwhile is picked up now
    else:
        repository.unload()
    return Response(status_code=200)
