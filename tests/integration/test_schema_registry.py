"""Rated usage read as Kafka Connect reads it: on the real embedded broker, with schema ids
from a Schema Registry (the in-process stand-in of tests/support, which speaks the
Confluent REST API), a plain consumer decodes each value with fastavro and the schema
the registry gives for the id in its framing, and finds exact decimals."""

from __future__ import annotations

import io
import json
import struct
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Context, Decimal
from typing import Any

import fastavro
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from meterline.kernel.records import RatedUsage, UsageEvent
from meterline.runtime.broker import EmbeddedBroker
from schemas.codec import PINNED, configure, encode_rated, encode_rated_after, encode_usage
from schemas.registry_client import use_registry
from tests.support.fake_registry import FakeSchemaRegistry

pytestmark = pytest.mark.integration

WHEN = datetime(2026, 9, 30, 23, 59, 59, 999999, tzinfo=UTC)
AMOUNTS = [
    Decimal("0.000000000000000001"),
    Decimal("-0.000000000000000001"),
    Decimal("0.0125"),
    Decimal("1234.567890123456789012"),  # 18 places are kept: 19+ never reach the codec
    Decimal("99999999999999999999.999999999999999999"),
    Decimal("-99999999999999999999.999999999999999999"),
    Decimal("0E-18"),
    Decimal("42"),
]


def rated(index: int, amount: Decimal) -> RatedUsage:
    quantity = Decimal(index).scaleb(-18) + Decimal(7)
    event = UsageEvent(f"ev-{index}", f"acct-{index % 3}", "api_calls", quantity, WHEN, {"region": "eu"})
    before = Decimal(index)
    return RatedUsage(event, "api", "flat", quantity, amount, before, before + quantity, f"INV-{index % 3}")


def exact(value: Decimal) -> Decimal:
    """What an Avro decimal(38, 18) carries: the value at 18 places (it cannot carry more)."""
    return value.quantize(Decimal("1e-18"), context=Context(prec=60))


@pytest.fixture
def registry() -> Iterator[FakeSchemaRegistry]:
    with FakeSchemaRegistry(users={"connect": "pw"}) as running:
        yield running
    configure(PINNED)


def fetch_schema(registry: FakeSchemaRegistry, schema_id: int) -> Any:
    """GET /schemas/ids/{id}, as a converter does with the id of a record's framing."""
    request = urllib.request.Request(f"{registry.url}/schemas/ids/{schema_id}")
    request.add_header("Authorization", "Basic Y29ubmVjdDpwdw==")  # connect:pw
    with urllib.request.urlopen(request, timeout=10) as response:
        return fastavro.parse_schema(json.loads(json.loads(response.read())["schema"]))


def test_a_connect_style_consumer_reads_exact_decimals_with_the_registry_schema(
    broker: EmbeddedBroker, registry: FakeSchemaRegistry
) -> None:
    suffix = uuid.uuid4().hex[:8]
    mediated_topic, rated_topic = f"it.registry.mediated.{suffix}", f"it.registry.rated.{suffix}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
    for future in admin.create_topics([NewTopic(rated_topic, 2, 1)]).values():
        future.result(timeout=30)
    ids = use_registry(registry.url, mediated_topic, rated_topic, user_info="connect:pw")
    assert ids != PINNED

    records = [rated(index, amount) for index, amount in enumerate(AMOUNTS)]
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
    for index, record in enumerate(records):
        # Rating's path (the mediated body reused) and the plain encoder, alternately.
        value = encode_rated_after(encode_usage(record.event), record) if index % 2 else encode_rated(record)
        producer.produce(rated_topic, value, key=record.event.account_id.encode())
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap_servers,
            "group.id": f"connect-{suffix}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    # Assigned rather than subscribed: a sink task's decoding is the point, not group joins.
    consumer.assign([TopicPartition(rated_topic, partition, OFFSET_BEGINNING) for partition in (0, 1)])
    schemas: dict[int, Any] = {}
    decoded: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 60
    try:
        while len(decoded) < len(records) and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None or message.error() is not None:
                continue
            value = message.value()
            assert value is not None
            magic, schema_id = struct.unpack_from(">bI", value)
            assert (magic, schema_id) == (0, ids.rated)
            if schema_id not in schemas:
                schemas[schema_id] = fetch_schema(registry, schema_id)
            record = fastavro.schemaless_reader(io.BytesIO(value[5:]), schemas[schema_id], None)
            assert isinstance(record, dict)
            decoded[record["event_id"]] = record
    finally:
        consumer.close()

    assert len(decoded) == len(records)
    assert ("GET", f"/schemas/ids/{ids.rated}") in registry.requests
    for record in records:
        read = decoded[record.event.event_id]
        for name, expected in (
            ("quantity", record.event.quantity),
            ("rated_quantity", record.quantity),
            ("amount", record.amount),
            ("aggregate_before", record.aggregate_before),
            ("aggregate_after", record.aggregate_after),
        ):
            assert isinstance(read[name], Decimal)  # numbers, not text
            assert read[name] == expected
            assert read[name].as_tuple() == exact(expected).as_tuple()
        assert (read["event_time"], read["attributes"]) == (WHEN, {"region": "eu"})
        assert (read["account_id"], read["invoice_id"]) == (record.event.account_id, record.invoice_id)
