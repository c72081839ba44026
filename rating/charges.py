"""Which charge of a plan rates an event (DESIGN.md §5, §6 filters).

An event is rated by the FIRST charge of its plan whose meter equals the event's
meter and whose filters all match; an absent filter matches everything.
"""

from __future__ import annotations

from datetime import datetime

from meterline.catalog import Charge, ChargeFilters, LocalTimeWindow, Plan
from meterline.records import UsageEvent


def select_charge(plan: Plan, event: UsageEvent, local_time: datetime) -> Charge | None:
    """The first charge of `plan` for the event's meter whose filters match.

    `local_time` is the event's instant already converted to the account's zone.
    """
    for charge in plan.charges:
        if charge.meter == event.meter and filters_match(charge.filters, event, local_time):
            return charge
    return None


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
