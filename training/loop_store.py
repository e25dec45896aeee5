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

Over 250 lines (about 420): the three tables, the index, the label upsert and the read queries
of live quality, drift and retraining share one schema; the packing of an answer lives in
``training.answers`` and the SQL plumbing in ``training.sql``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from training.answers import CLASSES_DTYPE, INPUTS_DTYPE, Answer, IndexRows, parse_id
from training.schema import FEATURES, SHADOW
from training.sql import (
    chunks,
    database_url,
    insert_ignore,
    insert_many,
    make_engine,
    param_mark,
    without_statement_timeout,
)

logger = logging.getLogger(__name__)

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
served_counts = sa.Table(
    "iris_served_counts",
    _meta,
    sa.Column("model_version", sa.String(32), primary_key=True),
    sa.Column("minute", sa.Integer, primary_key=True),  # epoch minutes, of the serving time
    sa.Column("n_rows", sa.BigInteger, nullable=False),
)
"""Rows served per version and minute, kept with the index: live quality's "served" is a
sum over the window's minutes, not a scan of every answer in it (an hour at 2,000
requests/s is 7 million answers, and every worker asks every ``IRIS_LOOP_INTERVAL_S``)."""
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

FORGET_BATCH_ROWS = 10_000
"""Retention deletes at most this many rows per transaction. An hour of answers can be
millions of rows, and on SQLite a transaction holds the whole file's write lock: one
transaction for all of them kept the capture index and ``/feedback`` waiting for it."""
FORGET_PAUSE_S = 0.1
"""Rest between retention's transactions on SQLite: its busy handler polls a waiting writer
every 100 ms at most, so a writer waiting for the lock gets it here."""


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

    def __init__(self, uri: str, timeout_s: float = 5.0, statement_s: float | None = None):
        """``statement_s``: on PostgreSQL, the longest a statement may run or wait for a
        lock before the server cancels it (an error, as an outage is); serving sets it so
        that a locked table costs a request seconds, not forever. SQLite statements wait
        at most 5 s for a lock."""
        self.uri = database_url(uri)
        self.timeout_s = timeout_s
        self.statement_s = statement_s
        self._engine: sa.Engine | None = None
        self._lock = threading.Lock()

    @property
    def engine(self) -> sa.Engine:
        with self._lock:
            if self._engine is None:
                engine = make_engine(
                    self.uri,
                    timeout_s=self.timeout_s,
                    sqlite_busy_s=5.0,
                    statement_s=self.statement_s,
                )
                _meta.create_all(engine)
                self._engine = engine
            return self._engine

    def index(self, served: IndexRows | Iterable[Answer]) -> int:
        """Record served answers, one row each (shadow scores are skipped: nobody saw them,
        so nobody can label them); ids already present are left as they are.

        Args:
            served: the answers column by column (what a capture sink builds for a whole
                flush), or one ``Answer`` at a time.

        Returns:
            The number of answers given to the database.
        """
        if not isinstance(served, IndexRows):
            served = IndexRows.of(served)
        if SHADOW in served.role:
            served = served.where([role != SHADOW for role in served.role])
        if not len(served):
            return 0
        with self.engine.begin() as conn:
            inserted = set(
                insert_many(
                    conn, answers, IndexRows.columns(), list(served.rows()), returning="answer_id"
                )
            )
            counts: dict[tuple[str, int], int] = {}
            # Only answers new to the table: a retried file counts once.
            for answer_id, at, version, n in zip(
                served.answer_id, served.time, served.model_version, served.n_rows, strict=True
            ):
                if answer_id in inserted:
                    inserted.discard(answer_id)  # an id given twice in one call, too
                    key = (version, int(at // 60))
                    counts[key] = counts.get(key, 0) + n
            if counts:
                mark = param_mark(conn)
                conn.exec_driver_sql(
                    f"INSERT INTO {served_counts.name} (model_version, minute, n_rows) "
                    f"VALUES ({mark}, {mark}, {mark}) ON CONFLICT (model_version, minute) "
                    f"DO UPDATE SET n_rows = {served_counts.name}.n_rows + excluded.n_rows",
                    # In key order: two sinks upserting the same minutes of two versions
                    # (a canary) lock them in the same order, so neither waits on the other.
                    [(v, m, n) for (v, m), n in sorted(counts.items())],
                )
        return len(served)

    def label(self, pairs: Sequence[tuple[str, str]]) -> Labelled:
        """Store ``(prediction_id, species)`` pairs in one transaction.

        Raises:
            UnknownPredictionError: some ids were never served, or name no row the answer had
                (their list is the argument; ``why`` says what each is); nothing is stored
                then.
        """
        wanted = dict(pairs)
        now = time.time()
        with self.engine.begin() as conn:
            why: dict[str, str] = {}
            served = _resolve(conn, list(wanted), why)
            # A label outlives its answer (IRIS_LABEL_RETENTION_DAYS): sent again, or
            # corrected, it needs only itself.
            existing = _labels_of(conn, list(wanted))
            unknown = [pid for pid in wanted if pid not in served and pid not in existing]
            if unknown:
                raise UnknownPredictionError(unknown, why)
            new = [pid for pid in wanted if pid not in existing]
            changed = [pid for pid in wanted if pid in existing and existing[pid] != wanted[pid]]
            inserted: set[str] = set()
            if new:
                result = conn.execute(
                    insert_ignore(conn, labels).returning(labels.c.prediction_id),
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
        """Per version, over predictions served since the start of ``since``'s minute:
        labelled, correct, unlabelled."""
        sc, lb = served_counts, labels
        minute = int(since // 60)
        served_q = (
            sa.select(sc.c.model_version, sa.func.sum(sc.c.n_rows))
            .where(sc.c.minute >= minute)
            .group_by(sc.c.model_version)
        )
        correct = sa.case((lb.c.species == lb.c.predicted, 1), else_=0)
        labelled_q = (
            sa.select(lb.c.model_version, sa.func.count(), sa.func.sum(correct))
            .where(lb.c.served_time >= minute * 60)
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
                rows = np.frombuffer(inputs, dtype=INPUTS_DTYPE).reshape(-1, len(FEATURES))[:take]
                values.append(rows)
                species += [names[i] for i in np.frombuffer(predicted, dtype=CLASSES_DTYPE)[:take]]
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

    def forget_before(
        self,
        cutoff: float,
        labels_cutoff: float | None = None,
        batch_rows: int = FORGET_BATCH_ROWS,
    ) -> int:
        """Delete answers served before ``cutoff``, and labels of predictions served before
        ``labels_cutoff`` (default: ``cutoff``; a label keeps its flower's measurements, so
        it outlives its answer), ``batch_rows`` at a time; returns how many answers went."""
        labels_cutoff = cutoff if labels_cutoff is None else labels_cutoff
        old_labels = labels.c.served_time < labels_cutoff
        self._delete_in_batches(labels, labels.c.prediction_id, old_labels, batch_rows)
        with self.engine.begin() as conn:  # a row per version and minute: small
            without_statement_timeout(conn, lock_wait_s=self.statement_s)
            conn.execute(served_counts.delete().where(served_counts.c.minute < int(cutoff // 60)))
        old = answers.c.time < cutoff
        return self._delete_in_batches(answers, answers.c.answer_id, old, batch_rows)

    def _delete_in_batches(
        self, table: sa.Table, key: sa.Column, where: sa.ColumnElement, batch_rows: int
    ) -> int:
        """Delete ``table``'s rows ``where`` holds, a transaction per ``batch_rows``; on SQLite
        resting ``FORGET_PAUSE_S`` between them so that waiting writers get the file's lock
        (PostgreSQL's row locks never keep a new row out).

        Raises:
            ValueError: ``batch_rows`` is under 1.
            RuntimeError: the driver does not say how many rows a delete removed.
        """
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be at least 1, not {batch_rows}")
        pause = FORGET_PAUSE_S if self.engine.dialect.name == "sqlite" else 0.0
        removed = 0
        while True:
            with self.engine.begin() as conn:
                # As long as it takes, but it waits for a lock no longer than any other
                # statement (then it is tried again in an hour).
                without_statement_timeout(conn, lock_wait_s=self.statement_s)
                doomed = sa.select(key).where(where).limit(batch_rows)
                n = conn.execute(table.delete().where(key.in_(doomed))).rowcount
            if n < 0:
                raise RuntimeError(f"no row count for a delete from {table.name}")
            removed += n
            if n < batch_rows:
                return removed
            time.sleep(pause)


class UnknownPredictionError(KeyError):
    """Ids no served answer has: ``args[0]`` lists them, ``why`` says what each is."""

    def __init__(self, ids: list[str], why: dict[str, str]):
        super().__init__(ids)
        self.why = why


NOT_SERVED = (
    "never served here (or not indexed yet: about IRIS_CAPTURE_FLUSH_S after the answer; or "
    "served before IRIS_CAPTURE_RETENTION_DAYS)"
)


def _resolve(conn: sa.Connection, ids: list[str], why: dict[str, str]) -> dict[str, dict]:
    """What was served under each known id: a ready-made label row (without the label);
    for each unknown one, what it is, in ``why``."""
    parsed = {pid: parse_id(pid) for pid in ids}
    bases = {p[0] for p in parsed.values() if p is not None}
    found = {}
    a = answers
    for chunk in chunks(sorted(bases), 500):
        query = sa.select(
            a.c.answer_id, a.c.time, a.c.model_version, a.c.role, a.c.single, a.c.n_rows,
            a.c.classes, a.c.predicted, a.c.inputs,
        ).where(a.c.answer_id.in_(chunk))  # fmt: skip
        found.update({r.answer_id: r for r in conn.execute(query)})
    served = {}
    for pid, p in parsed.items():
        answer = found.get(p[0]) if p is not None else None
        if answer is None:
            why[pid] = NOT_SERVED if p is not None else "no answer has it (rows have no leading 0)"
            continue
        base, row = p
        if row is None and not answer.single:
            why[pid] = f"a batch answer of {answer.n_rows} rows: label each as {base}-<row>"
            continue
        if row is not None and answer.single:
            why[pid] = f"a single answer: label it as {base}, without -{row}"
            continue
        if row is not None and row >= answer.n_rows:
            why[pid] = f"the batch answer {base} has rows 0-{answer.n_rows - 1}"
            continue
        index = row or 0
        features = np.frombuffer(answer.inputs, dtype=INPUTS_DTYPE).reshape(-1, len(FEATURES))[
            index
        ]
        predicted = json.loads(answer.classes)[
            int(np.frombuffer(answer.predicted, dtype=CLASSES_DTYPE)[index])
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
    for chunk in chunks(ids, 500):
        query = sa.select(labels.c.prediction_id, labels.c.species).where(
            labels.c.prediction_id.in_(chunk)
        )
        found.update(conn.execute(query).all())
    return found
