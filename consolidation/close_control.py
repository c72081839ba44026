"""Which closes a consolidation worker applies, and the closes it publishes when due.

Closes are published to meterline.periods (by `meterline close`, or by a worker once
a period is over: its end in the account's zone plus `close_grace_s`). Every worker
applies them to the accounts of the rated partitions it owns. A close is done for a
partition once its accounts are final (`closes_done` holds a row per partition); the
worker that completes the last partition exports the period's final invoices. A close
that had to leave an account open (see consolidation.closing) is not done: it runs
again on the next catalog change, assignment or restart, and finishes once it can.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from datetime import datetime, timedelta

import orjson
import structlog
from confluent_kafka import Producer

from consolidation.closing import finalize_period
from consolidation.files import write_parquet_atomically
from consolidation.invoice_tables import DRAFT_SCHEMA, LINE_SCHEMA
from consolidation.store import BillingStore, as_table
from meterline.kernel.catalog import Catalog, period_bounds, period_start_instant
from meterline.kernel.headers import partition_of

log = structlog.get_logger()

_PERIOD = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
Close = tuple[str, str | None]  # period, and the one account closed (None: all)


def apply_closes(
    store: BillingStore,
    catalog: Catalog,
    closes: Iterable[Close],
    mine: Collection[int],
    partition_count: int,
    owns: Callable[[str], bool],
    now: datetime,
) -> None:
    """Finalize the closes not done yet for the partitions `mine` (of `partition_count`)."""
    every = range(partition_count)
    for period, account in closes:
        partitions = sorted(mine) if account is None else [partition_of(account.encode(), partition_count)]
        if not set(partitions) <= set(mine) or store.close_done(period, account, partitions):
            continue
        if not _PERIOD.fullmatch(period):
            log.error("close_ignored", period=period, account=account, error="not a YYYY-MM period")
            store.mark_close_done(period, account, partitions)
            continue
        finalize_period(store, catalog, period, now, account, owns)
        left = [a for _, a, _, _ in store.close_problems(period) if account in (None, a)]
        if not any(owns(a) for a in left):
            store.mark_close_done(period, account, partitions)
            if account is not None or store.close_done(period, None, every):
                export_final_invoices(store, period)


def publish_due_closes(
    store: BillingStore,
    catalog: Catalog,
    published: Callable[[str, str], bool],
    owns: Callable[[str], bool],
    producer: Producer,
    periods_topic: str,
    grace: timedelta,
    now: datetime,
) -> None:
    """Publish the close of every open draft of an owned account whose period is over
    (end + grace) and whose close is not `published` yet."""
    for account_id, period in store.open_drafts():
        if not owns(account_id) or published(period, account_id):
            continue  # a close left open is retried on catalog changes
        account = catalog.accounts.get(account_id)
        # An account the catalog lost is closed too, once its period is over in every zone:
        # the close reports it (close_problems) instead of leaving its usage open unseen.
        zone = account.timezone if account is not None else "Etc/GMT+12"
        _, following = period_bounds(period)
        end = period_start_instant(f"{following.year:04d}-{following.month:02d}", zone)
        if now >= end + grace:
            value = {
                "period": period,
                "account_id": account_id,
                "closed_at": now.isoformat(),
                "by": "auto-close",
            }
            producer.produce(periods_topic, key=f"{period}/{account_id}".encode(), value=orjson.dumps(value))
    left = producer.flush(10)
    if left:  # the next housekeeping publishes them again
        log.error("auto_close_not_published", records=left)


def export_final_invoices(store: BillingStore, period: str) -> None:
    """Rewrite invoices/period=P/*.parquet from the final drafts of the period."""
    folder = store.out / "invoices" / f"period={period}"
    drafts = store.db.sql(
        "SELECT * FROM invoice_drafts WHERE period = $period AND status = 'final' ORDER BY account_id",
        params={"period": period},
    ).to_arrow_table()
    lines = store.db.sql(
        "SELECT l.* FROM invoice_lines l JOIN invoice_drafts d USING (invoice_id) "
        "WHERE d.period = $period AND d.status = 'final' ORDER BY l.account_id, l.line_no",
        params={"period": period},
    ).to_arrow_table()
    write_parquet_atomically(as_table(drafts).cast(DRAFT_SCHEMA), folder / "invoice_drafts.parquet")
    write_parquet_atomically(as_table(lines).cast(LINE_SCHEMA), folder / "invoice_lines.parquet")
