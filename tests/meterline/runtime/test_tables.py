"""Control topics (contracts, periods) as tables: an unreadable record is skipped
with an error log and a metric, never raised, and the valid records around it apply."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from meterline.app.publish import create_topics
from meterline.kernel.catalog_file import catalog_entities, parse_catalog, read_catalog_document
from meterline.kernel.config import Settings
from meterline.kernel.topics import CONTRACTS, PERIODS
from meterline.runtime import metrics
from meterline.runtime.broker import EmbeddedBroker
from meterline.runtime.tables import (
    CompactedTable,
    ContractsTable,
    PeriodsTable,
    catalog_entity_error,
    period_key_error,
)

CATALOG = Path(__file__).resolve().parents[2] / "data" / "catalog.yaml"

BAD_PERIOD_KEYS = [
    b"2026-13", b"2026-00", b"0000-05", b"\xff\xfe", b"2026-01/", b"2026-01/a b", b"2026-1", b"2026-01\n"
]  # fmt: skip
BAD_ENTITIES = [
    (b"poison-1", b"{not json"),
    (b"poison-2", b'{"kind": "account", "id": 7, "contracts": "x"}'),
    (b"account/x", b"[1, 2, 3]"),
    (b"account/x", b'{"kind": "account", "id": "x", "version": 1, "spec": {"id": "y"}}'),
    (b"meter/x", b'{"kind": "meter", "id": "x", "version": 1, "spec": "not an object"}'),
    (b"meter/y", b'{"kind": "meter", "id": "x", "version": 1, "spec": {"code": "x"}}'),
    (b"widget/x", b'{"kind": "widget", "id": "x", "version": 1, "spec": {"id": "x"}}'),
    (b"\xff", b"{}"),
]


def _entities() -> list[tuple[bytes, bytes]]:
    document = read_catalog_document(CATALOG)
    return [(key.encode(), orjson.dumps(value)) for key, value in catalog_entities(document)]


def test_period_keys_are_checked() -> None:
    assert period_key_error(b"2026-01", b"{}") is None
    assert period_key_error(b"2026-12/acme", None) is None
    for key in BAD_PERIOD_KEYS:
        assert period_key_error(key, b"{}") is not None, key


def test_catalog_entities_are_checked() -> None:
    for key, value in _entities():
        assert catalog_entity_error(key, value) is None, key
    assert catalog_entity_error(b"account/gone", None) is None  # a tombstone
    for key, value in BAD_ENTITIES:
        assert catalog_entity_error(key, value) is not None, (key, value)


def _skipped(topic: str) -> float:
    return float(metrics.CONTROL_RECORDS_SKIPPED.labels(topic)._value.get())


def _produce(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes | None]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in records:
        producer.produce(topic, value, key)
    assert producer.flush(10) == 0


def _poll_until(table: ContractsTable | PeriodsTable, done: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        table.poll()
        if done():
            return
        time.sleep(0.05)
    raise AssertionError("the table never reached the expected state")


@pytest.mark.integration
def test_garbage_on_control_topics_is_skipped(fresh_broker: EmbeddedBroker) -> None:
    bootstrap = fresh_broker.bootstrap_servers
    create_topics(Settings(bootstrap_servers=bootstrap, partitions=1))
    entities = _entities()
    # Garbage first (also under a real entity's key, after it), then the valid catalog.
    _produce(bootstrap, CONTRACTS, [*BAD_ENTITIES, *entities, (b"account/acme", b"\x00garbage")])
    _produce(
        bootstrap,
        PERIODS,
        [*((key, b"{}") for key in BAD_PERIOD_KEYS), (b"2026-01", b"{}"), (b"2026-02/acme", b"{}")],
    )
    contracts_before, periods_before = _skipped(CONTRACTS), _skipped(PERIODS)

    contracts = ContractsTable(CompactedTable(CONTRACTS, bootstrap, {}, "test-c"))
    periods = PeriodsTable(CompactedTable(PERIODS, bootstrap, {}, "test-p"))
    contracts.load()
    periods.load()

    assert "acme" in contracts.catalog.accounts  # the garbage after it left the valid value in place
    assert periods.closed_all == {"2026-01"}
    assert periods.closed_accounts == {("2026-02", "acme")}
    assert periods.is_closed("anyone", "2026-01") and not periods.is_closed("anyone", "2026-13")
    assert _skipped(CONTRACTS) - contracts_before == len(BAD_ENTITIES) + 1
    assert _skipped(PERIODS) - periods_before == len(BAD_PERIOD_KEYS)

    # While running: more garbage, then valid records behind it.
    _produce(bootstrap, PERIODS, [(b"2026-13", b"{}"), (b"\xff\xfe", None), (b"2026-03", b"{}")])
    _poll_until(periods, lambda: "2026-03" in periods.closed_all)
    assert periods.closed_all == {"2026-01", "2026-03"}
    assert _skipped(PERIODS) - periods_before == len(BAD_PERIOD_KEYS) + 2

    accounts = set(contracts.catalog.accounts)
    _produce(bootstrap, CONTRACTS, [(b"poison-3", b"{"), (b"account/acme", None)])
    _poll_until(contracts, lambda: "acme" not in contracts.catalog.accounts)
    assert set(contracts.catalog.accounts) == accounts - {"acme"}
    assert _skipped(CONTRACTS) - contracts_before == len(BAD_ENTITIES) + 2


@pytest.mark.integration
def test_an_invalid_catalog_keeps_the_last_good_one(fresh_broker: EmbeddedBroker) -> None:
    bootstrap = fresh_broker.bootstrap_servers
    create_topics(Settings(bootstrap_servers=bootstrap, partitions=1))
    _produce(bootstrap, CONTRACTS, _entities())
    contracts = ContractsTable(CompactedTable(CONTRACTS, bootstrap, {}, "test-c"))
    contracts.load()
    good = contracts.catalog
    assert good.accounts
    before = _skipped(CONTRACTS)
    # Well-shaped entities the catalog as a whole cannot take: an unknown plan, a spec of the
    # wrong types (the kind of input that made parsing raise something other than ValueError).
    broken = [
        (b"account/zed", orjson.dumps({"kind": "account", "id": "zed", "version": 1, "spec": {
            "id": "zed", "name": "Zed", "timezone": "UTC",
            "contracts": [{"id": "z1", "plan": "no-such-plan", "start": "2026-01-01", "end": None}]}})),
        (b"plan/odd", orjson.dumps({"kind": "plan", "id": "odd", "version": 1, "spec": {
            "id": "odd", "currency": ["EUR"], "charges": {"x": 1}}})),
    ]  # fmt: skip
    _produce(bootstrap, CONTRACTS, broken)
    deadline = time.monotonic() + 20
    while _skipped(CONTRACTS) == before and time.monotonic() < deadline:
        contracts.poll()
        time.sleep(0.05)
    assert _skipped(CONTRACTS) > before
    assert contracts.catalog is good


def test_a_fresh_table_sets_a_bad_entity_aside_and_keeps_the_rest(fresh_broker: EmbeddedBroker) -> None:
    """Found by the control-poison fault: a well-shaped entity the catalog cannot take made a
    freshly started stage keep its empty catalog and reject every event as unknown_account."""
    bootstrap = fresh_broker.bootstrap_servers
    create_topics(Settings(bootstrap_servers=bootstrap, partitions=1))
    good = _entities()
    bad_plan = (
        b"plan/odd",
        orjson.dumps(
            {
                "kind": "plan",
                "id": "odd",
                "version": 1,
                "spec": {"id": "odd", "currency": "XAU", "charges": []},
            }
        ),
    )
    bad_account = (
        b"account/zed",
        orjson.dumps(
            {
                "kind": "account",
                "id": "zed",
                "version": 1,
                "spec": {
                    "id": "zed",
                    "name": "Zed",
                    "timezone": "UTC",
                    "contracts": [{"id": "z1", "plan": "no-such-plan", "start": "2026-01-01", "end": None}],
                },
            }
        ),
    )
    _produce(bootstrap, CONTRACTS, [bad_plan, *good, bad_account])
    contracts = ContractsTable(CompactedTable(CONTRACTS, bootstrap, {}, "test-fresh"))
    contracts.load()
    expected = parse_catalog(read_catalog_document(CATALOG), source="expected")
    assert set(contracts.catalog.accounts) == set(expected.accounts)
    assert "zed" not in contracts.catalog.accounts
    # An invalid update of a known account falls back to its last good version.
    key, value = next((k, v) for k, v in good if k.startswith(b"account/"))
    entity = orjson.loads(value)
    entity["spec"]["contracts"][0]["plan"] = "no-such-plan"
    before, skipped = contracts.catalog, _skipped(CONTRACTS)
    _produce(bootstrap, CONTRACTS, [(key, orjson.dumps(entity))])
    _poll_until(contracts, lambda: _skipped(CONTRACTS) > skipped)
    assert contracts.catalog is before
