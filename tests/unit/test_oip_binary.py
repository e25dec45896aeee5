"""The binary tensor data extension's framing, without a server."""

from __future__ import annotations

import numpy as np
import pytest

from serving.oip import binary
from serving.oip.protocol import InferError, Tensor

ROW = [5.1, 3.5, 1.4, 0.2]


def tensor(datatype: str = "FP32", shape=(1, 4), size: int | None = 16) -> dict:
    t = {"name": "features", "datatype": datatype, "shape": list(shape)}
    if size is not None:
        t["parameters"] = {"binary_data_size": size}
    return t


def test_split_body_uses_the_header_length():
    assert binary.split_body(b'{"a":1}xyz', "7") == (b'{"a":1}', b"xyz")
    assert binary.split_body(b'{"a":1}', None) == (b'{"a":1}', b"")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("x", "not a number"),
        ("-1", "not a number"),
        ("99", "only 3 bytes"),
        ("\u00b2", "not a number"),  # str.isdigit() says yes; int() says no
        ("9" * 5000, "not a number"),  # more digits than int() accepts
    ],
)
def test_split_body_rejects_bad_header_lengths(value, text):
    with pytest.raises(InferError, match=text) as error:
        binary.split_body(b"abc", value)
    assert error.value.kind == "invalid"


@pytest.mark.parametrize(("datatype", "dtype"), [("FP32", "<f4"), ("FP64", "<f8")])
def test_reader_decodes_little_endian_numbers(datatype, dtype):
    data = np.asarray([ROW, ROW], dtype=dtype).tobytes()
    reader = binary.BinaryReader(data)
    values = reader.take(tensor(datatype, (2, 4), len(data)))
    reader.finish()
    np.testing.assert_allclose(values, np.asarray(ROW * 2, dtype=dtype))


def test_reader_returns_none_for_json_inputs():
    assert binary.BinaryReader(b"").take(tensor(size=None)) is None


@pytest.mark.parametrize(
    ("t", "data", "text"),
    [
        (tensor(size=16), b"\0" * 8, "only 8 bytes"),  # truncated body
        (tensor(size=8), b"\0" * 8, "of FP32 needs 16"),  # size vs shape
        (tensor("FP64", size=16), b"\0" * 16, "needs 32"),
        (tensor(size=-4), b"", "non-negative integer"),
        (tensor(size="16"), b"\0" * 16, "non-negative integer"),
        (tensor(size=True), b"\0" * 16, "non-negative integer"),
        (tensor("BYTES", size=4), b"\0" * 4, "datatype 'BYTES' is not supported"),
        ({**tensor(), "parameters": [1]}, b"", "must be a JSON object"),
    ],
    ids=[
        "truncated",
        "size-vs-shape",
        "fp64-size",
        "negative",
        "string",
        "bool",
        "bytes-input",
        "parameters-list",
    ],
)
def test_reader_rejects_bad_framing(t, data, text):
    with pytest.raises(InferError, match=text):
        binary.BinaryReader(data).take(t)


def test_reader_rejects_bytes_left_over():
    reader = binary.BinaryReader(b"\0" * 20)
    reader.take(tensor(size=16))
    with pytest.raises(InferError, match="4 bytes of binary data"):
        reader.finish()


def test_binary_outputs_per_output_flag_overrides_the_request_default():
    body = {
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}],
    }
    assert binary.binary_outputs(body) == {"": True, "probabilities": False}
    assert binary.binary_outputs({}) == {"": None}
    with pytest.raises(InferError, match="true or false"):
        binary.binary_outputs({"parameters": {"binary_data_output": "yes"}})


def test_tensor_bytes_numbers_and_length_prefixed_strings():
    proba = Tensor("probabilities", "FP32", [1, 3], np.array([0.5, 0.25, 0.25], dtype="<f4"))
    assert binary.tensor_bytes(proba) == np.array([0.5, 0.25, 0.25], dtype="<f4").tobytes()
    species = Tensor("predicted_species", "BYTES", [2], np.array(["ab", "é"], dtype=object))
    assert binary.tensor_bytes(species) == b"\x02\0\0\0ab\x02\0\0\0\xc3\xa9"


@pytest.mark.parametrize("outputs", [5, True, "x", [1], [{"name": "a"}, "b"]])
def test_outputs_that_are_not_a_list_of_objects_are_refused(outputs):
    with pytest.raises(InferError, match="'outputs' must be a list of objects"):
        binary.binary_outputs({"outputs": outputs})
