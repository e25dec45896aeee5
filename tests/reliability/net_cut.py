"""Run inside a network namespace of its own (``unshare --net``): a real PostgreSQL on
its loopback, a call through the feedback store, then the namespace's network cut
(loopback down) under a call in progress. Prints, as JSON, how long that call took to
fail and with what. Used by ``test_db_network_cut.py``; never run on the host's network."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time

import sqlalchemy as sa

from tests.utils.postgres import postgres_server
from training.loop_store import FeedbackStore


def link(state: str) -> None:
    subprocess.run(["ip", "link", "set", "lo", state], check=True)


def main() -> None:
    link("up")
    with postgres_server() as uri:
        store = FeedbackStore(uri, statement_s=2.0)
        unknown = [("0" * 32, "Iris-setosa")]
        with contextlib.suppress(KeyError):  # answered: tables made, a pooled connection
            store.label(unknown)
        outcome: dict = {}
        started = threading.Event()

        def call() -> None:
            started.set()
            began = time.monotonic()
            try:
                store.label(unknown)
            except KeyError:
                outcome["answered"] = True
            except sa.exc.OperationalError as e:
                outcome["error"] = str(e.orig).strip().splitlines()[0]
            except Exception as e:  # noqa: BLE001 - reported, and fails the test
                outcome["unexpected"] = f"{type(e).__name__}: {e}"
            outcome["seconds"] = round(time.monotonic() - began, 1)

        link("down")
        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        started.wait()
        thread.join(600)
        outcome.setdefault("seconds", None)  # still stuck
        link("up")
        print(json.dumps(outcome))


if __name__ == "__main__":
    main()
