"""Served predictions and their ground truth, in one database every worker (and replica) shares.

Shared by serving (which writes predictions and labels and reads live quality and drift)
and training (which reads labelled predictions back as training data and reports drift),
so it lives here, in the package both import.

The capture writer indexes every answer here as it flushes: **one row per answer**, however
many flowers it classified (its id, time, version, role, and the rows' inputs and predicted
classes packed as bytes), so a 1,000-row batch costs one insert, not 1,000. A batch row's
id, ``<answer id>-<row>``, is resolved against that answer when ``POST /feedback`` names
it; the label is then stored with everything live quality and retraining need (the
prediction's version, role, time, predicted species and inputs), so those are queries on
the labels alone. Live accuracy and drift are plain queries, whichever worker or replica
took the prediction and whichever took its label.

The database is ``IRIS_LOOP_URI``: by default a SQLite file under ``var/`` (shared by the
workers of one server), a PostgreSQL URL for a fleet (shared by every replica). SQLAlchemy
Core speaks both, with the same statements.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import sqlalchemy as sa

from training.schema import FEATURES
from training.sql import database_url, make_engine

logger = logging.getLogger(__name__)

_INPUTS = np.dtype("<f4")  # (rows, 4) float32, little-endian, FEATURES order
_CLASSES = np.dtype("<u2")  # one class index per row, into the answer's class list

_meta = sa.MetaData()
answers = sa.Table(
    "iris_answers",
    _meta,
    sa.Column("answer_id", sa.String(40), primary_key=True),
    sa.Column("time", sa.Float, nullable=False, index=True),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("single", sa.Boolean, nullable=False),  # one flower: its id has no ``-<row>``
    sa.Column("n_rows", sa.Integer, nullable=False),
    sa.Column("classes", sa.Text, nullable=False),  # JSON list, the model's class order
    sa.Column("predicted", sa.LargeBinary, nullable=False),  # _CLASSES per row
    sa.Column("inputs", sa.LargeBinary, nullable=False),  # _INPUTS, n_rows x 4
)
labels = sa.Table(
    "iris_labels",
    _meta,
    sa.Column("prediction_id", sa.String(80), primary_key=True),
    sa.Column("species", sa.String(64), nullable=False),  # the true species
    sa.Column("time", sa.Float, nullable=False),  # when the label came
    sa.Column("served_time", sa.Float, nullable=False, index=True),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("predicted", sa.String(64), nullable=False),
    *(sa.Column(name, sa.Float, nullable=False) for name in FEATURES),
)


@dataclass(frozen=True, slots=True)
class Answer:
    """One answered request as indexed: all its rows under one id."""

    answer_id: str
    time: float
    model_version: str
    role: str
    single: bool
    classes: tuple[str, ...]
    predicted: np.ndarray  # (n,) class indices into ``classes``
    inputs: np.ndarray  # (n, 4), FEATURES order

    def record(self) -> dict:
        return {
            "answer_id": self.answer_id,
            "time": self.time,
            "model_version": self.model_version,
            "role": self.role,
            "single": self.single,
            "n_rows": len(self.predicted),
            "classes": _classes_json(self.classes),
            "predicted": np.ascontiguousarray(self.predicted, dtype=_CLASSES).tobytes(),
            "inputs": np.ascontiguousarray(self.inputs, dtype=_INPUTS).tobytes(),
        }


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

    def index(self, served: Iterable[Answer]) -> int:
        """Record served answers, one row each (shadow scores are skipped: nobody saw them,
        so nobody can label them); ids already present are left as they are.

        Returns:
            The number of answers given to the database.
        """
        records = [a.record() for a in served if a.role != "shadow"]
        if not records:
            return 0
        with self.engine.begin() as conn:
            _insert_many(conn, answers, records)
        return len(records)

    def label(self, pairs: Sequence[tuple[str, str]]) -> Labelled:
        """Store ``(prediction_id, species)`` pairs in one transaction.

        Raises:
            KeyError: some ids were never served (their list is the argument); nothing is
                stored then.
        """
        wanted = dict(pairs)
        now = time.time()
        with self.engine.begin() as conn:
            served = _resolve(conn, list(wanted))
            unknown = [pid for pid, _ in pairs if pid not in served]
            if unknown:
                raise KeyError(unknown)
            existing = _labels_of(conn, list(wanted))
            new = [pid for pid in wanted if pid not in existing]
            changed = [pid for pid in wanted if pid in existing and existing[pid] != wanted[pid]]
            inserted: set[str] = set()
            if new:
                result = conn.execute(
                    _insert_ignore(conn, labels).returning(labels.c.prediction_id),
                    [{**served[p], "species": wanted[p], "time": now} for p in new],
                )
                inserted = set(result.scalars().all())
                # Ids a concurrent call labelled between our read and our insert: its row
                # stands, and ours counts as unchanged, or as a correction if it differs.
                raced = [p for p in new if p not in inserted]
                if raced:
                    theirs = _labels_of(conn, raced)
                    changed += [p for p in raced if theirs.get(p) != wanted[p]]
            if changed:
                conn.execute(
                    labels.update()
                    .where(labels.c.prediction_id == sa.bindparam("pid"))
                    .values(species=sa.bindparam("label"), time=now),
                    [{"pid": p, "label": wanted[p]} for p in changed],
                )
            added = [
                (
                    served[p]["model_version"],
                    served[p]["role"],
                    served[p]["predicted"] == wanted[p],
                )
                for p in new
                if p in inserted
            ]
            updated = len(changed)
            unchanged = len(wanted) - len(added) - updated
        return Labelled(added, updated, unchanged)

    def quality(self, since: float) -> list[VersionQuality]:
        """Per version, over predictions served since ``since``: labelled, correct, unlabelled."""
        a, lb = answers, labels
        served_q = (
            sa.select(a.c.model_version, sa.func.sum(a.c.n_rows))
            .where(a.c.time >= since)
            .group_by(a.c.model_version)
        )
        correct = sa.case((lb.c.species == lb.c.predicted, 1), else_=0)
        labelled_q = (
            sa.select(lb.c.model_version, sa.func.count(), sa.func.sum(correct))
            .where(lb.c.served_time >= since)
            .group_by(lb.c.model_version)
        )
        with self.engine.connect() as conn:
            served = {str(v): int(n or 0) for v, n in conn.execute(served_q)}
            done = {str(v): (int(n), int(c or 0)) for v, n, c in conn.execute(labelled_q)}
        quality = []
        for version in sorted(served.keys() | done.keys()):
            n, right = done.get(version, (0, 0))
            quality.append(VersionQuality(version, n, right, max(0, served.get(version, 0) - n)))
        return quality

    def recent_inputs(self, limit: int) -> tuple[np.ndarray, list[str]]:
        """The newest ``limit`` served rows: (n, 4) inputs and predicted species."""
        query = sa.select(answers.c.classes, answers.c.predicted, answers.c.inputs).order_by(
            answers.c.time.desc()
        )
        values, species, have = [], [], 0
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=64).execute(query)
            for classes, predicted, inputs in result:
                take = limit - have
                if take <= 0:
                    break
                names = json.loads(classes)
                rows = np.frombuffer(inputs, dtype=_INPUTS).reshape(-1, len(FEATURES))[:take]
                values.append(rows)
                species += [names[i] for i in np.frombuffer(predicted, dtype=_CLASSES)[:take]]
                have += len(rows)
            result.close()
        if not values:
            return np.empty((0, len(FEATURES))), []
        return np.concatenate(values).astype(float), species

    def labelled_history(self, since: float) -> list[tuple[float, str, bool]]:
        """``(prediction time, model version, answer was right)`` of every labelled
        prediction served since ``since``, oldest first."""
        lb = labels
        query = (
            sa.select(lb.c.served_time, lb.c.model_version, lb.c.predicted == lb.c.species)
            .where(lb.c.served_time >= since)
            .order_by(lb.c.served_time)
        )
        with self.engine.connect() as conn:
            return [(float(t), str(v), bool(ok)) for t, v, ok in conn.execute(query)]

    def labelled_rows(self) -> list[tuple]:
        """``(four measurements, true species)`` of every labelled prediction, in the order
        they were served."""
        lb = labels
        query = sa.select(*(lb.c[name] for name in FEATURES), lb.c.species).order_by(
            lb.c.served_time, lb.c.prediction_id
        )
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(query)]

    def forget_before(self, cutoff: float) -> int:
        """Delete answers (and labels of predictions) served before ``cutoff``; returns how
        many answers went."""
        with self.engine.begin() as conn:
            conn.execute(labels.delete().where(labels.c.served_time < cutoff))
            return conn.execute(answers.delete().where(answers.c.time < cutoff)).rowcount


@lru_cache(maxsize=64)
def _classes_json(classes: tuple[str, ...]) -> str:
    return json.dumps(list(classes))


def row_argmax(proba: np.ndarray) -> np.ndarray:
    """``proba.argmax(axis=1)`` (first maximum on ties), a few times faster for a few
    columns and many rows: one vectorised comparison per class instead of one per row."""
    index = np.zeros(len(proba), dtype=np.intp)
    best = proba[:, 0].copy()
    for j in range(1, proba.shape[1]):
        column = proba[:, j]
        index[column > best] = j
        np.maximum(best, column, out=best)
    return index


def answers_of(chunks) -> list[Answer]:
    """What :meth:`FeedbackStore.index` records of capture chunks (serving.capture.Chunk):
    the predicted class of a row is the argmax of its probabilities, as served."""
    return [
        Answer(
            c.base,
            c.time,
            c.model_version,
            c.role,
            c.single,
            tuple(c.classes),
            row_argmax(c.proba),
            c.rows,
        )
        for c in chunks
        if c.role != "shadow"
    ]


def parse_id(prediction_id: str) -> tuple[str, int | None] | None:
    """``<answer id>`` -> (id, None); ``<answer id>-<row>`` -> (id, row); None if neither."""
    base, dash, row = prediction_id.partition("-")
    if not dash:
        return base, None
    # Exactly as the server writes rows (no sign, no leading zero): one spelling per row.
    if not row.isdigit() or not row.isascii() or (row != "0" and row.startswith("0")):
        return None
    return base, int(row)


def _resolve(conn: sa.Connection, ids: list[str]) -> dict[str, dict]:
    """What was served under each known id: a ready-made label row (without the label)."""
    parsed = {pid: parse_id(pid) for pid in ids}
    bases = {p[0] for p in parsed.values() if p is not None}
    found = {}
    a = answers
    for chunk in _chunks(sorted(bases), 500):
        query = sa.select(
            a.c.answer_id, a.c.time, a.c.model_version, a.c.role, a.c.single, a.c.n_rows,
            a.c.classes, a.c.predicted, a.c.inputs,
        ).where(a.c.answer_id.in_(chunk))  # fmt: skip
        found.update({r.answer_id: r for r in conn.execute(query)})
    served = {}
    for pid, p in parsed.items():
        answer = found.get(p[0]) if p is not None else None
        if answer is None:
            continue
        _, row = p
        if (row is None) != bool(answer.single) or (row or 0) >= answer.n_rows:
            continue  # a batch row named without its row, or a row the answer did not have
        index = row or 0
        features = np.frombuffer(answer.inputs, dtype=_INPUTS).reshape(-1, len(FEATURES))[index]
        predicted = json.loads(answer.classes)[
            int(np.frombuffer(answer.predicted, dtype=_CLASSES)[index])
        ]
        served[pid] = {
            "prediction_id": pid,
            "served_time": answer.time,
            "model_version": answer.model_version,
            "role": answer.role,
            "predicted": predicted,
            **dict(zip(FEATURES, features.tolist(), strict=True)),
        }
    return served


def _labels_of(conn: sa.Connection, ids: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for chunk in _chunks(ids, 500):
        query = sa.select(labels.c.prediction_id, labels.c.species).where(
            labels.c.prediction_id.in_(chunk)
        )
        found.update(conn.execute(query).all())
    return found


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _insert_many(conn: sa.Connection, table: sa.Table, records: list[dict], page: int = 100):
    """Insert ``records`` (ids already present are skipped) as multi-row VALUES statements.

    One statement per ``page`` rows instead of one per row (``executemany``): each step of
    the sqlite3 driver releases and retakes the GIL, and every retake can stall this
    worker's event loop for a switch interval. 100 rows of 9 columns stay under SQLite's
    oldest limit of 999 parameters. The text is built once per page size, not compiled by
    SQLAlchemy for every flush.
    """
    columns = list(records[0])
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    for start in range(0, len(records), page):
        rows = records[start : start + page]
        sql = _insert_sql(table.name, tuple(columns), len(rows), mark)
        params = tuple(r[c] for r in rows for c in columns)
        conn.exec_driver_sql(sql, params)


@lru_cache(maxsize=16)
def _insert_sql(table: str, columns: tuple[str, ...], n: int, mark: str) -> str:
    one = "(" + ", ".join([mark] * len(columns)) + ")"
    values = ", ".join([one] * n)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values} ON CONFLICT DO NOTHING"


def _insert_ignore(conn: sa.Connection, table: sa.Table):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        return insert(table).on_conflict_do_nothing()
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert

        return insert(table).on_conflict_do_nothing()
    return table.insert()
