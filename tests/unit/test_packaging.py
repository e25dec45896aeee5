"""What the Bento installs is pinned to exactly what the tests ran with."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parents[2]


def pins(path: Path) -> dict[str, str]:
    result = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            result[name.strip().lower().replace("_", "-")] = version.strip()
    return result


def test_serving_requirements_match_the_lock():
    serve, lock = pins(ROOT / "requirements-serve.txt"), pins(ROOT / "requirements.lock")
    assert serve, "requirements-serve.txt pins nothing"
    mismatched = {name: (v, lock.get(name)) for name, v in serve.items() if lock.get(name) != v}
    assert mismatched == {}


def test_lock_pins_every_line_exactly():
    lines = [
        x
        for x in (ROOT / "requirements.lock").read_text().splitlines()
        if x and not x.startswith("#")
    ]
    assert all("==" in x and " @ " not in x for x in lines), [
        x for x in lines if "==" not in x or " @ " in x
    ]
