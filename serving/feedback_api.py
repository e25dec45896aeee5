"""``POST /feedback``: ground truth for served predictions, from a downstream system.

The body is a list ``[{"prediction_id": "...", "species": "Iris-setosa"}, ...]`` (at most
``MAX_LABELS`` items). Bearer token: ``IRIS_FEEDBACK_TOKEN``, else the admin token. All or
nothing: an unknown id (404) or a bad item (422) stores nothing. Sending a label again is
idempotent; a different species for the same id replaces it (a correction). Every error
uses the service's error shape.
"""

from __future__ import annotations

import json
import logging
from typing import Literal

import sqlalchemy as sa
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, RootModel, TypeAdapter, ValidationError
from starlette.responses import Response

from serving import route_docs
from serving.auth import feedback_denied
from serving.db_calls import BoundedCalls, answer_within
from serving.errors import database_unavailable, json_error, json_response, validation_details
from serving.runtime import IrisRuntime, get_runtime
from serving.schemas import ErrorResponse
from training.loop_store import Labelled, UnknownPredictionError
from training.schema import SPECIES

logger = logging.getLogger(__name__)

MAX_LABELS = 10_000
Species = Literal[SPECIES]  # type: ignore[valid-type]


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prediction_id: str = Field(
        min_length=1,
        max_length=80,
        pattern=r"^[0-9a-f]{32}(-[0-9]{1,6})?$",
        description="The prediction_id a predict answer returned.",
        json_schema_extra={"example": "01a22b46614d7f0399afd47b9928236c"},
    )
    species: Species = Field(description="The true species.")


class FeedbackResult(BaseModel):
    added: int = Field(description="New labels stored.")
    updated: int = Field(description="Labels that replaced a different earlier one.")
    unchanged: int = Field(description="Labels sent again with the same species.")


class FeedbackRequest(RootModel[list[FeedbackItem]]):
    """Labels for served predictions (documentation: :func:`post_feedback` parses them)."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": [
                {"prediction_id": "01a22b46614d7f0399afd47b9928236c", "species": "Iris-setosa"}
            ]
        }
    )

    # The MAX_LABELS limit is a 413 (too large), not a malformed body: described, not a
    # maxItems that would promise a 4xx of the validation kind.
    root: list[FeedbackItem] = Field(
        min_length=1, description=f"At most {MAX_LABELS} labels per call (else 413)."
    )


_items = TypeAdapter(list[FeedbackItem])

_DATABASE = BoundedCalls("feedback-db")
"""Feedback's database calls (``serving.db_calls``): a 503 once the database has not
answered within ``db_calls.answer_within``."""


def _unavailable(why: str) -> Response:
    return database_unavailable(f"{why}; retry shortly")


async def post_feedback(request: Request) -> Response:
    """Ground truth for served predictions: all stored, or none. Feedback (or admin) token."""
    runtime = get_runtime()
    denied = feedback_denied(runtime.settings, request.headers.get("authorization"))
    if denied is not None:
        return denied
    try:
        raw = json.loads(await request.body())
    except ValueError:
        return json_error(400, "body is not valid JSON", code="invalid_json")
    if isinstance(raw, list) and len(raw) > MAX_LABELS:
        return json_error(413, f"{len(raw)} labels in one call; the limit is {MAX_LABELS}")
    try:
        items = _items.validate_python(raw)
    except ValidationError as e:
        details = validation_details(e.errors())
        summary = details[0]["message"] if details else "invalid feedback"
        if len(details) > 1:
            summary += f" (and {len(details) - 1} more)"
        return json_error(422, summary, details)
    if not items:
        return json_error(422, "no labels: send a non-empty list")
    conflicts = _conflicting_labels(items)
    if conflicts:
        return json_error(422, conflicts[0]["message"], conflicts)
    pairs = [(i.prediction_id, i.species) for i in items]
    wait_s = answer_within(runtime.settings)
    try:
        result = await _DATABASE.run(wait_s, _store_and_count, runtime, pairs)
    except TimeoutError:
        logger.error("Feedback not stored: the database did not answer within %.0f s", wait_s)
        return _unavailable(f"the feedback database did not answer within {wait_s:.0f} s")
    except UnknownPredictionError as e:
        unknown = e.args[0]
        rows: dict[str, int] = {}
        for n, item in enumerate(items):
            rows.setdefault(item.prediction_id, n)  # its first row
        details = [
            {"field": "prediction_id", "row": rows[pid], "message": f"{pid}: {e.why[pid]}"}
            for pid in unknown[:20]
        ]
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        return json_error(404, f"unknown prediction {details[0]['message']}{more}", details)
    except sa.exc.SQLAlchemyError as e:
        logger.error("Feedback not stored, database unavailable: %s", type(e).__name__)
        return _unavailable("the feedback database is unavailable")
    return json_response(
        FeedbackResult(
            added=len(result.added), updated=result.updated, unchanged=result.unchanged
        ).model_dump()
    )


def _store_and_count(runtime: IrisRuntime, pairs: list[tuple[str, str]]) -> Labelled:
    """Store the labels and count the new ones as soon as they are committed: on the
    database's thread, so a call whose request gave up (503) but that committed later is
    counted too (its retry finds them unchanged)."""
    result = runtime.feedback_store.label(pairs)
    for version, _role, correct in result.added:
        runtime.metrics.feedback.labels(model_version=version, correct=str(correct).lower()).inc()
    return result


def _conflicting_labels(items: list[FeedbackItem]) -> list[dict]:
    """One detail per row that labels an id already labelled differently in this call."""
    first: dict[str, tuple[int, str]] = {}
    details = []
    for n, item in enumerate(items):
        row, species = first.setdefault(item.prediction_id, (n, item.species))
        if species != item.species:
            details.append(
                {
                    "field": "species",
                    "row": n,
                    "message": f"{item.prediction_id} is labelled {species} in row {row} and "
                    f"{item.species} in row {n}: send one label per prediction",
                }
            )
    return details


feedback_app = route_docs.app("Feedback")
feedback_app.add_api_route(
    "/",
    post_feedback,
    methods=["POST"],
    tags=["Feedback"],
    response_model=None,
    responses={
        200: {"model": FeedbackResult},
        **route_docs.errors(
            ErrorResponse,
            400,
            401,
            403,
            404,
            413,
            422,
            503,
            s404="A prediction_id was never served here",
        ),
    },
    openapi_extra={
        "security": route_docs.BEARER,
        "requestBody": route_docs.request_body(FeedbackRequest),
    },
    operation_id="feedback",
    summary="Send ground truth for served predictions",
)
