"""Render the Kubernetes manifests of deploy/k8s and walk what they contain.

``kubectl kustomize`` (kubectl 1.32 ships kustomize v5) renders an overlay offline, with
no cluster. Typical use::

    docs = render("fleet")
    for where, pod in pod_specs(docs):
        for container in containers(pod):
            ...
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "deploy" / "k8s"
OVERLAYS = ("single", "fleet")
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}

Doc = dict[str, Any]


def kubectl() -> str | None:
    """Path of the kubectl binary, or None."""
    return shutil.which("kubectl")


def render_text(target: Path | str) -> str:
    """``kubectl kustomize TARGET``: an overlay name (``single``) or a kustomization folder.

    Raises:
        FileNotFoundError: no kubectl on PATH.
        subprocess.CalledProcessError: kustomize failed (its message is in ``stderr``).
    """
    path = K8S_DIR / "overlays" / target if isinstance(target, str) else target
    binary = kubectl()
    if binary is None:
        raise FileNotFoundError("kubectl is not on PATH")
    return subprocess.run(
        [binary, "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout


def render(target: Path | str) -> list[Doc]:
    """The rendered objects of an overlay (see :func:`render_text`)."""
    return [doc for doc in yaml.safe_load_all(render_text(target)) if doc]


def name_of(doc: Doc) -> str:
    """``Kind/name``, for messages."""
    return f"{doc['kind']}/{doc['metadata']['name']}"


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    """Every pod template: workloads' ``spec.template`` and CronJobs' job template."""
    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS:
            yield name_of(doc), doc["spec"]["template"]["spec"]
        elif doc["kind"] == "CronJob":
            yield name_of(doc), doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            yield name_of(doc), doc["spec"]


def containers(pod: Doc) -> list[Doc]:
    """Init containers and containers of a pod spec."""
    return [*pod.get("initContainers", []), *pod["containers"]]


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    """The one object of ``kind`` named ``name`` (generated ConfigMaps: by name prefix).

    Raises:
        LookupError: none, or more than one.
    """
    found = [
        d
        for d in docs
        if d["kind"] == kind
        and (d["metadata"]["name"] == name or d["metadata"]["name"].startswith(f"{name}-"))
    ]
    if len(found) != 1:
        raise LookupError(f"{len(found)} objects of kind {kind} named {name}")
    return found[0]
