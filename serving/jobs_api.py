"""Routes that BentoML's POST-only API methods cannot express, mounted into the service.

``GET /jobs/{job_id}`` and ``GET /jobs`` report retrain jobs (admin token required).
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving.errors import json_error
from serving.jobs import JobsUnavailableError
from serving.runtime import get_runtime, jobs_unavailable


async def job_status(request: Request):
    runtime = get_runtime()
    denied = runtime.authorize(request.headers.get("authorization"))
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
    denied = runtime.authorize(request.headers.get("authorization"))
    if denied is not None:
        return denied
    try:
        jobs = await asyncio.to_thread(runtime.jobs.recent)
    except JobsUnavailableError as e:
        return jobs_unavailable(e)
    return JSONResponse({"jobs": [job.public() for job in jobs]})


jobs_app = Starlette(routes=[Route("/", list_jobs), Route("/{job_id}", job_status)])
