"""A billing store made from a catalog and usage events without Kafka: events are
enriched and rated by meterline's own mediation and rating code, stored as batches
(tests/support/store_batches.py), and drafts previewed or finalized as consolidation
does. What the invoice site reads is exactly what a pipeline would have stored."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import orjson
import pyarrow as pa

from consolidation.closing import finalize_period, refresh_previews
from consolidation.files import RATED_SCHEMA
from consolidation.store import BillingStore, Position
from mediation.enrich import enrich, local_time
from meterline.kernel.catalog import Catalog
from meterline.kernel.records import UsageEvent
from rating.rater import RatingState, rate_batch
from tests.support.store_batches import Key, apply_batch

TOPIC = "meterline.usage.rated"


class StoreBuilder:
    def __init__(self, out: Path, catalog: Catalog) -> None:
        self.store = BillingStore(out)
        self.catalog = catalog
        self.state = RatingState()
        self.offset = 0

    def close(self) -> None:
        self.store.close()

    def add(self, events: Sequence[UsageEvent], now: datetime) -> None:
        """Rate and store the events as one batch, then refresh their open drafts."""
        enriched = [enrich(event, self.catalog, *local_time(event, self.catalog)) for event in events]
        batch = rate_batch(self.state, enriched, self.catalog)
        assert not batch.rejected, batch.rejected
        totals: dict[Key, tuple[Decimal, Decimal, int]] = {}
        rows = []
        for rated in batch.rated:
            event = rated.event
            key = (event.account_id, event.period, rated.charge_id, event.meter, event.contract_id)
            _, amount, count = totals.get(key, (Decimal(0), Decimal(0), 0))
            totals[key] = (rated.aggregate_after, amount + rated.amount, count + 1)
            rows.append(
                {
                    "event_id": event.event_id, "account_id": event.account_id, "meter": event.meter,
                    "charge_id": rated.charge_id, "model": rated.model, "contract_id": event.contract_id,
                    "plan_id": event.plan_id, "event_time": event.event_time, "quantity": event.quantity,
                    "rated_quantity": rated.quantity, "amount": rated.amount,
                    "aggregate_before": rated.aggregate_before, "aggregate_after": rated.aggregate_after,
                    "currency": event.currency, "invoice_id": rated.invoice_id,
                    "attributes": orjson.dumps(dict(event.attributes)).decode(),
                    "source_partition": 0, "source_offset": self.offset + len(rows), "period": event.period,
                }
            )  # fmt: skip
        self.offset += len(rows)
        table = pa.Table.from_pylist(rows, schema=RATED_SCHEMA)
        apply_batch(
            self.store,
            TOPIC,
            {0: Position(self.offset, {}, {})},
            [(key, agg, amount, count) for key, (agg, amount, count) in totals.items()],
            [table],
        )
        keys = {(event.account_id, event.period) for event in enriched}
        refresh_previews(self.store, self.catalog, keys, now)

    def finalize(self, period: str, now: datetime) -> None:
        finalize_period(self.store, self.catalog, period, now)
