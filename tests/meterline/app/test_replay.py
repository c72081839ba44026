"""What `meterline replay` selects from the DLQ and how each copy looks (no broker:
DLQ records are built as the stages build them)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Message

from meterline.app.replay_options import CATALOG_GAP_REASONS, UsageError, parse_reasons, parse_time
from meterline.app.replay_select import (
    ALREADY_REPLAYED,
    NOT_RAW,
    PERIOD_CLOSED,
    REPLAY_OF_HEADER,
    TRUNCATED,
    ReplayReport,
    Selection,
    select,
)
from meterline.kernel.catalog_file import load_catalog
from meterline.kernel.config import RawTopic
from meterline.kernel.dlq import dead_letter
from meterline.kernel.headers import TRUNCATED_HEADER
from meterline.kernel.topics import RATED, REJECTED

CATALOG = load_catalog(Path(__file__).parents[2] / "data" / "flat" / "catalog.yaml")
RAW = "meterline.raw"
RAW_TOPICS = {RAW: RawTopic(RAW)}
DLQ_TIME = datetime(2026, 10, 2, 12, 0, tzinfo=UTC)
CDR = (
    b'"alpha","1001","442079","from-internal","Alice","PJSIP/1","PJSIP/2","Dial","x",'
    b'"2026-09-02 09:15:01","2026-09-02 09:15:05","2026-09-02 09:17:10",129,125,"ANSWERED","DOC","1.1"'
)


def _event(
    event_id: str, account: str = "alpha", meter: str = "api_calls", when: str = "2026-09-05T10:00:00Z"
) -> bytes:
    return orjson.dumps(
        {"event_id": event_id, "account_id": account, "meter": meter, "quantity": 1, "timestamp": when}
    )


def _letter(
    value: bytes,
    reason: str = "unknown_meter",
    offset: int = 0,
    source: str = RAW,
    at: datetime = DLQ_TIME,
    extra: list[tuple[str, bytes]] | None = None,
) -> Message:
    out = dead_letter(value, b"key", reason, f"{reason} detail", "mediation", source, 1, 40 + offset)
    return Message(
        topic=REJECTED,
        partition=0,
        offset=offset,
        key=out.key,
        value=out.value,
        headers=[*(out.headers or []), *(extra or [])],
        timestamp=(1, int(at.timestamp() * 1000)),
    )


def _select(
    letters: list[Message],
    selection: Selection | None = None,
    closed: set[tuple[str, str]] | None = None,
    before: set[str] | None = None,
) -> tuple[list[tuple[str, str | None, bytes, dict[str, bytes]]], ReplayReport]:
    report = ReplayReport()
    copies = select(
        iter(letters),
        selection or Selection(),
        RAW_TOPICS,
        CATALOG,
        lambda account, period: (account, period) in (closed or set()),
        before or set(),
        65536,
        report,
    )
    return [(c.topic, c.account, c.value, dict(c.headers)) for c in copies], report


def test_by_default_only_catalog_gap_reasons_are_replayed() -> None:
    reasons = ["malformed", *CATALOG_GAP_REASONS]
    letters = [_letter(_event(f"e{n}"), reason, n) for n, reason in enumerate(reasons)]
    copies, report = _select(letters)
    assert len(copies) == 4
    assert report.replayed == {reason: 1 for reason in CATALOG_GAP_REASONS}
    assert report.skipped == {}


def test_a_copy_names_its_dlq_record_and_keeps_the_original() -> None:
    original = _event("e1", meter="fax")
    copies, report = _select([_letter(original, offset=7, extra=[("ce_id", b"x")])])
    assert copies == [(RAW, "alpha", original, {"ce_id": b"x", REPLAY_OF_HEADER: f"{REJECTED}/0/7".encode()})]
    assert report.lines(dry_run=False) == ["replayed: 1", "replayed.unknown_meter: 1", "skipped: 0"]


def test_truncated_non_raw_and_replayed_records_are_skipped_and_counted() -> None:
    letters = [
        _letter(b'{"event_id": "cut', offset=0, extra=[(TRUNCATED_HEADER, b"2000000")]),
        _letter(b"rated avro", offset=1, source=RATED),
        _letter(_event("e2"), offset=2),
        _letter(_event("e3"), offset=3),
    ]
    copies, report = _select(letters, before={f"{REJECTED}/0/2"})
    assert [value for _, _, value, _ in copies] == [_event("e3")]
    assert report.skipped == {
        ("unknown_meter", TRUNCATED): 1,
        ("unknown_meter", NOT_RAW): 1,
        ("unknown_meter", ALREADY_REPLAYED): 1,
    }
    again, _ = _select(letters, Selection(include_replayed=True), before={f"{REJECTED}/0/2"})
    assert len(again) == 2


def test_records_of_a_closed_period_are_skipped() -> None:
    # 22:30Z on Sep 30 is Oct 1 in Paris: alpha's October, which is open.
    letters = [_letter(_event("e1"), offset=0), _letter(_event("e2", when="2026-09-30T22:30:00Z"), offset=1)]
    copies, report = _select(letters, closed={("alpha", "2026-09")})
    assert [value for _, _, value, _ in copies] == [_event("e2", when="2026-09-30T22:30:00Z")]
    assert report.skipped == {("unknown_meter", PERIOD_CLOSED): 1}
    assert report.skipped_periods == {("unknown_meter", "alpha", "2026-09"): 1}


def test_selection_by_reason_account_and_dlq_time() -> None:
    letters = [
        _letter(_event("e1"), "unknown_meter", 0, at=datetime(2026, 10, 1, tzinfo=UTC)),
        _letter(_event("e2", account="beta"), "unknown_meter", 1, at=datetime(2026, 10, 2, tzinfo=UTC)),
        _letter(_event("e3"), "malformed", 2, at=datetime(2026, 10, 3, tzinfo=UTC)),
        _letter(_event("e4"), "unknown_meter", 3, at=datetime(2026, 10, 4, tzinfo=UTC)),
    ]
    chosen = Selection(
        reasons=frozenset({"unknown_meter", "malformed"}),
        account="alpha",
        since=datetime(2026, 10, 1, tzinfo=UTC),
        until=datetime(2026, 10, 4, tzinfo=UTC),
    )
    copies, report = _select(letters, chosen)
    assert [value for _, _, value, _ in copies] == [_event("e1"), _event("e3")]
    assert report.by_account == {("unknown_meter", "alpha"): 1, ("malformed", "alpha"): 1}
    assert "would_replay.malformed.alpha: 1" in report.lines(dry_run=True)


def test_a_cdr_row_keeps_its_format() -> None:
    # The DLQ keeps no input headers: a raw topic of format auto reads a row that is not a
    # JSON object as Asterisk CSV, so the copy says so.
    copies, _ = _select([_letter(CDR, "unknown_account")])
    assert copies[0][1] == "alpha"
    assert copies[0][3]["meterline.format"] == b"asterisk-csv"


def test_options() -> None:
    assert parse_reasons(None) == frozenset(CATALOG_GAP_REASONS)
    assert parse_reasons(["malformed"]) == frozenset({"malformed"})
    with pytest.raises(UsageError, match="'typo' is not a reason code"):
        parse_reasons(["typo"])
    assert parse_time("2026-09-01", "--since") == datetime(2026, 9, 1, tzinfo=UTC)
    assert parse_time("2026-09-01T12:00:00", "--since") == datetime(2026, 9, 1, 12, tzinfo=UTC)
    assert parse_time("2026-09-01T14:00:00+02:00", "--since") == datetime(2026, 9, 1, 12, tzinfo=UTC)
    with pytest.raises(UsageError, match="--until"):
        parse_time("soon", "--until")


def test_a_binary_cloudevent_keeps_its_headers_and_names_its_account() -> None:
    # The DLQ keeps the headers that say how to read the original (ce_*, format, zone);
    # the copy carries them back, and --account reads the subject header.
    ce = [("ce_specversion", b"1.0"), ("ce_id", b"c1"), ("ce_subject", b"beta")]
    ce.append(("content-type", b"application/json"))
    letters = [_letter(b'{"quantity": 3}', "unknown_account", extra=ce)]
    copies, _ = _select(letters, Selection(account="beta"))
    assert [(account, headers) for _, account, _, headers in copies] == [
        ("beta", {**dict(ce), REPLAY_OF_HEADER: f"{REJECTED}/0/0".encode()})
    ]


def test_a_cdr_is_placed_in_its_period_in_its_time_zone() -> None:
    # Answered 2026-09-01 09:15:05 in Pacific/Kiritimati (UTC+14): 2026-08-31 21:15 in
    # alpha's Paris, so August, the closed period; read as UTC it would be September.
    zone = [("meterline.format", b"asterisk-csv"), ("meterline.cdr_timezone", b"Pacific/Kiritimati")]
    late = CDR.replace(b"2026-09-02 09:15:05", b"2026-09-01 09:15:05")
    closed = {("alpha", "2026-08")}
    _, in_zone = _select([_letter(late, "unknown_meter", extra=zone)], closed=closed)
    assert in_zone.skipped == {("unknown_meter", PERIOD_CLOSED): 1}
    _, in_utc = _select([_letter(late, "unknown_meter", extra=zone[:1])], closed=closed)
    assert in_utc.skipped == {}
