"""Mediation on the real embedded broker: every format, every reason code with its
DLQ record, dedup across a SIGKILL, randomly keyed raw topics, live contract updates."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer

from meterline.app.publish import InputFile, produce_inputs, publish_catalog, publish_close
from meterline.kernel.topics import MEDIATED, RAW, REJECTED
from meterline.runtime.broker import EmbeddedBroker
from schemas.codec import decode_usage
from tests.integration.harness import LivePipeline, after_lineage_guard, read_topic, write_dataset

pytestmark = pytest.mark.integration

DATA = Path(__file__).parent.parent / "data"


def event(event_id: str, **fields: Any) -> bytes:
    record = {
        "event_id": event_id,
        "account_id": "acme",
        "meter": "api_calls",
        "quantity": 1,
        "timestamp": "2026-03-05T10:00:00Z",
        **fields,
    }
    return json.dumps(record).encode()


BUSY_CDR = (
    b'"acme","1001","4420794600123","from-internal","""A"" <1001>","PJSIP/1","PJSIP/2","Dial","x",'
    b'"2026-03-02 09:15:01","","2026-03-02 09:15:20",19,0,"BUSY","DOCUMENTATION","cdr-busy-1"'
)
# One record per reason code (format, raw bytes).
BAD = {
    "too_large": ("json", event("r-too-large", attributes={"pad": "x" * 70_000})),
    "malformed": ("json", b"\x00\xff\xfe not json at all"),
    "missing_field": (
        "json",
        json.dumps(
            {
                "event_id": "r-missing",
                "account_id": "acme",
                "quantity": 1,
                "timestamp": "2026-03-05T10:00:00Z",
            }
        ).encode(),
    ),
    "not_billable": ("asterisk-csv", BUSY_CDR),
    "invalid_timestamp": ("json", event("r-ts", timestamp="2026-03-05T10:00:00")),
    "future_timestamp": ("json", event("r-future", timestamp="2099-01-01T00:00:00Z")),
    "invalid_quantity": ("json", event("r-qty", quantity="NaN")),
    "unknown_account": ("json", event("r-acct", account_id="ghost")),
    "no_contract_in_effect": ("json", event("r-contract", timestamp="2025-06-01T00:00:00Z")),
    "unknown_meter": ("json", event("r-meter", meter="fax")),
    "period_closed": ("json", event("r-closed", timestamp="2026-02-10T00:00:00Z")),
    # a call to France matches no voice charge (only UK peak calls are priced): decided in mediation
    "no_matching_charge": (
        "json",
        event("r-charge", meter="voice", quantity=60, attributes={"destination": "33142685300"}),
    ),
}
SAMPLES = {
    "json": ("events.jsonl", {f"evt-000{i}" for i in range(1, 9)}),
    "cloudevents": ("cloudevents.jsonl", {f"ce-000{i}" for i in range(1, 6)}),
    "lago": ("lago.jsonl", {f"tx-000{i}" for i in range(1, 6)}),
    "asterisk-csv": ("Master.csv", {"1772442901.1", "1772487600.3", "1772701198.10"}),
}
# Calls to France: valid, but no charge of the plan prices them, so mediation rejects them
# (no_matching_charge) and they are not on the mediated topic.
UNPRICED = {"ce-0003", "1772487600.3"}


@pytest.fixture(scope="module")
def mediated_world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("mediation")
    with EmbeddedBroker() as broker:
        pipeline = LivePipeline(broker, folder / "out", partitions=3)
        try:
            publish_catalog(pipeline.settings, DATA / "catalog.yaml")
            publish_close(pipeline.settings, "2026-02")
            inputs = [InputFile(DATA / name, fmt) for fmt, (name, _) in SAMPLES.items()]
            for reason, (fmt, raw) in BAD.items():
                path = folder / f"{reason}.in"
                path.write_bytes(raw + b"\n")
                inputs.append(InputFile(path, fmt))
            pipeline.published = produce_inputs(pipeline.settings, inputs)
            pipeline.start("mediation", "rating")
            totals = pipeline.wait_until(
                lambda t: (
                    t.events_in == pipeline.published
                    and t.keyed_consumed == t.forwarded
                    and t.rating_consumed == t.mediated
                    and t.mediated > 0
                )
            )
        finally:
            pipeline.stop()
        yield {
            "mediated": [
                decode_usage(m.value())
                for m in after_lineage_guard(read_topic(broker.bootstrap_servers, MEDIATED))
            ],
            "rejected": read_topic(broker.bootstrap_servers, REJECTED),
            "raw": {
                (m.partition(), m.offset()): m.value() for m in read_topic(broker.bootstrap_servers, RAW)
            },
            "totals": totals,
        }


@pytest.mark.parametrize("fmt", list(SAMPLES))
def test_every_format_is_mediated(mediated_world: Any, fmt: str) -> None:
    _, expected_ids = SAMPLES[fmt]
    found = {
        e.event_id for e in mediated_world["mediated"] if e.source_format == fmt and e.event_id[:2] != "r-"
    }
    assert found == expected_ids - UNPRICED
    for mediated in mediated_world["mediated"]:
        assert mediated.account_id == "acme"
        assert mediated.contract_id == "acme-2026"
        assert mediated.period == "2026-03"
        assert mediated.currency == "EUR"


def test_asterisk_seconds_become_minutes(mediated_world: Any) -> None:
    by_id = {e.event_id: e for e in mediated_world["mediated"]}
    assert str(by_id["1772442901.1"].quantity) == "2.083333333333333333"  # billsec 125
    assert by_id["1772442901.1"].attributes["destination"] == "4420794600123"


def dead_letters(world: Any, reason: str) -> list[Any]:
    return [m for m in world["rejected"] if dict(m.headers())["meterline.reason"] == reason.encode()]


@pytest.mark.parametrize("reason", list(BAD))
def test_every_reason_dead_letters_the_original_bytes(mediated_world: Any, reason: str) -> None:
    letters = dead_letters(mediated_world, reason)
    if reason in ("not_billable", "no_matching_charge"):
        # The samples hold three unanswered calls and two calls to unpriced destinations too.
        letters = [m for m in letters if m.value() == BAD[reason][1]]
    assert len(letters) == 1
    letter = letters[0]
    headers = {k: v.decode() for k, v in letter.headers()}
    assert letter.value() == BAD[reason][1]
    assert headers["meterline.stage"] == "mediation"
    assert headers["meterline.detail"]
    assert headers["meterline.source.topic"] == RAW
    source = (int(headers["meterline.source.partition"]), int(headers["meterline.source.offset"]))
    assert mediated_world["raw"][source] == BAD[reason][1]


def test_counts_reconcile(mediated_world: Any) -> None:
    totals = mediated_world["totals"]
    rejected = {reason: 1 for reason in BAD}
    rejected["not_billable"] = 4
    rejected["no_matching_charge"] = 3
    assert dict(totals.rejected) == rejected
    assert totals.events_in == sum(len(ids) for _, ids in SAMPLES.values()) + 3 + len(BAD)
    assert totals.events_in == totals.mediated + totals.duplicates + totals.rejected_total


def test_duplicates_across_a_mediation_kill_never_pass(fresh_broker: EmbeddedBroker, tmp_path: Path) -> None:
    catalog, events = write_dataset(tmp_path, accounts=40, events=30_000, seed=3)
    pipeline = LivePipeline(fresh_broker, tmp_path / "out")
    try:
        pipeline.publish(catalog, events)
        pipeline.start("mediation")
        pipeline.wait_until(lambda t: t.mediated >= 8_000)
        pipeline.kill("mediation")
        pipeline.start("mediation")
        totals = pipeline.wait_until(
            lambda t: t.events_in == pipeline.published and t.keyed_consumed == t.forwarded
        )
    finally:
        pipeline.stop()
    raw_copies = read_topic(fresh_broker.bootstrap_servers, MEDIATED)
    mediated = [decode_usage(m.value()) for m in after_lineage_guard(raw_copies)]
    keys = [(e.account_id, e.event_id) for e in mediated]
    assert len(keys) == len(set(keys)) == totals.mediated
    assert totals.duplicates == 1_500  # 5% of 30,000, exactly as generated
    assert totals.events_in == totals.mediated + totals.duplicates + totals.rejected_total == 30_000


def test_duplicates_on_different_raw_partitions_meet(fresh_broker: EmbeddedBroker, tmp_path: Path) -> None:
    pipeline = LivePipeline(fresh_broker, tmp_path / "out", partitions=4)
    publish_catalog(pipeline.settings, DATA / "catalog.yaml")
    producer = Producer({"bootstrap.servers": fresh_broker.bootstrap_servers})
    originals = [event(f"spread-{i}", quantity=i) for i in range(200)]
    for i, raw in enumerate(originals):
        # Random-looking keys, and each copy on a different raw partition than the first.
        for copy in range(3):
            producer.produce(RAW, value=raw, key=f"k{i}-{copy}".encode(), partition=(i + copy) % 4)
    producer.flush()
    pipeline.published = 600
    try:
        pipeline.start("mediation")
        totals = pipeline.wait_until(lambda t: t.events_in == 600 and t.keyed_consumed == t.forwarded)
    finally:
        pipeline.stop()
    assert totals.mediated == 200
    assert totals.duplicates == 400
    ids = [
        decode_usage(m.value()).event_id
        for m in after_lineage_guard(read_topic(fresh_broker.bootstrap_servers, MEDIATED))
    ]
    assert sorted(ids) == sorted(f"spread-{i}" for i in range(200))


def test_contract_published_while_running_applies_to_later_events(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    document = yaml.safe_load((DATA / "catalog.yaml").read_text())
    pipeline = LivePipeline(fresh_broker, tmp_path / "out", partitions=2)
    publish_catalog(pipeline.settings, DATA / "catalog.yaml")
    try:
        pipeline.start("mediation")
        first = tmp_path / "first.jsonl"
        first.write_bytes(event("before-1", timestamp="2026-03-05T10:00:00Z") + b"\n")
        pipeline.published = produce_inputs(pipeline.settings, [InputFile(first, "json")])
        pipeline.wait_until(lambda t: t.mediated == 1)
        # New version: acme's contract is split on 2026-03-01 and a second one takes over.
        contract = document["accounts"][0]["contracts"][0]
        renewed = {**contract, "id": "acme-2026-renewed", "start": "2026-03-01", "one_time": []}
        contract["end"] = "2026-03-01"
        contract["one_time"] = []
        document["accounts"][0]["contracts"] = [contract, renewed]
        updated = tmp_path / "catalog-v2.yaml"
        updated.write_text(yaml.safe_dump(document))
        publish_catalog(pipeline.settings, updated)
        # The worker takes the new version between batches, at its own pace: events are sent
        # one at a time until one is mediated under the renewed contract, then one more.
        sent: list[str] = []
        deadline = time.monotonic() + 60
        while not sent or contracts_of(fresh_broker)[sent[-1]] != "acme-2026-renewed":
            assert time.monotonic() < deadline, (
                f"the new contract never applied: {contracts_of(fresh_broker)}"
            )
            sent.append(f"after-{len(sent) + 1}")
            send(pipeline, tmp_path, sent[-1])
        send(pipeline, tmp_path, "later")
    finally:
        pipeline.stop()
    contracts = contracts_of(fresh_broker)
    assert contracts["before-1"] == "acme-2026"
    # The old contract until the worker took the new version, the renewed one from then on.
    assert [contracts[name] for name in sent] == ["acme-2026"] * (len(sent) - 1) + ["acme-2026-renewed"]
    assert contracts["later"] == "acme-2026-renewed"
    assert len(contracts) == len(sent) + 2


def send(pipeline: LivePipeline, tmp_path: Path, event_id: str) -> None:
    """Publish one event of 2026-03-06 and wait until mediation has mediated it."""
    path = tmp_path / f"{event_id}.jsonl"
    path.write_bytes(event(event_id, timestamp="2026-03-06T10:00:00Z") + b"\n")
    pipeline.published += produce_inputs(pipeline.settings, [InputFile(path, "json")])
    pipeline.wait_until(lambda t: t.mediated == pipeline.published)


def contracts_of(broker: EmbeddedBroker) -> dict[str, str | None]:
    """The contract of each mediated event, by event id."""
    events = (decode_usage(m.value()) for m in read_topic(broker.bootstrap_servers, MEDIATED))
    return {usage.event_id: usage.contract_id for usage in events}
