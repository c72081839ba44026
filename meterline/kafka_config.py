"""librdkafka client settings in one place.

Group-join timings follow DESIGN.md §8 (joins take ~23 s on Tansu under the
defaults, ~3.6 s with these). User properties from `[kafka]` win over ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FAST_GROUP_JOIN = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}


def client_config(bootstrap_servers: str, user: Mapping[str, str], **ours: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"bootstrap.servers": bootstrap_servers, "log_level": 3}
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
            "fetch.wait.max.ms": 50,
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
