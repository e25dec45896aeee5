"""Finish the OpenAPI document BentoML generates, with only what BentoML cannot express.

The document is generated: BentoML writes the ``@bentoml.api`` routes from their pydantic
models (``serving.schemas``) and merges in the FastAPI apps mounted at ``/jobs``,
``/feedback`` and ``/v2``, which declare their own models, parameters, errors and links.
:func:`enrich` then adds what BentoML's API routes cannot declare:

- our one error shape on every status they answer (descriptions from
  :data:`serving.errors.STATUSES`), instead of BentoML's own error models;
- ``/retrain``: 202 (not 200), its 409 with the running job, the bearer token, and its
  ``include_feedback`` query parameter;
- OpenAPI links from the answers of ``/predict``, ``/predict_batch`` and ``/retrain`` to
  the operations that take their ids, so a client (or schemathesis) can follow them;
- the mounted apps' roots at ``/v2`` and ``/feedback`` (where ``MountRoots`` routes them);
- the OpenAPI 3.0 dialect: BentoML labels the document 3.0.2 but pydantic and FastAPI
  write JSON Schema 2020 (``anyOf`` with null, numeric ``exclusiveMinimum``,
  ``examples`` lists, local ``$defs``).
"""

from __future__ import annotations

import json
from typing import Any

from serving.errors import STATUSES
from serving.schemas import ErrorResponse, RetrainConflict

REF = "#/components/schemas/{model}"
COMMON = (400, 404, 405, 408, 413, 415, 422, 429, 500, 503, 504)
ADMIN = (401, 403)
MOUNT_ROOTS = {"/v2/": "/v2", "/feedback/": "/feedback"}
BENTOML_ERRORS = ("InvalidArgument", "NotFound", "InternalServerError")
FEEDBACK = {"operationId": "feedback", "description": "Send the true species for it."}
LINKS = {
    "/predict": {
        "Feedback": {
            **FEEDBACK,
            "requestBody": [
                {
                    "prediction_id": "$response.body#/prediction_id",
                    "species": "$response.body#/species",
                }
            ],
        }
    },
    "/predict_batch": {
        "Feedback": {
            **FEEDBACK,
            "requestBody": [
                {
                    "prediction_id": "$response.body#/predictions/0/prediction_id",
                    "species": "$response.body#/predictions/0/species",
                }
            ],
        }
    },
    "/retrain": {
        "JobStatus": {
            "operationId": "jobs_status",
            "parameters": {"job_id": "$response.body#/job_id"},
            "description": "Follow the job.",
        }
    },
}


def enrich(spec: dict[str, Any]) -> dict[str, Any]:
    """Return a completed copy of BentoML's OpenAPI document."""
    spec = json.loads(json.dumps(spec))  # a copy, with status keys as strings as served
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorResponse, RetrainConflict):
        schemas[model.__name__] = model.model_json_schema(ref_template=REF)
    for name in BENTOML_ERRORS:
        schemas.pop(name, None)
    spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    paths = spec.setdefault("paths", {})
    for path in ("/predict", "/predict_batch", "/retrain"):
        operation = paths.get(path, {}).get("post")
        if operation is not None:
            _bentoml_api(path, operation)
    for mounted, root in MOUNT_ROOTS.items():
        if mounted in paths:
            paths[root] = paths.pop(mounted)
    _hoist_defs(spec, schemas)
    return _to_openapi_30(spec)


PREDICTION_ID = {
    "X-Prediction-Id": {
        "description": "The prediction's id, for POST /feedback (a batch's rows: <id>-<row>).",
        "schema": {"type": "string"},
    }
}


def _bentoml_api(path: str, operation: dict[str, Any]) -> None:
    ok = operation["responses"]["200"]
    ok["links"] = LINKS[path]
    if path != "/retrain":
        ok["headers"] = PREDICTION_ID
    responses = {"200": ok, **{str(code): _error(code) for code in COMMON}}
    if path == "/retrain":
        ok["description"] = "Retrain job started"
        responses = {"202": ok, **{k: v for k, v in responses.items() if k != "200"}}
        responses.update({str(code): _error(code) for code in ADMIN})
        responses["409"] = _error(409, RetrainConflict.__name__)
        operation["security"] = [{"bearer": []}]
        operation["parameters"] = [
            {
                "name": "include_feedback",
                "in": "query",
                "required": False,
                "description": "Also train on served predictions that got ground truth.",
                "schema": {"type": "boolean", "default": False},
            }
        ]
    else:
        operation["requestBody"]["required"] = True
    operation["responses"] = responses


def _error(code: int, model: str = "ErrorResponse") -> dict[str, Any]:
    return {
        "description": STATUSES[code].meaning,
        "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}},
    }


def _hoist_defs(node: Any, schemas: dict[str, Any]) -> None:
    """Move inline schemas' ``$defs`` (their refs already point at components) there."""
    if isinstance(node, dict):
        for name, schema in node.pop("$defs", {}).items():
            schemas.setdefault(name, schema)
            _hoist_defs(schema, schemas)
        for value in list(node.values()):  # the components themselves may grow
            _hoist_defs(value, schemas)
    elif isinstance(node, list):
        for item in node:
            _hoist_defs(item, schemas)


def _to_openapi_30(node: Any) -> Any:
    """JSON Schema 2020 keywords (as pydantic writes them) to their OpenAPI 3.0 spelling."""
    if isinstance(node, list):
        return [_to_openapi_30(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    variants = node.get("anyOf")
    if isinstance(variants, list) and {"type": "null"} in variants:
        rest = [v for v in variants if v != {"type": "null"}]
        node.pop("anyOf")
        if len(rest) == 1 and "$ref" not in rest[0]:
            node.update(rest[0])
        else:
            node["anyOf" if len(rest) > 1 else "allOf"] = rest
        node["nullable"] = True
    examples = node.get("examples")
    if isinstance(examples, list):  # a schema's; a parameter's or media type's is a map
        node.pop("examples")
        if examples:
            node.setdefault("example", examples[0])
    node = {key: _to_openapi_30(value) for key, value in node.items()}
    for keyword, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = node.get(keyword)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            node[bound] = value
            node[keyword] = True
    return node
