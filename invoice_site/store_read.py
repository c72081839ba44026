"""Reading the pages' data from the billing store in one snapshot.

All reads of one render run in one read transaction, so the pages of an account agree
with each other even while consolidation workers commit (each commit is a snapshot).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from decimal import Decimal
from typing import Any, Final

import duckdb
import pyarrow as pa

from invoice_site.model import AccountSite, DailyUsage, Draft, Invoice, Line, RatedEvent

__all__ = ["TOP_EVENTS", "read_accounts"]

# Rated events shown behind each usage line.
TOP_EVENTS: Final = 5
_ZONES: Final = "invoice_site_zones"

_DRAFT_COLUMNS: Final = (
    "invoice_id, account_id, period, period_start, period_end, currency, subtotal, discount, tax, "
    "total, status, issue_date, due_date, event_count, generated_at"
)


def _account_filter(accounts: Collection[str] | None) -> tuple[str, list[Any]]:
    if accounts is None:
        return "", []
    return "WHERE account_id IN (SELECT unnest($1::VARCHAR[]))", [sorted(accounts)]


def read_accounts(
    db: duckdb.DuckDBPyConnection, accounts: Collection[str] | None, zones: Mapping[str, str]
) -> dict[str, AccountSite]:
    """The invoices of `accounts` (None: every account in the store), with their lines,
    largest rated events and daily usage. `zones` maps account ids to IANA zones (the
    days of the usage charts); an account missing from it is read in UTC."""
    where, params = _account_filter(accounts)
    sites: dict[str, AccountSite] = {}
    invoices: dict[str, Invoice] = {}
    # One row per invoice: a final draft wins over an open one, then the latest.
    for row in db.execute(
        f"""SELECT {_DRAFT_COLUMNS} FROM invoice_drafts {where}
        QUALIFY row_number() OVER (PARTITION BY invoice_id
                                   ORDER BY status = 'final' DESC, generated_at DESC) = 1
        ORDER BY account_id, period DESC""",
        params,
    ).fetchall():
        draft = Draft(*row)
        invoice = invoices[draft.invoice_id] = Invoice(draft)
        sites.setdefault(draft.account_id, AccountSite(draft.account_id)).invoices.append(invoice)
    if not invoices:
        return sites
    for row in db.execute(
        f"""SELECT invoice_id, line_no, kind, charge_id, description, quantity, unit, unit_price, amount
        FROM invoice_lines {where} ORDER BY invoice_id, line_no""",
        params,
    ).fetchall():
        owner = invoices.get(row[0])
        if owner is not None:
            owner.lines.append(Line(*row[1:]))
    periods = sorted({invoice.draft.period for invoice in invoices.values()})
    _read_top_events(db, where, params, periods, invoices)
    _read_daily(db, where, params, periods, invoices, zones)
    return sites


def _rated_where(where: str, params: list[Any], periods: list[str]) -> tuple[str, list[Any]]:
    # The period filter prunes rated_usage's period partitions.
    position = len(params) + 1
    clause = f"period IN (SELECT unnest(${position}::VARCHAR[]))"
    return (f"{where} AND {clause}" if where else f"WHERE {clause}"), [*params, periods]


def _read_top_events(
    db: duckdb.DuckDBPyConnection,
    where: str,
    params: list[Any],
    periods: list[str],
    invoices: Mapping[str, Invoice],
) -> None:
    rated_where, rated_params = _rated_where(where, params, periods)
    for row in db.execute(
        f"""SELECT invoice_id, event_id, charge_id, contract_id, meter, event_time, quantity,
                   rated_quantity, amount, attributes
        FROM rated_usage {rated_where}
        QUALIFY row_number() OVER (PARTITION BY invoice_id, charge_id
                                   ORDER BY amount DESC, rated_quantity DESC, event_id) <= {TOP_EVENTS}
        ORDER BY invoice_id, charge_id, amount DESC, rated_quantity DESC, event_id""",
        rated_params,
    ).fetchall():
        invoice = invoices.get(row[0])
        if invoice is None:
            continue
        event_id, charge_id, contract_id, meter, event_time, quantity, rated, amount, attributes = row[1:]
        event = RatedEvent(
            event_id,
            charge_id,
            contract_id,
            meter,
            event_time,
            quantity,
            rated,
            amount,
            _attributes(attributes),
        )
        invoice.top_events.setdefault(event.charge_id, []).append(event)


def _attributes(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(key): item if isinstance(item, str) else json.dumps(item) for key, item in value.items()}


def _read_daily(
    db: duckdb.DuckDBPyConnection,
    where: str,
    params: list[Any],
    periods: list[str],
    invoices: Mapping[str, Invoice],
    zones: Mapping[str, str],
) -> None:
    rated_where, rated_params = _rated_where(where, params, periods)
    zone_table = pa.table(
        {"zone_account": pa.array(list(zones), pa.string()), "zone": pa.array(list(zones.values()))}
    )
    db.register(_ZONES, zone_table)
    try:
        rows = db.execute(
            f"""WITH rated AS (SELECT invoice_id, account_id, meter, event_time, rated_quantity
                               FROM rated_usage {rated_where})
            SELECT invoice_id, meter,
                   timezone(coalesce(z.zone, 'UTC'), event_time)::DATE AS day,
                   sum(rated_quantity), max(rated_quantity), count(*)
            FROM rated LEFT JOIN {_ZONES} z ON z.zone_account = rated.account_id
            GROUP BY ALL ORDER BY invoice_id, meter, day""",
            rated_params,
        ).fetchall()
    finally:
        db.unregister(_ZONES)
    for invoice_id, meter, day, total, peak, events in rows:
        invoice = invoices.get(invoice_id)
        if invoice is not None:
            usage = DailyUsage(day, Decimal(total), Decimal(peak), int(events))
            invoice.daily.setdefault(meter, []).append(usage)
