"""The long-running workers on the real embedded broker, fed one hostile record of each
kind that used to stop a stage: every one ends in the DLQ with its reason, the workers
keep running, and every /healthz answers 200 throughout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from meterline.app.publish import create_topics
from meterline.kernel.config import Settings
from meterline.kernel.topics import CONTRACTS, PERIODS, REJECTED
from meterline.runtime.broker import EmbeddedBroker, free_port
from meterline.runtime.progress import StatsReader, Totals, drained

pytestmark = pytest.mark.integration

CATALOG = """
meters:
  - {code: api_calls, unit: call, aggregation: sum}
plans:
  - id: basic
    currency: USD
    rounding: half_even
    charges:
      - {id: api, meter: api_calls, model: flat, unit_price: "0.001"}
accounts:
  - id: west
    name: West Coast Inc
    timezone: America/Los_Angeles
    contracts:
      - {id: west-1, plan: basic, start: "2026-01-01", end: null}
"""

STAGES = ("mediation", "rating", "consolidation")


def _native(event_id: str, timestamp: str, quantity: str = "1") -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "account_id": "west",
            "meter": "api_calls",
            "quantity": quantity,
            "timestamp": timestamp,
        }
    ).encode()


# One record of each kind that used to kill a stage, with the reason it must get.
HOSTILE = [
    (_native("h-year-one", "0001-01-01T00:00:00Z"), "invalid_timestamp"),
    (
        json.dumps(
            {
                "transaction_id": "h-lago",
                "external_customer_id": "west",
                "code": "api_calls",
                "timestamp": -62135596800,
                "properties": {"quantity": "1"},
            }
        ).encode(),
        "invalid_timestamp",
    ),
    (_native("h-huge-1", "2026-11-10T10:00:00Z", "60000000000000000000"), None),  # rated
    (_native("h-huge-2", "2026-11-10T10:00:01Z", "60000000000000000000"), "invalid_quantity"),
    (b'{"event_id": "h-big", "pad": "' + b"x" * 1_000_000 + b'"}', "too_large"),
]
HUGE_PREFIX = b'{"event_id": "h-huge'
VALID = [_native(f"ok-{i}", f"2026-11-{10 + i}T12:00:00Z", str(i)) for i in range(1, 4)]


class HealthWatch:
    """Polls every worker's /healthz from a thread; remembers any answer that was not 200."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.failures: list[str] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def wait_all_healthy(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        pending = set(self.ports)
        while pending and time.monotonic() < deadline:
            pending = {stage for stage in pending if self._status(stage)[0] != 200}
            time.sleep(0.2)
        assert not pending, f"workers never became healthy: {sorted(pending)}"
        self._thread.start()

    def _status(self, stage: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[stage]}/healthz", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            for stage in self.ports:
                status, body = self._status(stage)
                if status != 200:
                    self.failures.append(f"{stage}: {status} {body.strip()}")
            self.polls += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


def _meterline(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterline", *args], capture_output=True, text=True, timeout=120
    )


def _dead_letters(bootstrap: str) -> dict[bytes, str]:
    """Reason per DLQ record, keyed by the first 64 bytes of the record."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "hostile-dlq",
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    partitions = consumer.list_topics(REJECTED, timeout=10).topics[REJECTED].partitions
    consumer.assign([TopicPartition(REJECTED, p, OFFSET_BEGINNING) for p in partitions])
    found: dict[bytes, str] = {}
    pending = set(partitions)
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.2):
            if message.error() is not None:
                pending.discard(message.partition())
                continue
            headers = dict(message.headers() or [])
            found[message.value()[:64]] = headers["meterline.reason"].decode()
    consumer.close()
    return found


def _wait(reader: StatsReader, published: int, timeout: float = 120) -> Totals:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reader.poll(0.2)
        totals = reader.totals(["meterline.raw"])
        if drained(totals, published):
            return totals
    raise AssertionError(f"pipeline did not drain {published} records: {reader.totals(['meterline.raw'])}")


def test_hostile_records_end_in_the_dlq_while_workers_stay_healthy(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    bootstrap = fresh_broker.bootstrap_servers
    settings = Settings(bootstrap_servers=bootstrap, partitions=2)
    create_topics(settings)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    published = _meterline("contracts", "publish", str(catalog), "--bootstrap-servers", bootstrap)
    assert published.returncode == 0, published.stderr

    ports = {stage: free_port() for stage in STAGES}
    logs = {stage: (tmp_path / f"{stage}.log").open("wb") for stage in STAGES}
    env_args = ["--bootstrap-servers", bootstrap, "--instance-id", "hostile"]
    workers = {
        stage: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meterline",
                stage,
                *env_args,
                "--metrics-port",
                str(ports[stage]),
                *(["--out", str(tmp_path / "out"), "--no-auto-close"] if stage == "consolidation" else []),
            ],
            stdout=logs[stage],
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "METERLINE_PARTITIONS": "2"},
        )
        for stage in STAGES
    }
    watch = HealthWatch(ports)
    reader = StatsReader(bootstrap, {})
    try:
        watch.wait_all_healthy()
        events = tmp_path / "events.jsonl"
        events.write_bytes(b"\n".join([*VALID, *(record for record, _ in HOSTILE)]) + b"\n")
        produced = _meterline("produce", str(events), "--bootstrap-servers", bootstrap)
        assert produced.returncode == 0, produced.stderr

        # Control-topic poison and an impossible close, then more valid usage behind them.
        control = Producer({"bootstrap.servers": bootstrap})
        control.produce(CONTRACTS, b"{not json", b"poison-1")
        control.produce(CONTRACTS, b'{"kind": "account", "id": 7, "contracts": "x"}', b"poison-2")
        control.produce(PERIODS, b"{}", b"2026-13")
        control.produce(PERIODS, b"\xff\xfe", b"\xff\xfe")
        assert control.flush(10) == 0
        impossible = _meterline("close", "--period", "2026-13", "--bootstrap-servers", bootstrap)
        assert impossible.returncode == 2, impossible.stderr
        later = tmp_path / "later.jsonl"
        later.write_bytes(_native("ok-after-poison", "2026-11-20T12:00:00Z", "5") + b"\n")
        produced = _meterline("produce", str(later), "--bootstrap-servers", bootstrap)
        assert produced.returncode == 0, produced.stderr

        total = len(VALID) + len(HOSTILE) + 1
        totals = _wait(reader, total)
        assert totals.events_in == total
        assert totals.rated == len(VALID) + 2  # the first huge event and the one after the poison
        assert totals.events_in == totals.rated + totals.duplicates + totals.rejected_total

        letters = _dead_letters(bootstrap)
        for record, reason in HOSTILE:
            if reason is not None and not record.startswith(HUGE_PREFIX):
                assert letters.get(record[:64]) == reason, (record[:64], letters)
        # The two huge events may reach rating in either order (the raw topic is not keyed
        # by account): whichever comes second would take the aggregate to 10^20.
        huge = [letters.get(record[:64]) for record, _ in HOSTILE if record.startswith(HUGE_PREFIX)]
        assert sorted(huge, key=str) == sorted([None, "invalid_quantity"], key=str), letters
        assert watch.polls > 0
    finally:
        watch.stop()
        reader.close()
        alive = {stage: process.poll() is None for stage, process in workers.items()}
        for process in workers.values():
            process.terminate()
        for process in workers.values():
            process.wait(30)
        for handle in logs.values():
            handle.close()
    assert all(alive.values()), f"a worker exited: {alive}; logs in {tmp_path}"
    assert not watch.failures, watch.failures[:5]
