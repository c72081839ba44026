"""Kafka errors sorted into what a worker does about them (librdkafka's model).

- retriable: the same call again, with backoff (a commit that timed out);
- abortable: abort the transaction, restore state, rewind and replay the batch
  (a delivery that failed, a record the broker refused);
- fenced: another producer took over this transactional id, or the transaction
  outlived `transaction.timeout.ms`; the producer is dead;
- fatal: nothing a retry can fix (authorization, unknown topic, an invalid
  transactional state); the worker reports it on /healthz and exits non-zero.
"""

from __future__ import annotations

from typing import Final

from confluent_kafka import KafkaError, KafkaException

RETRIABLE: Final = "retriable"
ABORTABLE: Final = "abortable"
FENCED: Final = "fenced"
FATAL: Final = "fatal"

FENCED_CODES: Final = frozenset(
    {
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.TRANSACTION_COORDINATOR_FENCED,
    }
)
FATAL_CODES: Final = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.INVALID_TXN_STATE,
        KafkaError._STATE,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
        # auto.offset.reset=error: a stored position the broker says does not exist.
        KafkaError._AUTO_OFFSET_RESET,
        KafkaError.OFFSET_OUT_OF_RANGE,
    }
)


class FatalKafkaError(RuntimeError):
    """The worker cannot go on; `reason` is what /healthz and the last log line say."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OffsetsPastEndError(FatalKafkaError):
    """A stored consumer position lies beyond its topic's end (the topic was recreated)."""


def error_of(exc: KafkaException) -> KafkaError | None:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else None


def classify(error: KafkaError | None) -> str:
    """What to do about an error raised by a transactional producer or a consumer."""
    if error is None:
        return ABORTABLE
    code = error.code()
    if code in FENCED_CODES:
        return FENCED
    if code in FATAL_CODES:
        return FATAL
    if error.fatal():
        # librdkafka wraps a fencing in its own fatal error; its text names it.
        return FENCED if "fenc" in error.str().lower() else FATAL
    if error.txn_requires_abort():
        return ABORTABLE
    if error.retriable():
        return RETRIABLE
    # Not retriable and not marked abortable (a record refused as too large, an invalid
    # argument): the transaction is no good either way, so abort it and replay.
    return ABORTABLE


def describe(error: KafkaError | None) -> str:
    if error is None:
        return "unknown Kafka error"
    return f"{error.name()}: {error.str()}"


# Errors that say the broker did not answer, not that this batch is wrong.
BROKER_TROUBLE_CODES: Final = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    }
)


def broker_trouble(error: KafkaError | None) -> bool:
    return error is not None and error.code() in BROKER_TROUBLE_CODES


def consumer_failure(error: KafkaError, topic: str | None, partition: int | None) -> FatalKafkaError | None:
    """The fatal error a consumer's error message means, or None for one to log and go past."""
    where = f"{topic}[{partition}]"
    if error.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
        return OffsetsPastEndError(
            f"stored position of {where} does not exist on the broker ({describe(error)}): "
            "the topic was recreated or truncated, and reading on would skip records"
        )
    if classify(error) in (FATAL, FENCED) or error.fatal():
        return FatalKafkaError(f"consumer of {where}: {describe(error)}")
    return None
