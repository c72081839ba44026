"""The publishing commands tell the truth (real embedded broker): delivered or a clear
failure, impossible periods refused, oversized records cut, removals guarded."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import yaml

from meterline.app.publish import (
    InputError,
    InputFile,
    RemovalRefused,
    check_period,
    create_topics,
    parse_input,
    produce_inputs,
    publish_catalog,
    publish_close,
)
from meterline.kernel.config import RawTopic, Settings
from meterline.kernel.headers import (
    CDR_TIMEZONE_HEADER,
    SOURCE_FILE_HEADER,
    SOURCE_LINE_HEADER,
    TRUNCATED_HEADER,
    SourceLines,
)
from meterline.kernel.topics import CONTRACTS, PERIODS
from meterline.runtime.broker import EmbeddedBroker
from meterline.runtime.command_clients import DeliveryError
from meterline.runtime.tables import CompactedTable
from tests.integration.harness import read_topic

DATA = Path(__file__).resolve().parents[2] / "data"
FLAT = DATA / "flat" / "catalog.yaml"
UNREACHABLE = "127.0.0.1:1"


def meterline(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterline", *args], capture_output=True, text=True, timeout=timeout
    )


# --------------------------------------------------------------------------- unreachable broker


@pytest.mark.parametrize(
    "args",
    [
        ["produce", str(DATA / "events.jsonl")],
        ["close", "--period", "2026-11"],
        ["contracts", "publish", str(FLAT)],
    ],
    ids=["produce", "close", "contracts-publish"],
)
def test_unreachable_broker_is_one_line_and_exit_1(args: list[str]) -> None:
    # Reproduced defect: produce printed ~1,100 librdkafka lines over 2 minutes, then
    # "produced 14 records", and exited 0 with nothing delivered.
    started = time.monotonic()
    result = meterline(*args, "--bootstrap-servers", UNREACHABLE)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr.strip() == f"meterline: cannot reach Kafka at {UNREACHABLE} within 10s"
    assert elapsed < 30


# --------------------------------------------------------------------------- periods


@pytest.mark.parametrize(
    "period", ["2026-13", "2026-00", "0000-01", "2026-1", "26-11", "2026-11-01", "abcd-ef"]
)
def test_check_period_refuses_impossible_periods(period: str) -> None:
    with pytest.raises(InputError, match="--period"):
        check_period(period)


@pytest.mark.parametrize("period", ["2026-01", "2026-12", "0001-01", "9999-12"])
def test_check_period_accepts_real_months(period: str) -> None:
    assert check_period(period) == period


@pytest.mark.integration
def test_impossible_close_is_exit_2_and_publishes_nothing(broker: EmbeddedBroker) -> None:
    # Reproduced defect: `close --period 2026-13` was published, and every consolidation
    # restart replayed it from the compacted topic and crashed.
    for period in ("2026-13", "2026-00", "0000-07"):
        result = meterline("close", "--period", period, "--bootstrap-servers", broker.bootstrap_servers)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and period in lines[0], result.stderr
    publish_close(Settings(bootstrap_servers=broker.bootstrap_servers), "2026-05", "impossible-test")
    keys = {m.key() for m in read_topic(broker.bootstrap_servers, PERIODS)}
    assert b"2026-05/impossible-test" in keys  # the topic was readable, and holds no bad close
    assert not {b"2026-13", b"2026-00", b"0000-07"} & keys


@pytest.mark.integration
def test_close_reports_what_it_published(broker: EmbeddedBroker) -> None:
    result = meterline(
        "close",
        "--period",
        "2026-04",
        "--account",
        "close-test",
        "--bootstrap-servers",
        broker.bootstrap_servers,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "close of 2026-04 for close-test published"
    values = [orjson.loads(m.value()) for m in read_topic(broker.bootstrap_servers, PERIODS)]
    assert any(v["period"] == "2026-04" and v["account_id"] == "close-test" for v in values)


# --------------------------------------------------------------------------- produce


@pytest.mark.integration
def test_produce_counts_delivered_records(fresh_broker: EmbeddedBroker) -> None:
    result = meterline(
        "produce", str(DATA / "events.jsonl"), "--bootstrap-servers", fresh_broker.bootstrap_servers
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in (DATA / "events.jsonl").read_bytes().splitlines() if line.strip()]
    assert result.stdout.strip() == f"produced {len(lines)} records"
    assert result.stderr == ""
    assert sorted(m.value() for m in read_topic(fresh_broker.bootstrap_servers, "meterline.raw")) == sorted(
        lines
    )


@pytest.mark.integration
def test_oversized_record_is_published_as_its_longest_prefix(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    # Reproduced defect: an input line of ~1,000,000 bytes made `meterline run` die with
    # MSG_SIZE_TOO_LARGE. Now its prefix is published, marked with its original length.
    huge = b'{"event_id": "huge", "account_id": "alpha", "pad": "' + b"x" * 1_200_000 + b'"}'
    small = b'{"event_id": "e1", "account_id": "alpha", "meter": "api_calls", "quantity": 1}'
    path = tmp_path / "events.jsonl"
    path.write_bytes(small + b"\n" + huge + b"\n" + small + b"\n")
    settings = Settings(
        bootstrap_servers=fresh_broker.bootstrap_servers,
        partitions=1,
        raw_topics=(RawTopic("meterline.raw", keyed_by_account=True),),
    )
    assert produce_inputs(settings, [InputFile(path, "json")], key_by_account=True) == 3
    records = sorted(
        read_topic(fresh_broker.bootstrap_servers, "meterline.raw"), key=lambda m: len(m.value())
    )
    assert [m.value() for m in records[:2]] == [small, small]
    assert all(TRUNCATED_HEADER not in dict(m.headers()) for m in records[:2])
    cut = records[2]
    assert dict(cut.headers())[TRUNCATED_HEADER] == str(len(huge)).encode()
    assert huge.startswith(cut.value())
    assert 900_000 < len(cut.value()) < 1_000_000


# --------------------------------------------------------------------------- inputs


def test_unknown_format_prefix_is_named(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("{}\n")
    with pytest.raises(InputError, match=r"unknown format 'xml'; use one of auto, json"):
        parse_input(f"xml:{path}")
    assert parse_input(f"lago:{path}") == InputFile(path, "lago")
    assert parse_input(str(path)) == InputFile(path, "auto")


def test_a_colon_after_a_slash_is_part_of_the_path(tmp_path: Path) -> None:
    folder = tmp_path / "a:b"
    folder.mkdir()
    path = folder / "events.jsonl"
    path.write_text("{}\n")
    assert parse_input(str(path)) == InputFile(path, "auto")
    assert parse_input(f"json:{path}") == InputFile(path, "json")


# --------------------------------------------------------------------------- contracts publish


def _catalog(
    tmp_path: Path, name: str, drop_account: str | None = None, drop_contract: str | None = None
) -> Path:
    document = yaml.safe_load(FLAT.read_text())
    document["accounts"] = [a for a in document["accounts"] if a["id"] != drop_account]
    for account in document["accounts"]:
        account["contracts"] = [c for c in account["contracts"] if c["id"] != drop_contract]
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document))
    return path


def _published_keys(settings: Settings) -> set[bytes]:
    table = CompactedTable(CONTRACTS, settings.bootstrap_servers, settings.kafka, "test")
    try:
        table.load()
    finally:
        table.close()
    return set(table.values)


@pytest.mark.integration
def test_removing_an_account_with_open_periods_is_refused(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    # Reproduced defect: publishing a catalog without an account deleted it, and the close
    # then skipped that account's usage silently.
    settings = Settings(bootstrap_servers=fresh_broker.bootstrap_servers, partitions=1)
    assert publish_catalog(settings, FLAT) == 6
    without_beta = _catalog(tmp_path, "without-beta.yaml", drop_account="beta")
    result = meterline(
        "contracts", "publish", str(without_beta), "--bootstrap-servers", settings.bootstrap_servers
    )
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line
    assert "account 'beta' (contract 'beta-1', open: 2026-09, 2026-10)" in line
    assert "--force" in line
    assert b"account/beta" in _published_keys(settings)

    forced = meterline(
        "contracts",
        "publish",
        str(without_beta),
        "--force",
        "--bootstrap-servers",
        settings.bootstrap_servers,
    )
    assert forced.returncode == 0, forced.stderr
    assert b"account/beta" not in _published_keys(settings)


@pytest.mark.integration
def test_removal_is_allowed_once_its_periods_are_closed(fresh_broker: EmbeddedBroker, tmp_path: Path) -> None:
    settings = Settings(bootstrap_servers=fresh_broker.bootstrap_servers, partitions=1)
    now = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
    publish_catalog(settings, FLAT, now=now)
    without_alpha_1 = _catalog(tmp_path, "no-alpha-1.yaml", drop_contract="alpha-1")
    with pytest.raises(RemovalRefused) as refused:
        publish_catalog(settings, without_alpha_1, now=now)
    # alpha-1 runs from 2026-01 with no end: every month up to now is open.
    assert (
        "contract of account 'alpha' (contract 'alpha-1', open: 2026-01, 2026-02, 2026-03 and 9 more)"
        in str(refused.value)
    )
    for month in range(1, 12):
        publish_close(settings, f"2026-{month:02d}")
    with pytest.raises(RemovalRefused, match=r"open: 2026-12\)"):
        publish_catalog(settings, without_alpha_1, now=now)
    publish_close(settings, "2026-12", "alpha")  # closed for this account only is enough
    assert publish_catalog(settings, without_alpha_1, now=now) == 6
    published = {k: orjson.loads(v) for k, v in _current(settings).items()}
    assert published[b"account/alpha"]["spec"]["contracts"] == []


def _current(settings: Settings) -> dict[bytes, bytes]:
    table = CompactedTable(CONTRACTS, settings.bootstrap_servers, settings.kafka, "test")
    try:
        table.load()
    finally:
        table.close()
    return table.values


@pytest.mark.integration
def test_unchanged_catalog_publishes_nothing_new(fresh_broker: EmbeddedBroker) -> None:
    settings = Settings(bootstrap_servers=fresh_broker.bootstrap_servers, partitions=1)
    publish_catalog(settings, FLAT)
    before = len(read_topic(settings.bootstrap_servers, CONTRACTS))
    publish_catalog(settings, FLAT)
    assert len(read_topic(settings.bootstrap_servers, CONTRACTS)) == before


@pytest.mark.integration
def test_records_the_broker_refuses_fail_the_command(broker: EmbeddedBroker) -> None:
    result = meterline(
        "produce", str(DATA / "events.jsonl"), "--topic", "bad topic!",
        "--bootstrap-servers", broker.bootstrap_servers,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""
    assert (
        result.stderr.strip()
        == "meterline: 8 of 8 records were not delivered to bad topic!: Broker: Invalid topic"
    )


@pytest.mark.integration
def test_the_prefix_fits_a_configured_limit(fresh_broker: EmbeddedBroker, tmp_path: Path) -> None:
    line = b'{"event_id": "big", "pad": "' + b"y" * 300_000 + b'"}'
    path = tmp_path / "events.jsonl"
    path.write_bytes(line + b"\n")
    settings = Settings(
        bootstrap_servers=fresh_broker.bootstrap_servers, partitions=1, kafka={"message.max.bytes": "200000"}
    )
    assert produce_inputs(settings, [InputFile(path, "json")]) == 1
    (record,) = read_topic(fresh_broker.bootstrap_servers, "meterline.raw")
    assert dict(record.headers())[TRUNCATED_HEADER] == str(len(line)).encode()
    assert line.startswith(record.value())
    assert 199_000 < len(record.value()) < 200_000


@pytest.mark.integration
def test_a_broker_lost_mid_produce_fails_the_command(
    fresh_broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import meterline.app.publish

    monkeypatch.setattr(meterline.app.publish, "DELIVERY_TIMEOUT_S", 3.0)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(b'{"event_id": "e%d"}\n' % i for i in range(60_000)))
    settings = Settings(bootstrap_servers=fresh_broker.bootstrap_servers, partitions=1)

    def stop_broker(count: int) -> None:
        fresh_broker.stop()  # after 50,000 records: the last 10,000 cannot be delivered

    with pytest.raises(DeliveryError) as failed:
        produce_inputs(settings, [InputFile(path, "json")], on_progress=stop_broker)
    message = str(failed.value)
    assert "of 60,000 records were not delivered to meterline.raw: no acknowledgement for 3s" in message
    assert int(message.split(" of ")[0].replace(",", "")) >= 10_000


@pytest.mark.integration
def test_records_carry_file_line_and_the_cdr_timezone_of_csv_inputs(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b'{"event_id": "e1"}\n\n{"event_id": "e2"}\n')  # line 2 is empty
    settings = Settings(bootstrap_servers=fresh_broker.bootstrap_servers, partitions=1)
    create_topics(settings)
    inputs = [InputFile(events, "json"), InputFile(DATA / "Master.csv", "asterisk-csv")]
    rows = len((DATA / "Master.csv").read_bytes().splitlines())
    assert produce_inputs(settings, inputs, cdr_timezone="Europe/Paris") == 2 + rows
    found = [dict(m.headers()) for m in read_topic(fresh_broker.bootstrap_servers, "meterline.raw")]
    where = [(h[SOURCE_FILE_HEADER].decode(), int(h[SOURCE_LINE_HEADER])) for h in found]
    assert where == [(str(events), 1), (str(events), 3)] + [
        (str(DATA / "Master.csv"), n) for n in range(1, rows + 1)
    ]
    # The zone says how to read Asterisk times: CSV records only.
    assert [h.get(CDR_TIMEZONE_HEADER) for h in found] == [None, None] + [b"Europe/Paris"] * rows


@pytest.mark.integration
def test_run_notes_the_partition_and_offset_of_each_line(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    # Without a key a record goes round robin; with one, where librdkafka would put it.
    path = tmp_path / "events.jsonl"
    lines = [orjson.dumps({"event_id": f"e{n}", "account_id": f"acct-{n % 5}"}) for n in range(40)]
    path.write_bytes(b"\n".join([*lines, b"not json"]) + b"\n")
    settings = Settings(bootstrap_servers=fresh_broker.bootstrap_servers, partitions=3)
    create_topics(settings)
    noted = SourceLines(3)
    assert produce_inputs(settings, [InputFile(path, "json")], key_by_account=True, lines=noted) == 41
    for message in read_topic(fresh_broker.bootstrap_servers, "meterline.raw"):
        headers = dict(message.headers())
        assert noted.where(message.partition(), message.offset()) == (
            headers[SOURCE_FILE_HEADER].decode(),
            int(headers[SOURCE_LINE_HEADER]),
        )
    assert sorted(noted.where(p, o) or ("", 0) for p in range(3) for o in range(41))[-41:] == [
        (str(path), n) for n in range(1, 42)
    ]  # every line noted once
    assert noted.where(0, 10_000) is None
