"""One way to reach the project's own SQL databases (job records, predictions and feedback).

Both speak SQLite (the embedded default, one file shared by the workers of a server) and
PostgreSQL (shared by a fleet), with the same SQLAlchemy Core statements.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Sequence
from functools import lru_cache, partial
from itertools import chain
from pathlib import Path

import sqlalchemy as sa

logger = logging.getLogger(__name__)


def database_url(uri: str | Path) -> sa.URL:
    """The SQLAlchemy URL of ``uri`` (a Path means an SQLite file); plain ``postgresql://``
    uses psycopg2, the driver installed (SQLAlchemy 2.1 would pick psycopg 3)."""
    url = sa.engine.make_url(f"sqlite:///{uri}" if isinstance(uri, Path) else uri)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg2")
    return url


TCP_USER_TIMEOUT_S = 30
"""A PostgreSQL connection whose sent data has gone unacknowledged this long (the network
cut, or the database's host gone without a reset) is closed, and its call fails; without
it, Linux retransmits for about 15 minutes. libpq's ``tcp_user_timeout``."""

KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
"""TCP keepalives on PostgreSQL connections: an idle pooled connection to a host that is
gone is noticed by its probes (unanswered for ``TCP_USER_TIMEOUT_S``), not by the next
call that hangs on it."""


def make_engine(
    url: sa.URL,
    *,
    timeout_s: float = 5.0,
    sqlite_busy_s: float = 30.0,
    statement_s: float | None = None,
) -> sa.Engine:
    """An engine with bounded waits (no connection is made yet).

    SQLite files get their folder and WAL mode (readers never block the writer), and a
    statement waits at most ``sqlite_busy_s`` for a lock. PostgreSQL gets connect and pool
    timeouts and pre-ping, so a database that drops packets or restarts costs seconds, not
    minutes; with ``statement_s``, the server also cancels any statement of ours that runs
    (or waits for a lock, e.g. behind a migration's ``LOCK TABLE``) longer than that. A cut
    network fails a call after ``TCP_USER_TIMEOUT_S`` (a frozen server, whose kernel still
    acknowledges, is bounded only by the callers' own waits: ``serving.db_calls``).
    """
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": sqlite_busy_s})
        sa.event.listen(engine, "connect", partial(_sqlite_wal, busy_s=sqlite_busy_s))
        return engine
    return sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=4,
        pool_timeout=timeout_s,
        connect_args={
            "connect_timeout": max(1, int(timeout_s)),
            **_unless_given(url, {"tcp_user_timeout": TCP_USER_TIMEOUT_S * 1000, **KEEPALIVES}),
            **_pg_options(url, statement_s),
        },
    )


def _unless_given(url: sa.URL, defaults: dict) -> dict:
    """``defaults`` without the parameters the URL itself sets (its own win)."""
    return {k: v for k, v in defaults.items() if k not in url.query}


def _pg_options(url: sa.URL, statement_s: float | None) -> dict[str, str]:
    """libpq's ``options`` with the session's ``statement_timeout``, if any, after any
    ``options`` the URL itself gives (e.g. a ``search_path``)."""
    if statement_s is None:
        return {}
    given = url.query.get("options", "")
    given = given if isinstance(given, str) else " ".join(given)
    ours = f"-c statement_timeout={_ms(statement_s)}"
    return {"options": f"{given} {ours}".strip()}


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def without_statement_timeout(conn: sa.Connection, lock_wait_s: float | None) -> None:
    """Lift ``statement_timeout`` for the rest of ``conn``'s transaction (PostgreSQL; a
    no-op on SQLite), for upkeep that may rightly take long, such as retention. Waiting
    for a lock stays bounded by ``lock_wait_s``: behind a migration's lock, upkeep gives
    up (and holds no thread and connection meanwhile) rather than wait for it."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
        if lock_wait_s is not None:
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {_ms(lock_wait_s)}")


def _sqlite_wal(dbapi_connection, _record, *, busy_s: float) -> None:
    """Put the file in WAL mode (it stays so: later connections only read the mode).

    Switching needs the file to itself, and SQLite answers "database is locked" at once,
    without its busy wait, when several connections race to switch a new file (replicas
    or workers starting together). So the switch is retried for up to ``busy_s``.
    """
    cursor = dbapi_connection.cursor()
    try:
        deadline = time.monotonic() + busy_s
        while True:
            try:
                mode = cursor.execute("PRAGMA journal_mode").fetchone()[0].lower()
                if mode not in ("wal", "memory"):  # an in-memory database keeps "memory"
                    mode = cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() >= deadline:
                    raise
                mode = "locked"
            if mode in ("wal", "memory"):
                return
            if time.monotonic() >= deadline:  # SQLite answered with the old mode: it works,
                logger.warning("SQLite database stays in %s journal mode, not WAL", mode)
                return  # only readers may wait on the writer
            time.sleep(0.01 + random.random() * 0.04)
    finally:
        cursor.close()


def chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def insert_many(
    conn: sa.Connection,
    table: sa.Table,
    columns: Sequence[str],
    rows: Sequence[tuple],
    page: int = 100,
    *,
    returning: str | None = None,
) -> list:
    """Insert ``rows`` (tuples in ``columns``' order; ids already present are skipped) as
    multi-row VALUES statements; returns column ``returning`` of the rows actually
    inserted (if asked).

    One statement per ``page`` rows instead of one per row (``executemany``): each step of
    the sqlite3 driver releases and retakes the GIL, and every retake can wait a switch
    interval for the process's other threads. 100 rows of 9 columns stay under SQLite's
    oldest limit of 999 parameters. The text is built once per page size, not compiled by
    SQLAlchemy for every flush.

    Args:
        conn: an open connection (the caller's transaction).
        table: the table inserted into.
        columns: the column names, in the rows' order.
        rows: one tuple of values per row.
        page: rows per statement.
        returning: a column to return for the rows inserted.
    """
    mark = param_mark(conn)
    inserted = []
    for start in range(0, len(rows), page):
        some = rows[start : start + page]
        sql = insert_sql_text(table.name, tuple(columns), len(some), mark, returning)
        result = conn.exec_driver_sql(sql, tuple(chain.from_iterable(some)))
        if returning:
            inserted += result.scalars().all()
    return inserted


def param_mark(conn: sa.Connection) -> str:
    """The driver's placeholder: ``?`` (sqlite3) or ``%s`` (psycopg2)."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


@lru_cache(maxsize=16)
def insert_sql_text(
    table: str, columns: tuple[str, ...], n: int, mark: str, returning: str | None = None
) -> str:
    one = "(" + ", ".join([mark] * len(columns)) + ")"
    values = ", ".join([one] * n)
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values} ON CONFLICT DO NOTHING"
    return f"{sql} RETURNING {returning}" if returning else sql


def insert_ignore(conn: sa.Connection, table: sa.Table):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        return insert(table).on_conflict_do_nothing()
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert

        return insert(table).on_conflict_do_nothing()
    return table.insert()
