"""One batch of rated records -> rows to store, running totals and rejections (no Kafka).

Every per-record failure is data: a record that cannot be decoded is `malformed`,
one for a final invoice `period_closed`, one whose decimals do not fit the store's
DECIMAL(38,18) (or whose amount would take its running total there) `invalid_quantity`,
and anything else that raises while handling it `internal_error`. A rejected record
leaves nothing behind: the rows and totals of the batch are built from the others.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal, localcontext
from typing import Any, Final

import pyarrow as pa
import structlog

from consolidation.files import RatedRows
from meterline.kernel.messages import InputRecord
from meterline.kernel.reasons import INTERNAL_ERROR, INVALID_QUANTITY, MALFORMED, PERIOD_CLOSED
from schemas.codec import RATED_FIELDS, SchemaError, decode_rated_row

STAGE: Final = "consolidation"
# Positions in a decode_rated_row row of the fields the running totals need.
_ACCOUNT, _PERIOD, _CHARGE, _METER, _CONTRACT, _AMOUNT, _AGGREGATE_AFTER = (
    RATED_FIELDS.index(name)
    for name in ("account_id", "period", "charge_id", "meter", "contract_id", "amount", "aggregate_after")
)
_DECIMALS: Final = tuple(
    (name, RATED_FIELDS.index(name))
    for name in ("quantity", "rated_quantity", "amount", "aggregate_before", "aggregate_after")
)
# DECIMAL(38,18): 20 digits before the point, 18 after.
LIMIT: Final = Decimal(10) ** 20
_SCALE: Final = -18
_WIDE: Final = Context(prec=100)
_NUMBER: Final = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")

TotalKey = tuple[str, str, str, str, str]  # account, period, charge, meter, contract

log = structlog.get_logger()


@dataclass(slots=True)
class Rejection:
    reason: str
    detail: str
    record: InputRecord


@dataclass(slots=True)
class Batch:
    rows: dict[int, RatedRows] = field(default_factory=dict)
    # Per key: [aggregate after the batch (text), sum of the batch's amounts, events, partition].
    totals: dict[TotalKey, list[Any]] = field(default_factory=dict)
    counts: dict[int, Counter[str]] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)
    touched: set[tuple[str, str]] = field(default_factory=set)  # (account, period) with new usage

    def reject(self, reason: str, detail: str, record: InputRecord) -> None:
        self.rejected.append(Rejection(reason, detail, record))
        self._count(record.partition)[f"rejected.{reason}"] += 1

    def _count(self, partition: int) -> Counter[str]:
        count = self.counts.get(partition)
        if count is None:
            count = self.counts[partition] = Counter()
        return count


def fits(text: str) -> bool:
    """Whether decimal text fits DECIMAL(38,18) exactly (Arrow's cast would raise otherwise)."""
    # Fast path, most values: ASCII digits, at most 20 before a point and 18 after it.
    whole, _, fraction = text.removeprefix("-").partition(".")
    if (
        text.isascii()
        and whole.isdigit()
        and len(whole) <= 20
        and len(fraction) <= 18
        and (not fraction or fraction.isdigit())
    ):
        return True
    # Decimal also reads Unicode digits, underscores and spaces around; Arrow does not.
    if _NUMBER.fullmatch(text) is None:
        return False
    value = Decimal(text)
    if not value.is_finite() or value.copy_abs() >= LIMIT:
        return False
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= _SCALE:
        return True
    exponent = value.normalize(_WIDE).as_tuple().exponent  # trailing zeros past 18 places
    return isinstance(exponent, int) and exponent >= _SCALE


def build_writable_batch(
    records: Sequence[InputRecord],
    final: Collection[tuple[str, str]],
    stored_amounts: Callable[[Collection[TotalKey]], dict[TotalKey, Decimal]],
    decode: Callable[[bytes], list[Any]] = decode_rated_row,
) -> tuple[Batch, dict[int, pa.Table]]:
    """build_batch, plus each partition's rows as an Arrow table ready to write.

    The checks of build_batch keep Arrow's conversion from failing; should it fail all
    the same, each record is converted on its own and those that fail are internal errors.
    """
    batch = build_batch(records, final, stored_amounts, decode)
    try:
        return batch, {partition: rows.table() for partition, rows in batch.rows.items()}
    except Exception as exc:
        log.error("batch_not_writable", stage=STAGE, error=f"{type(exc).__name__}: {exc}")

    def writable(value: bytes) -> list[Any]:
        row = decode(value)
        alone = RatedRows()
        alone.append(row, 0, 0)
        alone.table()
        return row

    batch = build_batch(records, final, stored_amounts, writable)
    return batch, {partition: rows.table() for partition, rows in batch.rows.items()}


def build_batch(
    records: Sequence[InputRecord],
    final: Collection[tuple[str, str]],
    stored_amounts: Callable[[Collection[TotalKey]], dict[TotalKey, Decimal]],
    decode: Callable[[bytes], list[Any]] = decode_rated_row,
) -> Batch:
    """Sort a batch's records into rows and totals to store, and rejections.

    `final` holds the (account, period) pairs whose invoice is final; `stored_amounts`
    gives the stored amount_exact of usage totals, so a record that would take one
    past DECIMAL(38,18) is rejected before anything is written.
    """
    batch = Batch()
    checked: list[tuple[InputRecord, list[Any], TotalKey, Decimal]] = []
    for record in records:
        try:
            item = _check(batch, record, final, decode)
        except Exception as exc:
            _internal_error(batch, record, exc)
            continue
        if item is not None:
            checked.append(item)
    if not checked:
        return batch
    running = dict(stored_amounts({key for _, _, key, _ in checked}))
    with localcontext(_WIDE):  # sums of 38-digit values: the default context would round them
        for record, row, key, amount in checked:
            try:
                total = running.get(key, Decimal(0)) + amount
                if total.copy_abs() >= LIMIT:
                    detail = f"the running amount of {key[0]}/{key[2]} in {key[1]} would reach 10^20"
                    batch.reject(INVALID_QUANTITY, detail, record)
                    continue
                running[key] = total
                _add(batch, record, row, key, amount)
            except Exception as exc:
                _internal_error(batch, record, exc)
    return batch


def _check(
    batch: Batch,
    record: InputRecord,
    final: Collection[tuple[str, str]],
    decode: Callable[[bytes], list[Any]],
) -> tuple[InputRecord, list[Any], TotalKey, Decimal] | None:
    try:
        row = decode(record.value or b"")
    except SchemaError as exc:
        batch.reject(MALFORMED, str(exc), record)
        return None
    account, period = row[_ACCOUNT], row[_PERIOD]
    if (account, period) in final:
        batch.reject(PERIOD_CLOSED, f"invoice of {account!r} for {period} is final", record)
        return None
    for name, index in _DECIMALS:
        if not fits(row[index]):
            batch.reject(INVALID_QUANTITY, f"{name} {row[index]!r} does not fit DECIMAL(38,18)", record)
            return None
    key = (account, period, row[_CHARGE], row[_METER], row[_CONTRACT])
    return record, row, key, Decimal(row[_AMOUNT])


def _add(batch: Batch, record: InputRecord, row: list[Any], key: TotalKey, amount: Decimal) -> None:
    total = batch.totals.get(key)
    if total is None:
        batch.totals[key] = [row[_AGGREGATE_AFTER], amount, 1, record.partition]
    else:  # records of one key arrive in order: the last aggregate is the current one
        total[0] = row[_AGGREGATE_AFTER]
        total[1] += amount
        total[2] += 1
    rows = batch.rows.get(record.partition)
    if rows is None:
        rows = batch.rows[record.partition] = RatedRows()
    rows.append(row, record.partition, record.offset)
    batch._count(record.partition)["stored"] += 1
    batch.touched.add((key[0], key[1]))


def _internal_error(batch: Batch, record: InputRecord, exc: Exception) -> None:
    detail = f"{type(exc).__name__}: {exc}"
    log.error(
        "record_failed",
        stage=STAGE,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        error=detail,
    )
    batch.reject(INTERNAL_ERROR, detail, record)
