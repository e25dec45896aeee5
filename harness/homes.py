"""A state folder in which the whole pipeline has run, for fixtures to build and share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.cli import isolated_env, run_pipeline
from harness.data_files import read_table, with_two_species_confused, write_table
from harness.state import registry_client
from training.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient


@dataclass(frozen=True)
class TrainedHome:
    """Everything one ``iris-train run`` left behind, and how to reach it.

    Attributes:
        home: ``IRIS_HOME``: mlflow.db and mlruns/ (local store), data/processed, logs/.
        bentoml_home: ``BENTOML_HOME`` holding the imported champion.
        tracking_uri: MLflow tracking and registry URI the run used.
        env: Environment for subprocesses (``iris-train``, ``bentoml serve``, ...) that
            must see this state and nothing else.
        result: The run's JSON result (``PipelineResult.to_dict()``): ``version``,
            ``promoted``, ``reason``, ``metrics``, ``candidates``, ``bento_tag``, run ids.
    """

    home: Path
    bentoml_home: Path
    tracking_uri: str
    env: dict[str, str]
    result: dict[str, Any]

    @property
    def settings(self) -> Settings:
        """Settings as the CLI saw them (built directly: no env, no lru_cache)."""
        return Settings(home=self.home, tracking_uri=self.tracking_uri)

    @property
    def version(self) -> str:
        """Registry version created by the run (the champion after a first run)."""
        return self.result["version"]

    @property
    def test_csv(self) -> Path:
        """The processed test split the champion was scored on."""
        return self.home / "data" / "processed" / "test.csv"

    @property
    def bento_tag(self) -> str:
        """BentoML store tag of the champion, e.g. ``iris-classifier:v1-<run id>``."""
        return self.result["bento_tag"]

    def client(self) -> MlflowClient:
        return registry_client(self.tracking_uri)


def train_home(
    home: Path,
    bentoml_home: Path,
    *,
    tracking_uri: str | None = None,
    outdated: bool = False,
) -> TrainedHome:
    """Run ``iris-train run`` on the shipped data into ``home`` and describe the result.

    Args:
        home: Empty (or not yet existing) folder used as ``IRIS_HOME``.
        bentoml_home: Folder used as ``BENTOML_HOME``.
        tracking_uri: A remote MLflow server; default is SQLite at ``home/mlflow.db``.
        outdated: Train v1 on a copy of the shipped data in which versicolor and virginica
            are confused (:func:`harness.data_files.with_two_species_confused`, written
            to ``home/inputs/outdated.csv``), so that a retrain on the shipped data is
            genuinely better and the promotion gate promotes it. Without it, a retrain on
            the same data is an identical model, which the gate keeps as challenger.
    """
    overrides = {"IRIS_TRACKING_URI": tracking_uri} if tracking_uri else {}
    env = isolated_env(home, bentoml_home, **overrides)
    args: tuple[str, ...] = ()
    if outdated:
        settings = Settings(home=home)
        table = with_two_species_confused(
            read_table(), seed=settings.seed, test_size=settings.test_size
        )
        args = ("--raw", str(write_table(home / "inputs" / "outdated.csv", table)))
    result = run_pipeline(env, *args)
    uri = tracking_uri or Settings(home=home).tracking_uri
    return TrainedHome(home, bentoml_home, uri, env, result)
