"""`podman kube play` runs the `single` overlay with the real image, as rendered.

No cluster can run on these machines, so podman plays the objects it supports: the
Deployment (one pod, with its security context, read-only root filesystem, emptyDirs,
resources and environment), the ConfigMap, the PersistentVolumeClaim (a podman volume) and
the admin Secret. The pod must become ready, predict, and let only the Secret's token
retrain; the state on the claim must outlive the pod.

What podman 4.3 does not run, and the tests that cover it instead:

- Namespace, ServiceAccount, Service, NetworkPolicy: ignored by podman; rendered, validated
  and checked (selectors, named ports, appProtocol) by test_schemas.py / test_manifests.py,
  applied for real by the kind workflow (.github/workflows/kind.yml).
- ServiceMonitor, PrometheusRule: CRD schemas in test_schemas.py, the rule groups in
  test_prometheusrule.py.
- Probes: podman turns them into systemd-timer health checks, which need systemd; this
  test calls the probes' paths itself, and kind runs them.
- Container ports: on the host network podman cannot map ports, so the server binds a free
  127.0.0.1 port instead of 3000/8001 (test_manifests.py checks the ports).

Adapted for this machine, and nothing else: names get a unique suffix, the image is the
test's, the server binds free loopback ports, the reload interval is 1 s. podman 4.3 keeps
a `kind: Secret` from the YAML in a form its own secretKeyRef cannot read, so the Secret is
created with `podman secret create` from the same object's data.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.utils import containers as ct
from tests.utils import k8s

pytestmark = [pytest.mark.container, pytest.mark.integration, pytest.mark.timeout(2400)]

PLAYED_KINDS = {"Deployment", "ConfigMap", "PersistentVolumeClaim"}
NOT_PLAYED = {
    "Namespace",
    "ServiceAccount",
    "Service",
    "NetworkPolicy",
    "ServiceMonitor",
    "PrometheusRule",
}
TOKEN = "kube-play-token-5d1f"
FLOWER = {"sepal_length": 6.9, "sepal_width": 3.1, "petal_length": 5.8, "petal_width": 2.3}


@pytest.fixture(scope="module")
def podman(backend: ct.Backend, request: pytest.FixtureRequest) -> tuple[ct.Backend, str]:
    """The podman backend and the test image in its storage.

    Where Docker built the image (GitHub's runners), this test is skipped even under CI:
    there the kind workflow (.github/workflows/kind.yml) runs the manifests on Kubernetes.
    """
    if backend.cli != "podman":
        pytest.skip(
            "podman kube play runs where podman builds the image (.ci/run); kind.yml covers GitHub"
        )
    return backend, request.getfixturevalue("image")  # built only when it will be played


@dataclass
class Played:
    """The played objects: names on this machine and where the server listens."""

    backend: ct.Backend
    pod: str
    container: str
    claim: str
    secret: str
    base_url: str
    ready_path: str
    live_path: str

    def logs(self) -> str:
        proc = self.backend.command("logs", self.container, check=False)
        return proc.stdout + proc.stderr

    def running(self) -> bool:
        proc = self.backend.command(
            "inspect", "--format", "{{.State.Running}}", self.container, check=False
        )
        return proc.stdout.strip() == "true"


def _adapt(docs: list[k8s.Doc], image: str, suffix: str, http: int, grpc: int) -> list[k8s.Doc]:
    """The played objects, renamed with ``suffix`` and bound to free loopback ports."""
    docs = [copy.deepcopy(d) for d in docs if d["kind"] in PLAYED_KINDS]
    for doc in docs:
        doc["metadata"]["name"] += f"-{suffix}"
        if doc["kind"] == "ConfigMap":
            doc["data"].update(
                IRIS_GRPC_PORT=str(grpc), IRIS_GRPC_HOST="127.0.0.1", IRIS_RELOAD_INTERVAL_S="1"
            )
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        container["image"] = image
        container["args"] = ["serve", "--host", "127.0.0.1", "--port", str(http)]
        container.pop("ports")
        for ref in container["envFrom"]:
            ref["configMapRef"]["name"] += f"-{suffix}"
        for env in container["env"]:
            if "secretKeyRef" in env.get("valueFrom", {}):
                env["valueFrom"]["secretKeyRef"]["name"] += f"-{suffix}"
        for volume in pod["volumes"]:
            volume["name"] += f"-{suffix}"  # podman names emptyDir volumes after them
            if "persistentVolumeClaim" in volume:
                volume["persistentVolumeClaim"]["claimName"] += f"-{suffix}"
        for mount in container["volumeMounts"]:
            mount["name"] += f"-{suffix}"
    return docs


def _play(backend: ct.Backend, docs: list[k8s.Doc], path: Path) -> None:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    proc = backend.command("kube", "play", "--network", "host", str(path), timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _wait_ready(played: Played, timeout: float = 300) -> None:
    url = played.base_url + played.ready_path
    if not ct.wait_http_ok(url, timeout, alive=played.running):
        raise TimeoutError(f"{played.pod} not ready; logs:\n{played.logs()[-4000:]}")


@contextlib.contextmanager
def _single_overlay(podman, rendered, tmp_path: Path) -> Iterator[tuple[Played, list]]:
    backend, image = podman
    suffix = uuid.uuid4().hex[:8]
    http, grpc = ct.free_port(), ct.free_port()
    docs = _adapt(rendered["single"], image, suffix, http, grpc)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    token_ref = next(e for e in container["env"] if e["name"] == "IRIS_ADMIN_TOKEN")
    secret_name, secret_key = (token_ref["valueFrom"]["secretKeyRef"][k] for k in ("name", "key"))
    pod = f"{deployment['metadata']['name']}-pod-0"
    played = Played(
        backend=backend,
        pod=pod,
        container=f"{pod}-{container['name']}",
        claim=next(d for d in docs if d["kind"] == "PersistentVolumeClaim")["metadata"]["name"],
        secret=secret_name,
        base_url=f"http://127.0.0.1:{http}",
        ready_path=container["readinessProbe"]["httpGet"]["path"],
        live_path=container["livenessProbe"]["httpGet"]["path"],
    )
    # podman 4.3 reads a secretKeyRef from a secret holding the Secret's `data` as JSON.
    secret_file = tmp_path / "secret.json"
    secret_file.write_text(json.dumps({secret_key: base64.b64encode(TOKEN.encode()).decode()}))
    try:
        backend.command("secret", "create", secret_name, str(secret_file))
        secret_file.unlink()
        _play(backend, docs, tmp_path / "single.yaml")
        yield played, docs
    finally:
        backend.command("pod", "rm", "-f", played.pod, timeout=120, check=False)
        backend.command("volume", "rm", "-f", played.claim, timeout=60, check=False)
        backend.command("secret", "rm", secret_name, timeout=60, check=False)


def test_podman_plays_every_kind_but_the_documented_ones(rendered):
    kinds = {d["kind"] for d in rendered["single"]}
    assert kinds == PLAYED_KINDS | NOT_PLAYED


def test_single_overlay_under_podman_kube_play(podman, rendered, tmp_path):
    with _single_overlay(podman, rendered, tmp_path) as (played, docs):
        _wait_ready(played)
        backend = played.backend
        assert httpx.get(played.base_url + played.live_path).status_code == 200

        # The security context as podman applied it, seen from inside the container.
        inspect = json.loads(backend.command("inspect", played.container).stdout)[0]
        assert inspect["Config"]["User"] == "1034:1034"
        assert inspect["HostConfig"]["ReadonlyRootfs"] is True
        assert not inspect["HostConfig"]["CapAdd"]
        assert "CAP_NET_RAW" in inspect["HostConfig"]["CapDrop"]
        status = backend.command("exec", played.container, "cat", "/proc/1/status").stdout
        assert "NoNewPrivs:\t1" in status and "Seccomp:\t2" in status
        assert "CapEff:\t0000000000000000" in status
        touch = backend.command("exec", played.container, "touch", "/home/bentoml/x", check=False)
        assert touch.returncode != 0 and "Read-only file system" in touch.stderr

        with httpx.Client(base_url=played.base_url, timeout=30) as client:
            answer = client.post("/predict", json=FLOWER)
            assert answer.status_code == 200, answer.text
            assert answer.json()["species"] == "Iris-virginica"

            # Only the Secret's token retrains.
            assert client.post("/retrain").status_code == 401
            wrong = client.post("/retrain", headers={"authorization": "Bearer not-the-token"})
            assert wrong.status_code in (401, 403)
            auth = {"authorization": f"Bearer {TOKEN}"}
            started = client.post("/retrain", headers=auth)
            assert started.status_code == 202, started.text
            job_url = started.json()["status_url"]
            deadline = time.monotonic() + 300
            while (job := client.get(job_url, headers=auth).json())["state"] in (
                "queued",
                "running",
            ):
                assert time.monotonic() < deadline, job
                time.sleep(1)
            assert job["state"] == "succeeded", job
            # The embedded registry on the claim now has a champion; the pod follows it.
            deadline = time.monotonic() + 60
            while "from registry" not in played.logs():
                assert time.monotonic() < deadline, played.logs()[-3000:]
                time.sleep(1)
        assert TOKEN not in played.logs()
        # The training CLI runs inside the pod with the pod's settings (docs: promote by hand).
        cli = backend.command(
            "exec", "-w", "/home/bentoml/bento/src", played.container,
            "python", "-m", "training.cli", "champion", timeout=120, check=False,
        )  # fmt: skip
        assert cli.returncode == 0 and cli.stdout.strip() == job["version"], cli

        # The claim outlives the pod: a new pod sees the job and the registry.
        backend.command("pod", "rm", "-f", played.pod, timeout=120)
        again = [d for d in docs if d["kind"] != "PersistentVolumeClaim"]  # volume exists
        _play(backend, again, tmp_path / "again.yaml")
        _wait_ready(played)
        jobs = httpx.get(played.base_url + "/jobs/", headers=auth, timeout=30)
        assert jobs.status_code == 200, jobs.text
        assert job["id"] in jobs.text
        deadline = time.monotonic() + 60
        while "from registry" not in played.logs():
            assert time.monotonic() < deadline, played.logs()[-3000:]
            time.sleep(1)
