"""The binary tensor data extension of the Open Inference Protocol over HTTP.

Triton defined it and KServe's servers accept it; ``tritonclient.http`` uses it by
default. A request body is a JSON header of ``Inference-Header-Content-Length`` bytes
followed by raw tensor bytes; each input sent that way says how many of them are its own
in ``parameters.binary_data_size``, in input order. Numbers are little-endian; a BYTES
element is a 4-byte little-endian length and then its bytes.

Outputs come back the same way when the request asks (``parameters.binary_data`` on an
output, or ``parameters.binary_data_output`` on the request for every output): the
output carries ``parameters.binary_data_size`` instead of ``data``, and its bytes follow
the JSON header, whose length is in the response's ``Inference-Header-Content-Length``.

Every framing mistake (a header length that is not a number or exceeds the body, sizes
that overrun, leave bytes over, or disagree with the shape) is an :class:`InferError`
(400 / ``INVALID_ARGUMENT``), never a server error.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from serving.oip.protocol import INPUT_DTYPES, InferError, Tensor

HEADER = "inference-header-content-length"
SIZE = "binary_data_size"
OUTPUT_DTYPES = {"FP32": "<f4", "FP64": "<f8"}


def split_body(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tail) of a request body; all JSON without the header."""
    if header_length is None:
        return raw, b""
    text = header_length.strip()
    # ASCII digits only, and a sane length: str.isdigit() also takes "²", and int() refuses
    # numbers of more than 4,300 digits; either would have been a 500.
    if not re.fullmatch(r"[0-9]{1,15}", text):
        raise InferError(f"Inference-Header-Content-Length {header_length[:40]!r} is not a number")
    n = int(text)
    if n > len(raw):
        raise InferError(
            f"Inference-Header-Content-Length is {n} but the body has only {len(raw)} bytes"
        )
    return raw[:n], raw[n:]


@dataclass
class BinaryReader:
    """Hands out the binary tail to inputs in order, and checks nothing is left over."""

    data: bytes
    offset: int = 0

    def take(self, tensor: dict) -> np.ndarray | None:
        """The flat values of ``tensor`` if it was sent as binary data, else None."""
        size = _parameters(tensor, "input").get(SIZE)
        if size is None:
            return None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InferError(f"input parameter {SIZE} must be a non-negative integer, not {size!r}")
        if self.offset + size > len(self.data):
            raise InferError(
                f"input {tensor.get('name')!r} declares {SIZE} {size} but only"
                f" {len(self.data) - self.offset} bytes of binary data follow the JSON header"
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return _values(tensor, chunk)

    def finish(self) -> None:
        left = len(self.data) - self.offset
        if left:
            raise InferError(
                f"{left} bytes of binary data follow the JSON header that no input's {SIZE} covers"
            )


def _values(tensor: dict, chunk: bytes) -> np.ndarray:
    datatype = tensor.get("datatype")
    dtype = INPUT_DTYPES.get(str(datatype))
    if dtype is None:
        raise InferError(f"input datatype {datatype!r} is not supported; use FP32 or FP64")
    shape = tensor.get("shape")
    if isinstance(shape, list) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        needed = int(math.prod(shape)) * dtype.itemsize
        if needed != len(chunk):
            raise InferError(
                f"input {tensor.get('name')!r} has {len(chunk)} bytes of binary data but shape"
                f" {shape} of {datatype} needs {needed}"
            )
    elif len(chunk) % dtype.itemsize:
        raise InferError(f"{len(chunk)} bytes are not a whole number of {datatype} values")
    return np.frombuffer(chunk, dtype=dtype).astype(np.float64)


def _parameters(obj: dict, what: str) -> dict:
    parameters = obj.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InferError(f"{what} 'parameters' must be a JSON object")
    return parameters


def outputs_of(body: dict) -> list:
    """The request's ``outputs`` list (empty when absent).

    Raises:
        InferError: ``outputs`` is not a list of objects.
    """
    outputs = body.get("outputs")
    if outputs is None:
        return []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise InferError("'outputs' must be a list of objects")
    return outputs


def binary_outputs(body: dict) -> dict[str, bool]:
    """Which outputs the request wants as binary data: name -> flag ("" = the default)."""
    default = _flag(_parameters(body, "request"), "binary_data_output")
    wanted = {"": default}
    for output in outputs_of(body):
        if isinstance(output, dict):
            flag = _flag(_parameters(output, "output"), "binary_data")
            wanted[str(output.get("name", ""))] = default if flag is None else flag
    return wanted


def _flag(parameters: dict, key: str) -> bool | None:
    value = parameters.get(key)
    if value is not None and not isinstance(value, bool):
        raise InferError(f"parameter {key} must be true or false, not {value!r}")
    return value


def tensor_bytes(tensor: Tensor) -> bytes:
    """A tensor's raw form: little-endian numbers, or length-prefixed BYTES elements."""
    if tensor.datatype != "BYTES":
        dtype = OUTPUT_DTYPES[tensor.datatype]
        return np.ascontiguousarray(tensor.data, dtype=dtype).tobytes()
    parts = []
    for text in tensor.data:
        encoded = text.encode()
        parts.append(len(encoded).to_bytes(4, "little") + encoded)
    return b"".join(parts)
