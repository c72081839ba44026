"""Draft building never stops the sink: totals that no longer fit the catalog are skipped, loudly;
a close reports every account it cannot finalize and stays healthy however long it takes."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from consolidation.closing import (
    ACCOUNT_MISSING,
    ASSEMBLY_FAILED,
    build_drafts,
    finalize_period,
    refresh_previews,
)
from consolidation.invoice import UsageTotal
from consolidation.store import BillingStore, Position
from meterline.kernel.catalog import Catalog
from meterline.kernel.catalog_file import load_catalog
from meterline.runtime import metrics
from meterline.runtime.health import HEALTH
from tests.support.store_batches import apply_batch

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


# -- a close never skips an account silently; a long close stays healthy --------------

FLAT = Path(__file__).parent.parent / "data" / "flat" / "catalog.yaml"
PERIOD = "2026-09"
CLOSED_AT = datetime(2026, 10, 2, tzinfo=UTC)


def _key(account: str) -> tuple[str, str, str, str, str]:
    return (account, PERIOD, "eur-api", "api_calls", f"{account}-1")


def _many_accounts(count: int) -> Catalog:
    """The flat catalog with `count` copies of its account alpha (each with its own contract)."""
    catalog = load_catalog(FLAT)
    alpha = catalog.accounts["alpha"]
    accounts = {}
    for i in range(count):
        account_id = f"acct-{i:05d}"
        contract = replace(alpha.contracts[0], id=f"{account_id}-1", account_id=account_id)
        accounts[account_id] = replace(alpha, id=account_id, contracts=(contract,))
    return replace(catalog, accounts=accounts)


def _with_usage(store: BillingStore, accounts: list[str]) -> None:
    apply_batch(
        store,
        "t",
        {0: Position(len(accounts), {}, {})},
        [(_key(a), Decimal(1000), Decimal(2), 1) for a in accounts],
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BillingStore]:
    opened = BillingStore(tmp_path / "out")
    yield opened
    opened.close()


def test_a_long_close_reports_progress_all_along(
    store: BillingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/healthz fails a worker whose loop shows no progress for health_stall_s: a close of
    many accounts must report progress all along, not once at its end. Measured as the
    longest silence relative to the whole close, so that a loaded machine, which slows
    every step alike, does not change the verdict."""
    catalog = _many_accounts(30000)
    _with_usage(store, sorted(catalog.accounts))
    reports: list[float] = []
    monkeypatch.setattr(HEALTH, "progress", lambda: reports.append(time.monotonic()))
    started = time.monotonic()
    assert finalize_period(store, catalog, PERIOD, CLOSED_AT) == 30000
    ended = time.monotonic()
    marks = [started, *reports, ended]
    longest = max(later - earlier for earlier, later in itertools.pairwise(marks))
    assert len(reports) >= 100, f"{len(reports)} progress reports in a close of 30,000 accounts"
    assert longest <= (ended - started) / 2, (
        f"{longest:.2f}s without progress in a {ended - started:.2f}s close"
    )


def test_an_account_the_catalog_lost_is_reported_left_open_and_closed_once_restored(
    store: BillingStore,
) -> None:
    full = load_catalog(FLAT)
    key = ("alpha", PERIOD, "eur-api", "api_calls", "alpha-1")
    apply_batch(store, "t", {0: Position(1, {}, {})}, [(key, Decimal(1000), Decimal(2), 1)])
    refresh_previews(store, full, [("alpha", PERIOD)], CLOSED_AT)
    # A catalog published without alpha: the close must not skip its usage silently.
    without = replace(full, accounts={k: v for k, v in full.accounts.items() if k != "alpha"})
    skipped = metrics.CLOSE_ACCOUNTS_SKIPPED.labels(PERIOD)._value.get()

    finalize_period(store, without, PERIOD, CLOSED_AT)
    assert store.close_problems(PERIOD) == [
        (PERIOD, "alpha", ACCOUNT_MISSING, "the catalog has no such account")
    ]
    assert metrics.CLOSE_ACCOUNTS_SKIPPED.labels(PERIOD)._value.get() == skipped + 1
    assert store.db.execute("SELECT account_id, status FROM invoice_drafts ORDER BY 1").fetchall() == [
        ("alpha", "open"),
        ("beta", "final"),  # active in the period, no usage
    ]

    # The catalog fixed, the same close finalizes alpha and forgets the problem.
    finalize_period(store, full, PERIOD, CLOSED_AT)
    assert store.close_problems() == []
    assert store.db.execute("SELECT account_id, status FROM invoice_drafts ORDER BY 1").fetchall() == [
        ("alpha", "final"),
        ("beta", "final"),
    ]


def test_an_account_whose_draft_raises_is_reported_and_the_others_are_closed(store: BillingStore) -> None:
    catalog = _many_accounts(3)
    _with_usage(store, sorted(catalog.accounts))
    # A currency without ISO 4217 minor units (catalogs are validated now; older ones were not).
    gold = replace(catalog.plans["basic-eur"], id="gold", currency="XAU")
    broken = replace(catalog.accounts["acct-00001"].contracts[0], plan_id="gold")
    catalog = replace(
        catalog,
        plans={**catalog.plans, "gold": gold},
        accounts={
            **catalog.accounts,
            "acct-00001": replace(catalog.accounts["acct-00001"], contracts=(broken,)),
        },
    )
    assert finalize_period(store, catalog, PERIOD, CLOSED_AT) == 2
    problems = store.close_problems(PERIOD)
    assert [(a, r) for _, a, r, _ in problems] == [("acct-00001", ASSEMBLY_FAILED)]
    assert "XAU" in problems[0][3]
    assert store.db.execute("SELECT account_id, status FROM invoice_drafts ORDER BY 1").fetchall() == [
        ("acct-00000", "final"),
        ("acct-00002", "final"),
    ]
