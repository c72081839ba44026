"""Deduplication end to end in one `meterline run`: only an accepted copy holds its
(account_id, event_id) key, and a copy stamped in another month is still a copy."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import meterline_run, table

pytestmark = pytest.mark.integration

CATALOG = Path(__file__).parent.parent / "data" / "flat" / "catalog.yaml"


def line(event_id: str, account: str, meter: str, quantity: int, timestamp: str, **attributes: str) -> str:
    record: dict[str, Any] = {
        "event_id": event_id,
        "account_id": account,
        "meter": meter,
        "quantity": quantity,
        "timestamp": timestamp,
    }
    if attributes:
        record["attributes"] = attributes
    return json.dumps(record)


CORRECTED = line("um-1", "alpha", "api_calls", 100, "2026-09-05T10:00:00Z")
EVENTS = [
    # An unknown meter, then its corrected copy, then an exact copy of the corrected one.
    line("um-1", "alpha", "api_callz", 100, "2026-09-05T10:00:00Z"),
    CORRECTED,
    CORRECTED,
    # A producer re-stamps its retry in the next month: one event, billed once, in September.
    line("xp-1", "alpha", "api_calls", 50, "2026-09-20T10:00:00Z"),
    line("xp-1", "alpha", "api_calls", 50, "2026-10-20T10:00:00Z"),
    # Storage is billed in region eu only; the copy with the region fixed is rated.
    line("nc-1", "alpha", "storage", 12, "2026-09-06T10:00:00Z", region="us"),
    line("nc-1", "alpha", "storage", 12, "2026-09-06T10:00:00Z", region="eu"),
    # beta's contract starts on 2026-09-01; the copy with its time fixed is rated.
    line("nce-1", "beta", "api_calls", 400, "2026-08-20T12:00:00Z"),
    line("nce-1", "beta", "api_calls", 400, "2026-09-20T12:00:00Z"),
]


def test_corrected_copies_are_rated_and_exact_or_restamped_copies_are_duplicates(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(EVENTS) + "\n")
    summary_path = tmp_path / "summary.json"
    completed = meterline_run(
        CATALOG, f"json:{events}", tmp_path / "out", "--close-all", "--summary-json", str(summary_path),
        partitions=3, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    summary = json.loads(summary_path.read_text())
    assert {k: v for k, v in summary.items() if k != "invoices"} == {
        "events_in": 9,
        "rated": 4,
        "duplicates": 2,
        "rejected": 3,
        "rejected.unknown_meter": 1,
        "rejected.no_matching_charge": 1,
        "rejected.no_contract_in_effect": 1,
    }
    rated = table(
        tmp_path / "out",
        "SELECT event_id, account_id, period, charge_id, quantity FROM rated_usage ORDER BY event_id",
    )
    assert [(e, a, p, c, q.normalize()) for e, a, p, c, q in rated] == [
        ("nc-1", "alpha", "2026-09", "eur-storage", Decimal(12)),
        ("nce-1", "beta", "2026-09", "usd-api", Decimal(400)),
        ("um-1", "alpha", "2026-09", "eur-api", Decimal(100)),
        ("xp-1", "alpha", "2026-09", "eur-api", Decimal(50)),
    ]
    # No October invoice: the re-stamped copy was the only October event, and it is a duplicate.
    drafts = table(tmp_path / "out", "SELECT account_id, period FROM invoice_drafts ORDER BY ALL")
    assert drafts == [("alpha", "2026-09"), ("beta", "2026-09")]
