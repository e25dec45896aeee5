"""``python -m serving.fetch_model NAME VERSION DEST``: get a registry version ready to serve.

A serving worker runs this when the champion moves, so that MLflow (and scikit-learn) are
imported by a short-lived process instead of living in every worker. It downloads the
version's model folder, loads it safely (skops with our trusted types: a tampered file
stops here), makes sure it carries a verified ONNX export, and only then renames it to
``DEST``. On failure it prints one line naming the problem and exits 3 if the version
itself was refused (unsafe or unloadable), 4 if the registry has no such version, 1 for
anything that may pass (registry down); ``DEST`` is then never created.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from training import onnx_export
from training.logs import configure_logging, one_line
from training.model_io import ModelLoadError, load_classifier
from training.settings import get_settings

logger = logging.getLogger("serving.fetch_model")
REFUSED_EXIT = 3
"""Exit status when the version itself is unsafe or unusable (the worker backs off longer)."""
MISSING_EXIT = 4
"""Exit status when the registry has no such model or version."""


def fetch(name: str, version: str, dest: Path) -> None:
    import mlflow

    settings = get_settings()
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    partial = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=str(partial)
        )
        classifier = load_classifier(partial)
        onnx_export.ensure(partial, classifier.estimator, len(classifier.feature_names))
        partial.rename(dest)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def main(argv: list[str]) -> int:
    name, version, dest = argv
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_dir, "service.log")
    try:
        fetch(name, version, Path(dest))
    except Exception as e:  # reported to the worker as one line
        logger.debug("fetch failed", exc_info=True)
        sys.stderr.write(one_line(e) + "\n")
        if getattr(e, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
            return MISSING_EXIT
        # The version itself is unsafe or unusable: the worker will not retry it soon.
        return REFUSED_EXIT if isinstance(e, ModelLoadError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
