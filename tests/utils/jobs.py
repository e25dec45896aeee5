"""Drive retrain jobs and read the served version over HTTP (for server-level tests)."""

from __future__ import annotations

import time

import httpx

from tests.utils.load import GOOD


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def start_retrain(url: str, token: str) -> str:
    """POST /retrain; asserts 202 and returns the job id."""
    response = httpx.post(url + "/retrain", headers=auth(token), timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def wait_job(url: str, token: str, job_id: str, timeout: float = 240) -> dict:
    """Poll /jobs/{id} until the job has succeeded or failed; returns its record."""
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{url}/jobs/{job_id}", headers=auth(token), timeout=30).json()
        if job["state"] in ("succeeded", "failed"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']} after {timeout:g} s"
        time.sleep(0.5)


def retrain_and_wait(url: str, token: str, timeout: float = 240) -> dict:
    return wait_job(url, token, start_retrain(url, token), timeout)


def served_version(url: str) -> str:
    """The registry version named in a /predict answer."""
    return httpx.post(url + "/predict", json=GOOD, timeout=30).json()["model"]["version"]


def wait_version(url: str, version: str, timeout: float) -> float:
    """Wait until /predict at ``url`` names ``version``; returns the seconds it took."""
    started = time.monotonic()
    while (served := served_version(url)) != version:
        assert time.monotonic() - started < timeout, f"{url} still serves {served}"
        time.sleep(0.1)
    return time.monotonic() - started
