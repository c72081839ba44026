"""Topic names and configs (creation: meterline.runtime.topic_admin).

The constants are the names of an installation without `topic_prefix`. With one (like
Kafka Streams' application.id, so that two installations share a cluster), every topic
of the installation, its raw topics included, and its consumer groups and transactional
ids, are named `<prefix><name>`: `Topics(prefix)` (`Settings.topics`) gives them.
"""

from __future__ import annotations

import re
from typing import Final

RAW: Final = "meterline.raw"
REPARTITION: Final = "meterline.usage.repartition"
MEDIATED: Final = "meterline.usage.mediated"
RATED: Final = "meterline.usage.rated"
REJECTED: Final = "meterline.usage.rejected"
CONTRACTS: Final = "meterline.contracts"
PERIODS: Final = "meterline.periods"
STATS: Final = "meterline.stats"
# `meterline replay`'s markers, one per replayed DLQ record (key DLQ_TOPIC/PARTITION/OFFSET).
REPLAYS: Final = "meterline.replays"

# Kafka's legal topic characters; a name is at most 249 of them, so the prefix stays short.
_PREFIX_TEXT: Final = re.compile(r"[A-Za-z0-9._-]{0,100}")


def check_prefix(prefix: str) -> str:
    """`prefix` if it can start topic names; ValueError saying why otherwise."""
    if _PREFIX_TEXT.fullmatch(prefix) is None:
        raise ValueError(f"{prefix!r} may only hold letters, digits, '.', '_' and '-' (at most 100)")
    return prefix


class Topics:
    """The topic names, consumer group ids and transactional ids of one installation."""

    __slots__ = (
        "contracts", "mediated", "periods", "prefix", "rated", "raw", "rejected", "repartition", "replays",
        "stats",
    )  # fmt: skip

    def __init__(self, prefix: str = "") -> None:
        self.prefix: Final = check_prefix(prefix)
        self.raw: Final = prefix + RAW
        self.repartition: Final = prefix + REPARTITION
        self.mediated: Final = prefix + MEDIATED
        self.rated: Final = prefix + RATED
        self.rejected: Final = prefix + REJECTED
        self.contracts: Final = prefix + CONTRACTS
        self.periods: Final = prefix + PERIODS
        self.stats: Final = prefix + STATS
        self.replays: Final = prefix + REPLAYS

    def name(self, topic: str) -> str:
        """A topic of this installation; for raw topics, the name the settings give."""
        return self.prefix + topic

    def group(self, group_id: str) -> str:
        """A consumer group id, or a transactional id, of this installation."""
        return self.prefix + group_id

    def pipeline(self, raw_topics: list[str], partitions: int) -> dict[str, tuple[int, dict[str, str]]]:
        """pipeline_topics, every name prefixed (changelogs follow their prefixed input)."""
        return {self.prefix + name: spec for name, spec in pipeline_topics(raw_topics, partitions).items()}


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
    # Replay markers: the latest per DLQ record (a tombstone un-marks it).
    topics[REPLAYS] = (1, COMPACTED)
    for source in [*raw_topics, REPARTITION]:
        topics[changelog_topic(source, "mediation")] = (partitions, COMPACTED)
    topics[changelog_topic(MEDIATED, "rating")] = (partitions, COMPACTED)
    for source in raw_topics:  # mediation and rating chained in one worker
        topics[changelog_topic(source, "chained")] = (partitions, COMPACTED)
    return topics
