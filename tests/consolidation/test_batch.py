"""consolidation.batch: every per-record failure becomes a rejection, the rest of the batch is kept."""

from __future__ import annotations

from collections.abc import Collection
from decimal import Context, Decimal, InvalidOperation
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consolidation.batch import TotalKey, build_batch, build_writable_batch, fits
from meterline.kernel.messages import InputRecord
from schemas.codec import RATED_FIELDS
from tests.consolidation.test_store import record

KEY: TotalKey = ("alpha", "2026-09", "eur-api", "api_calls", "alpha-1")


def _input(offset: int, value: bytes = b"row", partition: int = 0) -> InputRecord:
    return InputRecord("meterline.usage.rated", partition, offset, b"alpha", value, {})


def _none_stored(keys: Collection[TotalKey]) -> dict[TotalKey, Decimal]:
    return {}


def _decoder(rows: dict[int, list[Any]]) -> Any:
    """decode_rated_row's stand-in: the row given for the record's offset (value = offset text)."""
    return lambda value: rows[int(value)]


def _batch(rows: list[list[Any]], stored: Any = _none_stored, final: Collection[tuple[str, str]] = ()) -> Any:
    records = [_input(i, str(i).encode()) for i in range(len(rows))]
    return build_batch(records, final, stored, _decoder(dict(enumerate(rows))))


@pytest.mark.parametrize(
    ("text", "fit"),
    [
        ("1", True),
        ("0.000000000000000001", True),
        ("99999999999999999999.999999999999999999", True),
        ("-99999999999999999999", True),
        ("1E+19", True),
        ("1.0000000000000000000000", True),  # trailing zeros past 18 places lose nothing
        ("100000000000000000000", False),
        ("60000000000000000000.5E1", False),
        ("0.0000000000000000001", False),
        ("NaN", False),
        ("Infinity", False),
        ("abc", False),
        ("١٢", False),  # digits, but not ASCII ones
        ("1_000", False),  # Decimal reads these, Arrow does not
        (" 5", False),
        ("sNaN", False),
        ("+1.5e-3", True),
        ("-.5", True),
        ("0e-30", True),
    ],
)
def test_fits_decimal_38_18(text: str, fit: bool) -> None:
    assert fits(text) is fit


@given(st.from_regex(r"-?[0-9]{0,23}(\.[0-9]{0,21})?", fullmatch=True))
def test_the_fast_path_agrees_with_the_decimal_rule(text: str) -> None:
    """Plain decimal text fits when the value is under 10^20 and nothing past 18 places is lost."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        assert not fits(text)
        return
    lost = value.quantize(Decimal(1).scaleb(-18), context=Context(prec=100)) != value
    assert fits(text) is (value.copy_abs() < Decimal(10) ** 20 and not lost)


def test_aggregate_past_decimal_38_18_is_rejected_and_the_rest_stored() -> None:
    # Two events of 6 * 10^19 on one sum meter: the second one's aggregate no longer fits.
    big = "60000000000000000000"
    rows = [
        record("e1", amount="1", after=big),
        record("e2", amount="1", after="120000000000000000000"),
        record("e3", amount="2", after=big),
    ]
    batch = _batch(rows)
    assert [(r.reason, r.record.offset) for r in batch.rejected] == [("invalid_quantity", 1)]
    assert "aggregate_after" in batch.rejected[0].detail
    assert batch.rows[0].source_offsets == [0, 2]
    assert batch.rows[0].table().num_rows == 2  # Arrow's cast no longer sees the value that does not fit
    assert batch.totals == {KEY: [big, Decimal(3), 2, 0]}
    assert batch.counts[0] == {"stored": 2, "rejected.invalid_quantity": 1}


def test_amount_that_would_take_the_running_total_past_10_20_is_rejected() -> None:
    def stored(keys: Collection[TotalKey]) -> dict[TotalKey, Decimal]:
        return {KEY: Decimal("90000000000000000000")} if KEY in keys else {}

    rows = [
        record("e1", amount="5000000000000000000"),  # 9.5 * 10^19: still fits
        record("e2", amount="5000000000000000000"),  # would reach 10^20
        record("e3", amount="-1"),  # fits again
    ]
    batch = _batch(rows, stored)
    assert [(r.reason, r.record.offset) for r in batch.rejected] == [("invalid_quantity", 1)]
    assert "10^20" in batch.rejected[0].detail
    assert batch.totals[KEY][1:3] == [Decimal("4999999999999999999"), 2]


def test_any_other_failure_of_one_record_is_an_internal_error_and_the_batch_goes_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = {0: record("e1"), 2: record("e3")}

    def decode(value: bytes) -> list[Any]:
        if value == b"1":
            raise RuntimeError("boom while decoding")
        return rows[int(value)]

    records = [_input(i, str(i).encode(), partition=3) for i in range(3)]
    batch = build_batch(records, (), _none_stored, decode)
    assert [(r.reason, r.detail, r.record.offset) for r in batch.rejected] == [
        ("internal_error", "RuntimeError: boom while decoding", 1)
    ]
    assert batch.rows[3].source_offsets == [0, 2]
    assert batch.counts[3] == {"stored": 2, "rejected.internal_error": 1}
    logged = capsys.readouterr().out
    assert "record_failed" in logged and "partition=3" in logged and "offset=1" in logged


def test_undecodable_and_final_period_records_are_rejected_with_their_reasons() -> None:
    records = [_input(0, b"\x00\x00\x00\x00\x02garbage"), _input(1, b"")]
    batch = build_batch(records, (), _none_stored)
    assert [r.reason for r in batch.rejected] == ["malformed", "malformed"]
    assert batch.rows == {} and batch.totals == {}

    closed = _batch([record("e1")], final={("alpha", "2026-09")})
    assert [r.reason for r in closed.rejected] == ["period_closed"]
    assert closed.touched == set()


def test_a_row_arrow_cannot_convert_after_all_is_an_internal_error_alone() -> None:
    # An event time past int64 microseconds: no check of build_batch looks at it.
    rows = [record("e1"), record("e2"), record("e3")]
    rows[1][RATED_FIELDS.index("event_time")] = 2**70
    records = [_input(i, str(i).encode()) for i in range(3)]
    batch, tables = build_writable_batch(records, (), _none_stored, _decoder(dict(enumerate(rows))))
    assert [(r.reason, r.record.offset) for r in batch.rejected] == [("internal_error", 1)]
    assert tables[0].column("event_id").to_pylist() == ["e1", "e3"]
    assert batch.totals[KEY][1:3] == [Decimal("0.004"), 2]
