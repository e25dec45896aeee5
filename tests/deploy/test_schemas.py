"""Every rendered object validates strictly against its schema.

Built-in kinds: ``kubernetes-validate`` (the API's JSON schemas, bundled, offline) in strict
mode, where an unknown field is an error, as the API server's strict field validation
makes it. Against the oldest and the newest Kubernetes minor versions we claim to support.
ServiceMonitor and PrometheusRule: the ``openAPIV3Schema`` of their CRDs, committed in
``crd-schemas/`` (README there says where from), made strict the same way.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.utils import k8s

# The oldest minor version the manifests use features of (sidecar-free; `appProtocol:
# kubernetes.io/h2c` is 1.30) and the newest kubernetes-validate bundles.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CRD_DIR = Path(__file__).with_name("crd-schemas")
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule_v1.json",
}


def _builtin(docs: list[k8s.Doc]) -> list[k8s.Doc]:
    return [d for d in docs if (d["apiVersion"], d["kind"]) not in CRD_SCHEMAS]


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with ``additionalProperties: false`` wherever properties are listed.

    The API server prunes or rejects fields a structural schema does not list; a JSON
    Schema validator accepts them unless told otherwise. ``metadata`` is ObjectMeta, which
    CRD schemas leave open.
    """
    schema = copy.deepcopy(schema)

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
                and path != ("properties", "metadata")
            ):
                node["additionalProperties"] = False
            for key, child in node.items():
                walk(child, (*path, key))
        elif isinstance(node, list):
            for child in node:
                walk(child, path)

    walk(schema, ())
    return schema


def _crd_validator(api_version: str, kind: str) -> jsonschema.Draft4Validator:
    schema = json.loads((CRD_DIR / CRD_SCHEMAS[(api_version, kind)]).read_text())
    return jsonschema.Draft4Validator(_strict(schema))


@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_overlay_renders_the_expected_objects(rendered, overlay):
    kinds = {d["kind"] for d in rendered[overlay]}
    common = {"Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Service"}
    common |= {"NetworkPolicy", "ServiceMonitor", "PrometheusRule"}
    assert common <= kinds
    if overlay == "fleet":
        assert {"StatefulSet", "Job", "CronJob", "HorizontalPodAutoscaler"} <= kinds
        assert "PodDisruptionBudget" in kinds
    else:
        assert "PersistentVolumeClaim" in kinds
        assert not kinds & {"StatefulSet", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert all(
        d["metadata"].get("namespace") == "iris"
        for d in rendered[overlay]
        if d["kind"] != "Namespace"
    )


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_builtin_kinds_validate_strictly(rendered, overlay, version):
    errors = []
    for doc in _builtin(rendered[overlay]):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{k8s.name_of(doc)}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)


def test_strict_validation_reports_an_unknown_field(rendered):
    # Guards against a validator that passes everything: a typo'd field must fail.
    deployment = copy.deepcopy(k8s.find(rendered["fleet"], "Deployment", "iris-serving"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="httpGett"):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_prometheus_operator_objects_match_their_crd_schemas(rendered, overlay):
    crd_docs = [d for d in rendered[overlay] if (d["apiVersion"], d["kind"]) in CRD_SCHEMAS]
    assert {d["kind"] for d in crd_docs} == {"ServiceMonitor", "PrometheusRule"}
    for doc in crd_docs:
        errors = [
            f"{k8s.name_of(doc)}: {e.message} at {list(e.absolute_path)}"
            for e in _crd_validator(doc["apiVersion"], doc["kind"]).iter_errors(doc)
        ]
        assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    ("kind", "mutate", "expected"),
    [
        (
            "ServiceMonitor",
            lambda d: d["spec"]["endpoints"][0].update(intervall="15s"),
            "intervall",
        ),
        ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].update(interval="soon"), "soon"),
        ("PrometheusRule", lambda d: d["spec"]["groups"][0]["rules"][0].pop("expr"), "expr"),
    ],
)
def test_crd_schemas_report_broken_objects(rendered, kind, mutate, expected):
    doc = copy.deepcopy(next(d for d in rendered["fleet"] if d["kind"] == kind))
    mutate(doc)
    messages = [e.message for e in _crd_validator(doc["apiVersion"], kind).iter_errors(doc)]
    assert any(expected in m for m in messages), messages
