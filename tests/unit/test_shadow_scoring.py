"""Shadow scoring in the capture sink: which answers it scores, what it writes and reports,
and how a failing, missing or slow challenger leaves the champion's capture alone."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving import shadow_scoring
from serving.capture import CaptureWriter, new_id
from serving.capture_sink import Drain
from serving.capture_spool import owner_lock
from serving.served_model import ModelIdentity, ServedModel
from serving.shadow_scoring import ShadowScorer, count, drawn
from tests.unit.test_capture import Reports, chunk
from tests.unit.test_challenger import _Counters
from training.schema import SPECIES

THIRD = np.array([0.1, 0.2, 0.7])


class Challenger:
    """A challenger that names the third species for every flower, and counts its calls."""

    def __init__(self, fail: bool = False):
        self.calls: list[int] = []
        self.fail = fail

    def predict_proba(self, rows):
        self.calls.append(len(rows))
        if self.fail:
            raise RuntimeError("challenger exploded")
        return np.tile(THIRD, (len(rows), 1))


def served(predictor, version: str = "2") -> ServedModel:
    identity = ModelIdentity("iris-classifier", version, "challenger", "run2", "registry")
    return ServedModel(identity, SPECIES, predictor, True)


def target(rate: float = 1.0) -> dict:
    return {"name": "iris-classifier", "version": "2", "run_id": "run2", "dir": "x", "rate": rate}


def pipeline(
    tmp_path,
    predictor,
    *,
    rate: float = 1.0,
    loads: list | None = None,
    classes: tuple[str, ...] = SPECIES,
    clock=None,
    **drain,
):
    """A worker's writer asking for the shadow, and its sink's drain with a scorer whose
    challenger is ``predictor`` (with ``classes``; loads counted in ``loads``)."""

    def load(folder, identity):
        if loads is not None:
            loads.append((str(folder), identity.version))
        if isinstance(predictor, Exception):
            raise predictor
        return replace(served(predictor, identity.version), class_names=classes)

    reports = Reports()
    writer = CaptureWriter(tmp_path, shadow=lambda: target(rate))
    scorer = ShadowScorer(reports, load=load, **({"clock": clock} if clock else {}))
    sink = Drain(tmp_path, os.getpid(), index=None, report=reports, shadow=scorer, **drain)
    return writer, sink, reports


def test_the_sink_scores_champion_answers_and_writes_them_as_shadow_rows(tmp_path):
    """Every champion answer of a flush is scored in one call; each gets shadow rows with
    its own ids, time and flowers; canary answers are not scored; agreement is reported
    per champion version."""
    challenger = Challenger()
    writer, sink, reports = pipeline(tmp_path, challenger)
    champion = [chunk(1), chunk(3), chunk(2, version="4")]
    canary = chunk(2, version="2", role="challenger")
    for c in [*champion, canary]:
        assert writer.submit(c)
    assert writer.flush() == 8
    assert sink.once() == 8 + 6
    assert [r for r in reports if r[0] == "written"] == [("written", 8)]  # served rows only
    assert challenger.calls == [6]  # one call for the whole file
    third = [[int(p.argmax() == 2) for p in c.proba] for c in champion]
    assert sorted(r for r in reports if r[0] == "shadow") == [
        ("shadow", f"3 2 {1 + 3} {sum(third[0]) + sum(third[1])}"),
        ("shadow", f"4 2 2 {sum(third[2])}"),
    ]
    frame = pd.read_parquet(tmp_path)
    shadow = frame[frame["role"] == "shadow"].set_index("prediction_id")
    assert sorted(shadow.index) == sorted(i for c in champion for i in c.ids)
    assert set(shadow["species"]) == {SPECIES[2]} and set(shadow["model_version"].astype(str)) == {
        "2"
    }
    served_rows = frame[frame["role"] == "champion"].set_index("prediction_id")
    for c in champion:
        np.testing.assert_allclose(shadow.loc[c.ids, "sepal_length"], c.rows[:, 0], rtol=1e-6)
        assert (shadow.loc[c.ids, "time"] == served_rows.loc[c.ids, "time"]).all()
        np.testing.assert_allclose(np.stack(shadow.loc[c.ids, "probabilities"]), [THIRD] * len(c))
    assert not set(canary.ids) & set(shadow.index)


def test_shadow_rows_that_cannot_be_written_are_dropped_not_counted_as_scored(tmp_path):
    """The agreement counters count what reached the files, so that they equal an offline
    comparison of the captures: a shadow file that fails is counted as dropped."""
    day = time.strftime("%Y-%m-%d", time.gmtime())
    (tmp_path / f"date={day}").mkdir()
    (tmp_path / f"date={day}" / "model_version=2").write_text("not a folder")  # the shadow's
    writer, sink, reports = pipeline(tmp_path, Challenger())
    writer.submit(chunk(3))
    writer.flush()
    assert sink.once() == 3  # the champion's rows
    assert ("dropped", "3 not_written") in reports
    assert not [r for r in reports if r[0] == "shadow"]
    assert [r for r in reports if r[0] == "written"] == [("written", 3)]  # served rows only
    written = pd.concat(map(pd.read_parquet, tmp_path.glob("date=*/model_version=*/*.parquet")))
    assert set(written["role"]) == {"champion"}


def test_agreement_compares_species_names_when_the_class_orders_differ(tmp_path):
    """A challenger whose classes come in another order: its third-column answer is the
    champion's first species, and agreement counts the names, not the columns."""
    writer, sink, reports = pipeline(tmp_path, Challenger(), classes=SPECIES[::-1])
    answers = [chunk(3), chunk(4)]
    for c in answers:
        writer.submit(c)
    writer.flush()
    sink.once()
    first = sum(int(p.argmax() == 0) for c in answers for p in c.proba)
    assert 0 < first < 7  # the test can tell names from columns
    assert ("shadow", f"3 2 7 {first}") in reports
    shadow = pd.read_parquet(tmp_path).query("role == 'shadow'")
    assert set(shadow["species"]) == {SPECIES[0]}


def test_a_file_processed_again_never_duplicates_a_row(tmp_path):
    """A sink killed before deleting a spool file processes it again, maybe with another
    shadow outcome (here the challenger fails the second time): every answer still has
    exactly one row per role, and the first pass's shadow rows stay."""
    challenger = Challenger()
    writer, sink, reports = pipeline(tmp_path, challenger, rate=0.5)  # a draw, not all
    answers = [chunk(2) for _ in range(20)]
    for c in answers:
        writer.submit(c)
    writer.flush()
    (spooled,) = (tmp_path / ".spool").glob("*.arrow")
    kept = tmp_path / ".kept.arrow"  # a dot file: Parquet readers of the folder skip it
    shutil.copy(spooled, kept)
    sink.once()
    shutil.copy(kept, spooled)
    challenger.fail = True
    assert sink.once() == 40  # the champion's rows again; no shadow this time
    frame = pd.read_parquet(tmp_path)
    per_role = frame.groupby(["role", "prediction_id"]).size()
    assert set(per_role) == {1}
    assert len(per_role["champion"]) == 40 and 0 < len(per_role["shadow"]) < 40
    assert ("shadow_failed", f"3 2 {len(per_role['shadow'])}") in reports


def test_a_shadow_that_raises_never_holds_the_capture_back(tmp_path):
    """A spool file whose shadow request cannot be read: the pass logs it and goes on,
    the champion's rows are written and the spool file is gone."""
    reports = Reports()
    writer = CaptureWriter(tmp_path, shadow=lambda: {"version": "2"})  # no folder, no rate
    scorer = ShadowScorer(reports, load=lambda folder, identity: None)
    sink = Drain(tmp_path, os.getpid(), index=None, report=reports, shadow=scorer)
    for n in (1, 3):
        writer.submit(chunk(n))
        writer.flush()
    assert sink.once() == 4
    assert not list((tmp_path / ".spool").glob("*.arrow"))
    assert reports == [("written", 1), ("written", 3)]


def test_a_share_is_drawn_by_id_the_same_every_time():
    ids = [new_id() for _ in range(4000)]
    tenth = drawn(ids, 0.1)
    assert 0.08 <= tenth.mean() <= 0.12
    assert (drawn(ids, 0.1) == tenth).all()  # a file processed again scores the same answers
    assert drawn(ids, 1.0).all() and not drawn(ids, 0.0).any()
    assert (tenth <= drawn(ids, 0.5)).all()  # a bigger share keeps the smaller one's answers


def test_a_failing_challenger_is_counted_and_the_champion_rows_are_written(tmp_path):
    writer, sink, reports = pipeline(tmp_path, Challenger(fail=True))
    answers = [chunk(1), chunk(3)]
    for c in answers:
        writer.submit(c)
    writer.flush()
    assert sink.once() == 4
    assert reports == [("written", 4), ("shadow_failed", "3 2 4")]
    assert not list((tmp_path / ".spool").glob("*.arrow"))  # written and gone
    frame = pd.read_parquet(tmp_path)
    assert set(frame["role"]) == {"champion"} and len(frame) == 4


def test_a_challenger_that_cannot_be_loaded_is_counted_and_tried_again_later(tmp_path):
    clock = {"now": 1000.0}
    loads: list = []
    writer, sink, reports = pipeline(
        tmp_path, OSError("no such folder"), loads=loads, clock=lambda: clock["now"]
    )
    for _ in range(2):
        writer.submit(chunk(2))
        writer.flush()
        assert sink.once() == 2  # the champion's rows go out all the same
    assert loads == [("x", "2")]  # not tried again at once
    assert [r for r in reports if r[0] == "shadow_failed"] == [("shadow_failed", "3 2 2")] * 2
    clock["now"] += shadow_scoring.RETRY_S + 1
    writer.submit(chunk(2))
    writer.flush()
    sink.once()
    assert loads == [("x", "2")] * 2


def test_a_sink_behind_skips_the_shadow_and_counts_it(tmp_path):
    """With more than a quarter of IRIS_CAPTURE_MAX_PENDING waiting after a file, its
    shadow is skipped (counted); the last file, with nothing after it, is scored."""
    challenger = Challenger()
    writer, sink, reports = pipeline(tmp_path, challenger, max_pending_rows=12)
    for n in (4, 4):
        writer.submit(chunk(n))
        writer.flush()
    assert sink.once() == 8 + 4
    assert ("shadow_skipped", "4") in reports and challenger.calls == [4]


def test_an_adopted_backlog_skips_the_shadow_as_the_sinks_own_does(tmp_path):
    """A dead worker's spool, adopted by another sink, is judged by its own backlog."""
    challenger = Challenger()
    writer, sink, reports = pipeline(tmp_path, challenger, max_pending_rows=12)
    gone = os.getpid() + 1  # any PID: liveness is the lock, never the PID
    for n in (4, 4):
        writer.submit(chunk(n))
        writer.flush()
    for spooled in (tmp_path / ".spool").glob("*.arrow"):
        spooled.rename(spooled.with_name(spooled.name.replace(f"{os.getpid()}-", f"{gone}-", 1)))
    sink._last_housekeeping = 0.0  # adoption is looked at once a minute: now
    assert sink.once() == 8 + 4
    assert ("shadow_skipped", "4") in reports and challenger.calls == [4]


def test_the_worker_reads_its_sinks_report_lines_into_counters():
    """Every kind of line the sink prints, and lines it never prints, which change
    nothing and never stop the reader. A drop whose reason this worker does not know (a
    newer sink's, or none) still counts, as ``not_written``: the label set stays bounded."""
    import io

    seen, dropped, written = [], [], []
    writer = CaptureWriter(
        Path("unused"),
        on_written=written.append,
        on_dropped=lambda n, reason: dropped.append((n, reason)),
        on_shadow=lambda kind, fields: seen.append((kind, fields)),
    )

    class _Sink:
        stdout = io.BytesIO(
            b"written 5\n\nshadow 1 2 10 7\ndropped x\nshadow_skipped 3\ndropped 2\n"
            b"dropped 3 unreadable\ndropped 4 odd\n"
        )

    writer._read_reports(_Sink())
    assert written == [5]
    assert dropped == [(2, "not_written"), (3, "unreadable"), (4, "not_written")]
    assert seen == [("shadow", ["1", "2", "10", "7"]), ("shadow_skipped", ["3"])]


def test_no_shadow_without_a_challenger_or_a_share(tmp_path):
    challenger = Challenger()
    writer, sink, _ = pipeline(tmp_path, challenger, rate=0.0)
    writer.submit(chunk(3))
    writer.flush()
    assert sink.once() == 3 and challenger.calls == []
    assert shadow_scoring.target(None, 1.0) is None
    assert shadow_scoring.target(served(challenger), 0.0) is None
    assert shadow_scoring.target(served(challenger), 1.0) is None  # not loaded from a folder


def test_a_challenger_gone_is_let_go_and_a_new_one_loaded(tmp_path):
    """A flush that names no challenger (its alias was removed) drops the sink's loaded
    model; the next one named is loaded afresh."""
    loads: list = []
    wanted = {"target": target()}
    writer, sink, _ = pipeline(tmp_path, Challenger(), loads=loads)
    writer.shadow = lambda: wanted["target"]
    for named in (target(), None, target()):
        wanted["target"] = named
        writer.submit(chunk(1))
        writer.flush()
        sink.once()
        assert (sink.shadow._model is None) == (named is None)
    assert loads == [("x", "2")] * 2


@pytest.mark.parametrize(
    ("kind", "fields", "expected"),
    [
        (
            "shadow",
            ["1", "2", "10", "7"],
            {
                ("shadow_scored", ("challenger", "2"), ("champion", "1")): 10,
                ("shadow_agreed", ("challenger", "2"), ("champion", "1")): 7,
            },
        ),
        (
            "shadow_failed",
            ["1", "2", "3"],
            {("shadow_failed", ("challenger", "2"), ("champion", "1")): 3},
        ),
        ("shadow_skipped", ["5"], {("shadow_skipped",): 5}),
    ],
)
def test_a_sinks_reports_become_the_workers_counters(kind, fields, expected):
    metrics = _Counters()
    count(metrics, kind, fields)
    assert metrics.counts == expected


def test_a_challenger_a_sink_died_in_is_never_used_again(tmp_path):
    """While the challenger loads or scores, a marker file names it; a sink that finds the
    marker (its predecessor died or hung there) makes it the worker's ban and never uses
    that version: counted as failed, the champion's rows written. Another version is used,
    and the ban holds for the worker's later sinks."""
    marker = tmp_path / ".spool" / ".shadow-1.busy"
    banned = shadow_scoring.ban_path(marker)
    during: list = []

    class Watched(Challenger):
        def predict_proba(self, rows):
            during.append(json.loads(marker.read_text()))
            return super().predict_proba(rows)

    def load(folder, identity):
        during.append(json.loads(marker.read_text()))
        loads.append(identity.version)
        return served(Watched(), identity.version)

    def sink_with_scorer(version: str):
        reports = Reports()
        writer = CaptureWriter(tmp_path, shadow=lambda: {**target(), "version": version})
        scorer = ShadowScorer(reports, load=load, marker=marker)
        return writer, Drain(tmp_path, os.getpid(), index=None, report=reports, shadow=scorer)

    def one_file(version: str, n: int):
        writer, sink = sink_with_scorer(version)
        writer.submit(chunk(n))
        writer.flush()
        sink.once()
        return sink.report

    def scored(reports) -> list[list[str]]:  # champion, challenger, flowers (agreed left out)
        return [fields.split()[:3] for kind, fields in reports if kind == "shadow"]

    loads: list = []
    before = time.monotonic()
    assert scored(one_file("2", 2)) == [["3", "2", "2"]]
    assert [d[:2] for d in during] == [["x", "2"]] * 2  # named while loaded, then called
    assert all(before <= d[2] <= time.monotonic() for d in during)  # the machine's clock
    assert not marker.exists()

    marker.write_text(json.dumps(["x", "2", 12.5]))  # what a sink that died in the call leaves
    loads.clear()
    reports = one_file("2", 3)
    assert loads == [] and ("shadow_failed", "3 2 3") in reports  # never loaded again
    assert scored(reports) == []
    assert ("written", 3) in reports  # the champion's rows all the same
    assert not marker.exists() and json.loads(banned.read_text())[:2] == ["x", "2"]

    assert scored(one_file("3", 1)) == [["3", "3", "1"]] and loads == ["3"]  # another one
    assert ("shadow_failed", "3 2 1") in one_file("2", 1)  # a later sink: still banned
    assert loads == ["3"]
    old = time.time() - 7200
    os.utime(banned, (old, old))
    ShadowScorer(Reports(), marker=marker).keep_ban()  # a sink's housekeeping
    assert banned.stat().st_mtime > time.time() - 60  # so the sweep of gone workers leaves it


def test_markers_of_sinks_gone_are_swept_after_an_hour_and_live_ones_kept(tmp_path):
    spool = tmp_path / ".spool"
    spool.mkdir()
    held = owner_lock(spool, 13, wait=True)  # worker 13's sink is alive: it holds the lock
    gone, gone_ban, live, fresh = (
        spool / f".shadow-{pid}.{kind}"
        for pid, kind in ((11, "busy"), (11, "banned"), (13, "banned"), (12, "busy"))
    )
    for marker in (gone, gone_ban, live, fresh):
        marker.write_text(json.dumps(["x", "2", 1.0]))
    old = time.time() - 7200
    for marker in (gone, gone_ban, live):
        os.utime(marker, (old, old))
    try:
        Drain(tmp_path, os.getpid(), index=None, report=Reports())._sweep_partial_spools()
    finally:
        held.close()
    assert not gone.exists() and not gone_ban.exists() and live.exists() and fresh.exists()
