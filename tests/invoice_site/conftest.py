"""A billing store for the invoice site's tests, built without Kafka from the catalog in
data/ and hand-picked November and December 2026 events (see builder.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from consolidation import lake
from meterline.kernel.catalog import Catalog
from meterline.kernel.catalog_file import load_catalog
from meterline.kernel.records import UsageEvent
from tests.invoice_site.builder import StoreBuilder

CATALOG = Path(__file__).parent / "data" / "catalog.yaml"
PREVIEWED_AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
CLOSED_AT = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
DECEMBER_AT = datetime(2026, 12, 3, 9, 15, tzinfo=UTC)


def event(event_id: str, account: str, meter: str, quantity: str, at: str, **attributes: str) -> UsageEvent:
    return UsageEvent(event_id, account, meter, Decimal(quantity), datetime.fromisoformat(at), attributes)


NOVEMBER = [
    # mueller (Berlin, UTC+1): 5,100 calls, 100 included
    event("m1", "mueller", "api_calls", "3000", "2026-11-17T10:00:00+00:00"),
    event("m2", "mueller", "api_calls", "2100", "2026-11-20T10:00:00+00:00"),
    # acme-tel (New York, UTC-5 after 1 November)
    event("t1", "acme-tel", "voice", "2.5", "2026-11-03T15:00:00+00:00", destination="12125550100"),
    event("t2", "acme-tel", "voice", "4.5", "2026-11-04T02:00:00+00:00", destination="13105550199"),
    event("t3", "acme-tel", "voice", "10", "2026-11-07T16:00:00+00:00", destination="12125550111"),
    event("t4", "acme-tel", "voice", "7.2", "2026-11-11T14:30:00+00:00", destination="442071234567"),
    # tanaka (Tokyo): 734,040.5 calls at 3 JPY
    event("k1", "tanaka", "api_calls", "700000", "2026-11-05T00:00:00+00:00"),
    event("k2", "tanaka", "api_calls", "34040.5", "2026-11-25T00:00:00+00:00"),
    # markup: strings that are HTML
    event("<i>ev</i>", "markup", "api_calls", "100", "2026-11-09T00:00:00+00:00",
          note="<img src=x onerror=alert(2)>"),
]  # fmt: skip
DECEMBER = [
    event("m3", "mueller", "api_calls", "50", "2026-12-02T08:00:00+00:00"),
    event("k3", "tanaka", "api_calls", "10", "2026-12-02T08:00:00+00:00"),
]


@dataclass
class Store:
    out: Path
    catalog: Catalog
    builder: StoreBuilder

    def reader(self) -> duckdb.DuckDBPyConnection:
        return lake.connect(self.out, read_only=True)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    catalog = load_catalog(CATALOG)
    out = tmp_path / "out"
    builder = StoreBuilder(out, catalog)
    try:
        builder.add(NOVEMBER, PREVIEWED_AT)
        builder.finalize("2026-11", CLOSED_AT)
        builder.add(DECEMBER, DECEMBER_AT)
        yield Store(out, catalog, builder)
    finally:
        builder.close()
