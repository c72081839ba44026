"""Garbage for the control topics: records no publisher of ours writes.

`meterline.contracts`: invalid JSON, JSON that is not an entity, entities of unknown
kind or version, keys that do not match, invalid UTF-8, deep nesting, huge values.
With `semantic`, also entities of the right shape whose content no catalog accepts
(an account without contracts, a plan charging an unknown meter). None of them
names a real catalog entity, so skipping them leaves the catalog as published.

`meterline.periods`: impossible period keys (2026-13, 0000-01, 2026-00, ...) with
well-formed and garbage values, and keys that are not periods at all. None of them
closes a real period.
"""

from __future__ import annotations

import random
from typing import Any

import orjson

from meterline.kernel.topics import CONTRACTS, PERIODS

Record = tuple[str, bytes | None, bytes | None]  # topic, key, value

_IMPOSSIBLE_PERIODS = (
    "2026-13", "0000-01", "2026-00", "9999-99", "2026-1", "26-10", "2026-10-01", "abcd-ef", "2026/10",
    "2026-13/acct-00001", "0000-01/acct-00001", "2026-10/", "/acct-00001", "", " 2026-10", "2026-10 ",
)  # fmt: skip


def _close_value(period: str, account: str | None = None) -> bytes:
    return orjson.dumps(
        {"period": period, "account_id": account, "closed_at": "2026-12-06T00:00:00Z", "by": "close"}
    )


def contracts_poison(rng: random.Random, tag: str, semantic: bool = False) -> list[Record]:
    n = f"poison-{tag}-{rng.getrandbits(24):06x}"

    def entity(kind: Any, entity_id: Any, spec: Any, version: Any = 1) -> bytes:
        return orjson.dumps({"kind": kind, "id": entity_id, "version": version, "spec": spec})

    records: list[Record] = [
        (CONTRACTS, f"account/{n}".encode(), b"{not json"),
        (CONTRACTS, f"account/{n}-b".encode(), b""),
        (CONTRACTS, f"plan/{n}".encode(), b"[1, 2, 3]"),
        (CONTRACTS, f"meter/{n}".encode(), b'"a string"'),
        (CONTRACTS, f"meter/{n}-b".encode(), b"42"),
        (CONTRACTS, f"account/{n}-c".encode(), b"null"),
        (CONTRACTS, f"{n}".encode(), entity("account", n, {"id": n})),
        (CONTRACTS, f"widget/{n}".encode(), entity("widget", n, {"id": n})),
        (CONTRACTS, f"account/{n}-d".encode(), entity("account", f"{n}-d", {"id": f"{n}-d"}, version=99)),
        (CONTRACTS, f"account/{n}-e".encode(), entity("account", "someone-else", {"id": "someone-else"})),
        (CONTRACTS, f"account/{n}-f".encode(), entity("account", f"{n}-f", "not an object")),
        (CONTRACTS, f"account/{n}-g".encode(), orjson.dumps({"kind": "account"})),
        (CONTRACTS, f"account/{n}-h".encode(), b"\xff\xfe{}"),
        (CONTRACTS, b"\xff\xfe/" + n.encode(), entity("account", n, {"id": n})),
        (CONTRACTS, None, entity("account", n, {"id": n})),
        (CONTRACTS, f"account/{n}-i".encode(), b"[" * 5000 + b"]" * 5000),
        (CONTRACTS, f"account/{n}-j".encode(), b'{"pad": "' + b"x" * 500_000 + b'"}'),
        (CONTRACTS, f"account/{n}-k".encode(), None),  # a tombstone of nothing
        (
            CONTRACTS,
            bytes(rng.getrandbits(8) for _ in range(40)),
            bytes(rng.getrandbits(8) for _ in range(200)),
        ),
    ]
    if semantic:
        charge = {"id": f"{n}-c", "meter": "no-such-meter", "model": "flat", "unit_price": "1"}
        plan = {"id": f"{n}-s", "currency": "EUR", "charges": [charge]}
        records += [
            (CONTRACTS, f"account/{n}-s".encode(), entity("account", f"{n}-s", {"id": f"{n}-s"})),
            (CONTRACTS, f"plan/{n}-s".encode(), entity("plan", f"{n}-s", plan)),
        ]
    return records


def periods_poison(rng: random.Random) -> list[Record]:
    records: list[Record] = []
    for key in _IMPOSSIBLE_PERIODS:
        period = key.partition("/")[0]
        value = rng.choice([_close_value(period), b"{not json", b"[]", b"", b"\x00\xff", None])
        records.append((PERIODS, key.encode(), value))
    records += [
        (PERIODS, b"\xff\xfe", _close_value("2026-13")),
        (PERIODS, None, _close_value("2026-13")),
        (PERIODS, b"2026-13" * 20_000, _close_value("2026-13")),
        (PERIODS, bytes(rng.getrandbits(8) for _ in range(16)), bytes(rng.getrandbits(8) for _ in range(64))),
        # A well-formed close for an account that does not exist: harmless, must not crash.
        (PERIODS, b"2026-10/no-such-account", _close_value("2026-10", "no-such-account")),
    ]
    return records
