"""Start several calls at the same moment, each in its own thread (races on purpose)."""

from __future__ import annotations

import threading
from collections.abc import Callable


def at_once(calls: list[Callable[[], object]]) -> list[object]:
    """Run ``calls`` together (released by one barrier); what each returned or raised, in
    order: an exception is returned, never lost in its thread."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[object] = [None] * len(calls)

    def run(k: int) -> None:
        barrier.wait()
        try:
            outcomes[k] = calls[k]()
        except Exception as exc:  # noqa: BLE001 - handed to the caller to assert on
            outcomes[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes
