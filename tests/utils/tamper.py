"""Build tampered copies of a real MLflow model folder (for security tests)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml


def tamper(model_dir: Path, out: Path, *, whitelist: bool = True) -> Path:
    """Copy ``model_dir`` to ``out`` with a model.skops that would run ``os.system``.

    With ``whitelist`` the MLmodel file also lists the dangerous type as trusted, as an
    attacker who can write the artifact would do; MLflow's own loader would then accept it.
    """
    import skops.io
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    shutil.copytree(model_dir, out)
    evil = make_pipeline(FunctionTransformer(os.system))
    skops.io.dump(evil, out / "model.skops")
    if whitelist:
        mlmodel = yaml.safe_load((out / "MLmodel").read_text())
        types = skops.io.get_untrusted_types(file=out / "model.skops")
        mlmodel["flavors"]["sklearn"]["skops_trusted_types"] = sorted(set(types))
        (out / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return out


def truncate(model_dir: Path, out: Path) -> Path:
    """Copy with a model.skops cut in half (a corrupt download or disk)."""
    shutil.copytree(model_dir, out)
    data = (out / "model.skops").read_bytes()
    (out / "model.skops").write_bytes(data[: len(data) // 2])
    return out
