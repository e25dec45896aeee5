"""The Open Inference Protocol's REST messages as pydantic models, for the OpenAPI document.

Documentation only: the routes in :mod:`serving.oip.rest` parse and answer with
pydantic-core directly (the infer route is the hot path), and these models describe what
they accept and return. An infer request is described for one flower (shape ``[1, 4]``):
``[N, 4]`` with N rows works the same, but JSON Schema cannot tie the length of ``data``
to ``shape``, and a document that allowed any shape would promise answers the server
must refuse.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from serving.oip.protocol import INPUT_NAME, OUTPUTS, PROBA_OUTPUT, SERVER_NAME, SPECIES_OUTPUT
from training.schema import FEATURES, MAX_CM

Measurement = Annotated[float, Field(gt=0, le=MAX_CM, description="Centimetres.")]
ROW = [5.1, 3.5, 1.4, 0.2]


class ServerMetadata(BaseModel):
    name: str = Field(examples=[SERVER_NAME])
    version: str = Field(examples=["0.1.0"])
    extensions: list[str] = Field(examples=[["binary_tensor_data", "model_repository"]])


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 stands for any size.")


class ModelMetadata(BaseModel):
    name: str = Field(examples=["iris-classifier"])
    versions: list[str] = Field(description="The version this path serves.", examples=[["1"]])
    platform: str = Field(examples=["onnxruntime_onnx"])
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    name: str
    ready: bool


class OutputParameters(BaseModel):
    binary_data: bool | None = Field(None, description="Send this output as binary data.")


class RequestedOutput(BaseModel):
    name: Literal[OUTPUTS]  # type: ignore[valid-type]
    parameters: OutputParameters | None = None


class RequestParameters(BaseModel):
    binary_data_output: bool | None = Field(None, description="Every output as binary data.")


class InferInput(BaseModel):
    name: str = Field(examples=[INPUT_NAME])
    shape: list[int] = Field(
        description=f"[N, {len(FEATURES)}]: N flowers ({', '.join(FEATURES)}).",
        json_schema_extra={"enum": [[1, len(FEATURES)]]},
    )
    datatype: Literal["FP32", "FP64"]
    data: (
        Annotated[list[Measurement], Field(min_length=4, max_length=4)]
        | Annotated[
            list[Annotated[list[Measurement], Field(min_length=4, max_length=4)]],
            Field(min_length=1, max_length=1),
        ]
    ) = Field(description="Row-major values, flat or nested; N x 4 of them.")


class InferRequest(BaseModel):
    """One input tensor ``features`` of shape [N, 4] (FP32 or FP64)."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": "req-1",
                "inputs": [{"name": INPUT_NAME, "shape": [1, 4], "datatype": "FP32", "data": ROW}],
            }
        }
    )

    id: str | None = Field(None, description="Echoed in the response.")
    inputs: list[InferInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestedOutput] | None = Field(
        None, description=f"Which outputs, in order (default: {', '.join(OUTPUTS)})."
    )
    parameters: RequestParameters | None = None


class OutputTensor(BaseModel):
    name: Literal[OUTPUTS]  # type: ignore[valid-type]
    datatype: Literal["BYTES", "FP32"]
    shape: list[int]
    data: list[str] | list[float] | None = Field(
        None, description=f"{SPECIES_OUTPUT}: species; {PROBA_OUTPUT}: N x 3 probabilities."
    )
    parameters: dict[str, int] | None = Field(
        None, description="binary_data_size when the output follows as binary data."
    )


class InferResponseParameters(BaseModel):
    prediction_id: str = Field(
        description="For POST /feedback (rows: <id>-<row>); also the X-Prediction-Id header.",
        examples=["01a22b46614d7f0399afd47b9928236c"],
    )


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: InferResponseParameters
    outputs: list[OutputTensor]


class OipError(BaseModel):
    """Every Open Inference Protocol error (routes under /v2)."""

    error: str = Field(examples=["unknown model 'x'; this server serves 'iris-classifier'"])


class RepositoryIndexRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"ready": True}})

    ready: bool | None = Field(None, description="Only models that are ready.")


class RepositoryModel(BaseModel):
    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str = Field(description="Why it is unavailable (empty when ready).")


class RepositoryIndex(RootModel[list[RepositoryModel]]):
    pass
