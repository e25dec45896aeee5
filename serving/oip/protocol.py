"""Open Inference Protocol (KServe V2) semantics shared by the REST and gRPC front ends.

Input: one tensor of shape [N, 4] (FP32 or FP64), features in the order
sepal_length, sepal_width, petal_length, petal_width (cm). Outputs: ``predicted_species``
(BYTES, [N]) and ``probabilities`` (FP32, [N, 3], columns in ``class_names`` order).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from training.schema import FEATURES, MAX_CM, SPECIES

INPUT_NAME = "features"
SPECIES_OUTPUT = "predicted_species"
PROBA_OUTPUT = "probabilities"
OUTPUTS = (SPECIES_OUTPUT, PROBA_OUTPUT)
INPUT_DTYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
SERVER_NAME = "iris-classifier"


class InferError(Exception):
    """A request the protocol rejects: ``kind`` is 'invalid' (400 / INVALID_ARGUMENT),
    'not_found' (404 / NOT_FOUND) or 'unavailable' (503 / UNAVAILABLE: model unloaded)."""

    def __init__(self, message: str, kind: str = "invalid"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray  # flat for numbers; a list of str for BYTES


def server_metadata() -> dict:
    try:
        server_version = version("iris-classifier")
    except PackageNotFoundError:
        server_version = "0"
    return {
        "name": SERVER_NAME,
        "version": server_version,
        "extensions": ["binary_tensor_data", "model_repository"],
    }


def model_metadata(name: str, served_version: str, runtime: str) -> dict:
    return {
        "name": name,
        "versions": [served_version],
        "platform": "onnxruntime_onnx" if runtime == "onnx" else "sklearn",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, len(FEATURES)]}],
        "outputs": [
            {"name": SPECIES_OUTPUT, "datatype": "BYTES", "shape": [-1]},
            {"name": PROBA_OUTPUT, "datatype": "FP32", "shape": [-1, len(SPECIES)]},
        ],
    }


def rows_from(
    datatype: str, shape: list[int], values: np.ndarray, max_rows: int | None = None
) -> np.ndarray:
    """Validate one input tensor and return it as an (N, 4) float array.

    ``max_rows`` is the server's batch limit (IRIS_MAX_BATCH_SIZE), as on /predict_batch.
    """
    if datatype not in INPUT_DTYPES:
        raise InferError(f"input datatype {datatype!r} is not supported; use FP32 or FP64")
    if len(shape) != 2 or shape[1] != len(FEATURES) or shape[0] < 1:
        raise InferError(f"input shape {list(shape)} is not [N, {len(FEATURES)}] with N >= 1")
    if max_rows is not None and shape[0] > max_rows:
        raise InferError(
            f"input has {shape[0]} rows; the limit is {max_rows} (IRIS_MAX_BATCH_SIZE)"
        )
    if values.size != shape[0] * shape[1]:
        raise InferError(
            f"input has {values.size} values but shape {list(shape)} needs {shape[0] * shape[1]}"
        )
    rows = values.reshape(shape)
    if not np.isfinite(rows).all():
        raise InferError("input contains NaN or infinite values")
    if (rows <= 0).any() or (rows > MAX_CM).any():
        row, col = np.argwhere((rows <= 0) | (rows > MAX_CM))[0]
        raise InferError(
            f"input[{row}][{col}] ({FEATURES[col]}) = {rows[row, col]:g}"
            f" is outside (0, {MAX_CM:g}] cm"
        )
    return rows


def requested(names: list[str]) -> tuple[str, ...]:
    if not names:
        return OUTPUTS
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise InferError(f"unknown output(s) {unknown}; this model has {list(OUTPUTS)}")
    return tuple(dict.fromkeys(names))


def outputs(species: list[str], proba: np.ndarray, wanted: tuple[str, ...]) -> list[Tensor]:
    result = []
    for name in wanted:
        if name == SPECIES_OUTPUT:
            result.append(Tensor(name, "BYTES", [len(species)], np.asarray(species, dtype=object)))
        else:
            # Rounded float64 values: as JSON they print short ("0.9", not the float32
            # "0.8999999761581421"); binary and gRPC encodings convert them to FP32.
            result.append(Tensor(name, "FP32", list(proba.shape), proba.ravel()))
    return result
