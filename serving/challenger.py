"""The challenger on live traffic: canary answers (and where shadow scoring is).

With a ``@challenger`` in the registry, every worker holds it beside the champion
(serving.reloader). Two ways to try it, both set without a restart:

- **Canary**: the registered model's ``canary_percent`` tag (``iris-train canary 10``, stored
  as ``10@v<challenger version>``) sends that share of ``/predict`` to that challenger (a
  different ``@challenger`` gets nothing until a new split names it), which answers (the
  response's ``model.alias`` says ``challenger``). The choice is sticky per client:
  requests with the same ``X-Client-Key`` header (``IRIS_CANARY_KEY_HEADER``) always land
  on the same side, by a hash of the key and the canary's version (the next canary picks
  its clients afresh); requests without one are split at random.
- **Shadow** (``IRIS_SHADOW_RATE``, a share of champion answers): the challenger also
  scores answers of the champion, in the worker's capture sink from the captured answers
  (``serving.shadow_scoring``): its outputs are captured (role ``shadow``) and compared
  with the champion's, never returned. A challenger that fails or is slow cannot touch an
  answer: the worker does no shadow work at all.
"""

from __future__ import annotations

import hashlib
import random

from serving.served_model import ModelHolder, ServedModel

BUCKETS = 10_000


def in_canary(percent: float, client_key: str | None, version: str) -> bool:
    """Whether a request goes to the challenger: sticky by ``client_key``, else random.

    The key is hashed with the canary's ``version`` (BLAKE2b: crc32 is affine, so the next
    canary's buckets would be a fixed shift of the last one's): one canary keeps a client on
    one side (and raising its share only adds clients), while the next canary draws its
    share of clients afresh, so the same clients are not every new model's first users.

    Args:
        percent: the canary's share of requests, 0 to 100.
        client_key: the request's client key header, if any.
        version: the challenger version the canary runs on.
    """
    if percent <= 0:
        return False
    if client_key:
        digest = hashlib.blake2b(f"{version}\0{client_key}".encode(), digest_size=8).digest()
        hashed = int.from_bytes(digest, "big")
    else:
        hashed = random.randrange(BUCKETS)
    bucket = hashed % BUCKETS
    return bucket < percent * BUCKETS / 100


def choose(holder: ModelHolder, client_key: str | None) -> ServedModel:
    """The model that answers this ``/predict``: the challenger for the canary share."""
    challenger = holder.challenger
    if (
        challenger is not None
        and challenger.identity.version == holder.canary_version
        and in_canary(holder.canary_percent, client_key, challenger.identity.version)
    ):
        return challenger
    return holder.current
