"""librdkafka client settings in one place.

Group-join timings are tuned for the embedded broker (joins take ~23 s on Tansu
under the defaults, ~3.6 s with these). User properties from `[kafka]` win over ours.

Every client gets `logger` (librdkafka's lines become throttled JSON events, see
meterline.runtime.logs) and `error_cb` (:func:`report_error`: throttled JSON events, and an
unreachable broker is reported to meterline.runtime.health), so nothing librdkafka says
reaches stderr raw. A short-lived command that wants the errors for itself
replaces `error_cb` (e.g. meterline.app.publish's quiet clients).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import structlog
from confluent_kafka import KafkaError

from meterline.runtime.health import HEALTH
from meterline.runtime.logs import LIBRDKAFKA_LOG, Throttle

FAST_GROUP_JOIN = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}

# librdkafka errors that mean no broker can be reached (as opposed to one request failing).
BROKER_DOWN_CODES: Final = frozenset(
    {KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE}
)
_ERRORS = Throttle()


def report_error(error: KafkaError) -> None:
    """The `error_cb` of every client: a throttled JSON event; health learns of a broker down."""
    code = error.code()
    if code in BROKER_DOWN_CODES:
        HEALTH.broker_down()
    repeats = _ERRORS.admit(str(code))
    if repeats is None and not error.fatal():
        return
    event: dict[str, Any] = {"code": error.name(), "error": error.str(), "fatal": error.fatal()}
    if repeats:
        event["repeats_suppressed"] = repeats
    if error.fatal():
        structlog.get_logger().error("kafka_client_error", **event)
    else:
        structlog.get_logger().warning("kafka_client_error", **event)


def client_config(bootstrap_servers: str, user: Mapping[str, str], **ours: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "log_level": 3,
        "logger": LIBRDKAFKA_LOG,
        "error_cb": report_error,
    }
    config.update({k: v for k, v in ours.items()})
    config.update(user)
    return config


def consumer_config(
    bootstrap_servers: str, user: Mapping[str, str], group_id: str, **ours: Any
) -> dict[str, Any]:
    return client_config(
        bootstrap_servers,
        user,
        **{
            "group.id": group_id,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # Tansu holds a waiting fetch this long even when records arrive: it adds to latency
            # at low load, and 20 ms cost no throughput (bench/bench_client_settings.py).
            "fetch.wait.max.ms": 20,
            "queued.min.messages": 200000,
            **FAST_GROUP_JOIN,
            **ours,
        },
    )


def transactional_producer_config(
    bootstrap_servers: str, user: Mapping[str, str], transactional_id: str
) -> dict[str, Any]:
    return client_config(
        bootstrap_servers,
        user,
        **{
            "transactional.id": transactional_id,
            "enable.idempotence": True,
            # No compression: measured on the embedded broker (bench/bench_client_settings.py),
            # lz4 halves the broker's CPU per record but the clients spend as much more, and
            # on a small machine the stages are the clients.
            "linger.ms": 5,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "transaction.timeout.ms": 60_000,
        },
    )


def plain_producer_config(bootstrap_servers: str, user: Mapping[str, str]) -> dict[str, Any]:
    return client_config(
        bootstrap_servers,
        user,
        **{
            "enable.idempotence": True,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        },
    )
