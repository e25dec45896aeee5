"""Why captured answers are dropped: the ``reason`` label of ``iris_capture_dropped_total``.

A worker counts its own drops and its capture sink's, which reach it as ``dropped N REASON``
report lines (``serving.capture``); both name a reason from here, so the label set stays
these five whatever a line says.
"""

from __future__ import annotations

QUEUE_FULL = "queue_full"  # the sink is behind (or stuck): the bounded queue is full
STOPPING = "stopping"  # answered while the worker was stopping
NOT_SPOOLED = "not_spooled"  # the worker could not queue the answer or write its spool file
UNREADABLE = "unreadable"  # the sink could not read the spool file
NOT_WRITTEN = "not_written"  # the Parquet file could not be written (shadow rows too)

DROP_REASONS = (QUEUE_FULL, STOPPING, NOT_SPOOLED, UNREADABLE, NOT_WRITTEN)


def drop_reason(fields: list[str]) -> str:
    """The reason a ``dropped N REASON`` line gives after its count, or ``not_written`` for
    one this worker does not know (a newer sink's, or none): still counted, under a
    bounded label."""
    return fields[0] if fields and fields[0] in DROP_REASONS else NOT_WRITTEN
