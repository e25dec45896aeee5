"""The OpenAPI document, generated in process exactly as ``GET /docs.json`` serves it:
BentoML's document of the service (mounted FastAPI apps merged in) through ``enrich``."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest

from serving.errors import STATUSES
from serving.jobs import Job
from serving.route_docs import VERSION_PATTERN
from serving.schemas import JOB_ID_PATTERN, JobStatus
from training.settings import get_settings

METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    from service import IrisClassifier
    from serving.openapi import enrich

    return enrich(IrisClassifier.openapi_spec.asdict())


def operations(document: dict) -> dict[str, dict]:
    return {
        f"{method.upper()} {path}": op
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in METHODS
    }


def walk(node: Any):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def parameter(operation: dict, name: str) -> dict:
    return next(p for p in operation["parameters"] if p["name"] == name)


def test_every_mounted_route_is_documented(document):
    paths = set(document["paths"])
    assert {"/jobs/", "/jobs/{job_id}", "/feedback", "/v2", "/v2/repository/index"} <= paths
    assert "/feedback/" not in paths and "/v2/" not in paths  # served at their roots
    assert not any(p.startswith(("/jobs/docs", "/v2/docs", "/v2/openapi")) for p in paths)


def test_job_status_model_has_exactly_the_public_fields():
    job = Job(uuid.uuid4().hex, "succeeded", 1.0, 2.0, 3.0, 1, "x", "n", 3.0, "/d/Iris.csv",
              {"version": "2", "metrics": {"test_accuracy": 1.0}, "promoted": True,
               "reason": "better"}, None)  # fmt: skip
    public = job.public()
    assert set(JobStatus.model_fields) == set(public)
    JobStatus.model_validate(public)  # and the values fit the documented types
    assert re.fullmatch(JOB_ID_PATTERN, job.id)


def test_job_routes_answer_documented_models(document):
    ops = operations(document)
    status = ops["GET /jobs/{job_id}"]
    ok = status["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/JobStatus"}
    job_id = parameter(status, "job_id")["schema"]
    assert job_id["pattern"] == JOB_ID_PATTERN and re.fullmatch(
        job_id["pattern"], job_id["example"]
    )
    assert status["security"] == [{"bearer": []}]
    schemas = document["components"]["schemas"]
    assert set(schemas["JobStatus"]["properties"]) == set(JobStatus.model_fields)
    assert schemas["JobList"]["properties"]["jobs"]["items"] == {
        "$ref": "#/components/schemas/JobStatus"
    }


def test_path_parameters_are_constrained_with_examples(document):
    name = get_settings().model_name
    for label, op in operations(document).items():
        for p in op.get("parameters", []):
            if p["in"] != "path":
                continue
            schema = p["schema"]
            assert "example" in schema, (label, p["name"])
            if p["name"] == "model":
                assert schema["enum"] == [name], label
            elif p["name"] == "version":
                assert schema["pattern"] == VERSION_PATTERN, label
                assert re.fullmatch(VERSION_PATTERN, schema["example"])
            else:
                assert "pattern" in schema or "enum" in schema, (label, p["name"])


def test_request_bodies_have_examples(document):
    schemas = document["components"]["schemas"]
    for label, op in operations(document).items():
        body = op.get("requestBody")
        if body is None or label == "POST /retrain":  # no body fields at all
            continue
        schema = body["content"]["application/json"]["schema"]
        if "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
        assert "example" in schema, label


def test_links_reach_operations_that_exist(document):
    ops = operations(document)
    by_id = {op["operationId"]: op for op in ops.values() if "operationId" in op}
    found = 0
    for label, op in ops.items():
        for response in op["responses"].values():
            for name, link in response.get("links", {}).items():
                target = by_id[link["operationId"]]  # KeyError: a link to nothing
                declared = {p["name"] for p in target.get("parameters", [])}
                assert set(link.get("parameters", {})) <= declared, (label, name)
                found += 1
    assert found >= 8
    retrain = ops["POST /retrain"]["responses"]["202"]["links"]["JobStatus"]
    assert retrain["operationId"] == "jobs_status"
    assert retrain["parameters"] == {"job_id": "$response.body#/job_id"}
    feedback = ops["POST /predict"]["responses"]["200"]["links"]["Feedback"]
    assert feedback["requestBody"][0]["prediction_id"] == "$response.body#/prediction_id"
    for label in ("POST /predict", "POST /predict_batch", "POST /v2/models/{model}/infer"):
        assert "X-Prediction-Id" in ops[label]["responses"]["200"]["headers"], label


def test_errors_use_one_shape_and_the_status_table(document):
    ops = operations(document)
    for label, op in ops.items():
        v2 = " /v2" in label
        for code, response in op["responses"].items():
            if code.startswith(("2", "3")) or "content" not in response:
                continue
            schema = response["content"]["application/json"]["schema"]["$ref"]
            expected = ("OipError",) if v2 else ("ErrorResponse", "RetrainConflict")
            assert schema.rsplit("/", 1)[1] in expected, (label, code)
            if code.isdigit() and not v2 and code != "404":
                assert response["description"] == STATUSES[int(code)].meaning, (label, code)
    retrain = ops["POST /retrain"]
    assert {"202", "401", "403", "409", "422"} <= set(retrain["responses"])
    assert retrain["security"] == [{"bearer": []}]
    assert parameter(retrain, "include_feedback")["schema"]["type"] == "boolean"


def test_document_speaks_openapi_30_and_every_ref_resolves(document):
    text = json.dumps(document)
    assert document["openapi"].startswith("3.0")
    schemas = document["components"]["schemas"]
    for node in walk(document):
        assert "$defs" not in node
        assert node.get("type") != "null"
        assert not isinstance(node.get("exclusiveMinimum"), (int, float)) or isinstance(
            node["exclusiveMinimum"], bool
        )
        ref = node.get("$ref")
        if ref is not None:
            assert ref.rsplit("/", 1)[1] in schemas, ref
    for name in ("InvalidArgument", "NotFound", "InternalServerError", "HTTPValidationError"):
        assert name not in schemas
    assert '"examples": [' not in text  # schema examples are 3.0's single `example`


def test_service_models_are_in_the_document(document):
    schemas = document["components"]["schemas"]
    for name in ("ErrorResponse", "RetrainConflict", "InferRequest", "InferResponse", "OipError",
                 "ServerMetadata", "ModelMetadata", "RepositoryIndex", "FeedbackItem",
                 "FeedbackResult"):  # fmt: skip
        assert name in schemas, name
    assert any(n.startswith("PredictResponse") for n in schemas)
    assert any(n.startswith("RetrainResponse") for n in schemas)
