"""The committed gRPC stubs are exactly what `make proto` generates from the .proto."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
PROTO = Path("serving/oip/proto/grpc_predict_v2.proto")


def test_committed_stubs_match_the_proto(tmp_path):
    (tmp_path / PROTO.parent).mkdir(parents=True)
    shutil.copy(ROOT / PROTO, tmp_path / PROTO)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            "--python_out=.",
            "--grpc_python_out=.",
            "--pyi_out=.",
            str(PROTO),
        ],
        cwd=tmp_path,
        check=True,
    )
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
        name = PROTO.stem + suffix
        assert (tmp_path / PROTO.parent / name).read_text() == (
            ROOT / PROTO.parent / name
        ).read_text(), name
