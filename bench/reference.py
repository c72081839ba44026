"""Invoice totals computed straight from an input file, with no Kafka at all.

The benchmarks compare `meterline run`'s invoices with these: the same pure cores
(parsing, pricing, invoice assembly) applied one event at a time in memory, so a
lost, doubled or mis-ordered event anywhere in the streaming runtime shows up as
a different total.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from consolidation.closing import accounts_active_in
from consolidation.invoice import UsageTotal, assemble_invoice
from mediation.enrich import enrich, local_time
from mediation.formats import parse_record
from meterline.kernel.catalog_file import load_catalog
from meterline.kernel.reasons import Rejected
from rating.rater import RatingState, rate


def _months(first: str, last: str) -> list[str]:
    year, month, months = int(first[:4]), int(first[5:7]), []
    while f"{year:04d}-{month:02d}" <= last:
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def reference_totals(catalog_path: Path, records: Iterable[bytes], now: datetime) -> dict[str, Decimal]:
    """invoice_id -> total, for the periods `meterline run` drafts (first to last rated period)."""
    catalog = load_catalog(catalog_path)
    seen: set[tuple[str, str]] = set()
    state = RatingState()
    usage: dict[tuple[str, str, str, str], list[object]] = {}
    for raw in records:
        try:
            event = parse_record(raw, "auto", catalog.meters, now)
        except Rejected:
            continue
        if (event.account_id, event.event_id) in seen:
            continue
        seen.add((event.account_id, event.event_id))
        try:
            rated = rate(state, enrich(event, catalog, *local_time(event, catalog)), catalog)
        except Rejected:
            continue
        e = rated.event
        key = (e.account_id, e.period, e.contract_id, rated.charge_id)
        total = usage.setdefault(key, [e.meter, Decimal(0), Decimal(0), 0])
        total[1] = rated.aggregate_after
        total[2] = total[2] + rated.amount  # type: ignore[operator]
        total[3] = total[3] + 1  # type: ignore[operator]
    periods = sorted({period for _, period, _, _ in usage})
    invoices: dict[str, Decimal] = {}
    for period in _months(periods[0], periods[-1]) if periods else []:
        by_account: dict[str, list[UsageTotal]] = {}
        for (account_id, p, contract_id, charge_id), (meter, aggregate, amount, count) in usage.items():
            if p == period:
                by_account.setdefault(account_id, []).append(
                    UsageTotal(account_id, p, contract_id, charge_id, str(meter), aggregate, amount, count)  # type: ignore[arg-type]
                )
        for account_id in sorted(set(accounts_active_in(catalog, period)) | set(by_account)):
            draft = assemble_invoice(
                catalog.accounts[account_id], catalog, period, by_account.get(account_id, []), "final"
            )
            if draft is not None:
                invoices[draft.invoice_id] = draft.total
    return invoices
