"""Shared by the conformance client scripts (run in their own venv, not the project's).

Each script reads a JSON config (argv[1]) and prints one JSON object of what the server
answered; tests/conformance asserts on it. Nothing here judges the answers.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

DTYPES = {"FP32": np.float32, "FP64": np.float64}


def config() -> dict[str, Any]:
    with open(sys.argv[1]) as f:
        return json.load(f)


def emit(result: dict[str, Any]) -> None:
    json.dump(result, sys.stdout)


def text(values: Any) -> list[str]:
    """A BYTES output as str, whether the client returned bytes or str."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()]


def error_of(call: Callable[[], Any], describe: Callable[[BaseException], dict]) -> dict:
    """Run a call expected to fail: its error as {"code", "message"}, or {"code": "OK"}."""
    try:
        call()
    except Exception as e:  # noqa: BLE001 - every client has its own exception type
        return describe(e)
    return {"code": "OK", "message": ""}


def bad_rows(rows: list[list[float]]) -> dict[str, tuple[np.ndarray, str]]:
    """Inputs the server must refuse with INVALID_ARGUMENT: (array, datatype to declare)."""
    nan = np.array(rows[:1], dtype=np.float32)
    nan[0, 0] = np.nan
    return {
        "nan": (nan, "FP32"),
        "wrong_shape": (np.array(rows[:1], dtype=np.float32)[:, :3], "FP32"),
        "wrong_datatype": (np.array(rows[:1], dtype=np.int64), "INT64"),
    }
