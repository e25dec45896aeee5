"""The challenger on live traffic, set from the CLI: the canary split and its promotion.

The split is a tag on the registered model (``CANARY_TAG``, ``<percent>@v<version>``) that
every worker and replica reads at its next poll (``serving.reloader``), like the aliases.
"""

from __future__ import annotations

import logging

from training.aliases import alias_version, canary_version, registry_client
from training.registry import Decision, RegistryError, promote
from training.schema import CANARY_TAG, CHALLENGER
from training.settings import Settings

logger = logging.getLogger(__name__)


def challenger_version(settings: Settings) -> str | None:
    """The version the ``challenger`` alias points at, or None."""
    return alias_version(settings, CHALLENGER)


def set_canary(percent: float, settings: Settings) -> str | None:
    """Send ``percent`` of /predict to the challenger (0 ends the canary).

    Every worker and replica reads the split from the registry at its next poll.

    Returns:
        The challenger version the canary goes to (None when ended).

    Raises:
        RegistryError: the percentage is out of range, or there is no challenger.
    """
    if not 0 <= percent <= 100:
        raise RegistryError(f"canary percent must be between 0 and 100, not {percent:g}")
    from mlflow.exceptions import MlflowException

    client = registry_client(settings)
    if percent == 0:
        try:
            client.delete_registered_model_tag(settings.model_name, CANARY_TAG)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":  # an outage is not "ended"
                raise
        logger.info("Canary ended: the champion answers all of /predict")
        return None
    challenger = challenger_version(settings)
    if challenger is None:
        raise RegistryError(
            f"{settings.model_name} has no challenger: a retrain that is not promoted makes one"
        )
    # Bound to this version: if @challenger later moves (a retrain that is not promoted),
    # workers stop the split instead of sending traffic to a version nobody chose.
    client.set_registered_model_tag(
        settings.model_name, CANARY_TAG, canary_value(percent, challenger)
    )
    logger.info("Canary: %g%% of /predict to challenger v%s", percent, challenger)
    return challenger


def canary_value(percent: float, version: str) -> str:
    """The canary tag's value: ``<percent>@v<version>`` (parsed by serving.reloader)."""
    return f"{percent:g}@v{version}"


def promote_challenger(settings: Settings) -> Decision:
    """Make the challenger champion and end any canary.

    Raises:
        RegistryError: there is no challenger.
    """
    challenger = challenger_version(settings)
    if challenger is None:
        raise RegistryError(f"{settings.model_name} has no challenger to promote")
    canaried = canary_version(settings)
    if canaried is not None and canaried != challenger:
        raise RegistryError(
            f"the canary runs on v{canaried} but @challenger is now v{challenger} (a retrain "
            f"moved it), which no live traffic has tried: end the canary (`iris-train canary "
            f"0`) and start one on v{challenger}, or promote v{canaried} by name "
            f"(`iris-train promote {canaried}`)"
        )
    decision = promote(challenger, settings)
    set_canary(0, settings)
    return decision
