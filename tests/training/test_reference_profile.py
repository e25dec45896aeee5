"""The training data's reference profile, and PSI/KS against it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training import reference_profile as rp
from training.schema import FEATURES, SPECIES


@pytest.fixture(scope="module")
def iris() -> pd.DataFrame:
    from harness.cli import RAW_CSV
    from training.data import load_raw

    return load_raw(RAW_CSV)


def test_profile_summarises_every_feature_and_class(iris, tmp_path):
    profile = rp.build(iris, digest="abc")
    assert set(profile["features"]) == set(FEATURES)
    petal = profile["features"]["petal_length"]
    assert petal["min"] == pytest.approx(1.0) and petal["max"] == pytest.approx(6.9)
    assert len(petal["quantiles"]) == 101 and len(petal["bin_edges"]) == 9
    assert sum(petal["bin_shares"]) == pytest.approx(1.0, abs=1e-5)
    assert profile["class_shares"] == {s: pytest.approx(1 / 3) for s in SPECIES}
    assert rp.read(tmp_path) is None
    rp.write(profile, tmp_path)
    assert rp.read(tmp_path) == profile


def test_same_distribution_scores_low_shifted_scores_high(iris):
    profile = rp.build(iris)
    rng = np.random.default_rng(0)
    feature = profile["features"]["petal_length"]
    same = rng.choice(iris["petal_length"].to_numpy(), size=2000)
    shifted = same + 2.0
    assert rp.psi(feature, same) < 0.1
    assert rp.ks(feature, same) < 0.1
    assert rp.psi(feature, shifted) > 0.25
    assert rp.ks(feature, shifted) > 0.3
    # Another feature, untouched by the shift, stays low.
    width = profile["features"]["sepal_width"]
    assert rp.psi(width, rng.choice(iris["sepal_width"].to_numpy(), size=2000)) < 0.1


def test_unknown_schema_is_refused(tmp_path):
    rp.write({"schema": 99}, tmp_path)
    with pytest.raises(ValueError, match="schema 99"):
        rp.read(tmp_path)


def test_float32_inputs_bin_like_the_float64_training_data(iris):
    """Served rows are float32; values on a decile edge must not slip into the bin below."""
    profile = rp.build(iris)
    for name in ("sepal_width", "petal_width"):
        values = iris[name].to_numpy()
        assert rp.psi(profile["features"][name], values.astype(np.float32)) < 1e-6
        assert rp.ks(profile["features"][name], values.astype(np.float32)) < 0.05
