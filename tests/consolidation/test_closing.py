"""Draft building never stops the sink: totals that no longer fit the catalog are skipped, loudly."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from consolidation.closing import build_drafts
from consolidation.invoice import UsageTotal
from meterline import metrics
from meterline.catalog_file import load_catalog

CATALOG = Path(__file__).parent.parent / "data" / "catalog.yaml"


def test_totals_that_no_longer_fit_the_catalog_are_skipped_not_fatal() -> None:
    catalog = load_catalog(CATALOG)
    fits = UsageTotal("acme", "2026-11", "acme-2026", "api", "api_calls", Decimal(1500), Decimal("0.5"), 1)
    stale = UsageTotal("acme", "2026-11", "acme-2025-gone", "api", "api_calls", Decimal(10), Decimal(0), 1)
    before = metrics.RECONCILIATION_ERRORS.labels("invoice_assembly")._value.get()

    assert [d.account_id for d in build_drafts({"acme": [fits]}, catalog, "2026-11", ["acme"], "open")] == [
        "acme"
    ]
    assert build_drafts({"acme": [fits, stale]}, catalog, "2026-11", ["acme"], "open") == []
    assert metrics.RECONCILIATION_ERRORS.labels("invoice_assembly")._value.get() == before + 1
