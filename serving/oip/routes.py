"""The ``/v2`` app: the Open Inference Protocol's REST routes and what they document.

Handlers live in :mod:`serving.oip.rest`; this module only declares them, with their
models (:mod:`serving.oip.schemas`), errors, path parameters and links, for the OpenAPI
document BentoML merges into its own.
"""

from __future__ import annotations

import functools

from starlette.responses import Response

from serving import route_docs
from serving.oip import schemas as doc
from serving.oip.rest import (
    INFER,
    infer,
    infer_version,
    live,
    model_metadata,
    model_ready,
    ready,
    repository_index,
    repository_load,
    repository_unload,
    server_metadata,
    version_metadata,
    version_ready,
)

TAGS = ["Open Inference Protocol (KServe V2)"]
_model = "/models/{model}"
_versioned = "/models/{model}/versions/{version}"
_unknown = {
    "s400": "Invalid request: the message says what is wrong",
    "s404": "Unknown model or version",
    "s503": "Model unloaded (repository extension)",
}
_model_errors = route_docs.errors(doc.OipError, 400, 404, 503, **_unknown)
_admin_errors = route_docs.errors(doc.OipError, 401, 403, 404, **_unknown)
_binary = {"schema": {"type": "string", "format": "binary"}}


def _links(model: str, version: str) -> dict[str, dict]:
    """Links to the version's routes, from where an answer names the model and version."""
    targets = ("oip_model_metadata_version", "oip_model_ready_version", "oip_infer_version")
    parameters = {"model": model, "version": version}
    return {target: {"operationId": target, "parameters": parameters} for target in targets}


_infer_docs = {"requestBody": route_docs.request_body(doc.InferRequest)}

oip_app = route_docs.app("Open Inference Protocol")
_route = functools.partial(oip_app.add_api_route, tags=TAGS)  # every route: one tag
_route(
    "/",
    server_metadata,
    methods=["GET"],
    response_model=doc.ServerMetadata,
    operation_id="oip_server_metadata",
    summary="Server metadata",
)
_route(
    "/health/live",
    live,
    methods=["GET"],
    response_model=doc.Live,
    operation_id="oip_live",
    summary="Server live",
)
_route(
    "/health/ready",
    ready,
    methods=["GET"],
    response_model=doc.Ready,
    operation_id="oip_ready",
    summary="Server ready",
)
_versions = (
    (_model, "", (model_metadata, model_ready, infer)),
    (_versioned, "_version", (version_metadata, version_ready, infer_version)),
)
for _base, _suffix, (_metadata_route, _ready_route, _infer_route) in _versions:
    _route(
        _base,
        _metadata_route,
        methods=["GET"],
        response_model=None,
        responses={
            200: {
                "model": doc.ModelMetadata,
                "links": _links("$response.body#/name", "$response.body#/versions/0"),
            },
            **_model_errors,
        },
        operation_id=f"oip_model_metadata{_suffix}",
        summary="Model metadata",
    )
    _route(
        _base + "/ready",
        _ready_route,
        methods=["GET"],
        response_model=None,
        responses={200: {"model": doc.ModelReady}, **_model_errors},
        operation_id=f"oip_model_ready{_suffix}",
        summary="Model ready",
    )
    _route(
        _base + "/infer",
        _infer_route,
        methods=["POST"],
        response_model=None,
        responses={
            200: {
                "model": doc.InferResponse,
                "description": "The outputs (binary when asked for)",
                "content": {"application/octet-stream": _binary},
                "headers": {
                    "X-Prediction-Id": {
                        "description": "Also parameters.prediction_id (rows: <id>-<row>).",
                        "schema": {"type": "string"},
                    }
                },
            },
            **_model_errors,
        },
        openapi_extra=_infer_docs,
        operation_id=f"oip_infer{_suffix}",
        summary="Inference",
        description=INFER,
    )
_route(
    "/repository/index",
    repository_index,
    methods=["POST"],
    response_model=None,
    responses={
        200: {
            "model": doc.RepositoryIndex,
            "links": _links("$response.body#/0/name", "$response.body#/0/version"),
        },
        **route_docs.errors(doc.OipError, 400),
    },
    openapi_extra={"requestBody": route_docs.request_body(doc.RepositoryIndexRequest, False)},
    operation_id="oip_repository_index",
    summary="Repository index",
)
for _action, _handler in (("load", repository_load), ("unload", repository_unload)):
    _route(
        f"/repository/models/{{model}}/{_action}",
        _handler,
        methods=["POST"],
        response_model=None,
        response_class=Response,
        responses={200: {"description": "Done (empty body)"}, **_admin_errors},
        openapi_extra={"security": route_docs.BEARER},
        operation_id=f"oip_repository_{_action}",
        summary=f"Repository: {_action} the model",
    )
