"""Shared fixtures: the real embedded broker over TCP, per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from meterline.runtime.broker import EmbeddedBroker

# Property tests judge results, not speed: a per-example deadline fails them at random on a
# loaded CI machine (three test processes on two cores). Benchmarks measure speed.
settings.register_profile("meterline", deadline=None)
settings.load_profile("meterline")

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to test stale compiled code: an extension built by mypyc (setup.py) shadows
    its .py, so an edit is invisible until `make` rebuilds it."""
    found = [*ROOT.glob("*/*.cpython-*.so"), *ROOT.glob("*/*/*.cpython-*.so")]  # packages, subpackages
    extensions = [path for path in found if not path.relative_to(ROOT).parts[0].startswith((".", "build"))]
    if not extensions:
        return  # plain Python
    stamp = ROOT / ".venv" / ".compiled"
    built = stamp.stat().st_mtime if stamp.exists() else min(path.stat().st_mtime for path in extensions)
    sources = [path.with_name(path.name.split(".")[0] + ".py") for path in extensions]
    stale = sorted(str(p.relative_to(ROOT)) for p in sources if p.exists() and p.stat().st_mtime > built)
    if stale:
        pytest.exit(
            f"compiled modules are older than their sources ({', '.join(stale)}): "
            "run `make unit` (or `make .venv/.compiled`) to rebuild them, or `make clean` for plain Python",
            returncode=2,
        )


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture
def fresh_broker() -> Iterator[EmbeddedBroker]:
    """A broker of its own, for tests that need empty topics and groups."""
    with EmbeddedBroker() as running:
        yield running
