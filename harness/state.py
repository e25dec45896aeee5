"""Read what a pipeline run left behind: processed files, registry, BentoML store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient


def processed_files(processed_dir: Path) -> dict[str, bytes]:
    """Every file of the published pair (train, test, manifest) with its bytes."""
    folder = processed_dir.resolve()
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def folder_entries(folder: Path) -> list[str]:
    """Names directly inside ``folder``, hidden ones included (to spot leftovers)."""
    return sorted(os.listdir(folder))


def registry_client(tracking_uri: str) -> MlflowClient:
    """A client bound to one store; the process-wide MLflow URIs are never touched."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias points at, or None when it is not set."""
    version = client.get_registered_model(name).aliases.get(alias)
    return None if version is None else str(version)


def download_version(tracking_uri: str, name: str, version: str, dst: Path) -> Path:
    """Download a registered version's model folder (MLmodel, model.skops, ...).

    ``models:/`` URIs resolve through the process-wide registry URI, so the concrete
    artifact location is looked up with a bound client first.
    """
    import mlflow

    uri = registry_client(tracking_uri).get_model_version_download_uri(name, version)
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri
        )
    )


@dataclass(frozen=True)
class StoredModel:
    tag: str
    path: Path
    labels: dict[str, str]
    metadata: dict


@dataclass(frozen=True)
class StoreListing:
    """One model name in a BentoML store: every version, and which one is ``latest``."""

    models: tuple[StoredModel, ...]
    latest: str | None

    @property
    def tags(self) -> list[str]:
        return sorted(m.tag for m in self.models)

    def by_version(self, registry_version: str) -> list[StoredModel]:
        return [m for m in self.models if m.labels.get("registry_version") == registry_version]


_LIST_STORE = """
import json, sys
import bentoml
name = sys.argv[1]
models = bentoml.models.list(name)
latest = str(bentoml.models.get(name + ":latest").tag) if models else None
print(json.dumps({"latest": latest, "models": [
    {"tag": str(m.tag), "path": m.path, "labels": m.info.labels, "metadata": m.info.metadata}
    for m in models
]}, default=str))
"""


def list_store(bentoml_home: Path, name: str) -> StoreListing:
    """List ``name`` in the BentoML store at ``bentoml_home`` (in a subprocess).

    BentoML fixes its home once per process, and this process's home is the session's,
    so any other store is read through BentoML's own API in a short-lived interpreter.
    """
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home)}
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run(
            [sys.executable, "-c", _LIST_STORE, name],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    data = json.loads(out.strip().splitlines()[-1])
    models = tuple(
        StoredModel(m["tag"], Path(m["path"]), m["labels"], m["metadata"]) for m in data["models"]
    )
    return StoreListing(models, data["latest"])
