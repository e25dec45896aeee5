"""What gets installed outside the checkout: the wheel, and the Bento's pinned requirements."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from scripts.serve_requirements import locked, render

ROOT = Path(__file__).parents[2]


def test_serving_requirements_are_the_locked_closure_of_the_runtime_dependencies():
    """requirements-serve.txt is exactly what scripts/serve_requirements.py writes now."""
    committed = (ROOT / "requirements-serve.txt").read_text()
    assert committed == render(), "run: .venv/bin/python scripts/serve_requirements.py"
    serve, lock = locked(ROOT / "requirements-serve.txt"), locked(ROOT / "requirements.lock")
    assert {"bentoml", "onnxruntime", "grpcio", "protobuf"} <= serve.keys()
    assert {name: v for name, v in serve.items() if lock.get(name) != v} == {}


def test_lock_pins_every_line_exactly():
    lines = [
        x
        for x in (ROOT / "requirements.lock").read_text().splitlines()
        if x and not x.startswith("#")
    ]
    assert all("==" in x and " @ " not in x for x in lines), [
        x for x in lines if "==" not in x or " @ " in x
    ]
    assert "setuptools" in locked(ROOT / "requirements.lock")  # grpcio-tools needs it


@pytest.mark.integration
def test_wheel_installs_and_imports_every_module_without_the_checkout(tmp_path):
    """``pip wheel .`` packs every package (the gRPC stubs and .proto included): a fresh
    venv with only the wheel and the locked dependencies imports every module."""
    # Build from a copy of what the wheel is made of: a build/ folder left in the checkout
    # by an earlier build would otherwise leak stale packages into the wheel.
    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    for package in ("training", "serving"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(dist),
            str(src),  # the copy: never ROOT, whose build/ may hold stale modules
        ],
        check=True,
        cwd=tmp_path,
        timeout=300,
    )
    (wheel,) = dist.glob("iris_classifier-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
        timeout=300,
    )
    # The dependencies come from this venv's site-packages, added by a .pth file: such a
    # path's own .pth files are not read, so the checkout's editable install stays off.
    site = Path(sysconfig.get_paths()["purelib"])
    (venv_site,) = (venv / "lib").glob("python3.*/site-packages")
    (venv_site / "deps.pth").write_text(f"{site}\n")
    probe = """
import importlib, json, pathlib, pkgutil, sys
import serving, training
mods = []
for pkg in (serving, training):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)
        mods.append(info.name)
proto = pathlib.Path(serving.__file__).parent / "oip" / "proto" / "grpc_predict_v2.proto"
print(json.dumps({"file": serving.__file__, "modules": mods, "proto": proto.is_file()}))
"""
    out = subprocess.run(
        [str(python), "-c", probe],
        check=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "GIT_PYTHON_REFRESH": "quiet"},
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["file"].startswith(str(venv)), report["file"]
    assert report["proto"] is True
    for module in (
        "serving.oip.grpc_server",
        "serving.oip.proto.grpc_predict_v2_pb2_grpc",
        "serving.oip.rest",
        "serving.oip.routes",
        "serving.runtime",
        "training.pipeline",
    ):
        assert module in report["modules"], module
