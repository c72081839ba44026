"""A consolidation process that finds its store held by another waits as a standby.

`billing.duckdb` takes one writing process. A second consolidation process of the same
store (a rolling deploy, a scale-out attempt, an operator's second start) does not
fail: it waits, healthy while the broker answers, without joining the consumer group,
and takes over once the holder stops or dies (the file lock goes with its process).
It then restores from the offsets stored in the store, as any restart does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import duckdb
import structlog
from confluent_kafka.admin import AdminClient

from consolidation.store import BillingStore
from meterline.health import HEALTH
from meterline.kafka_config import client_config

log = structlog.get_logger()

STAGE = "consolidation"


def is_lock_conflict(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


def open_store(
    out_dir: str | Path,
    stopping: threading.Event,
    broker_answers: Callable[[], bool],
    retry_s: float = 1.0,
) -> BillingStore | None:
    """The store, once this process can hold it; None if asked to stop while waiting."""
    waiting = False
    while not stopping.is_set():
        try:
            store = BillingStore(out_dir)
        except duckdb.IOException as exc:
            if not is_lock_conflict(exc):
                raise
            if not waiting:
                waiting = True
                HEALTH.start(STAGE)
                log.info("consolidation_standby", out=str(out_dir), held_by=str(exc).splitlines()[0])
            if broker_answers():
                HEALTH.broker_up()
                HEALTH.progress()
            else:
                HEALTH.broker_down()
                HEALTH.beat()
            stopping.wait(retry_s)
            continue
        if waiting:
            log.info("consolidation_takes_over", out=str(out_dir))
        return store
    return None


def broker_probe(bootstrap_servers: str, kafka: dict[str, str]) -> Callable[[], bool]:
    """A check that the cluster answers a metadata request within a few seconds."""
    admin = AdminClient(client_config(bootstrap_servers, kafka))

    def answers() -> bool:
        try:
            admin.list_topics(timeout=5)
        except Exception:  # any failure to answer is "not reachable now"
            return False
        return True

    return answers
