"""The incremental rater: `step(state, record) -> outputs`, state mutated in place.

For each account, contract, charge and period the rater keeps the running
aggregate A of the meter. Rating an event moves A from `before` to `after` and
emits `price(after) - price(before)`, exact, so the rated amounts of a key always
sum to the price of its current aggregate, in any arrival order (docs/catalog.md).

No Kafka, no clock, no globals: the caller owns the `RatingState`, writes a
changelog entry for every key in `RatedBatch.changed` (and every value in
`new_unique_values`), and can roll a batch back with `RatingState.undo` when its
transaction aborts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from zoneinfo import ZoneInfo

from meterline.kernel.catalog import Catalog, Charge, Meter, Plan, zone
from meterline.kernel.reasons import (
    INVALID_QUANTITY,
    INVALID_TIMESTAMP,
    MISSING_FIELD,
    NO_MATCHING_CHARGE,
    UNKNOWN_ACCOUNT,
    UNKNOWN_METER,
    Rejected,
    internal_error,
)
from meterline.kernel.records import RatedUsage, UsageEvent, invoice_id_for
from rating.charges import MeterCharges, no_matching_charge
from rating.pricing import (
    ZERO,
    PriceSchedule,
    add_quantity,
    price_difference,
    round_event_quantity,
    schedule_for,
)

# (account_id, contract_id, charge_id, period)
AggregateKey = tuple[str, str, str, str]

ONE = Decimal(1)
# Aggregates, prices and amounts are stored as DECIMAL(38,18): below 10^20 in absolute value.
LIMIT = Decimal(10) ** 20


@dataclass(slots=True)
class RatingState:
    """Running aggregates of one partition (or of anything the caller chooses).

    `aggregates[key]` is A for sum, count and max meters, and the number of
    distinct values for unique_count meters, whose values are in `unique_values`.
    """

    aggregates: dict[AggregateKey, Decimal] = field(default_factory=dict)
    unique_values: dict[AggregateKey, set[str]] = field(default_factory=dict)

    def undo(self, batch: RatedBatch) -> None:
        """Put the state back as it was before `batch` was rated (after an aborted transaction)."""
        for key, previous in batch.previous.items():
            if previous is None:
                self.aggregates.pop(key, None)
            else:
                self.aggregates[key] = previous
        for key, value in batch.new_unique_values:
            values = self.unique_values.get(key)
            if values is not None:
                values.discard(value)
                if not values:
                    del self.unique_values[key]


@dataclass(frozen=True, slots=True)
class RatedBatch:
    """What rating a batch produced, and what it changed in the state."""

    rated: list[RatedUsage]
    # (index of the event in the batch, why it was rejected); the state ignored it.
    rejected: list[tuple[int, Rejected]]
    # Keys whose aggregate was created or changed: the changelog entries to write.
    changed: set[AggregateKey]
    # unique_count values first seen in this batch, in order.
    new_unique_values: list[tuple[AggregateKey, str]]
    # Aggregate of every changed key before the batch (None: the key was new), for undo.
    previous: dict[AggregateKey, Decimal | None]


def rate(state: RatingState, event: UsageEvent, catalog: Catalog) -> RatedUsage:
    """Rate one enriched event; raises `Rejected` (state unchanged) when it cannot be rated.

    The record's `quantity` is what the event adds to the measure: its rounded
    quantity for sum and max meters, 1 (one event, one value seen) for count and
    unique_count meters.
    """
    return _Rater(state, catalog).rate(event)


def rate_batch(state: RatingState, events: Iterable[UsageEvent], catalog: Catalog) -> RatedBatch:
    """Rate events in order; a rejected event leaves the state as it was and the batch goes on.

    An event that fails unexpectedly (any other exception) is rejected as internal_error,
    with the error as its detail; the state is left as it was for it too.
    """
    rater = _Rater(state, catalog)
    rated: list[RatedUsage] = []
    rejected: list[tuple[int, Rejected]] = []
    for index, event in enumerate(events):
        try:
            rated.append(rater.rate(event))
        except Rejected as rejection:
            rejected.append((index, rejection))
        except Exception as exc:  # containment: the state is only written once nothing can fail
            rejected.append((index, internal_error(exc)))
    return RatedBatch(
        rated=rated,
        rejected=rejected,
        changed=set(rater.previous),
        new_unique_values=rater.new_unique_values,
        previous=rater.previous,
    )


class _Rater:
    """Rates events against one state and catalog, caching lookups for the batch."""

    __slots__ = (
        "candidates",
        "catalog",
        "invoice_ids",
        "new_unique_values",
        "previous",
        "prices",
        "state",
        "zones",
    )

    def __init__(self, state: RatingState, catalog: Catalog) -> None:
        self.state = state
        self.catalog = catalog
        self.zones: dict[str, ZoneInfo] = {}
        self.candidates: dict[tuple[str, str], _Candidates] = {}
        self.invoice_ids: dict[tuple[str, str], str] = {}
        self.previous: dict[AggregateKey, Decimal | None] = {}
        self.new_unique_values: list[tuple[AggregateKey, str]] = []
        # Last (aggregate, price) seen per key in this batch; the catalog cannot change mid-batch.
        self.prices: dict[AggregateKey, tuple[Decimal, Decimal]] = {}

    def rate(self, event: UsageEvent) -> RatedUsage:
        meter = self._meter(event)
        plan = self._plan(event)
        zone = self._zone(event)
        charge, schedule = self._charge(plan, event, zone)
        key: AggregateKey = (event.account_id, event.contract_id, charge.id, event.period)
        state = self.state
        stored = state.aggregates.get(key)
        before = ZERO if stored is None else stored

        # Work out the new aggregate before touching the state, so a failure leaves it intact.
        new_value: str | None = None
        aggregation = meter.aggregation
        if aggregation == "sum":
            quantity = round_event_quantity(charge.rounding, event.quantity)
            after = add_quantity(before, quantity)
        elif aggregation == "count":
            quantity = ONE
            after = add_quantity(before, ONE)
        elif aggregation == "max":
            quantity = round_event_quantity(charge.rounding, event.quantity)
            after = max(before, quantity)
        else:  # unique_count
            if event.value is None:
                raise Rejected(MISSING_FIELD, f"meter {meter.code!r} counts {meter.value_property!r}")
            quantity = ONE
            seen = state.unique_values.get(key)
            if seen is None or event.value not in seen:
                new_value = event.value
                after = add_quantity(before, ONE)
            else:
                after = before

        # A key's price before this event is usually the one computed for its previous event.
        known = self.prices.get(key)
        price_before = known[1] if known is not None and known[0] == before else schedule.price(before)
        price_after = price_before if after == before else schedule.price(after)
        amount = price_difference(price_after, price_before)
        if abs(after) >= LIMIT or abs(price_after) >= LIMIT or abs(amount) >= LIMIT:
            raise Rejected(
                INVALID_QUANTITY,
                f"charge {charge.id!r} would reach 10^20: aggregate {after}, price {price_after}",
            )
        rated = RatedUsage(
            event=event,
            charge_id=charge.id,
            model=charge.model,
            quantity=quantity,
            amount=amount,
            aggregate_before=before,
            aggregate_after=after,
            invoice_id=self._invoice_id(event.account_id, event.period),
        )

        # Nothing below can fail: the state moves only for an event that is rated.
        self.prices[key] = (after, price_after)
        if stored is None or after != before:
            self.previous.setdefault(key, stored)
            state.aggregates[key] = after
        if new_value is not None:
            state.unique_values.setdefault(key, set()).add(new_value)
            self.new_unique_values.append((key, new_value))
        return rated

    def _charge(self, plan: Plan, event: UsageEvent, zone: ZoneInfo) -> tuple[Charge, PriceSchedule]:
        """The first charge of the plan that matches the event (MeterCharges), with its schedule."""
        found = self.candidates.get((plan.id, event.meter))
        if found is None:
            found = self.candidates[(plan.id, event.meter)] = _Candidates.of(plan, event.meter)
        # The local time only matters to local_time filters: convert only when one is there.
        local_time = event.event_time
        if found.choice.needs_local_time:
            try:
                local_time = event.event_time.astimezone(zone)
            except OverflowError:  # within hours of datetime's range end (mediation lets none through)
                detail = f"{event.event_time.isoformat()} has no local time in {zone.key}"
                raise Rejected(INVALID_TIMESTAMP, detail) from None
        # Mediation rejected every event no charge matched; one can still fail here when the
        # catalog changed between the stages.
        index = found.choice.first_match(event, local_time)
        if index < 0:
            raise no_matching_charge(plan.id, event)
        return found.choice.charges[index], found.schedules[index]

    def _meter(self, event: UsageEvent) -> Meter:
        meter = self.catalog.meters.get(event.meter)
        if meter is None:
            raise Rejected(UNKNOWN_METER, f"meter {event.meter!r} is not in the catalog")
        return meter

    def _plan(self, event: UsageEvent) -> Plan:
        plan = self.catalog.plans.get(event.plan_id)
        if plan is None:
            # Enriched under a plan the current catalog no longer has: nothing can rate it.
            raise Rejected(NO_MATCHING_CHARGE, f"plan {event.plan_id!r} is not in the catalog")
        return plan

    def _zone(self, event: UsageEvent) -> ZoneInfo:
        found = self.zones.get(event.account_id)
        if found is None:
            account = self.catalog.accounts.get(event.account_id)
            if account is None:
                raise Rejected(UNKNOWN_ACCOUNT, f"account {event.account_id!r} is not in the catalog")
            found = self.zones[event.account_id] = zone(account.timezone)
        return found

    def _invoice_id(self, account_id: str, period: str) -> str:
        found = self.invoice_ids.get((account_id, period))
        if found is None:
            found = self.invoice_ids[(account_id, period)] = invoice_id_for(account_id, period)
        return found


@dataclass(frozen=True, slots=True)
class _Candidates:
    """The charges of a plan for one meter, in plan order, with their price schedules."""

    choice: MeterCharges
    schedules: tuple[PriceSchedule, ...]

    @classmethod
    def of(cls, plan: Plan, meter: str) -> _Candidates:
        choice = MeterCharges(plan, meter)
        return cls(choice, tuple(schedule_for(c) for c in choice.charges))
