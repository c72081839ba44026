"""Kafka clients for the user's commands: quiet, bounded, and honest about failure.

A command prints one line when it fails. librdkafka's own log lines (hundreds
while a broker is unreachable) and error callbacks are kept here instead of
reaching the terminal, and a broker that does not answer is one
:class:`KafkaUnavailable` within a bounded time.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from meterline.kernel.command_errors import CommandFailed
from meterline.kernel.config import Settings
from meterline.runtime.kafka_config import client_config, plain_producer_config, transactional_producer_config

# How long a command waits for a broker to answer before it gives up.
CONNECT_TIMEOUT_S: Final = 10.0

_LIBRDKAFKA_LOG: Final = logging.getLogger("meterline.librdkafka.command")
_LIBRDKAFKA_LOG.propagate = False
_LIBRDKAFKA_LOG.addHandler(logging.NullHandler())


class PublishError(CommandFailed):
    """A command could not do what it was asked; `str()` is the one line to show."""


class KafkaUnavailable(PublishError):
    """No broker answered within the connect timeout."""


class DeliveryError(PublishError):
    """Some produced records were not acknowledged by the broker."""


class ClientErrors:
    """librdkafka's error callbacks, kept so a failure can say why."""

    def __init__(self) -> None:
        self.last: KafkaError | None = None

    def __call__(self, error: KafkaError) -> None:
        self.last = error

    def config(self) -> dict[str, Any]:
        return {"error_cb": self, "logger": _LIBRDKAFKA_LOG}


def quiet(config: dict[str, Any], errors: ClientErrors) -> dict[str, Any]:
    """A client config whose errors and logs reach `errors`, not the terminal."""
    return {**config, **errors.config()}


def check_reachable(settings: Settings, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise KafkaUnavailable unless a broker answers a metadata request within `timeout`."""
    errors = ClientErrors()
    admin = AdminClient(quiet(client_config(settings.bootstrap_servers, settings.kafka), errors))
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"cannot reach Kafka at {settings.bootstrap_servers} within {timeout:.0f}s"
        ) from exc


def plain_producer(
    settings: Settings, errors: ClientErrors, failures: list[KafkaError], **ours: Any
) -> Producer:
    """A quiet idempotent producer without transactions; `ours` under the user's `[kafka]`.

    Each failed delivery's error is appended to `failures`. Only failures are reported:
    a Python callback per delivered record costs as much as producing it.
    """

    def failed(error: KafkaError | None, _: Message | None) -> None:
        if error is not None:
            failures.append(error)

    config = {**plain_producer_config(settings.bootstrap_servers, settings.kafka), **ours, **settings.kafka}
    return Producer(quiet({**config, "on_delivery": failed, "delivery.report.only.error": True}, errors))


def transactional_producer(settings: Settings, errors: ClientErrors, name: str) -> Producer:
    """A quiet transactional producer; its transactional id is `name`, per instance and topic prefix."""
    transactional_id = settings.topics.group(f"{name}-{settings.instance_id}")
    return Producer(
        quiet(
            transactional_producer_config(settings.bootstrap_servers, settings.kafka, transactional_id),
            errors,
        )
    )
