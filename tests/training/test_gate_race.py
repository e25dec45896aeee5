"""A champion that moves while the gate imports the winner into the BentoML store.

The store import before the alias move takes seconds; another retrain may promote in
that time. The gate reads the champion again *after* the import, so the winner of a
comparison with a model that no longer answers waits as challenger, and the pipeline's
last step puts the real champion back as the store's latest.
"""

from __future__ import annotations

import json
import subprocess
import sys

from harness.homes import train_home
from harness.state import alias_version, list_store, registry_client
from harness.training import iris_train
from training.schema import CHALLENGER, CHAMPION
from training.settings import PROJECT_DIR, Settings

# Runs the real pipeline on the shipped data; the store import of the promoted winner
# first moves @champion to the version in argv, as a retrain finishing then would.
RACE = """
import json, sys
from mlflow import MlflowClient
from training import bento_store, pipeline
from training.settings import Settings

settings = Settings()
real, calls = bento_store.import_champion, []

def racing(settings, version=None):
    calls.append(version)
    if version is not None:
        MlflowClient().set_registered_model_alias(settings.model_name, "champion", sys.argv[1])
    return real(settings, version)

bento_store.import_champion = racing
result = pipeline.run(settings)
print(json.dumps({"promoted": result.promoted, "reason": result.reason,
                  "version": result.version, "calls": calls}))
"""


def test_a_champion_moved_during_the_store_import_is_not_overruled(tmp_path):
    home = train_home(tmp_path / "home", tmp_path / "home" / "bentoml", outdated=True)
    iris_train(home.env, "run", "--raw", str(tmp_path / "home" / "inputs" / "outdated.csv"))
    client = registry_client(home.tracking_uri)
    settings = Settings(home=home.home)
    name = settings.model_name
    assert alias_version(client, name, CHAMPION) == "1"  # v2, the same model again, waits

    result = race(home.env, rival="2")

    assert result["version"] == "3" and result["promoted"] is False, result
    assert "the champion moved to v2 while this gate compared with v1" in result["reason"]
    # v3 imported before the alias would have moved; then the pipeline's last step makes
    # the champion, whichever it is, the store's latest again.
    assert result["calls"] == ["3", None]
    assert alias_version(client, name, CHAMPION) == "2"  # the other retrain's promotion stands
    assert alias_version(client, name, CHALLENGER) == "3"
    store = list_store(home.bentoml_home, settings.bento_model_name)
    (latest,) = [m for m in store.models if m.tag == store.latest]
    assert latest.labels["registry_version"] == "2"  # what workers load is the champion

    # With no champion the gate compares nothing, and the same re-read applies: a first
    # champion set by another retrain during the import stands.
    client.delete_registered_model_alias(name, CHAMPION)
    result = race(home.env, rival="3")
    assert result["version"] == "4" and result["promoted"] is False, result
    assert "the champion moved to v3 while this gate found no champion" in result["reason"]
    assert alias_version(client, name, CHAMPION) == "3"
    assert alias_version(client, name, CHALLENGER) == "4"
    store = list_store(home.bentoml_home, settings.bento_model_name)
    (latest,) = [m for m in store.models if m.tag == store.latest]
    assert latest.labels["registry_version"] == "3"


def race(env: dict[str, str], rival: str) -> dict:
    """The pipeline's result, run while @champion moves to ``rival`` during its import."""
    out = subprocess.run(
        [sys.executable, "-c", RACE, rival],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
