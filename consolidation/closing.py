"""Invoice drafts from the stored totals: live previews, period close, reconciliation.

A close never skips an account silently: an account with usage in the period that
the current catalog cannot invoice (removed from the catalog, usage under a contract
it no longer has, a currency without minor units, any other error) keeps its draft
open, is logged and counted (meterline_close_accounts_skipped_total), and is listed
in the `close_problems` table until a later close, with a fixed catalog, finalizes it.

Long closes report progress after each chunk of accounts, so /healthz stays green.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime

import structlog

from consolidation.invoice import InvoiceAssemblyError, InvoiceDraft, UsageTotal, assemble_invoice
from consolidation.maintenance import merge_period
from consolidation.store import BillingStore
from meterline.kernel.catalog import Catalog, period_bounds
from meterline.kernel.records import invoice_id_for
from meterline.runtime import metrics
from meterline.runtime.health import HEALTH

log = structlog.get_logger()

# Accounts assembled between two progress reports of a close or a refresh.
CHUNK = 250
# Drafts saved per store transaction: each commit costs tens of milliseconds whatever its size.
SAVE_CHUNK = 5000

# Why a close left an account's draft open (close_problems.reason).
ACCOUNT_MISSING = "account_missing"  # usage, but the catalog no longer has the account
NOT_INVOICEABLE = "not_invoiceable"  # the usage does not fit the account's contracts
ASSEMBLY_FAILED = "assembly_failed"  # anything else raised while assembling the draft

Problem = tuple[str, str, str]  # account, reason, detail


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
    problems: list[Problem] | None = None,
) -> list[InvoiceDraft]:
    """Assemble the drafts of `accounts` for `period` from their usage totals (pure).

    An account that cannot be invoiced gets no draft; with `problems`, it is added
    there with the reason (an account without usage that left the catalog is not one).
    """
    drafts = []
    for account_id in accounts:
        account = catalog.accounts.get(account_id)
        if account is None:
            if problems is not None and usage.get(account_id):
                problems.append((account_id, ACCOUNT_MISSING, "the catalog has no such account"))
            continue
        try:
            draft = assemble_invoice(account, catalog, period, usage.get(account_id, ()), status)
        except InvoiceAssemblyError as exc:
            # Totals that no longer fit the catalog (e.g. a contract edited after its usage was
            # rated): never bill a guess, never stop the sink; the draft waits for a fixed catalog.
            metrics.RECONCILIATION_ERRORS.labels("invoice_assembly").inc()
            log.error("invoice_not_assembled", account=account_id, period=period, error=str(exc))
            if problems is not None:
                problems.append((account_id, NOT_INVOICEABLE, str(exc)))
            continue
        except Exception as exc:  # one account's failure must not stop the others' invoices
            log.error("invoice_not_assembled", account=account_id, period=period, error=repr(exc))
            if problems is not None:
                problems.append((account_id, ASSEMBLY_FAILED, f"{type(exc).__name__}: {exc}"))
            continue
        if draft is not None:
            drafts.append(draft)
    return drafts


def _chunks(items: Sequence[str], size: int = CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
        for part in _chunks(todo, SAVE_CHUNK):
            usage = store.usage_for(period, part)
            drafts = []
            for chunk in _chunks(part):
                drafts += build_drafts(usage, catalog, period, chunk, "open")
                HEALTH.progress()
            store.save_drafts(drafts, now)
            written += len(drafts)
            HEALTH.progress()
    return written


def finalize_period(
    store: BillingStore,
    catalog: Catalog,
    period: str,
    now: datetime,
    account_id: str | None = None,
    owned: Callable[[str], bool] = lambda _: True,
) -> int:
    """Mark the drafts of a period final (all accounts, or one) and export them to Parquet.
    Only accounts `owned` by this worker (those of its partitions) are its to finalize.

    Idempotent: drafts already final are left alone and the Parquet export is
    rewritten from the tables, so a close interrupted by a crash can simply run again.
    Accounts that cannot be invoiced stay open and are reported (see close_problems);
    returns the number of drafts made final.
    """
    final = store.final_invoice_ids(period)
    usage = store.usage_for(period, None if account_id is None else [account_id])
    accounts = [account_id] if account_id else sorted(set(accounts_active_in(catalog, period)) | set(usage))
    accounts = [a for a in accounts if owned(a)]
    todo = [a for a in accounts if invoice_id_for(a, period) not in final]
    HEALTH.progress()
    problems: list[Problem] = []
    written = 0
    for part in _chunks(todo, SAVE_CHUNK):
        drafts = []
        for chunk in _chunks(part):
            drafts += build_drafts(usage, catalog, period, chunk, "final", problems)
            HEALTH.progress()
        store.save_drafts(drafts, now)
        written += len(drafts)
        HEALTH.progress()
    for account, reason, detail in problems:
        log.error("close_account_skipped", account=account, period=period, reason=reason, detail=detail)
    if problems:
        metrics.CLOSE_ACCOUNTS_SKIPPED.labels(period).inc(len(problems))
    store.record_close_problems(period, problems, now)
    store.resolve_close_problems(period)
    if account_id is None:
        merge_period(store, period)
    HEALTH.progress()
    reconcile_amounts(store, period)
    HEALTH.progress()
    log.info("period_finalized", period=period, account=account_id, invoices=written, left_open=len(problems))
    return written


def reconcile_amounts(store: BillingStore, period: str) -> list[tuple[str, str, str]]:
    """Accounts/charges whose rated amounts do not sum to usage_totals.amount_exact."""
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
