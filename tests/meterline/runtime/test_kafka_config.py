"""librdkafka's own log lines and errors reach the JSON log, throttled; an unreachable broker
is reported to health."""

from __future__ import annotations

import json
import subprocess
import sys

from meterline.runtime.broker import free_port
from meterline.runtime.logs import Throttle

CLIENT = """
import time
from confluent_kafka import Producer
from meterline.runtime.health import HEALTH
from meterline.runtime.kafka_config import plain_producer_config
from meterline.runtime.logs import configure_logging

configure_logging("info", "test")
producer = Producer(plain_producer_config("127.0.0.1:{port}", {{}}))
producer.produce("t", b"x")
deadline = time.monotonic() + 4
while time.monotonic() < deadline:
    producer.poll(0.2)
print("reachable" if HEALTH.broker_reachable() else "unreachable")
producer.purge()
"""


def test_an_unreachable_broker_gives_a_few_json_lines() -> None:
    client = subprocess.run(
        [sys.executable, "-c", CLIENT.format(port=free_port())], capture_output=True, text=True, timeout=60
    )
    assert client.returncode == 0, client.stderr
    assert client.stdout.strip() == "unreachable"
    lines = [line for line in client.stderr.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # no raw librdkafka line
    # librdkafka repeats "Connect ... failed" several times a second; the log says it once.
    assert 1 <= len(events) <= 6, lines
    kinds = {event["event"] for event in events}
    assert kinds <= {"librdkafka", "kafka_client_error"}, kinds
    assert "Connection refused" in " ".join(str(event.get("message", event.get("error"))) for event in events)


def test_throttle_counts_the_repeats_it_drops() -> None:
    throttle = Throttle(interval_s=0.0)
    assert throttle.admit("a") == 0
    assert throttle.admit("a") == 0  # a zero interval drops nothing
    slow = Throttle(interval_s=3600)
    assert slow.admit("a") == 0
    assert slow.admit("a") is None
    assert slow.admit("a") is None
    assert slow.admit("b") == 0
