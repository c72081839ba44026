"""Which removals `contracts publish` refuses: contracts that may bill an open period."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from meterline.kernel.catalog_changes import (
    Removal,
    accounts_of_entities,
    blocked_removals,
    describe,
    periods_in_effect,
)

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


def account(account_id: str, *contracts: dict[str, object], timezone: str = "UTC") -> dict[str, object]:
    return {"id": account_id, "timezone": timezone, "contracts": list(contracts)}


def contract(contract_id: str, start: str, end: str | None = None) -> dict[str, object]:
    return {"id": contract_id, "plan": "p", "start": start, "end": end}


def never_closed(account_id: str, period: str) -> bool:
    return False


def test_periods_from_start_to_now() -> None:
    assert periods_in_effect(contract("c", "2026-10-15"), "UTC", NOW) == ["2026-10", "2026-11", "2026-12"]


def test_end_is_exclusive() -> None:
    assert periods_in_effect(contract("c", "2026-09-01", "2026-11-01"), "UTC", NOW) == ["2026-09", "2026-10"]


def test_future_contract_has_no_period_yet() -> None:
    assert periods_in_effect(contract("c", "2027-03-01"), "UTC", NOW) == []


def test_clock_skew_and_zone_reach_the_next_month() -> None:
    # 2026-12-31T12:00Z: events may be stamped up to 24 h ahead, i.e. January in Tokyo.
    late = datetime(2026, 12, 31, 12, 0, tzinfo=UTC)
    assert periods_in_effect(contract("c", "2026-12-01"), "Asia/Tokyo", late) == ["2026-12", "2027-01"]


def test_removed_account_with_open_periods_is_blocked() -> None:
    current = {
        "a": account("a", contract("a-1", "2026-11-01")),
        "b": account("b", contract("b-1", "2026-01-01")),
    }
    wanted = {"b": current["b"]}
    assert blocked_removals(current, wanted, never_closed, NOW) == [
        Removal("a", "a-1", True, ("2026-11", "2026-12"))
    ]


def test_removed_contract_of_a_kept_account_is_blocked() -> None:
    current = {"a": account("a", contract("a-1", "2026-01-01", "2026-12-01"), contract("a-2", "2026-12-01"))}
    wanted = {"a": account("a", contract("a-2", "2026-12-01"))}
    closed = {f"2026-{m:02d}" for m in range(1, 11)}
    blocked = blocked_removals(current, wanted, lambda _, p: p in closed, NOW)
    assert blocked == [Removal("a", "a-1", False, ("2026-11",))]


def test_closed_periods_and_future_contracts_allow_removal() -> None:
    current = {
        "a": account("a", contract("a-1", "2026-10-01")),
        "b": account("b", contract("b-1", "2027-02-01")),
        "c": account("c"),
    }
    closed = {("a", "2026-10"), ("a", "2026-11"), ("a", "2026-12")}
    assert blocked_removals(current, {}, lambda a, p: (a, p) in closed, NOW) == []


def test_unchanged_and_added_contracts_are_not_removals() -> None:
    current = {"a": account("a", contract("a-1", "2026-01-01"))}
    wanted = {
        "a": account("a", contract("a-1", "2026-01-01"), contract("a-9", "2027-01-01")),
        "z": account("z"),
    }
    assert blocked_removals(current, wanted, never_closed, NOW) == []


def test_describe_is_one_line_naming_everything() -> None:
    text = describe(
        [
            Removal("beta", "beta-1", True, ("2026-09", "2026-10")),
            Removal("alpha", "alpha-1", False, tuple(f"2026-{m:02d}" for m in range(1, 13))),
        ]
    )
    assert text == (
        "account 'beta' (contract 'beta-1', open: 2026-09, 2026-10); "
        "contract of account 'alpha' (contract 'alpha-1', open: 2026-01, 2026-02, 2026-03 and 9 more)"
    )


def test_unreadable_entities_are_skipped() -> None:
    values = {
        b"account/a": orjson.dumps({"kind": "account", "id": "a", "version": 1, "spec": account("a")}),
        b"account/bad": b"{not json",
        b"account/shape": b"[1, 2]",
        b"meter/m": orjson.dumps({"kind": "meter", "id": "m", "version": 1, "spec": {"code": "m"}}),
    }
    assert accounts_of_entities(values) == {"a": account("a")}
