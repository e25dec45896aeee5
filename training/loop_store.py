"""Served predictions and their ground truth, in one database every worker (and replica) shares.

Shared by serving (which writes predictions and labels and reads live quality and drift)
and training (which reads labelled predictions back as training data and reports drift),
so it lives here, in the package both import.

The capture writer indexes every answered prediction here (id, time, version, role,
species, the four inputs) as it flushes; ``POST /feedback`` adds the true species. Live
accuracy and drift are then plain queries, whichever worker or replica took the
prediction and whichever took its label.

The database is ``IRIS_LOOP_URI``: by default a SQLite file under ``var/`` (shared by the
workers of one server), a PostgreSQL URL for a fleet (shared by every replica). SQLAlchemy
Core speaks both, with the same statements.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from training.schema import FEATURES
from training.sql import database_url, make_engine

logger = logging.getLogger(__name__)

_meta = sa.MetaData()
predictions = sa.Table(
    "iris_predictions",
    _meta,
    sa.Column("prediction_id", sa.String(80), primary_key=True),
    sa.Column("time", sa.Float, nullable=False, index=True),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("species", sa.String(64), nullable=False),
    *(sa.Column(name, sa.Float, nullable=False) for name in FEATURES),
)
feedback = sa.Table(
    "iris_feedback",
    _meta,
    sa.Column("prediction_id", sa.String(80), primary_key=True),
    sa.Column("species", sa.String(64), nullable=False),
    sa.Column("time", sa.Float, nullable=False),
)


@dataclass(frozen=True)
class Labelled:
    """What a feedback call changed."""

    added: list[tuple[str, str, bool]]  # (model_version, role, correct) of each new label
    updated: int
    unchanged: int


@dataclass(frozen=True)
class VersionQuality:
    model_version: str
    labelled: int
    correct: int
    unlabelled: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


class FeedbackStore:
    """Thread-safe; one per worker process, on the shared database."""

    def __init__(self, uri: str, timeout_s: float = 5.0):
        self.uri = database_url(uri)
        self.timeout_s = timeout_s
        self._engine: sa.Engine | None = None
        self._lock = threading.Lock()

    @property
    def engine(self) -> sa.Engine:
        with self._lock:
            if self._engine is None:
                engine = make_engine(self.uri, timeout_s=self.timeout_s, sqlite_busy_s=5.0)
                _meta.create_all(engine)
                self._engine = engine
            return self._engine

    def index(self, rows: Iterable[dict]) -> int:
        """Record served predictions (``prediction_id``, ``time``, ``model_version``, ``role``,
        ``species`` and the features); ids already present are left as they are."""
        rows = list(rows)
        if not rows:
            return 0
        with self.engine.begin() as conn:
            conn.execute(_insert_ignore(conn, predictions), rows)
        return len(rows)

    def label(self, labels: Sequence[tuple[str, str]]) -> Labelled:
        """Store ``(prediction_id, species)`` pairs in one transaction.

        Raises:
            KeyError: some ids were never served (their list is the argument); nothing is
                stored then.
        """
        ids = [pid for pid, _ in labels]
        now = time.time()
        with self.engine.begin() as conn:
            served = {
                r.prediction_id: r
                for r in conn.execute(
                    sa.select(
                        predictions.c.prediction_id,
                        predictions.c.model_version,
                        predictions.c.role,
                        predictions.c.species,
                    ).where(predictions.c.prediction_id.in_(ids))
                )
            }
            unknown = [pid for pid in ids if pid not in served]
            if unknown:
                raise KeyError(unknown)
            existing = dict(
                conn.execute(
                    sa.select(feedback.c.prediction_id, feedback.c.species).where(
                        feedback.c.prediction_id.in_(ids)
                    )
                ).all()
            )
            wanted = dict(labels)
            new = [pid for pid in wanted if pid not in existing]
            changed = [pid for pid in wanted if pid in existing and existing[pid] != wanted[pid]]
            inserted: set[str] = set()
            if new:
                result = conn.execute(
                    _insert_ignore(conn, feedback).returning(feedback.c.prediction_id),
                    [{"prediction_id": p, "species": wanted[p], "time": now} for p in new],
                )
                inserted = set(result.scalars().all())
                # Ids a concurrent call labelled between our read and our insert: its row
                # stands, and ours counts as unchanged, or as a correction if it differs.
                raced = [p for p in new if p not in inserted]
                if raced:
                    theirs = dict(
                        conn.execute(
                            sa.select(feedback.c.prediction_id, feedback.c.species).where(
                                feedback.c.prediction_id.in_(raced)
                            )
                        ).all()
                    )
                    changed += [p for p in raced if theirs.get(p) != wanted[p]]
            if changed:
                conn.execute(
                    feedback.update()
                    .where(feedback.c.prediction_id == sa.bindparam("pid"))
                    .values(species=sa.bindparam("label"), time=now),
                    [{"pid": p, "label": wanted[p]} for p in changed],
                )
            added = [
                (served[p].model_version, served[p].role, served[p].species == wanted[p])
                for p in new
                if p in inserted
            ]
            updated = len(changed)
            unchanged = len(wanted) - len(added) - updated
        return Labelled(added, updated, unchanged)

    def quality(self, since: float) -> list[VersionQuality]:
        """Per version, over predictions served since ``since``: labelled, correct, unlabelled."""
        p, f = predictions, feedback
        correct = sa.case((f.c.species == p.c.species, 1), else_=0)
        query = (
            sa.select(
                p.c.model_version,
                sa.func.count(f.c.prediction_id),
                sa.func.coalesce(sa.func.sum(correct), 0),
                sa.func.count(p.c.prediction_id) - sa.func.count(f.c.prediction_id),
            )
            .select_from(p.outerjoin(f, f.c.prediction_id == p.c.prediction_id))
            .where(p.c.time >= since)
            .group_by(p.c.model_version)
        )
        with self.engine.connect() as conn:
            return [
                VersionQuality(str(v), int(n), int(c), int(u)) for v, n, c, u in conn.execute(query)
            ]

    def recent_inputs(self, limit: int) -> tuple[np.ndarray, list[str]]:
        """The newest ``limit`` served rows: (n, 4) inputs and predicted species."""
        p = predictions
        query = (
            sa.select(*(p.c[name] for name in FEATURES), p.c.species)
            .order_by(p.c.time.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return np.empty((0, len(FEATURES))), []
        values = np.array([r[: len(FEATURES)] for r in rows], dtype=float)
        return values, [r[-1] for r in rows]

    def labelled_history(self, since: float) -> list[tuple[float, str, bool]]:
        """``(prediction time, model version, answer was right)`` of every labelled
        prediction served since ``since``, oldest first."""
        p, f = predictions, feedback
        query = (
            sa.select(p.c.time, p.c.model_version, p.c.species == f.c.species)
            .select_from(p.join(f, f.c.prediction_id == p.c.prediction_id))
            .where(p.c.time >= since)
            .order_by(p.c.time)
        )
        with self.engine.connect() as conn:
            return [(float(t), str(v), bool(ok)) for t, v, ok in conn.execute(query)]

    def forget_before(self, cutoff: float) -> int:
        """Delete predictions (and their labels) served before ``cutoff``."""
        with self.engine.begin() as conn:
            old = sa.select(predictions.c.prediction_id).where(predictions.c.time < cutoff)
            conn.execute(feedback.delete().where(feedback.c.prediction_id.in_(old)))
            return conn.execute(predictions.delete().where(predictions.c.time < cutoff)).rowcount


def index_rows(chunks) -> list[dict]:
    """Rows for :meth:`FeedbackStore.index` from capture chunks (served answers only)."""
    rows = []
    for chunk in chunks:
        if chunk.role == "shadow":
            continue  # scored, never answered: nobody can give feedback on it
        values = chunk.rows.tolist()
        for pid, species, features in zip(chunk.ids, chunk.species, values, strict=True):
            row = {
                "prediction_id": pid,
                "time": chunk.time,
                "model_version": chunk.model_version,
                "role": chunk.role,
                "species": species,
            }
            row.update(zip(FEATURES, features, strict=True))
            rows.append(row)
    return rows


def _insert_ignore(conn: sa.Connection, table: sa.Table):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        return insert(table).on_conflict_do_nothing()
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert

        return insert(table).on_conflict_do_nothing()
    return table.insert()
