"""Hostile raw records for the garbage fault, in every input format.

Each hostile record is a valid record of a catalog account (accounts of every time
zone in turn) with one defect that makes it unbillable whatever the pipeline does
with the rest: random bytes, truncation, wrong types, huge and negative-tiny
quantities, instants outside 1970..9999 or tiny epochs in 1970, deep nesting,
invalid UTF-8, NUL bytes, oversized and ~1 MB lines. `expected` names the reasons
the record may be rejected with (None: any reason).

Values come from hypothesis strategies drawn with `@seed` (so the same seed gives
the same records), the choices between them from `random.Random(seed)`. Records
never hold a newline, never end in CR and are never blank, so each is exactly one
line of an input file, read back byte for byte.
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from generator import generate_events
from meterline.kernel import reasons

FORMATS = ("json", "cloudevents", "lago", "asterisk-csv")
MAX_RECORD_BYTES = 65_536  # mediation's default raw record limit
ONE_MB = 1_000_000
ORJSON_MAX_DEPTH = 1024
LITERAL = "@@literal@@"  # replaced by a raw JSON literal after encoding

MALFORMED = frozenset({reasons.MALFORMED})
TOO_LARGE = frozenset({reasons.TOO_LARGE})
BAD_QUANTITY = frozenset({reasons.INVALID_QUANTITY})
BAD_TIME = frozenset({reasons.INVALID_TIMESTAMP})


@dataclass(frozen=True, slots=True)
class Hostile:
    fmt: str
    data: bytes
    kind: str
    expected: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class Literal:
    """Raw JSON number text, written into a record as is."""

    text: str


# --------------------------------------------------------------------------- hypothesis pools


@contextmanager
def _without_local_constants() -> Iterator[None]:
    """Hypothesis mixes in literals it finds in the project's imported modules, so its examples
    would vary with what a test session happened to import; without them a seed always gives
    the same examples (with the same hypothesis version)."""
    try:
        from hypothesis.internal.conjecture import providers
    except ImportError:  # pragma: no cover - an older hypothesis has no such constants
        yield
        return
    original = getattr(providers, "_get_local_constants", None)
    if original is None:  # pragma: no cover
        yield
        return
    empty = providers.Constants()  # type: ignore[attr-defined]
    providers._get_local_constants = lambda: empty
    providers.CONSTANTS_CACHE.cache.clear()
    try:
        yield
    finally:
        providers._get_local_constants = original
        providers.CONSTANTS_CACHE.cache.clear()


def drawn(strategy: st.SearchStrategy[Any], count: int, seed: int) -> list[Any]:
    """`count` examples of a strategy, the same ones for the same seed."""
    found: list[Any] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=count,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    with _without_local_constants():
        collect()
    return found


_JSON_LEAVES = (
    st.booleans()
    | st.none()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_JSON = st.recursive(
    _JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
_EPOCH_MAX = 253_402_300_799  # 9999-12-31T23:59:59Z


@dataclass(frozen=True, slots=True)
class Pools:
    junk_bytes: Sequence[bytes]
    junk_values: Sequence[Any]  # JSON values that are neither numbers nor strings
    junk_text: Sequence[str]
    huge: Sequence[str]  # JSON number literals >= 10^23
    negative_tiny: Sequence[str]  # negative decimal literals
    bad_epochs: Sequence[str]  # epoch literals outside 1970..9999
    bad_past: Sequence[datetime]  # naive instants at least a day before 1970

    @classmethod
    def draw(cls, seed: int) -> Pools:
        return cls(
            junk_bytes=drawn(st.binary(min_size=1, max_size=300), 200, seed),
            junk_values=drawn(
                st.booleans()
                | st.lists(_JSON, max_size=4)
                | st.dictionaries(st.text(max_size=8), _JSON, max_size=4),
                200,
                seed + 1,
            ),
            junk_text=drawn(st.text(max_size=40), 200, seed + 2),
            huge=[
                *drawn(
                    st.integers(10**23, 10**60).map(str)
                    | st.floats(1e23, 1e308).map(repr)
                    | st.decimals(Decimal("1e23"), Decimal("1e60"), allow_nan=False).map(str),
                    100,
                    seed + 3,
                ),
                *("1e400", "1e999999999", "1E+99", "100000000000000000000000.000000000000000000001"),
            ],
            negative_tiny=[
                *drawn(
                    st.decimals(Decimal(-1), Decimal("-1E-30"), allow_nan=False).map(str)
                    | st.floats(-1e-10, -5e-324).map(repr),
                    100,
                    seed + 4,
                ),
                *("-1e-30", "-0.000000000000000000000001", "-5e-324", "-1E-999999999"),
            ],
            bad_epochs=[
                *drawn(
                    st.integers(-(10**30), -1).map(str)
                    | st.integers(_EPOCH_MAX + 1, 10**30).map(str)
                    | st.floats(max_value=-1e-3, allow_infinity=False).map(repr)
                    | st.floats(min_value=2.6e11, allow_infinity=False).map(repr),
                    100,
                    seed + 5,
                ),
                *("-62135596800", "-62135596801", "253402300800", "1e20", "-1e300"),
            ],
            bad_past=drawn(st.datetimes(datetime(1, 1, 1), datetime(1969, 12, 30)), 100, seed + 6),
        )


# --------------------------------------------------------------------------- base records

ISO_OUT_OF_RANGE = (
    "0001-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00", "1969-12-31T23:59:59Z",
    "1969-12-31T23:59:59.999999Z", "1970-01-01T00:00:00+00:01", "1970-01-01T09:59:59+10:00",
    "9999-12-31T23:59:59-00:01", "9999-12-31T23:59:59.999999-14:00", "10000-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-13-01T00:00:00Z", "2026-10-10T25:00:00Z",
    "-0001-01-01T00:00:00Z", "1900-01-01T00:00:00Z", "9999-12-31T23:59:60Z",
)  # fmt: skip
CDR_OUT_OF_RANGE = (
    "0001-01-01 00:00:00", "1969-12-31 23:59:59", "0000-01-01 00:00:00", "10000-01-01 00:00:00",
    "9999-12-31 24:00:00", "2026-02-30 10:00:00", "1900-01-01 00:00:00", "1969-07-20 20:17:40",
)  # fmt: skip
TINY_EPOCHS = ("5e-324", "1e-300", "0.000001", "0", "1", "86399")  # in 1970: no contract then
BAD_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80", b"\xe2\x82")


class Bases:
    """Valid native events of a catalog, by account time zone, to build hostile records from."""

    def __init__(self, catalog_doc: Mapping[str, Any], seed: int, month: str) -> None:
        self.meters = {m["code"]: m for m in catalog_doc["meters"]}
        zones = {a["id"]: a["timezone"] for a in catalog_doc["accounts"]}
        lines = generate_events(catalog_doc, 4000, seed, month, duplicate_rate=0, bad_rate=0)
        self.by_zone: dict[str, list[dict[str, Any]]] = {}
        for line in lines:
            event = orjson.loads(line)
            self.by_zone.setdefault(zones[event["account_id"]], []).append(event)
        self.zones = sorted(self.by_zone)

    def pick(self, rng: random.Random, number: int, only: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """An event of the zone `number` points at (every zone in turn) that `only` accepts."""
        for step in range(len(self.zones)):
            events = [e for e in self.by_zone[self.zones[(number + step) % len(self.zones)]] if only(e)]
            if events:
                return dict(rng.choice(events))
        raise ValueError("no base event fits")

    def aggregation(self, event: Mapping[str, Any]) -> str:
        return str(self.meters[event["meter"]]["aggregation"])

    def value_property(self, event: Mapping[str, Any]) -> str:
        return str(self.meters[event["meter"]].get("value_property") or "quantity")


def _epoch(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp())


def encode(fmt: str, event: Mapping[str, Any], bases: Bases, event_id: str) -> dict[str, Any] | list[str]:
    """A native event written in `fmt` (a JSON document, or the 17 CDR fields)."""
    if fmt == "json":
        return {**event, "event_id": event_id}
    if fmt == "asterisk-csv":
        answer = datetime.fromtimestamp(_epoch(event["timestamp"]), UTC)
        seconds = int(event["quantity"])
        at = "%Y-%m-%d %H:%M:%S"
        dst = event["attributes"]["destination"]
        return [
            event["account_id"], "100", dst, "default", '"Fault" <100>', "SIP/100-0001", "SIP/trunk-0002",
            "Dial", f"SIP/trunk/{dst}", (answer - timedelta(seconds=5)).strftime(at), answer.strftime(at),
            (answer + timedelta(seconds=seconds)).strftime(at), str(seconds + 5), str(seconds), "ANSWERED",
            "DOCUMENTATION", event_id,
        ]  # fmt: skip
    body = dict(event.get("attributes") or {})
    if "quantity" in event:
        body[bases.value_property(event)] = event["quantity"]
    if fmt == "cloudevents":
        return {
            "specversion": "1.0",
            "id": event_id,
            "source": "/faults",
            "type": event["meter"],
            "subject": event["account_id"],
            "time": event["timestamp"],
            "data": body,
        }
    return {
        "transaction_id": event_id,
        "external_customer_id": event["account_id"],
        "code": event["meter"],
        "timestamp": _epoch(event["timestamp"]),
        "properties": body,
    }


# Where each role lives: a key path in the JSON document, or a CDR column.
PATHS: dict[str, dict[str, tuple[str, ...]]] = {
    "json": {"id": ("event_id",), "account": ("account_id",), "meter": ("meter",), "time": ("timestamp",),
             "quantity": ("quantity",), "payload": ("attributes",)},
    "cloudevents": {"id": ("id",), "account": ("subject",), "meter": ("type",), "time": ("time",),
                    "quantity": ("data", "*"), "payload": ("data",)},
    "lago": {"id": ("transaction_id",), "account": ("external_customer_id",), "meter": ("code",),
             "time": ("timestamp",), "quantity": ("properties", "*"), "payload": ("properties",)},
}  # fmt: skip
CDR_ROLES = {"id": 16, "account": 0, "time": 10, "quantity": 13}


def set_role(doc: dict[str, Any], path: tuple[str, ...], value: Any, quantity_key: str) -> None:
    if len(path) == 2:
        doc[path[0]][quantity_key] = value
    else:
        doc[path[0]] = value


def render(fmt: str, doc: dict[str, Any] | list[str], literal: str | None = None) -> bytes:
    if isinstance(doc, list):
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="").writerow(doc)
        return buffer.getvalue().encode()
    data = orjson.dumps(doc)
    if literal is not None:
        data = data.replace(orjson.dumps(LITERAL), literal.encode(), 1)
    return data


def one_line(data: bytes) -> bytes:
    """A record that reads back as itself: no newline, no trailing CR, not blank."""
    data = data.replace(b"\n", b"?")
    if data.endswith(b"\r"):
        data += b"?"
    return data if data.strip() else data + b"?"
