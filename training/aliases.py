"""Read and move the registry's aliases (champion, challenger) and the canary tag.

MLflow's SQL store sets an alias by reading its row and then inserting or updating it, with
no lock between the two. Two writers of one alias that does not exist yet (two replicas'
retrains finishing together on one ``mlflow server``) both insert, and the second fails
with the alias table's unique-key violation. The row then exists, so writing again updates
it: ``set_alias`` does that instead of failing the retrain, except where the rival's write
must stand (a first ``champion``: the caller's version was never compared with it).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from training.schema import CANARY_TAG, CHAMPION, parse_canary
from training.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

ALIAS_WRITE_ATTEMPTS = 3
# What the store's unique-key violation says: PostgreSQL's own text and psycopg2's class
# (also through an ``mlflow server``'s REST answer), SQLite's, MySQL's.
_UNIQUE_VIOLATION = (
    "duplicate key value violates unique constraint",
    "UniqueViolation",
    "UNIQUE constraint failed",
    "Duplicate entry",
)


def registry_client(settings: Settings) -> MlflowClient:
    """MLflow's client on the settings' registry (not whatever the process last configured)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def alias_version(settings: Settings, alias: str) -> str | None:
    """The version ``alias`` points at, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        client = registry_client(settings)
        return str(client.get_model_version_by_alias(settings.model_name, alias).version)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def champion_version(settings: Settings) -> str | None:
    """The version the ``champion`` alias points at, or None when there is none."""
    return alias_version(settings, CHAMPION)


def canary_version(settings: Settings) -> str | None:
    """The version the canary tag sends traffic to, or None when there is no canary."""
    from mlflow.exceptions import MlflowException

    try:
        tags = registry_client(settings).get_registered_model(settings.model_name).tags
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    percent, version = parse_canary(tags.get(CANARY_TAG))
    return version if percent > 0 else None


def set_alias(settings: Settings, alias: str, version: str, *, rival_wins: bool = False) -> str:
    """Point ``alias`` at ``version``; returns the version it points at afterwards.

    When a concurrent first write of the same alias won the insert (see the module
    docstring), writes again, or with ``rival_wins`` leaves the rival's version and returns
    it.

    Raises:
        MlflowException: the registry failed otherwise (or raced ``ALIAS_WRITE_ATTEMPTS``
            times in a row).
    """
    from mlflow.exceptions import MlflowException

    client = registry_client(settings)
    for attempt in range(1, ALIAS_WRITE_ATTEMPTS + 1):
        try:
            client.set_registered_model_alias(settings.model_name, alias, version)
            return version
        except MlflowException as e:
            raced = any(marker in e.message for marker in _UNIQUE_VIOLATION)
            if not raced or attempt == ALIAS_WRITE_ATTEMPTS:
                raise
        rival = alias_version(settings, alias)
        if rival_wins and rival is not None:
            logger.warning("@%s was set to v%s at the same moment; it stays there", alias, rival)
            return rival
        logger.warning(
            "Setting @%s -> v%s raced with another writer; writing again", alias, version
        )
        time.sleep(0.1 * attempt)
    raise AssertionError("not reached: the last attempt returns or raises")
