"""Records that flow between stages, as plain immutable values.

`UsageEvent` is what mediation emits to `meterline.usage.mediated`; `RatedUsage`
is what rating emits to `meterline.usage.rated`. Their wire form (Avro) lives in
`schemas/`; these classes know nothing about Kafka.

Several are built per event on every stage's hot path, so they are plain classes
that mypyc compiles (setup.py): built ten times faster than a NamedTuple (whose
constructor is interpreted) or a frozen dataclass (which sets each field through
object.__setattr__). Fields are `Final`: immutable to the type checker, compared by value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Final


class UsageEvent:
    """A normalized, validated usage event (quantity already in the meter's unit).

    `value` is the counted value of `unique_count` meters (None otherwise).
    Enrichment fields are empty until mediation's enrichment step fills them.
    """

    __slots__ = (
        "account_id", "attributes", "contract_id", "currency", "event_id", "event_time", "meter",
        "period", "plan_id", "quantity", "source_format", "value",
    )  # fmt: skip

    def __init__(
        self,
        event_id: str,
        account_id: str,
        meter: str,
        quantity: Decimal,
        event_time: datetime,  # timezone-aware, UTC
        attributes: Mapping[str, str],
        value: str | None = None,
        source_format: str = "json",
        # Enrichment (mediation).
        contract_id: str = "",
        plan_id: str = "",
        currency: str = "",
        period: str = "",  # YYYY-MM in the account's zone
    ) -> None:
        self.event_id: Final = event_id
        self.account_id: Final = account_id
        self.meter: Final = meter
        self.quantity: Final = quantity
        self.event_time: Final = event_time
        self.attributes: Final = attributes
        self.value: Final = value
        self.source_format: Final = source_format
        self.contract_id: Final = contract_id
        self.plan_id: Final = plan_id
        self.currency: Final = currency
        self.period: Final = period

    def fields(self) -> tuple[object, ...]:
        return (
            self.event_id, self.account_id, self.meter, self.quantity, self.event_time, self.attributes,
            self.value, self.source_format, self.contract_id, self.plan_id, self.currency, self.period,
        )  # fmt: skip

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UsageEvent) and self.fields() == other.fields()

    __hash__ = None  # type: ignore[assignment]  # attributes is a dict: like the tuple it was, unhashable

    def __repr__(self) -> str:
        return f"UsageEvent{self.fields()!r}"


class RatedUsage:
    """One mediated event priced by one charge.

    `amount` = price(aggregate_after) - price(aggregate_before), exact; it can be
    zero or negative for volume and package models.
    """

    __slots__ = (
        "aggregate_after", "aggregate_before", "amount", "charge_id", "event", "invoice_id", "model",
        "quantity",
    )  # fmt: skip

    def __init__(
        self,
        event: UsageEvent,
        charge_id: str,
        model: str,
        quantity: Decimal,  # the event's quantity after per-event rounding
        amount: Decimal,
        aggregate_before: Decimal,
        aggregate_after: Decimal,
        invoice_id: str,
    ) -> None:
        self.event: Final = event
        self.charge_id: Final = charge_id
        self.model: Final = model
        self.quantity: Final = quantity
        self.amount: Final = amount
        self.aggregate_before: Final = aggregate_before
        self.aggregate_after: Final = aggregate_after
        self.invoice_id: Final = invoice_id

    def fields(self) -> tuple[object, ...]:
        return (
            self.event, self.charge_id, self.model, self.quantity, self.amount, self.aggregate_before,
            self.aggregate_after, self.invoice_id,
        )  # fmt: skip

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RatedUsage) and self.fields() == other.fields()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RatedUsage{self.fields()!r}"


def invoice_id_for(account_id: str, period: str) -> str:
    """Deterministic invoice id: the same account and period always give the same id."""
    digest = hashlib.blake2b(f"{account_id}\x1f{period}".encode(), digest_size=6).hexdigest().upper()
    return f"INV-{period.replace('-', '')}-{digest}"
