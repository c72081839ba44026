"""Shared fixtures: the real embedded broker over TCP, per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meterline.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture
def fresh_broker() -> Iterator[EmbeddedBroker]:
    """A broker of its own, for tests that need empty topics and groups."""
    with EmbeddedBroker() as running:
        yield running
