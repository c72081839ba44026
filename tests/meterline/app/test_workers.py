"""A worker that meets a fatal error exits 1 with one clear JSON log line, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from confluent_kafka import Consumer, TopicPartition

from meterline.app.publish import create_topics
from meterline.kernel.config import Settings
from meterline.kernel.topics import MEDIATED
from meterline.runtime.broker import EmbeddedBroker

pytestmark = pytest.mark.integration


def test_stored_offsets_past_the_end_stop_the_worker(fresh_broker: EmbeddedBroker) -> None:
    """Reproduced on c9cf9a2 (for consolidation, whose offsets live in DuckDB): after the topics
    were recreated under stored offsets, a stage consumed 0 of the new events without a log line."""
    bootstrap = fresh_broker.bootstrap_servers
    create_topics(Settings(bootstrap_servers=bootstrap, partitions=1))
    group = Consumer({"bootstrap.servers": bootstrap, "group.id": "meterline-rating"})
    group.commit(offsets=[TopicPartition(MEDIATED, 0, 51)], asynchronous=False)
    group.close()

    worker = subprocess.run(
        [sys.executable, "-m", "meterline", "rating", "--bootstrap-servers", bootstrap, "--instance-id", "w"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "METERLINE_PARTITIONS": "1"},
    )
    assert worker.returncode == 1, worker.stderr[-3000:]
    output = worker.stdout + worker.stderr
    assert "Traceback" not in output
    events = [json.loads(line) for line in output.splitlines() if line.strip()]  # JSON lines only
    fatal = [e for e in events if e["event"] == "worker_fatal"]
    assert len(fatal) == 1
    assert [e["event"] for e in events if e["level"] == "error"] == ["worker_fatal"]
    assert f"{MEDIATED}[0] at 51 (end 0)" in fatal[0]["reason"]
    assert fatal[0]["level"] == "error" and fatal[0]["stage"] == "rating"
