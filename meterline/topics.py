"""Topic names and creation. Topics are created with explicit configs because
Tansu's DescribeConfigs only returns what was set at creation (DESIGN.md §8)."""

from __future__ import annotations

from typing import Final

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

RAW: Final = "meterline.raw"
REPARTITION: Final = "meterline.usage.repartition"
MEDIATED: Final = "meterline.usage.mediated"
RATED: Final = "meterline.usage.rated"
REJECTED: Final = "meterline.usage.rejected"
CONTRACTS: Final = "meterline.contracts"
PERIODS: Final = "meterline.periods"
STATS: Final = "meterline.stats"

_KEEP_FOREVER = {"retention.ms": "-1", "retention.bytes": "-1"}
COMPACTED = {**_KEEP_FOREVER, "cleanup.policy": "compact"}
LOG = {**_KEEP_FOREVER, "cleanup.policy": "delete"}


def changelog_topic(input_topic: str, stage: str) -> str:
    """The compacted topic holding a stage's state for the partitions of one input topic."""
    return f"{input_topic}.{stage}-changelog"


def pipeline_topics(raw_topics: list[str], partitions: int) -> dict[str, tuple[int, dict[str, str]]]:
    """Every topic the pipeline uses, with its partition count and config."""
    topics: dict[str, tuple[int, dict[str, str]]] = {name: (partitions, LOG) for name in raw_topics}
    for name in (REPARTITION, MEDIATED, RATED, REJECTED):
        topics[name] = (partitions, LOG)
    for name in (CONTRACTS, PERIODS):
        topics[name] = (1, COMPACTED)
    # Progress records: only the latest per stage/partition matters, so compact.
    topics[STATS] = (1, COMPACTED)
    for source in [*raw_topics, REPARTITION]:
        topics[changelog_topic(source, "mediation")] = (partitions, COMPACTED)
    topics[changelog_topic(MEDIATED, "rating")] = (partitions, COMPACTED)
    return topics


def ensure_topics(
    admin: AdminClient, wanted: dict[str, tuple[int, dict[str, str]]], replication_factor: int = 1
) -> None:
    existing = set(admin.list_topics(timeout=10).topics)
    missing = [
        NewTopic(n, p, replication_factor, config=c) for n, (p, c) in wanted.items() if n not in existing
    ]
    if not missing:
        return
    for name, future in admin.create_topics(missing, operation_timeout=10).items():
        try:
            future.result()
        except KafkaException as exc:
            # Another process may have created it between our listing and our request.
            if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc).lower():
                raise RuntimeError(f"cannot create topic {name}: {exc}") from exc
