"""/healthz means something: 200 while a stage commits or idles with the broker answering,
503 with the reason otherwise, read over HTTP from a stage on the real embedded broker."""

from __future__ import annotations

import signal
import time

import pytest

from meterline.kernel.config import Settings
from meterline.runtime.broker import EmbeddedBroker
from meterline.runtime.health import Health
from meterline.runtime.stage_runner import StageRunner
from tests.meterline.runtime.test_stage_runner import (
    IN,
    HealthWatch,
    RunningCount,
    make_topics,
    run_in_thread,
    wait,
)


def test_reasons_in_order() -> None:
    health = Health(stall_s=60, broker_timeout_s=0.0, max_aborts=2)
    assert health.status() == (False, "starting")
    health.start("s")
    assert health.status() == (True, "ok")
    health.broker_down()
    time.sleep(0.01)
    assert health.status()[1].startswith("broker unreachable for")
    assert not health.broker_reachable()
    health.broker_up()
    assert health.broker_reachable()
    assert health.aborted() == 1 and health.aborted() == 2
    assert health.status() == (False, "the same batch aborted 2 times in a row")
    health.progress()
    assert health.status() == (True, "ok")
    health.fail("producer fenced")
    assert health.status() == (False, "fatal: producer fenced")
    health.start("s")  # a new run of the loop starts clean
    assert health.status() == (True, "ok")


@pytest.mark.integration
def test_a_stopped_broker_turns_healthz_503_and_back_to_200(fresh_broker: EmbeddedBroker) -> None:
    make_topics(fresh_broker)
    settings = Settings(
        bootstrap_servers=fresh_broker.bootstrap_servers, instance_id="stall", broker_timeout_s=2.0
    )
    runner = StageRunner(RunningCount(), settings, [IN])
    watch = HealthWatch()
    thread, done, errors = run_in_thread(runner)
    process = fresh_broker._process
    assert process is not None
    try:
        wait(lambda: watch.status() == (200, "ok"), 60, "an idle, healthy stage")
        process.send_signal(signal.SIGSTOP)
        try:
            wait(lambda: "broker unreachable" in watch.status()[1], 60, "broker unreachable on /healthz")
            assert watch.status()[0] == 503
        finally:
            process.send_signal(signal.SIGCONT)
        wait(lambda: watch.status() == (200, "ok"), 60, "healthy again")
    finally:
        done.set()
        thread.join(60)
        watch.close()
    assert not errors
    assert not thread.is_alive()
