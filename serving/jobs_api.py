"""The retrain jobs HTTP API: the answer to ``POST /retrain`` and the mounted ``/jobs`` app.

``POST /retrain`` (a BentoML API in ``service.py``) answers with :func:`start_retrain`;
``GET /jobs/{job_id}`` and ``GET /jobs`` report jobs. All need the admin token.
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving.auth import admin_denied
from serving.errors import error_body, json_error, json_response
from serving.jobs import ConflictError, Job, JobsUnavailableError
from serving.runtime import IrisRuntime, get_runtime


async def start_retrain(runtime: IrisRuntime, with_feedback: bool = False) -> Response:
    """202 with the new job's id, 409 if one is running, 503 if the job database is down."""
    try:
        job = await asyncio.to_thread(runtime.retrains.launch, with_feedback)
    except ConflictError as c:
        return _conflict(c.job)
    except JobsUnavailableError as e:
        return jobs_unavailable(e)
    payload = {"job_id": job.id, "state": job.state, "status_url": f"/jobs/{job.id}"}
    return json_response(payload, 202)


async def job_status(request: Request):
    runtime = get_runtime()
    denied = admin_denied(runtime.settings, request.headers.get("authorization"))
    if denied is not None:
        return denied
    job_id = request.path_params["job_id"]
    try:
        job = await asyncio.to_thread(runtime.jobs.get, job_id)
    except JobsUnavailableError as e:
        return jobs_unavailable(e)
    if job is None:
        return json_error(404, f"no retrain job {job_id!r}")
    return JSONResponse(job.public())


async def list_jobs(request: Request):
    runtime = get_runtime()
    denied = admin_denied(runtime.settings, request.headers.get("authorization"))
    if denied is not None:
        return denied
    try:
        jobs = await asyncio.to_thread(runtime.jobs.recent)
    except JobsUnavailableError as e:
        return jobs_unavailable(e)
    return JSONResponse({"jobs": [job.public() for job in jobs]})


jobs_app = Starlette(routes=[Route("/", list_jobs), Route("/{job_id}", job_status)])


def jobs_unavailable(error: JobsUnavailableError) -> Response:
    """503 in the documented error shape: the job database is down, serving is not."""
    return json_error(503, str(error), code="jobs_unavailable")


def _conflict(job: Job) -> Response:
    body = error_body(
        409, f"a retrain is already {job.state}: job {job.id}", code="retrain_in_progress"
    )
    body["job"] = job.public()
    return JSONResponse(body, status_code=409)
