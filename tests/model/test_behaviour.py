"""Behaviour of the trained champion, loaded from the BentoML store like serving loads it.

Invariance, minimum functionality and direction tests in the sense of Ribeiro et al.,
"Beyond Accuracy: Behavioral Testing of NLP Models with CheckList" (2020).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.data import read_split
from training.schema import FEATURES

CANONICAL = {
    "Iris-setosa": (5.1, 3.5, 1.4, 0.2),
    "Iris-versicolor": (6.0, 2.9, 4.5, 1.4),
    "Iris-virginica": (6.9, 3.1, 5.8, 2.3),
}
NUDGE_CM = 0.01
CONFIDENT = 0.9


def _frame(rows) -> pd.DataFrame:
    return pd.DataFrame(np.asarray(rows, dtype=float), columns=list(FEATURES))


def _labels(champion, rows) -> np.ndarray:
    return np.array(champion.class_names)[champion.predict_proba(_frame(rows)).argmax(axis=1)]


def _setosa_probability(champion, rows) -> np.ndarray:
    return champion.predict_proba(_frame(rows))[:, champion.class_names.index("Iris-setosa")]


@pytest.mark.parametrize("species", CANONICAL)
def test_canonical_flower_is_recognised(champion, species: str) -> None:
    [label] = _labels(champion, [CANONICAL[species]])

    assert label == species


def test_tiny_nudges_do_not_change_confident_predictions(champion, trained_home) -> None:
    """±0.01 cm on any one measurement of a well-separated flower keeps its label."""
    train, test = read_split(trained_home.settings.processed_dir)
    flowers = pd.concat([train, test])[list(FEATURES)].to_numpy()
    proba = champion.predict_proba(_frame(flowers))
    confident = flowers[proba.max(axis=1) >= CONFIDENT]
    assert len(confident) >= 100, "too few well-separated flowers to test invariance"
    expected = _labels(champion, confident)

    for feature in range(len(FEATURES)):
        for delta in (-NUDGE_CM, NUDGE_CM):
            nudged = confident.copy()
            nudged[:, feature] += delta
            changed = np.flatnonzero(_labels(champion, nudged) != expected)
            assert not len(changed), (
                f"{FEATURES[feature]} {delta:+} cm flips {confident[changed].tolist()}"
            )


@pytest.mark.parametrize("features", [("petal_length",), ("petal_width",), FEATURES[2:]])
def test_longer_or_wider_petals_move_away_from_setosa(champion, features) -> None:
    """Growing the petals of a setosa never makes it more setosa; growing both ends elsewhere."""
    start = np.array(CANONICAL["Iris-setosa"])
    end = start.copy()
    for name in features:
        end[FEATURES.index(name)] = {"petal_length": 6.0, "petal_width": 2.3}[name]
    path = start + np.linspace(0.0, 1.0, 30)[:, None] * (end - start)

    p_setosa = _setosa_probability(champion, path)

    assert np.all(np.diff(p_setosa) <= 1e-9), p_setosa.round(3).tolist()
    assert p_setosa[-1] <= p_setosa[0] - 0.4
    if len(features) == 2:
        assert _labels(champion, [end])[0] != "Iris-setosa"
