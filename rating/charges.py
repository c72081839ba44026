"""Which charge of a plan rates an event (docs/catalog.md).

An event is rated by the FIRST charge of its plan whose meter equals the event's
meter and whose filters all match; an absent filter matches everything.
"""

from __future__ import annotations

from datetime import datetime

from meterline.kernel.catalog import Charge, ChargeFilters, LocalTimeWindow, Plan
from meterline.kernel.reasons import NO_MATCHING_CHARGE, Rejected
from meterline.kernel.records import UsageEvent


class MeterCharges:
    """The charges of one plan for one meter, in plan order: the candidates for its events.

    The one place that decides which charge rates an event: mediation rejects an event
    none matches (no_matching_charge), rating prices it with the one that does.
    """

    __slots__ = ("charges", "needs_local_time")

    def __init__(self, plan: Plan, meter: str) -> None:
        self.charges: tuple[Charge, ...] = tuple(c for c in plan.charges if c.meter == meter)
        # The local time only matters to local_time filters: callers convert only when one is there.
        self.needs_local_time: bool = any(c.filters.local_time is not None for c in self.charges)

    def first_match(self, event: UsageEvent, local_time: datetime) -> int:
        """Index in `charges` of the first whose filters accept the event; -1 if none does."""
        for index, charge in enumerate(self.charges):
            if filters_match(charge.filters, event, local_time):
                return index
        return -1


def select_charge(plan: Plan, event: UsageEvent, local_time: datetime) -> Charge | None:
    """The first charge of `plan` for the event's meter whose filters match.

    `local_time` is the event's instant already converted to the account's zone.
    """
    candidates = MeterCharges(plan, event.meter)
    index = candidates.first_match(event, local_time)
    return None if index < 0 else candidates.charges[index]


def no_matching_charge(plan_id: str, event: UsageEvent) -> Rejected:
    return Rejected(
        NO_MATCHING_CHARGE,
        f"no charge of plan {plan_id!r} for meter {event.meter!r} matches event {event.event_id!r}",
    )


def filters_match(filters: ChargeFilters, event: UsageEvent, local_time: datetime) -> bool:
    """Whether every filter of a charge accepts the event."""
    attributes = event.attributes
    for key, allowed in filters.attributes.items():
        value = attributes.get(key)
        # Compared as strings: the catalog may have written 443 where events carry "443".
        if value is None or str(value) not in allowed:
            return False
    if filters.destination_prefixes:
        destination = attributes.get("destination")
        if destination is None or not str(destination).startswith(filters.destination_prefixes):
            return False
    return filters.local_time is None or in_window(filters.local_time, local_time)


def in_window(window: LocalTimeWindow, local_time: datetime) -> bool:
    """Weekday in `days` (None = every day) and clock time in [start, end).

    The weekday is the event's own local weekday: a Friday 22:00-06:00 window does
    not take Saturday 02:00 unless Saturday is listed too. start > end wraps past
    midnight; start == end is read as the whole day (an empty window is never meant).
    """
    if window.days is not None and local_time.weekday() not in window.days:
        return False
    clock = local_time.time()
    start, end = window.start, window.end
    if start < end:
        return start <= clock < end
    if start > end:
        return clock >= start or clock < end
    return True
