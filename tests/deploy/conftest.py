"""Fixtures for the Kubernetes manifests: each overlay rendered once per session."""

from __future__ import annotations

import pytest

from tests.utils import k8s
from tests.utils.containers import unavailable


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[k8s.Doc]]:
    """``{overlay: [objects]}`` for every overlay, from ``kubectl kustomize``.

    Skips without kubectl (fails under CI, where its absence is a bug of the set-up).
    """
    if k8s.kubectl() is None:
        unavailable("kubectl not on PATH (it comes with the machine image)", what="kubectl")
    return {overlay: k8s.render(overlay) for overlay in k8s.OVERLAYS}
