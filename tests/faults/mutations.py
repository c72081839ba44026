"""Mutations that turn a valid record of any input format into a hostile one
(see tests.faults.garbage for the values and the base records)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import orjson

from meterline.kernel import reasons
from tests.faults.garbage import (
    BAD_QUANTITY,
    BAD_TIME,
    BAD_UTF8,
    CDR_OUT_OF_RANGE,
    CDR_ROLES,
    FORMATS,
    ISO_OUT_OF_RANGE,
    LITERAL,
    MALFORMED,
    MAX_RECORD_BYTES,
    ONE_MB,
    PATHS,
    TINY_EPOCHS,
    TOO_LARGE,
    Bases,
    Hostile,
    Literal,
    Pools,
    encode,
    one_line,
    render,
    set_role,
)

KINDS = (
    "random_bytes", "truncated", "deep_nesting", "invalid_utf8", "nul_byte", "wrong_type_id",
    "wrong_type_account", "wrong_type_meter", "wrong_type_time", "wrong_type_quantity",
    "wrong_type_payload", "huge_quantity", "negative_tiny_quantity", "time_out_of_range", "tiny_epoch",
)  # fmt: skip
_NOT_CDR = frozenset({"wrong_type_id", "wrong_type_meter", "wrong_type_payload", "tiny_epoch"})
_OVERSIZED = (ONE_MB - 2_000, ONE_MB, ONE_MB + 1_000, 70_000, 400_000, 1_200_000)
_DEPTHS = (3, 50, 500, 1000, 1100, 5000, 40000)


def kinds_for(fmt: str) -> tuple[str, ...]:
    return tuple(k for k in KINDS if fmt != "asterisk-csv" or k not in _NOT_CDR)


def _reasons(*names: str) -> frozenset[str]:
    return frozenset(names)


class Mutator:
    def __init__(self, catalog_doc: Mapping[str, Any], seed: int, month: str) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.bases = Bases(catalog_doc, seed, month)
        self.pools = Pools.draw(seed)

    def make(self, number: int, fmt: str, kind: str) -> Hostile:
        data, expected = getattr(self, f"_{kind}")(number, fmt)
        data = one_line(data)
        if len(data) > MAX_RECORD_BYTES:
            expected = TOO_LARGE  # checked before anything else
        return Hostile(fmt, data, kind, expected)

    # -- helpers -----------------------------------------------------------

    def _base(self, number: int, fmt: str, measured: bool = False) -> tuple[dict[str, Any] | list[str], str]:
        """A valid record of `fmt`; `measured`: of a sum meter, so its quantity is required."""

        def only(event: dict[str, Any]) -> bool:
            if fmt == "asterisk-csv":
                return bool(event["meter"] == "voice")
            return not measured or (self.bases.aggregation(event) == "sum" and "quantity" in event)

        event = self.bases.pick(self.rng, number, only)
        record = encode(fmt, event, self.bases, f"hostile-{self.seed}-{number}")
        return record, self.bases.value_property(event)

    def _with(self, number: int, fmt: str, role: str, value: Any, measured: bool = False) -> bytes:
        """The base record with `role` set to `value` (a str `literal` goes in as raw JSON)."""
        doc, key = self._base(number, fmt, measured)
        if isinstance(doc, list):
            doc[CDR_ROLES[role]] = value
            return render(fmt, doc)
        literal = None
        if isinstance(value, Literal):
            literal, value = value.text, LITERAL
        set_role(doc, PATHS[fmt][role], value, key)
        return render(fmt, doc, literal)

    def _text(self) -> str:
        return "x" + self.rng.choice(self.pools.junk_text).replace("\r", "").replace("\n", "")

    def _junk(self) -> Any:
        return self.rng.choice(self.pools.junk_values)

    # -- whole records -----------------------------------------------------

    def _random_bytes(self, number: int, fmt: str) -> tuple[bytes, frozenset[str] | None]:
        data = one_line(self.rng.choice(self.pools.junk_bytes) + self.rng.randbytes(self.rng.randrange(8)))
        if fmt == "asterisk-csv":
            data = data.replace(b",", b";")  # one field: never the 17 a CDR has
        else:
            try:
                if isinstance(orjson.loads(data), dict):
                    data = b"\xff" + data
            except orjson.JSONDecodeError:
                pass
        return data, MALFORMED

    def _truncated(self, number: int, fmt: str) -> tuple[bytes, frozenset[str] | None]:
        data = render(fmt, self._base(number, fmt)[0])
        if fmt == "asterisk-csv":
            sixteenth = [i for i, byte in enumerate(data) if byte == ord(",")][15]
            return data[: self.rng.randint(1, sixteenth)], MALFORMED  # at most 16 fields
        return data[: self.rng.randint(1, len(data) - 2)], MALFORMED  # the closing brace is gone

    def _deep_nesting(self, number: int, fmt: str) -> tuple[bytes, frozenset[str] | None]:
        depth, variant = self.rng.choice(_DEPTHS), self.rng.randrange(4)
        if fmt == "asterisk-csv" or variant < 2:
            if variant == 1 and fmt != "asterisk-csv":
                # An object within the depth orjson reads lacks every field; deeper, it is unreadable.
                found = _reasons(reasons.MISSING_FIELD, reasons.MALFORMED) if depth <= 1000 else MALFORMED
                return b'{"a":' * depth + b"1" + b"}" * depth, found
            return b"[" * depth + (b"]" * depth if fmt != "asterisk-csv" else b""), MALFORMED
        nested = Literal("[" * depth + "1" + "]" * depth)
        if variant == 2:
            return self._with(number, fmt, "quantity", nested, measured=True), (
                BAD_QUANTITY if depth <= 1000 else MALFORMED
            )
        return self._with(number, fmt, "time", nested), BAD_TIME if depth <= 1000 else MALFORMED

    def _invalid_utf8(self, number: int, fmt: str) -> tuple[bytes, frozenset[str] | None]:
        data = render(fmt, self._base(number, fmt)[0])
        where = 1 if fmt == "asterisk-csv" else data.index(b'"hostile-') + len(b'"hostile-')
        return data[:where] + self.rng.choice(BAD_UTF8) + data[where:], MALFORMED

    def _nul_byte(self, number: int, fmt: str) -> tuple[bytes, frozenset[str] | None]:
        if fmt != "asterisk-csv" and self.rng.random() < 0.5:
            data = render(fmt, self._base(number, fmt)[0])
            where = self.rng.randint(0, len(data))
            return data[:where] + b"\x00" + data[where:], MALFORMED  # a raw NUL is never JSON
        doc, _ = self._base(number, fmt)
        account = doc[0] if isinstance(doc, list) else doc[PATHS[fmt]["account"][0]]
        cut = self.rng.randint(0, len(account))
        return self._with(number, fmt, "account", account[:cut] + "\x00" + account[cut:]), _reasons(
            reasons.UNKNOWN_ACCOUNT, reasons.MALFORMED
        )

    def oversized(self, number: int, fmt: str, size: int) -> Hostile:
        doc, _ = self._base(number, fmt)
        if isinstance(doc, list):
            doc.append("")
            doc[17] = "x" * max(size - len(render(fmt, doc)), 0)  # the userfield
        else:
            payload = PATHS[fmt]["payload"][0]
            doc[payload] = {**(doc.get(payload) or {}), "pad": ""}
            doc[payload]["pad"] = "x" * max(size - len(render(fmt, doc)), 0)
        return Hostile(fmt, render(fmt, doc), "oversized", TOO_LARGE)

    # -- one field ---------------------------------------------------------

    def _wrong_type_id(self, number: int, fmt: str) -> tuple[bytes, frozenset[str] | None]:
        return self._with(number, fmt, "id", self._junk()), _reasons(reasons.MALFORMED, reasons.MISSING_FIELD)

    def _wrong_type_account(self, number: int, fmt: str) -> tuple[bytes, frozenset[str] | None]:
        value = self._text() if fmt == "asterisk-csv" or self.rng.random() < 0.3 else self._junk()
        return self._with(number, fmt, "account", value), _reasons(
            reasons.MALFORMED, reasons.MISSING_FIELD, reasons.UNKNOWN_ACCOUNT
        )

    def _wrong_type_meter(self, number: int, fmt: str) -> tuple[bytes, frozenset[str] | None]:
        value = self._text() if self.rng.random() < 0.3 else self._junk()
        return self._with(number, fmt, "meter", value), _reasons(
            reasons.MALFORMED, reasons.MISSING_FIELD, reasons.UNKNOWN_METER
        )

    def _wrong_type_time(self, number: int, fmt: str) -> tuple[bytes, frozenset[str] | None]:
        value = self._text() if fmt == "asterisk-csv" or self.rng.random() < 0.3 else self._junk()
        return self._with(number, fmt, "time", value), _reasons(
            reasons.INVALID_TIMESTAMP, reasons.MISSING_FIELD, reasons.MALFORMED
        )

    def _wrong_type_quantity(self, number: int, fmt: str) -> tuple[bytes, frozenset[str] | None]:
        value = self._text() if fmt == "asterisk-csv" or self.rng.random() < 0.3 else self._junk()
        return self._with(number, fmt, "quantity", value, measured=True), _reasons(
            reasons.INVALID_QUANTITY, reasons.MISSING_FIELD, reasons.MALFORMED
        )

    def _wrong_type_payload(self, number: int, fmt: str) -> tuple[bytes, frozenset[str] | None]:
        choices = [v for v in self.pools.junk_values if not isinstance(v, dict)] or [[1]]
        value = self.rng.choice([*choices, "text", 5, 1.5])
        return self._with(number, fmt, "payload", value), MALFORMED

    def _huge_quantity(self, number: int, fmt: str) -> tuple[bytes, frozenset[str] | None]:
        return self._number(number, fmt, self.rng.choice(self.pools.huge))

    def _negative_tiny_quantity(self, number: int, fmt: str) -> tuple[bytes, frozenset[str] | None]:
        return self._number(number, fmt, self.rng.choice(self.pools.negative_tiny))

    def _number(self, number: int, fmt: str, text: str) -> tuple[bytes, frozenset[str] | None]:
        as_string = fmt == "asterisk-csv" or self.rng.random() < 0.3
        value: Any = text if as_string else Literal(text)
        return self._with(number, fmt, "quantity", value, measured=True), BAD_QUANTITY

    def _time_out_of_range(self, number: int, fmt: str) -> tuple[bytes, frozenset[str] | None]:
        rng, pools = self.rng, self.pools
        if fmt == "asterisk-csv":
            past = rng.choice(pools.bad_past)
            text = rng.choice([*CDR_OUT_OF_RANGE, f"{past.year:04d}-{past:%m-%d %H:%M:%S}"])
            return self._with(number, fmt, "time", text), BAD_TIME
        epoch = rng.choice(pools.bad_epochs)
        if fmt == "lago":
            value: Any = Literal(epoch) if rng.random() < 0.7 or "e" in epoch.lower() else epoch
        elif rng.random() < 0.3:
            value = Literal(epoch)
        elif rng.random() < 0.5:
            value = rng.choice(ISO_OUT_OF_RANGE)
        else:
            past = rng.choice(pools.bad_past)
            minutes = rng.randint(-14 * 60, 14 * 60)
            sign, size = "+" if minutes > 0 else "-", abs(minutes)
            offset = "Z" if minutes == 0 else f"{sign}{size // 60:02d}:{size % 60:02d}"
            value = f"{past.year:04d}-{past:%m-%dT%H:%M:%S}{offset}"
        return self._with(number, fmt, "time", value), BAD_TIME

    def _tiny_epoch(self, number: int, fmt: str) -> tuple[bytes, frozenset[str] | None]:
        value = Literal(self.rng.choice(TINY_EPOCHS))
        return self._with(number, fmt, "time", value), _reasons(
            reasons.NO_CONTRACT_IN_EFFECT, reasons.INVALID_TIMESTAMP
        )


def hostile_records(catalog_doc: Mapping[str, Any], count: int, seed: int, month: str) -> list[Hostile]:
    """`count` hostile records over every format and kind; about one in 5,000 (at least one
    per format) is an oversized line of up to 1.2 MB."""
    mutator = Mutator(catalog_doc, seed, month)
    oversized = max(len(FORMATS), count // 5000)
    every = max(count // oversized, 1)
    records = []
    for number in range(count):
        fmt = FORMATS[number % len(FORMATS)]
        if number % every == 0 and number // every < oversized:
            index = number // every
            size = _OVERSIZED[index % len(_OVERSIZED)]
            records.append(mutator.oversized(number, FORMATS[index % len(FORMATS)], size))
        else:
            records.append(mutator.make(number, fmt, mutator.rng.choice(kinds_for(fmt))))
    return records
