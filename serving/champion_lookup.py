"""Which registry version is ``@champion`` (or ``@challenger``), and the canary split,
asked without importing MLflow.

Serving workers poll this every few seconds. MLflow's client would cost each worker about
150 MiB (it brings pandas, pyarrow, scipy and SQLAlchemy) and seconds of start-up, for one
row of one table. So:

- ``http(s)://`` registries are asked through MLflow's public REST API
  (``GET /api/2.0/mlflow/registered-models/alias``), with MLflow's own auth variables;
- ``sqlite:///`` registries (the embedded default) are read with a read-only query of the
  alias table;
- anything else (``postgresql://`` and the like) goes through ``MlflowClient``.

Downloading a new champion is rare and heavy; ``serving.model_cache`` has one short-lived
subprocess per server do it.

**Decision: keep the SQLite read of MLflow's private tables.** Only MLflow's public
surface would mean either its client in every worker (the cost above, paid by every poll
of the embedded default) or an ``mlflow server`` beside every single-machine install. The
read is small (two queries, read-only, closed at once), pinned to the MLflow in
requirements.lock, and tested against that version's real schema in
``tests/unit/test_champion_lookup.py``: every registry state gives the same answer as
``training.aliases.alias_version`` (MLflow's client), the ``workspace`` column of MLflow
3.x is honoured (``MLFLOW_WORKSPACE``), and 2.x's layout without it still reads. If an
MLflow upgrade changes those tables, that test fails before any server misreads them;
a fleet uses the REST path, which is MLflow's public API.

About 250 lines because it answers three ways (REST, SQLite, MLflow's client) with the same
meaning of "nothing to serve" versus "unreachable"; each way is a short function.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from training.schema import CHAMPION

ALIAS = CHAMPION
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


def champion(tracking_uri: str, model_name: str, alias: str = ALIAS) -> Champion | None:
    """The version behind ``model_name@alias`` (default ``champion``); None if the model or
    the alias does not exist.

    Raises:
        RegistryUnreachableError: the registry is unreachable or answered unexpectedly.
    """
    if tracking_uri.startswith(("http://", "https://")):
        return _over_rest(tracking_uri, model_name, alias)
    path = sqlite_path(tracking_uri)
    if path is not None:
        return _from_sqlite(path, model_name, alias)
    return _with_mlflow(tracking_uri, model_name, alias)


def model_tag(tracking_uri: str, model_name: str, key: str) -> str | None:
    """The registered model's tag ``key`` (the canary split lives in one); None if unset.

    Raises:
        RegistryUnreachableError: the registry is unreachable or answered unexpectedly.
    """
    if tracking_uri.startswith(("http://", "https://")):
        return _tag_over_rest(tracking_uri, model_name, key)
    path = sqlite_path(tracking_uri)
    if path is not None:
        return _tag_from_sqlite(path, model_name, key)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        model = MlflowClient(tracking_uri=tracking_uri).get_registered_model(model_name)
    except MlflowException as e:
        if e.error_code in _MISSING:
            return None
        raise RegistryUnreachableError(str(e).splitlines()[0]) from None
    return model.tags.get(key)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: urllib would resend our Authorization header to any host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.HTTPError(newurl, code, f"redirected to {newurl}", headers, fp)


_opener = urllib.request.build_opener(_NoRedirect)
_MISSING = {"RESOURCE_DOES_NOT_EXIST"}  # no such model
_NO_ALIAS = "INVALID_PARAMETER_VALUE"  # the model exists; the alias does not (HTTP 400)


def _no_alias_text(alias: str) -> str:
    return f"alias {alias} not found"  # MLflow's message when the model lacks the alias


def _over_rest(base: str, model_name: str, alias: str) -> Champion | None:
    query = urllib.parse.urlencode({"name": model_name, "alias": alias})
    url = f"{base.rstrip('/')}/api/2.0/mlflow/registered-models/alias?{query}"
    request = urllib.request.Request(url, headers=_auth_headers())
    try:
        with _opener.open(request, timeout=TIMEOUT_S) as response:
            body = json.load(response)
    except urllib.error.HTTPError as e:
        return _absent_or_raise(e, base, alias)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise RegistryUnreachableError(f"registry unreachable at {base}: {e}") from None
    mv = body.get("model_version") or {}
    if "version" not in mv:
        raise RegistryUnreachableError(f"unexpected answer from {url}: {str(body)[:200]}")
    return Champion(str(mv["version"]), mv.get("run_id", ""))


def _tag_over_rest(base: str, model_name: str, key: str) -> str | None:
    query = urllib.parse.urlencode({"name": model_name})
    url = f"{base.rstrip('/')}/api/2.0/mlflow/registered-models/get?{query}"
    request = urllib.request.Request(url, headers=_auth_headers())
    try:
        with _opener.open(request, timeout=TIMEOUT_S) as response:
            body = json.load(response)
    except urllib.error.HTTPError as e:
        return _absent_or_raise(e, base, "")
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise RegistryUnreachableError(f"registry unreachable at {base}: {e}") from None
    tags = (body.get("registered_model") or {}).get("tags") or []
    return next((t.get("value") for t in tags if t.get("key") == key), None)


def _absent_or_raise(e: urllib.error.HTTPError, base: str, alias: str) -> None:
    """None for MLflow's own "no such model / no such alias" errors; raise for the rest.

    Only an MLflow error body counts: a 404 page from a wrong URL or a proxy is an error,
    not "nothing to serve".
    """
    text = e.read(4000).decode(errors="replace") if e.fp else ""
    try:
        error = json.loads(text)
    except ValueError:
        error = {}
    code = error.get("error_code", "") if isinstance(error, dict) else ""
    message = error.get("message", "") if isinstance(error, dict) else ""
    if code in _MISSING or (code == _NO_ALIAS and alias and _no_alias_text(alias) in message):
        return None
    if e.code in (401, 403):
        raise RegistryUnreachableError(
            f"registry at {base} refused our credentials (HTTP {e.code}); check "
            "MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD"
        ) from None
    detail = message or text[:200] or str(e.reason)
    raise RegistryUnreachableError(f"registry at {base} answered HTTP {e.code}: {detail}") from None


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


def _from_sqlite(path: Path, model_name: str, alias: str) -> Champion | None:
    path = path.resolve()  # sqlite:///mlflow.db is relative to the working directory
    if not path.is_file():
        return None  # no registry yet: nothing has been trained here
    workspace = os.environ.get("MLFLOW_WORKSPACE", "default")
    try:
        # Read-only, so a poll can never create or write the file; closed right away, so
        # it never holds a read lock between polls.
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=TIMEOUT_S)
        with contextlib.closing(db):
            columns = {row[1] for row in db.execute("PRAGMA table_info(registered_model_aliases)")}
            if not columns:
                return None  # an empty database: MLflow has not created its tables yet
            scoped = "workspace" in columns  # MLflow 3.x: aliases live in a workspace
            sql = _SQLITE_QUERY.format(
                workspace_join="AND v.workspace = a.workspace" if scoped else "",
                workspace_filter="AND a.workspace = ?" if scoped else "",
            )
            params = (model_name, alias, workspace) if scoped else (model_name, alias)
            rows = db.execute(sql, params).fetchall()
    except sqlite3.Error as e:
        raise RegistryUnreachableError(f"could not read the registry {path}: {e}") from None
    return Champion(str(rows[0][0]), rows[0][1] or "") if rows else None


_SQLITE_TAG = "SELECT value FROM registered_model_tags WHERE name = ? AND key = ? {workspace}"


def _tag_from_sqlite(path: Path, model_name: str, key: str) -> str | None:
    path = path.resolve()
    if not path.is_file():
        return None
    workspace = os.environ.get("MLFLOW_WORKSPACE", "default")
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=TIMEOUT_S)
        with contextlib.closing(db):
            columns = {row[1] for row in db.execute("PRAGMA table_info(registered_model_tags)")}
            if not columns:
                return None
            scoped = "workspace" in columns
            sql = _SQLITE_TAG.format(workspace="AND workspace = ?" if scoped else "")
            params = (model_name, key, workspace) if scoped else (model_name, key)
            rows = db.execute(sql, params).fetchall()
    except sqlite3.Error as e:
        raise RegistryUnreachableError(f"could not read the registry {path}: {e}") from None
    return rows[0][0] if rows else None


def _with_mlflow(tracking_uri: str, model_name: str, alias: str) -> Champion | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        mv = client.get_model_version_by_alias(model_name, alias)
    except MlflowException as e:
        missing_alias = e.error_code == _NO_ALIAS and _no_alias_text(alias) in str(e)
        if e.error_code in _MISSING or missing_alias:
            return None
        raise RegistryUnreachableError(str(e).splitlines()[0]) from None
    return Champion(str(mv.version), mv.run_id or "")
