from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from meterline.runtime.broker import EmbeddedBroker, free_port

pytestmark = pytest.mark.integration


def test_broker_answers_metadata_and_stops(fresh_broker: EmbeddedBroker) -> None:
    admin = AdminClient({"bootstrap.servers": fresh_broker.bootstrap_servers})
    metadata = admin.list_topics(timeout=5)
    assert metadata.brokers, "the embedded broker lists itself"
    fresh_broker.stop()
    with pytest.raises(KafkaException):
        AdminClient({"bootstrap.servers": fresh_broker.bootstrap_servers}).list_topics(timeout=1)


def test_broker_command_says_it_keeps_nothing_and_stops_on_sigterm() -> None:
    # The bundled Tansu has memory storage only (no sqlite/postgres engine compiled in),
    # so the command says so at start rather than losing topics silently on restart.
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "meterline", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        assert process.stderr.readline().strip() == (
            "meterline: the embedded broker keeps topics in memory only; everything is lost when it stops"
        )
        assert process.stdout.readline().strip() == f"bootstrap servers: 127.0.0.1:{port}"
        metadata = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=20)
        assert metadata.brokers
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    assert code == 0, process.stderr.read()
