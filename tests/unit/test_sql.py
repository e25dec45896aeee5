"""The shared SQL helpers: SQLite files opened by many processes at once."""

from __future__ import annotations

from functools import partial

import sqlalchemy as sa

from tests.utils.together import at_once
from training.sql import database_url, make_engine


def connect_together(engines: list[sa.Engine]) -> list[str]:
    """Connect every engine at the same moment; the errors they raised."""

    def connect(engine: sa.Engine):
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))

    outcomes = at_once([partial(connect, engine) for engine in engines])
    return [repr(o) for o in outcomes if isinstance(o, Exception)]


def test_many_engines_opening_a_new_sqlite_file_at_once_all_connect(tmp_path):
    """Switching a new file to WAL needs it to itself, and SQLite says "database is locked"
    at once, without its busy wait, to all but one of the racers. Replicas or workers that
    start together must still all connect (before the retry, some of these trials failed)."""
    for trial in range(80):
        url = database_url(tmp_path / f"race-{trial}.sqlite")
        engines = [make_engine(url) for _ in range(8)]
        try:
            assert connect_together(engines) == [], f"trial {trial}"
        finally:
            for engine in engines:
                engine.dispose()
        check = make_engine(url)
        with check.connect() as conn:
            assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
        check.dispose()
