"""Kafka interop on the real embedded broker, with mediation and rating workers running:
Asterisk CDRs read in their PBX's time zone (raw-topic setting, or the per-record header
that wins over it), and CloudEvents in binary content mode rated like structured ones."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import Producer

from meterline.app.pipeline import Workers
from meterline.app.publish import create_topics, publish_catalog
from meterline.app.replay import replay
from meterline.app.replay_select import Selection
from meterline.kernel.config import RawTopic, Settings, settings_to_toml
from meterline.kernel.records import RatedUsage
from meterline.kernel.topics import RATED, REJECTED
from meterline.runtime.broker import EmbeddedBroker
from schemas.codec import decode_rated
from tests.integration.harness import after_lineage_guard, read_topic

pytestmark = pytest.mark.integration

CATALOG = """
meters:
  - {code: api_calls, unit: call, aggregation: sum}
  - {code: voice, unit: minute, aggregation: sum, source_unit: second}
plans:
  - id: pbx
    currency: EUR
    rounding: half_even
    charges:
      - {id: api, meter: api_calls, model: flat, unit_price: "0.01"}
      - {id: voice, meter: voice, model: flat, unit_price: "0.05"}
accounts:
  - id: acme
    name: ACME SAS
    timezone: Europe/Paris
    contracts:
      - {id: acme-2026, plan: pbx, start: "2026-01-01", end: null}
"""

# The catalog fixed: the account of the records first rejected as unknown_account.
FIXED_CATALOG = (
    CATALOG
    + """  - id: ghost
    name: Ghost SARL
    timezone: Europe/Paris
    contracts:
      - {id: ghost-2026, plan: pbx, start: "2026-01-01", end: null}
"""
)

PARIS_TOPIC = "pbx.paris"  # unkeyed, cdr_timezone = Europe/Paris
LINES_TOPIC = "pbx.lines"  # keyed by account, no zone: UTC unless a record's header says otherwise


def cdr(uniqueid: str, local: str) -> bytes:
    """An answered 60-second call to the UK, answered at `local` (Asterisk's own format)."""
    return (
        f'"acme","1001","4420794600123","from-internal","""A"" <1001>","PJSIP/1","PJSIP/2","Dial","x",'
        f'"{local}","{local}","{local}",60,60,"ANSWERED","DOCUMENTATION","{uniqueid}"'
    ).encode()


# 23:30 in Paris on the last day of March is 21:30Z, in March for an account billed in
# Paris; read as UTC it would be 01:30 on 1 April in Paris, the next period.
LAST_EVENING = "2026-03-31 23:30:00"
DATA: list[dict[str, Any]] = [
    {"quantity": 3, "region": "eu"},
    {"quantity": "1.000000000000000001"},
    {"quantity": 7, "n": 1},
]


def ce_headers(event_id: str, time_: str) -> list[tuple[str, bytes]]:
    attributes = {
        "ce_specversion": "1.0",
        "ce_id": event_id,
        "ce_source": "//gateway/eu",
        "ce_type": "api_calls",
        "ce_subject": "acme",
        "ce_time": time_,
        "content-type": "application/json",
    }
    return [(name, value.encode()) for name, value in attributes.items()]


def structured(event_id: str, time_: str, data: dict[str, Any]) -> bytes:
    return json.dumps(
        {"specversion": "1.0", "id": event_id, "source": "//gateway/eu", "type": "api_calls",
         "subject": "acme", "time": time_, "data": data}
    ).encode()  # fmt: skip


def wait_outputs(bootstrap: str, workers: Workers, rated: int, rejected: int, timeout: float = 180) -> Any:
    """The rated records and the DLQ records, once there are as many as expected."""
    deadline = time.monotonic() + timeout
    while True:
        found = [decode_rated(m.value()) for m in after_lineage_guard(read_topic(bootstrap, RATED))]
        dead = read_topic(bootstrap, REJECTED)
        if len(found) >= rated and len(dead) >= rejected:
            return found, dead
        workers.check()
        assert time.monotonic() < deadline, (
            f"{len(found)} of {rated} rated, {len(dead)} of {rejected} rejected"
        )


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, RatedUsage], list[Any], dict[str, RatedUsage]]:
    folder = tmp_path_factory.mktemp("interop")
    with EmbeddedBroker() as broker:
        settings = Settings(
            bootstrap_servers=broker.bootstrap_servers,
            partitions=3,
            instance_id="interop",
            raw_topics=(
                RawTopic("meterline.raw"),
                RawTopic(PARIS_TOPIC, "asterisk-csv", cdr_timezone="Europe/Paris"),
                RawTopic(LINES_TOPIC, "asterisk-csv", keyed_by_account=True),
            ),
        )
        config = folder / "meterline.toml"
        config.write_text(settings_to_toml(settings))  # the workers read the raw topics from it
        (folder / "catalog.yaml").write_text(CATALOG)
        create_topics(settings)
        publish_catalog(settings, folder / "catalog.yaml")
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
        producer.produce(PARIS_TOPIC, cdr("paris-topic", LAST_EVENING))
        producer.produce(
            LINES_TOPIC,
            cdr("paris-header", LAST_EVENING),
            key=b"acme",
            headers=[("meterline.cdr_timezone", b"Europe/Paris")],
        )
        producer.produce(LINES_TOPIC, cdr("utc", LAST_EVENING), key=b"acme")
        # The header wins over the topic's zone: New York's 23:30 is 03:30Z on 1 April.
        producer.produce(
            PARIS_TOPIC,
            cdr("new-york-header", LAST_EVENING),
            headers=[("meterline.cdr_timezone", b"America/New_York")],
        )
        for i, data in enumerate(DATA):
            when = f"2026-03-0{i + 2}T10:00:00Z"
            producer.produce("meterline.raw", structured(f"structured-{i}", when, data))
            producer.produce(
                "meterline.raw", json.dumps(data).encode(), headers=ce_headers(f"binary-{i}", when)
            )
        # Unknown account: to the DLQ from the keyed step, with what a replay needs to read it again.
        ghost = [
            (n, b"ghost" if n == "ce_subject" else v)
            for n, v in ce_headers("binary-ghost", "2026-03-02T10:00:00Z")
        ]
        producer.produce("meterline.raw", b'{"quantity": 1}', headers=ghost)
        zoned = [("meterline.cdr_timezone", b"Europe/Paris")]
        producer.produce(
            LINES_TOPIC, cdr("ghost-cdr", LAST_EVENING).replace(b'"acme"', b'"ghost"'), headers=zoned
        )
        assert producer.flush(30) == 0
        workers = Workers(settings, folder / "out", str(config))
        try:
            workers.start("mediation")
            workers.start("rating")
            found, dead = wait_outputs(broker.bootstrap_servers, workers, 4 + 2 * len(DATA), 2)
            # Once the catalog is fixed, a replay reads the DLQ copies as the originals were read.
            (folder / "fixed.yaml").write_text(FIXED_CATALOG)
            publish_catalog(settings, folder / "fixed.yaml")
            assert sum(replay(settings, Selection()).replayed.values()) == 2
            after, _ = wait_outputs(broker.bootstrap_servers, workers, 6 + 2 * len(DATA), 2)
        finally:
            workers.stop()
    return {r.event.event_id: r for r in found}, dead, {r.event.event_id: r for r in after}


@pytest.fixture(scope="module")
def rated(world: tuple[dict[str, RatedUsage], list[Any], Any]) -> dict[str, RatedUsage]:
    assert len(world[0]) == 4 + 2 * len(DATA)
    return world[0]


def test_rejected_binary_cloudevents_and_zoned_cdrs_are_rated_once_replayed(world: Any) -> None:
    replayed = world[2]
    cdr_event = replayed["ghost-cdr"].event
    assert (cdr_event.account_id, cdr_event.event_time.isoformat(), cdr_event.period) == (
        "ghost",
        "2026-03-31T21:30:00+00:00",
        "2026-03",
    )
    ce_event = replayed["binary-ghost"].event
    assert (ce_event.account_id, ce_event.quantity, ce_event.source_format) == (
        "ghost",
        Decimal(1),
        "cloudevents",
    )


def test_the_dlq_copy_of_a_binary_mode_cloudevent_keeps_its_ce_headers(world: Any) -> None:
    [dead] = [m for m in world[1] if m.value() == b'{"quantity": 1}']
    headers = dict(dead.headers() or [])
    assert (headers["meterline.reason"], dead.value()) == (b"unknown_account", b'{"quantity": 1}')
    expected = [
        (n, b"ghost" if n == "ce_subject" else v)
        for n, v in ce_headers("binary-ghost", "2026-03-02T10:00:00Z")
    ]
    assert [(n, v) for n, v in dead.headers() or [] if not n.startswith("meterline.")] == expected


@pytest.mark.parametrize(
    ("event_id", "instant", "period"),
    [
        ("paris-topic", "2026-03-31T21:30:00+00:00", "2026-03"),
        ("paris-header", "2026-03-31T21:30:00+00:00", "2026-03"),
        ("utc", "2026-03-31T23:30:00+00:00", "2026-04"),
        ("new-york-header", "2026-04-01T03:30:00+00:00", "2026-04"),
    ],
)
def test_a_cdr_is_read_in_its_pbx_time_zone(
    rated: dict[str, RatedUsage], event_id: str, instant: str, period: str
) -> None:
    event = rated[event_id].event
    assert (event.event_time.isoformat(), event.period) == (instant, period)
    assert (rated[event_id].charge_id, rated[event_id].quantity) == ("voice", Decimal(1))


@pytest.mark.parametrize("index", range(len(DATA)))
def test_binary_mode_cloudevents_are_rated_like_structured_ones(
    rated: dict[str, RatedUsage], index: int
) -> None:
    binary, reference = rated[f"binary-{index}"], rated[f"structured-{index}"]
    assert binary.event.source_format == reference.event.source_format == "cloudevents"
    fields = ("quantity", "attributes", "event_time", "period")
    assert [getattr(binary.event, f) for f in fields] == [getattr(reference.event, f) for f in fields]
    assert (binary.charge_id, binary.quantity) == (reference.charge_id, reference.quantity)
    assert binary.event.quantity == Decimal(str(DATA[index]["quantity"]))
