"""Fixtures shared by every test layer.

Isolation: at start-up this process's environment is scrubbed of ``IRIS_*``, ``MLFLOW_*``
and ``BENTOML_*`` variables (:func:`harness.cli.scrubbed`), so that no test can reach a
developer's registry or model store, and ``BENTOML_HOME`` is pointed at a fresh temporary
folder. BentoML fixes its home the first time it is used in a process, so this has to
happen before any test module imports it. Each pytest-xdist worker is its own process and
gets its own folder.

``trained_home`` runs the real pipeline (``iris-train run`` in a subprocess) once per
session and per worker into that same folder: ``IRIS_HOME=<tmp>``,
``BENTOML_HOME=<tmp>/bentoml``. Tests that use it must treat it as read-only; a test that
needs to change a registry builds its own home with :func:`harness.homes.train_home`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness.cli import scrubbed
from harness.homes import TrainedHome, train_home
from harness.servers import BIN, PROJECT_DIR
from harness.training import BUILD_SECRET

_SESSION_ROOT = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    clean = scrubbed(os.environ)
    for key in set(os.environ) - set(clean):
        del os.environ[key]
    os.environ.update(clean)
    root = Path(tempfile.mkdtemp(prefix="iris-tests-"))
    config.stash[_SESSION_ROOT] = root
    os.environ["BENTOML_HOME"] = str(root / "bentoml")


def pytest_unconfigure(config: pytest.Config) -> None:
    root = config.stash.get(_SESSION_ROOT, None)
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def trained_home(pytestconfig: pytest.Config) -> TrainedHome:
    """The shipped data trained, registered (v1 @champion) and imported, once per session.

    Read-only for tests. Its ``bentoml_home`` is this process's ``BENTOML_HOME``, so
    ``bentoml.models.get(trained_home.bento_tag)`` works in process, and its ``env`` runs
    subprocesses (CLI, ``bentoml serve``) against the same registry and store.
    """
    root = pytestconfig.stash[_SESSION_ROOT]
    bentoml_home = Path(os.environ["BENTOML_HOME"])
    assert bentoml_home == root / "bentoml", "BENTOML_HOME was changed during the session"
    return train_home(root, bentoml_home)


@pytest.fixture(scope="session")
def bento_model(trained_home: TrainedHome):
    """The champion as a ``bentoml.Model`` from the session's store."""
    import bentoml

    return bentoml.models.get(trained_home.bento_tag)


@pytest.fixture(scope="session")
def champion(bento_model):
    """The champion loaded the way serving loads it: skops and our trusted-type list."""
    from training.bento_store import MLFLOW_SUBDIR
    from training.model_io import load_classifier

    return load_classifier(Path(bento_model.path_of(MLFLOW_SUBDIR)))


@pytest.fixture(scope="session")
def built_bento(trained_home: TrainedHome) -> str:
    """`bentoml build` of the checkout over the session store, with a token in the
    environment as a careless operator might have: it must not end up in the Bento."""
    proc = subprocess.run(
        [str(BIN / "bentoml"), "build", "--output", "tag"],
        cwd=PROJECT_DIR,
        env={**trained_home.env, "IRIS_ADMIN_TOKEN": BUILD_SECRET},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r"iris_classifier:[a-z0-9]+", proc.stdout)
    assert match, proc.stdout
    return match.group(0)


@pytest.fixture(scope="session")
def backend():
    """What builds and runs OCI images here (Docker, or buildah + podman); skips without
    one, fails under CI."""
    from tests.utils import containers as ct

    return ct.require_backend()


@pytest.fixture(scope="session")
def image(backend, built_bento: str, trained_home: TrainedHome):
    """The real service's image, built from ``built_bento`` once per session (and worker)
    and removed at the end. Used by tests/container and tests/deploy (podman kube play)."""
    import uuid

    from tests.utils import containers as ct

    tag = f"iris-classifier:test-{uuid.uuid4().hex[:8]}"
    ref = ct.containerize(backend, built_bento, tag, bentoml_home=trained_home.bentoml_home)
    yield ref
    backend.command("rmi", "-f", ref, timeout=300, check=False)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """End with what the reliability tests measured (recorded with record_property).

    Only a test that passed contributes its lines: a test that recorded a figure and then
    failed an assertion is listed as failed instead, so no line of the summary can read
    the same on a failing run.
    """
    lines, failed = [], []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            recorded = [v for k, v in getattr(report, "user_properties", ()) if k == "reliability"]
            if not recorded:
                continue
            if report.passed:
                lines.extend(recorded)
            else:
                failed.append(report.nodeid)
    if lines or failed:
        terminalreporter.section("reliability summary")
        for line in lines:
            terminalreporter.write_line(f"- {line}")
        for nodeid in failed:
            terminalreporter.write_line(f"- FAILED, its figures withheld: {nodeid}")
