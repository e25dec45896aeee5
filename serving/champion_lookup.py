"""Which registry version is ``@champion``, asked without importing MLflow.

Serving workers poll this every few seconds. MLflow's client would cost each worker about
150 MiB (it brings pandas, pyarrow, scipy and SQLAlchemy) and seconds of start-up, for one
row of one table. So:

- ``http(s)://`` registries are asked through MLflow's public REST API
  (``GET /api/2.0/mlflow/registered-models/alias``), with MLflow's own auth variables;
- ``sqlite:///`` registries (the embedded default) are read with a read-only query of the
  alias table;
- anything else (``postgresql://`` and the like) goes through ``MlflowClient``.

Downloading a new champion is rare and heavy; ``serving.fetch_model`` does it in a
short-lived subprocess.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ALIAS = "champion"
TIMEOUT_S = 5.0


class RegistryUnreachableError(RuntimeError):
    """The registry could not be asked (down, refused, or answered something unexpected)."""


@dataclass(frozen=True)
class Champion:
    version: str
    run_id: str


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI, else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def champion(tracking_uri: str, model_name: str) -> Champion | None:
    """The version behind ``model_name@champion``; None if the model or alias does not exist.

    Raises:
        RegistryUnreachableError: the registry is unreachable or answered unexpectedly.
    """
    if tracking_uri.startswith(("http://", "https://")):
        return _over_rest(tracking_uri, model_name)
    path = sqlite_path(tracking_uri)
    if path is not None:
        return _from_sqlite(path, model_name)
    return _with_mlflow(tracking_uri, model_name)


def _over_rest(base: str, model_name: str) -> Champion | None:
    query = urllib.parse.urlencode({"name": model_name, "alias": ALIAS})
    url = f"{base.rstrip('/')}/api/2.0/mlflow/registered-models/alias?{query}"
    request = urllib.request.Request(url, headers=_auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            body = json.load(response)
    except urllib.error.HTTPError as e:
        detail = e.read(2000).decode(errors="replace")
        if e.code == 404 or "RESOURCE_DOES_NOT_EXIST" in detail:
            return None
        raise RegistryUnreachableError(f"registry answered HTTP {e.code}: {detail[:200]}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise RegistryUnreachableError(f"registry unreachable at {base}: {e}") from None
    mv = body.get("model_version") or {}
    if "version" not in mv:
        raise RegistryUnreachableError(f"unexpected answer from {url}: {str(body)[:200]}")
    return Champion(str(mv["version"]), mv.get("run_id", ""))


def _auth_headers() -> dict[str, str]:
    """MLflow's own client variables: a bearer token, or a user name and password."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = (
        os.environ.get("MLFLOW_TRACKING_USERNAME"),
        os.environ.get("MLFLOW_TRACKING_PASSWORD"),
    )
    if user and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    return {}


_SQLITE_QUERY = """
SELECT a.version, v.run_id
FROM registered_model_aliases AS a
JOIN model_versions AS v ON v.name = a.name AND v.version = a.version {workspace_join}
WHERE a.name = ? AND a.alias = ? {workspace_filter}
"""


def _from_sqlite(path: Path, model_name: str) -> Champion | None:
    if not path.is_file():
        return None  # no registry yet: nothing has been trained here
    try:
        # Read-only, so a poll can never create or lock the file for writing.
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=TIMEOUT_S) as db:
            columns = {row[1] for row in db.execute("PRAGMA table_info(registered_model_aliases)")}
            if not columns:
                return None  # an empty database: MLflow has not created its tables yet
            scoped = "workspace" in columns  # MLflow 3.x: aliases live in a workspace
            sql = _SQLITE_QUERY.format(
                workspace_join="AND v.workspace = a.workspace" if scoped else "",
                workspace_filter="AND a.workspace = 'default'" if scoped else "",
            )
            row = db.execute(sql, (model_name, ALIAS)).fetchone()
    except sqlite3.Error as e:
        raise RegistryUnreachableError(f"could not read the registry {path}: {e}") from None
    return None if row is None else Champion(str(row[0]), row[1] or "")


def _with_mlflow(tracking_uri: str, model_name: str) -> Champion | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        mv = client.get_model_version_by_alias(model_name, ALIAS)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise RegistryUnreachableError(str(e).splitlines()[0]) from None
    return Champion(str(mv.version), mv.run_id or "")
