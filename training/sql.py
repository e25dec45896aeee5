"""One way to reach the project's own SQL databases (job records, predictions and feedback).

Both speak SQLite (the embedded default, one file shared by the workers of a server) and
PostgreSQL (shared by a fleet), with the same SQLAlchemy Core statements.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa


def database_url(uri: str | Path) -> sa.URL:
    """The SQLAlchemy URL of ``uri`` (a Path means an SQLite file); plain ``postgresql://``
    uses psycopg2, the driver installed (SQLAlchemy 2.1 would pick psycopg 3)."""
    url = sa.engine.make_url(f"sqlite:///{uri}" if isinstance(uri, Path) else uri)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg2")
    return url


def make_engine(url: sa.URL, *, timeout_s: float = 5.0, sqlite_busy_s: float = 30.0) -> sa.Engine:
    """An engine with bounded waits (no connection is made yet).

    SQLite files get their folder and WAL mode (readers never block the writer); PostgreSQL
    gets connect and pool timeouts and pre-ping, so a database that drops packets or
    restarts costs seconds, not minutes.
    """
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": sqlite_busy_s})
        sa.event.listen(engine, "connect", _sqlite_wal)
        return engine
    return sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=4,
        pool_timeout=timeout_s,
        connect_args={"connect_timeout": max(1, int(timeout_s))},
    )


def _sqlite_wal(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()
