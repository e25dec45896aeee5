"""Complete BentoML's OpenAPI document so it describes what the service really answers.

BentoML documents 200/400/404/500 with its own error models and emits pydantic's JSON
Schema 2020 keywords inside an OpenAPI 3.0 document. :func:`enrich` adds our single error
shape for every status we return, the 202 of /retrain and its bearer auth, the mounted
/jobs and /v2 routes, and rewrites the schema keywords to the OpenAPI 3.0 dialect, so
clients and contract tests (schemathesis) can trust it.
"""

from __future__ import annotations

import copy
from typing import Any

from serving.schemas import ErrorResponse

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
DESCRIPTIONS = {
    "400": "Body is not JSON",
    "401": "Missing or wrong bearer token",
    "403": "Retrain disabled (no IRIS_ADMIN_TOKEN on the server)",
    "404": "No such route",
    "405": "Method not allowed",
    "408": "Request body too slow",
    "409": "A retrain is already running",
    "413": "Body or batch too large",
    "415": "Body is not JSON",
    "422": "Invalid request: the message names the field (and row)",
    "429": "Too many concurrent requests",
    "500": "Internal error (logged on the server; no details sent)",
    "503": "Service not ready",
    "504": "Request timed out",
}
COMMON = ("400", "404", "405", "408", "413", "415", "422", "429", "500", "503", "504")
ADMIN = ("401", "403")


def enrich(spec: dict[str, Any]) -> dict[str, Any]:
    """Return a corrected copy of BentoML's OpenAPI document."""
    spec = copy.deepcopy(spec)
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, schema in (
        ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        .get("$defs", {})
        .items()
    ):
        schemas[name] = schema
    error = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    error.pop("$defs", None)
    schemas["ErrorResponse"] = error
    for name in ("InvalidArgument", "NotFound", "InternalServerError"):
        schemas.pop(name, None)
    components.setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}

    for path in ("/predict", "/predict_batch", "/retrain"):
        operation = spec.get("paths", {}).get(path, {}).get("post")
        if operation is None:
            continue
        responses = {"200": operation["responses"]["200"]}
        codes = COMMON + ((*ADMIN, "409") if path == "/retrain" else ())
        responses.update({code: _error(code) for code in codes})
        if path != "/retrain" and "requestBody" in operation:
            operation["requestBody"]["required"] = True
        if path == "/retrain":
            responses["202"] = responses.pop("200")
            responses["202"]["description"] = "Retrain job started"
            operation["security"] = [{"bearer": []}]
        operation["responses"] = responses
    spec.setdefault("paths", {}).update(_mounted_paths())
    return _to_openapi_30(spec)


def _error(code: str) -> dict[str, Any]:
    return {
        "description": DESCRIPTIONS[code],
        "content": {"application/json": {"schema": ERROR_REF}},
    }


def _mounted_paths() -> dict[str, Any]:
    job = {
        "type": "object",
        "description": "Retrain job: state, timestamps, version, metrics, promotion, error.",
    }
    admin = {code: _error(code) for code in ADMIN}
    oip_error = {
        "type": "object",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
    }
    oip_errors = {
        "400": {
            "description": "Invalid request",
            "content": {"application/json": {"schema": oip_error}},
        },
        "404": {
            "description": "Unknown model or version",
            "content": {"application/json": {"schema": oip_error}},
        },
        "503": {
            "description": "Model unloaded (model repository extension)",
            "content": {"application/json": {"schema": oip_error}},
        },
    }
    json_ok = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    job_id = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {**_job_paths(job, admin, job_id), **_oip_paths(json_ok, oip_errors, admin)}


def _job_paths(job: dict, admin: dict, job_id: list) -> dict[str, Any]:
    return {
        "/jobs/": {
            "get": {
                "tags": ["Retrain"],
                "description": "Recent retrain jobs, newest first.",
                "security": [{"bearer": []}],
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"jobs": {"type": "array", "items": job}},
                                }
                            }
                        },
                    },
                    **admin,
                },
            }
        },
        "/jobs/{job_id}": {
            "get": {
                "tags": ["Retrain"],
                "description": "One retrain job: queued, running, succeeded or failed.",
                "security": [{"bearer": []}],
                "parameters": job_id,
                "responses": {
                    "200": {"description": "OK", "content": {"application/json": {"schema": job}}},
                    "404": _error("404"),
                    **admin,
                },
            }
        },
    }


def _oip_paths(json_ok: dict, oip_errors: dict, admin: dict) -> dict[str, Any]:
    model = [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}]
    version = [{"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}]
    tags = ["Open Inference Protocol (KServe V2)"]
    binary = {"schema": {"type": "string", "format": "binary"}}
    infer = {
        "post": {
            "tags": tags,
            "description": "Inference: one FP32/FP64 input tensor `features` of shape [N, 4]"
            " (sepal_length, sepal_width, petal_length, petal_width). Binary tensor data:"
            " a JSON header of Inference-Header-Content-Length bytes, then raw tensors.",
            "parameters": model,
            "requestBody": {
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "application/octet-stream": binary,
                }
            },
            "responses": {
                "200": {
                    "description": "OK (binary outputs when asked for)",
                    "content": {**json_ok["content"], "application/octet-stream": binary},
                },
                **oip_errors,
            },
        }
    }
    change = {
        "post": {
            "tags": tags,
            "security": [{"bearer": []}],
            "parameters": model,
            "responses": {"200": {"description": "OK"}, **oip_errors, **admin},
        }
    }
    paths = {
        "/v2/health/live": {"get": {"tags": tags, "responses": {"200": json_ok}}},
        "/v2/health/ready": {"get": {"tags": tags, "responses": {"200": json_ok}}},
        "/v2/models/{model}": {
            "get": {"tags": tags, "parameters": model, "responses": {"200": json_ok, **oip_errors}}
        },
        "/v2/models/{model}/ready": {
            "get": {"tags": tags, "parameters": model, "responses": {"200": json_ok, **oip_errors}}
        },
        "/v2/models/{model}/infer": infer,
        "/v2/repository/index": {"post": {"tags": tags, "responses": {"200": json_ok}}},
        "/v2/repository/models/{model}/load": change,
        "/v2/repository/models/{model}/unload": change,
    }
    for route in ("", "/ready", "/infer"):
        operation = copy.deepcopy(paths[f"/v2/models/{{model}}{route}"])
        for method in operation.values():
            method["parameters"] = model + version
        paths[f"/v2/models/{{model}}/versions/{{version}}{route}"] = operation
    return paths


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
    node = {key: _to_openapi_30(value) for key, value in node.items()}
    for keyword, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = node.get(keyword)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            node[bound] = value
            node[keyword] = True
    return node
