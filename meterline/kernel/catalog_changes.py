"""What publishing a new catalog would remove, and whether that could lose usage.

Removing an account or a contract from the contracts topic while usage rated
under it sits in a period that is not closed yet would make that usage
unbillable: the close finds no terms for it. `contracts publish` therefore
refuses such a removal unless forced.

Deciding "has usage in an open period" exactly would mean reading the whole
rated topic. Instead the check is conservative and cheap: a removed contract
*may* have usage in every billing period (calendar month in the account's zone)
it was in effect during, from its start up to now (plus the 24 hours of clock
skew mediation accepts). If any of those periods is not closed for the account
on `meterline.periods`, the removal is refused. Contracts that start in the
future, or whose periods are all closed, can be removed freely.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import structlog

log = structlog.get_logger()

# Mediation accepts event times up to this far ahead of its clock.
FUTURE_SKEW: Final = timedelta(hours=24)
_SHOWN_PERIODS: Final = 3


@dataclass(frozen=True, slots=True)
class Removal:
    """A contract that a new catalog drops, with the periods that may still bill it."""

    account_id: str
    contract_id: str
    account_removed: bool
    open_periods: tuple[str, ...]


def accounts_of_entities(values: Mapping[bytes, bytes]) -> dict[str, dict[str, Any]]:
    """Account specs by id from the contracts topic's latest values (`account/<id>` keys).

    An unreadable value is skipped with an error log: it cannot name what it held.
    """
    accounts: dict[str, dict[str, Any]] = {}
    for key, raw in values.items():
        if not key.startswith(b"account/"):
            continue
        try:
            entity = orjson.loads(raw)
            spec = entity["spec"]
            accounts[str(spec["id"])] = dict(spec)
        except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
            log.error("contracts_entity_unreadable", key=key.decode("utf-8", "replace"), error=str(exc))
    return accounts


def _month(day: date) -> tuple[int, int]:
    return day.year, day.month


def _months(first: date, last: date) -> list[str]:
    months = []
    year, month = _month(first)
    while (year, month) <= _month(last):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def periods_in_effect(contract: Mapping[str, Any], timezone: str, now: datetime) -> list[str]:
    """Billing periods a contract was in effect during, from its start up to `now` (plus skew)."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    try:
        start = date.fromisoformat(str(contract["start"]))
        end_text = contract.get("end")
        end = date.fromisoformat(str(end_text)) if end_text is not None else None
    except (KeyError, ValueError):
        return []  # never a valid contract, so nothing was rated under it
    latest = (now.astimezone(UTC) + FUTURE_SKEW).astimezone(zone).date()
    last = latest if end is None else min(latest, end - timedelta(days=1))
    return _months(start, last) if last >= start else []


def blocked_removals(
    current: Mapping[str, Mapping[str, Any]],
    wanted: Mapping[str, Mapping[str, Any]],
    is_closed: Callable[[str, str], bool],
    now: datetime,
) -> list[Removal]:
    """Contracts of `current` accounts that `wanted` drops and that may bill an open period.

    `is_closed(account_id, period)` says whether a period is closed for an account.
    """
    blocked: list[Removal] = []
    for account_id in sorted(current):
        old = current[account_id]
        new = wanted.get(account_id)
        kept = {str(c.get("id")) for c in _contracts(new)} if new is not None else set()
        for contract in _contracts(old):
            contract_id = str(contract.get("id"))
            if contract_id in kept:
                continue
            periods = periods_in_effect(contract, str(old.get("timezone", "UTC")), now)
            still_open = tuple(p for p in periods if not is_closed(account_id, p))
            if still_open:
                blocked.append(Removal(account_id, contract_id, new is None, still_open))
    return blocked


def _contracts(spec: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    contracts = spec.get("contracts")
    return [c for c in contracts if isinstance(c, Mapping)] if isinstance(contracts, list) else []


def describe(removals: Iterable[Removal]) -> str:
    """One line naming each account and contract and its open periods."""
    parts = []
    for removal in removals:
        shown = ", ".join(removal.open_periods[:_SHOWN_PERIODS])
        more = len(removal.open_periods) - _SHOWN_PERIODS
        if more > 0:
            shown += f" and {more} more"
        what = "account" if removal.account_removed else "contract of account"
        parts.append(f"{what} {removal.account_id!r} (contract {removal.contract_id!r}, open: {shown})")
    return "; ".join(parts)
