"""What the mounted FastAPI apps declare about their routes for the OpenAPI document.

BentoML merges the document FastAPI generates for ``/jobs``, ``/feedback`` and ``/v2``
into its own. These helpers keep those declarations short: error responses described
from the one status table (:data:`serving.errors.STATUSES`), and path parameters whose
constraints (the served model's name, version and job id patterns) and examples let a
machine explore the API. The constraints are documentation: handlers check the values
themselves and answer 404 for anything they do not serve, so FastAPI validates nothing
but the type (a string) on the hot path.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Path
from pydantic import BaseModel

from serving.errors import STATUSES
from serving.schemas import JOB_ID_EXAMPLE, JOB_ID_PATTERN

REF = "#/components/schemas/{model}"
VERSION_PATTERN = r"^[1-9][0-9]*$"
BEARER = [{"bearer": []}]
"""Operation security: the admin (or feedback) bearer token."""


def app(title: str) -> FastAPI:
    """A FastAPI app to mount: no docs pages of its own (the service serves /docs.json)."""
    return FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)


def errors(model: type[BaseModel], *codes: int, **meanings: str) -> dict[int | str, Any]:
    """FastAPI ``responses`` for error statuses, all answered with ``model``.

    Every other 4xx and 5xx (405, 408, 413, 415, 429, 500, 504 from the request guard and
    the server) has the same shape; ``4XX``/``5XX`` say so and keep FastAPI from
    documenting a 422 of its own shape.

    Args:
        model: The error body (the service's shape, or the protocol's on ``/v2``).
        codes: Statuses this route answers, described from the status table.
        meanings: ``s404="..."``: a route-specific description instead.
    """
    responses: dict[int | str, Any] = {
        code: {"model": model, "description": meanings.get(f"s{code}", STATUSES[code].meaning)}
        for code in codes
    }
    responses["4XX"] = {"model": model, "description": "Any other client error"}
    responses["5XX"] = {"model": model, "description": "Server error or timeout"}
    return responses


def request_body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """An ``openapi_extra`` request body documenting ``model`` (the handler parses it).

    The model and the models it uses travel as ``$defs`` that ``serving.openapi`` moves
    into the document's components.
    """
    schema = model.model_json_schema(ref_template=REF)
    defs = {**schema.pop("$defs", {}), model.__name__: schema}
    ref = {"$ref": REF.format(model=model.__name__), "$defs": defs}
    return {"required": required, "content": {"application/json": {"schema": ref}}}


def _served_model_name(schema: dict[str, Any]) -> None:
    """The configured model name, read when the document is generated (not at import)."""
    from training.settings import get_settings

    name = get_settings().model_name
    schema.update(enum=[name], example=name)


ModelName = Annotated[
    str,
    Path(
        description="The served model's registered name.",
        json_schema_extra=_served_model_name,  # type: ignore[arg-type]
    ),
]
Version = Annotated[
    str,
    Path(
        description="Registry version (a positive integer).",
        json_schema_extra={"pattern": VERSION_PATTERN, "example": "1"},
    ),
]
JobId = Annotated[
    str,
    Path(
        description="The job_id POST /retrain answered with.",
        json_schema_extra={"pattern": JOB_ID_PATTERN, "example": JOB_ID_EXAMPLE},
    ),
]
