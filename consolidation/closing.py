"""Invoice drafts from the stored totals: live previews, period close, reconciliation."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

import structlog

from consolidation.invoice import InvoiceAssemblyError, InvoiceDraft, UsageTotal, assemble_invoice
from consolidation.store import BillingStore
from meterline import metrics
from meterline.catalog import Catalog, period_bounds
from meterline.records import invoice_id_for

log = structlog.get_logger()


def accounts_active_in(catalog: Catalog, period: str) -> list[str]:
    """Accounts with a contract touching the period (they get a draft even without usage)."""
    first, following = period_bounds(period)
    return [
        account.id
        for account in catalog.accounts.values()
        if any(c.start < following and (c.end is None or c.end > first) for c in account.contracts)
    ]


def build_drafts(
    usage: Mapping[str, Sequence[UsageTotal]],
    catalog: Catalog,
    period: str,
    accounts: Iterable[str],
    status: str,
) -> list[InvoiceDraft]:
    """Assemble the drafts of `accounts` for `period` from their usage totals (pure)."""
    drafts = []
    for account_id in accounts:
        account = catalog.accounts.get(account_id)
        if account is None:
            continue
        try:
            draft = assemble_invoice(account, catalog, period, usage.get(account_id, ()), status)
        except InvoiceAssemblyError as exc:
            # Totals that no longer fit the catalog (e.g. a contract edited after its usage was
            # rated): never bill a guess, never stop the sink; the draft waits for a fixed catalog.
            metrics.RECONCILIATION_ERRORS.labels("invoice_assembly").inc()
            log.error("invoice_not_assembled", account=account_id, period=period, error=str(exc))
            continue
        if draft is not None:
            drafts.append(draft)
    return drafts


def refresh_previews(
    store: BillingStore, catalog: Catalog, keys: Iterable[tuple[str, str]], now: datetime
) -> int:
    """Recompute the open drafts of (account, period) pairs; final drafts never change."""
    by_period: dict[str, set[str]] = {}
    for account_id, period in keys:
        by_period.setdefault(period, set()).add(account_id)
    written = 0
    for period, accounts in by_period.items():
        final = store.final_invoice_ids(period)
        todo = sorted(a for a in accounts if invoice_id_for(a, period) not in final)
        drafts = build_drafts(store.usage_for(period, todo), catalog, period, todo, "open")
        store.save_drafts(drafts, now)
        written += len(drafts)
    return written


def finalize_period(
    store: BillingStore, catalog: Catalog, period: str, now: datetime, account_id: str | None = None
) -> int:
    """Mark the drafts of a period final (all accounts, or one) and export them to Parquet.

    Idempotent: drafts already final are left alone and the Parquet export is
    rewritten from the tables, so a close interrupted by a crash can simply run again.
    """
    final = store.final_invoice_ids(period)
    usage = store.usage_for(period, None if account_id is None else [account_id])
    accounts = [account_id] if account_id else sorted(set(accounts_active_in(catalog, period)) | set(usage))
    todo = [a for a in accounts if invoice_id_for(a, period) not in final]
    drafts = build_drafts(usage, catalog, period, todo, "final")
    store.save_drafts(drafts, now)
    store.export_final_invoices(period)
    reconcile_amounts(store, period)
    log.info("period_finalized", period=period, account=account_id, invoices=len(drafts))
    return len(drafts)


def reconcile_amounts(store: BillingStore, period: str) -> list[tuple[str, str, str]]:
    """Accounts/charges whose rated amounts do not sum to usage_totals.amount_exact."""
    store.refresh_view()
    rows = store.db.execute(
        """WITH rated AS (
               SELECT account_id, charge_id, sum(amount) AS amount, count(*) AS events
               FROM rated_usage WHERE period = ? GROUP BY ALL),
           totals AS (
               SELECT account_id, charge_id, sum(amount_exact) AS amount, sum(event_count) AS events
               FROM usage_totals WHERE period = ? GROUP BY ALL)
           SELECT coalesce(t.account_id, r.account_id), coalesce(t.charge_id, r.charge_id), ?
           FROM totals t FULL OUTER JOIN rated r USING (account_id, charge_id)
           WHERE t.amount IS DISTINCT FROM r.amount OR t.events IS DISTINCT FROM r.events""",
        [period, period, period],
    ).fetchall()
    if rows:
        # One line for the whole period, not one per mismatch: a systematic error
        # over 100,000 accounts must not turn into 100,000 log lines.
        metrics.RECONCILIATION_ERRORS.labels("rated_amounts").inc(len(rows))
        log.error(
            "reconciliation_mismatch",
            period=period,
            mismatches=len(rows),
            first=[f"{a}/{c}" for a, c, _ in rows[:10]],
        )
    return [(a, c, p) for a, c, p in rows]
