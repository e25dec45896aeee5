"""The shared PostgreSQL's network cut under a call in progress (its host gone without a
reset, a partition): the call fails after ``TCP_USER_TIMEOUT_S`` instead of hanging for
the kernel's 15 minutes of retransmissions, which would hold the thread (and a pooled
connection) that long. Run in a network namespace of its own (``tests/reliability/
net_cut.py``): the cut is its loopback going down; the host's network is never touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from training.settings import PROJECT_DIR
from training.sql import TCP_USER_TIMEOUT_S


def test_a_cut_network_fails_a_database_call_after_the_tcp_user_timeout(record_property):
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        message = "no network namespace here (unshare --net needs CAP_SYS_ADMIN)"
        if os.geteuid() == 0 and os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(message)  # .ci/run runs as root: never lose this test silently
        pytest.skip(message)
    done = subprocess.run(
        ["unshare", "--net", sys.executable, "-m", "tests.reliability.net_cut"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=PROJECT_DIR,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert "answered" not in outcome, outcome  # the cut happened
    assert "unexpected" not in outcome, outcome
    assert outcome["seconds"] is not None, "the call still hangs after 600 s"
    # Its pooled connection's check waits out the TCP user timeout (nothing acknowledges),
    # then one new connection fails within its 5 s connect timeout.
    assert TCP_USER_TIMEOUT_S - 1 <= outcome["seconds"] <= TCP_USER_TIMEOUT_S + 10, outcome
    record_property(
        "reliability",
        f"shared database's network cut under a call: it failed after {outcome['seconds']} s "
        f"(TCP user timeout {TCP_USER_TIMEOUT_S} s): {outcome['error'][:80]}",
    )
