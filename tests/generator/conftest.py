"""A generated catalog shared by the generator's tests."""

from __future__ import annotations

from typing import Any

import pytest

from generator import generate_catalog
from meterline.kernel.catalog import Catalog
from meterline.kernel.catalog_file import parse_catalog

MONTH = "2026-10"


@pytest.fixture(scope="module")
def catalog_doc() -> dict[str, Any]:
    return generate_catalog(60, seed=11)


@pytest.fixture(scope="module")
def catalog(catalog_doc: dict[str, Any]) -> Catalog:
    return parse_catalog(catalog_doc, source="generated")
