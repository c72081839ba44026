"""A second consolidation process of one store waits as a healthy standby and takes over
when the holder dies (found by the rebalance fault: it used to exit on DuckDB's lock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from meterline.broker import EmbeddedBroker, free_port
from meterline.config import Settings
from meterline.publish import create_topics

pytestmark = pytest.mark.integration


def _healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def _start(broker: EmbeddedBroker, out: Path, instance: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "meterline", "consolidation", "--bootstrap-servers", broker.bootstrap_servers,
        "--out", str(out), "--instance-id", instance, "--metrics-port", str(port), "--no-auto-close",
    ]  # fmt: skip
    env = {**os.environ, "METERLINE_PARTITIONS": "2"}
    return subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)


def _wait(condition: Callable[[], bool], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_second_process_waits_as_a_standby_and_takes_over(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    create_topics(Settings(bootstrap_servers=fresh_broker.bootstrap_servers, partitions=2))
    out = tmp_path / "out"
    ports = free_port(), free_port()
    logs = tmp_path / "a.log", tmp_path / "b.log"
    first = _start(fresh_broker, out, "a", ports[0], logs[0])
    second: subprocess.Popen[bytes] | None = None
    try:
        _wait(lambda: _healthz(ports[0]) == 200, "the first process")
        second = _start(fresh_broker, out, "b", ports[1], logs[1])
        _wait(lambda: b"consolidation_standby" in logs[1].read_bytes(), "the standby")
        _wait(lambda: _healthz(ports[1]) == 200, "a healthy standby")
        assert second.poll() is None
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        _wait(lambda: b"consolidation_takes_over" in logs[1].read_bytes(), "the takeover")
        _wait(lambda: b"stage_started" in logs[1].read_bytes(), "the second process consolidating")
        assert second.poll() is None and _healthz(ports[1]) == 200
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(30)
    assert second.returncode == 0, logs[1].read_text()[-2000:]
