"""The properties the manifests promise, checked on every rendered overlay.

Security context on every container, probes, Secret references (no secret in a
ConfigMap), the image named in one place, settings that exist, selectors that match.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
import yaml

from tests.utils import k8s
from training.settings import Settings

APP_UID = 1034  # the `bentoml` user of BentoML's generated Dockerfile
IMAGE_COMPONENT = k8s.K8S_DIR / "components" / "image" / "kustomization.yaml"
# Settings that the fleet's job store adds (issue 12, merged from another branch).
PENDING_SETTINGS: set[str] = set()  # settings named in manifests before they exist
SECRET_WORDS = re.compile(r"token|password|secret|passwd", re.IGNORECASE)


def _all_containers(docs):
    for where, pod in k8s.pod_specs(docs):
        for container in k8s.containers(pod):
            yield where, pod, container


def _serving(docs) -> tuple[dict, dict]:
    deployment = k8s.find(docs, "Deployment", "iris-serving")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "serving"]
    return deployment, container


def _env(container) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_every_container_is_locked_down(rendered, overlay):
    seen = 0
    for where, pod, container in _all_containers(rendered[overlay]):
        seen += 1
        what = f"{where} container {container['name']}"
        assert pod.get("automountServiceAccountToken") is False, where
        # No IRIS_<SERVICE>_PORT=tcp://… variables from Service links next to our settings.
        assert pod.get("enableServiceLinks") is False, where
        pod_ctx = pod.get("securityContext", {})
        ctx = container.get("securityContext", {})
        assert ctx.get("runAsNonRoot") is True or pod_ctx.get("runAsNonRoot") is True, what
        assert ctx.get("allowPrivilegeEscalation") is False, what
        assert ctx.get("privileged", False) is False, what
        assert ctx.get("readOnlyRootFilesystem") is True, what
        assert ctx.get("capabilities", {}).get("drop") == ["ALL"], what
        assert not ctx.get("capabilities", {}).get("add"), what
        seccomp = ctx.get("seccompProfile") or pod_ctx.get("seccompProfile")
        assert seccomp == {"type": "RuntimeDefault"}, what
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(key), what
        if container["image"].endswith(_image_ref()[1]):  # our own image
            assert ctx.get("runAsUser", pod_ctx.get("runAsUser")) == APP_UID, what
    assert seen >= (5 if overlay == "fleet" else 1)


@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_every_container_has_requests_and_limits(rendered, overlay):
    for where, _, container in _all_containers(rendered[overlay]):
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(kind, {})), (where, kind)


@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_writable_places_are_volumes_and_only_where_needed(rendered, overlay):
    deployment, container = _serving(rendered[overlay])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    # IRIS_HOME, BENTOML_HOME (store + multi-process metrics) and /tmp: what the image
    # writes under a read-only root (checked with the real image, tests/deploy/test_kube_play.py).
    assert set(mounts) == {"/home/bentoml/state", "/var/lib/bentoml", "/tmp"}
    env = _env(container)
    assert env["BENTOML_HOME"]["value"] == "/var/lib/bentoml"
    config = _config(rendered[overlay])
    assert config["IRIS_HOME"] == "/home/bentoml/state"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for name in mounts.values():
        assert set(volumes[name]) & {"emptyDir", "persistentVolumeClaim"}, name
    state = volumes[mounts["/home/bentoml/state"]]
    if overlay == "single":  # the embedded SQLite registry and job records survive restarts
        claim = state["persistentVolumeClaim"]["claimName"]
        assert k8s.find(rendered[overlay], "PersistentVolumeClaim", claim)
        assert "emptyDir" not in state
    else:  # replicas keep nothing: the registry and the job records are shared services
        assert "emptyDir" in state


@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_serving_probes(rendered, overlay):
    _, container = _serving(rendered[overlay])
    for probe, path in (
        ("startupProbe", "/livez"),
        ("livenessProbe", "/livez"),
        ("readinessProbe", "/readyz"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    # The startup probe covers a slow start before liveness may restart the pod.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_graceful_termination_outlasts_the_longest_request(rendered, overlay):
    deployment, container = _serving(rendered[overlay])
    service_py = (k8s.REPO_ROOT / "service.py").read_text()
    request_timeout = int(re.search(r'traffic=\{"timeout": (\d+)', service_py).group(1))
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(pre_stop[1]) + request_timeout


@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_secrets_come_from_secrets_only(rendered, overlay):
    docs = rendered[overlay]
    _, container = _serving(docs)
    token = _env(container)["IRIS_ADMIN_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "iris-admin", "key": "token"}
    # No Secret is shipped (the operator creates them), no ConfigMap holds one, and no
    # container gets a secret-looking variable as a literal value.
    assert not [d for d in docs if d["kind"] == "Secret"]
    for cm in (d for d in docs if d["kind"] == "ConfigMap"):
        for key, value in cm.get("data", {}).items():
            assert not SECRET_WORDS.search(key), (cm["metadata"]["name"], key)
            assert "://" not in value or not urlsplit(value).password, (key, value)
    for where, _, c in _all_containers(docs):
        for name, entry in _env(c).items():
            if SECRET_WORDS.search(name) and not name.endswith("_FILE"):
                assert "secretKeyRef" in entry.get("valueFrom", {}), (where, name)


def _config(docs) -> dict[str, str]:
    return k8s.find(docs, "ConfigMap", "iris-serving")["data"]


@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_configmap_holds_real_iris_settings(rendered, overlay):
    config = _config(rendered[overlay])
    known = set(Settings.model_fields) | PENDING_SETTINGS
    unknown = [k for k in config if k.removeprefix("IRIS_").lower() not in known]
    assert all(k.startswith("IRIS_") for k in config)
    assert not unknown, f"not settings in training/settings.py: {unknown}"
    # Every value parses as the setting's type (catches "10s" for a float, bad enums).
    values = {k.removeprefix("IRIS_").lower(): v for k, v in config.items()}
    Settings(**{k: v for k, v in values.items() if k in Settings.model_fields})


def test_fleet_points_at_the_shared_registry_and_job_database(rendered):
    docs = rendered["fleet"]
    config = _config(docs)
    mlflow = k8s.find(docs, "Service", "iris-mlflow")
    tracking = urlsplit(config["IRIS_TRACKING_URI"])
    assert (tracking.hostname, tracking.port) == ("iris-mlflow", mlflow["spec"]["ports"][0]["port"])
    jobs = urlsplit(config["IRIS_JOBS_URI"])
    postgres = k8s.find(docs, "Service", "iris-postgres")
    assert jobs.scheme.startswith("postgresql")
    assert (jobs.hostname, jobs.port) == ("iris-postgres", postgres["spec"]["ports"][0]["port"])
    assert jobs.password is None  # the password comes from the Secret, through PGPASSWORD
    _, container = _serving(docs)
    assert _env(container)["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "iris-postgres"
    # The job database is the one the database's init script creates.
    init = k8s.find(docs, "ConfigMap", "iris-postgres-init")["data"]["create-databases.sql"]
    assert f"CREATE DATABASE {jobs.path.lstrip('/')} " in init
    # MLflow: PostgreSQL backend, artifacts served from its own volume.
    server = k8s.find(docs, "Deployment", "iris-mlflow")["spec"]["template"]["spec"]
    args = server["containers"][0]["args"]
    assert "--serve-artifacts" in args
    backend = urlsplit(next(a.split("=", 1)[1] for a in args if "--backend-store-uri" in a))
    assert backend.hostname == "iris-postgres" and backend.password is None
    claim = server["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert k8s.find(docs, "PersistentVolumeClaim", claim)
    database = k8s.find(docs, "StatefulSet", "iris-postgres")
    assert database["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_single_is_one_replica_without_a_registry_server(rendered):
    docs = rendered["single"]
    deployment, _ = _serving(docs)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    config = _config(docs)
    assert "IRIS_TRACKING_URI" not in config and "IRIS_JOBS_URI" not in config
    assert not [d for d in docs if d["kind"] in ("StatefulSet", "Job", "CronJob")]


def test_fleet_runs_several_replicas_spread_and_autoscaled(rendered):
    docs = rendered["fleet"]
    deployment, _ = _serving(docs)
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 3
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa = k8s.find(docs, "HorizontalPodAutoscaler", "iris-serving")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "iris-serving"
    assert hpa["spec"]["minReplicas"] == replicas <= hpa["spec"]["maxReplicas"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = k8s.find(docs, "PodDisruptionBudget", "iris-serving")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname"}
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels.items()


@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_service_and_monitor_reach_the_serving_pods(rendered, overlay):
    docs = rendered[overlay]
    deployment, container = _serving(docs)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = k8s.find(docs, "Service", "iris-serving")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert (ports["http"]["port"], ports["http"]["appProtocol"]) == (3000, "http")
    assert ports["grpc"]["port"] == 8001 and ports["grpc"]["appProtocol"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container_ports == {"http": 3000, "grpc": 8001}
    assert _config(docs)["IRIS_GRPC_PORT"] == "8001"
    monitor = k8s.find(docs, "ServiceMonitor", "iris-serving")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("http", "/metrics")]


def _image_ref() -> tuple[str, str]:
    """(placeholder name, name:tag) of our image, from the one place that sets it."""
    component = yaml.safe_load(IMAGE_COMPONENT.read_text())
    (entry,) = [i for i in component["images"] if i["name"] == "iris-classifier"]
    return entry["name"], f"{entry['newName']}:{entry['newTag']}"


@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_image_is_named_in_one_place(rendered, overlay):
    placeholder, reference = _image_ref()
    ours = [c for _, _, c in _all_containers(rendered[overlay]) if "postgres" not in c["image"]]
    assert ours and {c["image"] for c in ours} == {reference}
    # The sources only ever say the placeholder; the registry name lives in the component.
    name = reference.rsplit(":", 1)[0]
    mentions = [
        p.relative_to(k8s.K8S_DIR)
        for p in k8s.K8S_DIR.rglob("*.yaml")
        if name in p.read_text()
        or re.search(r"^\s*image: (?!iris-classifier$|postgres$)", p.read_text(), re.M)
    ]
    assert [str(p) for p in mentions] == ["components/image/kustomization.yaml"]
    assert placeholder == "iris-classifier"


def test_training_runs_the_pipeline_from_the_serving_image(rendered):
    docs = rendered["fleet"]
    _, serving = _serving(docs)
    job = k8s.find(docs, "Job", "iris-train")["spec"]["template"]["spec"]
    cron = k8s.find(docs, "CronJob", "iris-train")["spec"]["jobTemplate"]["spec"]["template"][
        "spec"
    ]
    for pod in (job, cron):
        (train,) = pod["containers"]
        assert train["image"] == serving["image"]
        assert train["args"][:4] == ["python", "-m", "training.cli", "run"]
        assert "--no-import" in train["args"]  # serving pods fetch champions from the registry
        assert train["envFrom"] == serving["envFrom"]  # same IRIS_* settings, same registry
        assert pod["restartPolicy"] == "Never"
    assert k8s.find(docs, "CronJob", "iris-train")["spec"]["concurrencyPolicy"] == "Forbid"


@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_network_policies_name_ports_that_exist(rendered, overlay):
    docs = rendered[overlay]
    named_ports = {
        p["name"] for _, _, c in _all_containers(docs) for p in c.get("ports", []) if "name" in p
    }
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert policies
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                assert port["port"] in named_ports, (policy["metadata"]["name"], port)


_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}


def _bytes(quantity: str) -> int:
    number, unit = quantity[:-2], quantity[-2:]
    return int(float(number) * _UNITS[unit]) if unit in _UNITS else int(quantity)


@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_captures_fit_the_state_volume_with_room_to_spare(rendered, overlay):
    """Prediction captures live under IRIS_HOME; their size cap must leave the volume
    room for logs, job records and retrain scratch, or the kubelet evicts the pod."""
    docs = rendered[overlay]
    deployment, _ = _serving(docs)
    config = _config(docs)
    cap = int(config["IRIS_CAPTURE_MAX_BYTES"])
    assert int(config["IRIS_CAPTURE_RETENTION_DAYS"]) >= 1
    state = next(
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "state"
    )
    if "emptyDir" in state:
        size = _bytes(state["emptyDir"]["sizeLimit"])
    else:
        claim = k8s.find(docs, "PersistentVolumeClaim", state["persistentVolumeClaim"]["claimName"])
        size = _bytes(claim["spec"]["resources"]["requests"]["storage"])
    assert cap <= size // 2, (overlay, cap, size)
