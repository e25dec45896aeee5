"""The retrain jobs HTTP API: the answer to ``POST /retrain`` and the mounted ``/jobs`` app.

``POST /retrain`` (a BentoML API in ``service.py``) answers with :func:`start_retrain`;
``GET /jobs/{job_id}`` and ``GET /jobs`` report jobs. All need the admin token.
"""

from __future__ import annotations

from fastapi import Request
from starlette.responses import JSONResponse, Response

from serving import route_docs
from serving.auth import admin_denied
from serving.db_calls import BoundedCalls, answer_within
from serving.errors import database_unavailable, error_body, json_error, json_response
from serving.jobs import ConflictError, Job, JobsUnavailableError
from serving.route_docs import JobId
from serving.runtime import IrisRuntime, get_runtime
from serving.schemas import ErrorResponse, JobList, JobStatus

_DATABASE = BoundedCalls("jobs-db")
"""The job database's calls (``serving.db_calls``): a 503 once it has not answered
within ``db_calls.answer_within``. A launch that answered 503 so may still
start its job; asking again then meets it (409)."""


async def _call(runtime: IrisRuntime, call, *args):
    """``call(*args)`` on the job database's threads; a stuck database is unavailable."""
    wait_s = answer_within(runtime.settings)
    try:
        return await _DATABASE.run(wait_s, call, *args)
    except TimeoutError:
        raise JobsUnavailableError(
            f"the job database did not answer within {wait_s:.0f} s"
        ) from None


async def start_retrain(runtime: IrisRuntime, with_feedback: bool = False) -> Response:
    """202 with the new job's id, 409 if one is running, 503 if the job database is down."""
    try:
        job = await _call(runtime, runtime.retrains.launch, with_feedback)
    except ConflictError as c:
        return _conflict(c.job)
    except JobsUnavailableError as e:
        return jobs_unavailable(e)
    payload = {"job_id": job.id, "state": job.state, "status_url": f"/jobs/{job.id}"}
    return json_response(payload, 202)


async def job_status(request: Request, job_id: JobId) -> Response:
    """One retrain job: queued, running, succeeded or failed. Admin token."""
    runtime = get_runtime()
    denied = admin_denied(runtime.settings, request.headers.get("authorization"))
    if denied is not None:
        return denied
    try:
        job = await _call(runtime, runtime.jobs.get, job_id)
    except JobsUnavailableError as e:
        return jobs_unavailable(e)
    if job is None:
        return json_error(404, f"no retrain job {job_id!r}")
    return JSONResponse(job.public())


async def list_jobs(request: Request) -> Response:
    """Recent retrain jobs, newest first. Admin token."""
    runtime = get_runtime()
    denied = admin_denied(runtime.settings, request.headers.get("authorization"))
    if denied is not None:
        return denied
    try:
        jobs = await _call(runtime, runtime.jobs.recent)
    except JobsUnavailableError as e:
        return jobs_unavailable(e)
    return JSONResponse({"jobs": [job.public() for job in jobs]})


TAGS = ["Retrain"]
_errors = route_docs.errors(ErrorResponse, 401, 403, 503)
jobs_app = route_docs.app("Retrain jobs")
jobs_app.add_api_route(
    "/",
    list_jobs,
    methods=["GET"],
    tags=TAGS,
    response_model=None,
    responses={
        200: {
            "model": JobList,
            "links": {
                "JobStatus": {
                    "operationId": "jobs_status",
                    "parameters": {"job_id": "$response.body#/jobs/0/id"},
                }
            },
        },
        **_errors,
    },
    openapi_extra={"security": route_docs.BEARER},
    operation_id="jobs_list",
    summary="List retrain jobs",
)
jobs_app.add_api_route(
    "/{job_id}",
    job_status,
    methods=["GET"],
    tags=TAGS,
    response_model=None,
    responses={200: {"model": JobStatus}, **_errors, **route_docs.errors(ErrorResponse, 404)},
    openapi_extra={"security": route_docs.BEARER},
    operation_id="jobs_status",
    summary="One retrain job",
)


def jobs_unavailable(error: JobsUnavailableError) -> Response:
    """503 in the documented error shape: the job database is down, serving is not."""
    return database_unavailable(str(error), code="jobs_unavailable")


def _conflict(job: Job) -> Response:
    body = error_body(
        409, f"a retrain is already {job.state}: job {job.id}", code="retrain_in_progress"
    )
    body["job"] = job.public()
    return JSONResponse(body, status_code=409)
