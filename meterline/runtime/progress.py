"""Pipeline progress from the `meterline.stats` topic.

Each stage publishes, per input partition, its cumulative outcome counts and the
input offset they run through. Later records supersede earlier ones (the highest
`through` wins), so replays and repeated records never double count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from meterline.kernel.topics import STATS
from meterline.runtime.kafka_config import consumer_config

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class Totals:
    events_in: int
    raw_outcomes: int  # raw records mediation is done with: forwarded, rejected, deduplicated in place
    forwarded: int
    keyed_consumed: int
    mediated: int
    duplicates: int
    rated: int
    rating_consumed: int
    stored: int
    consolidation_consumed: int
    rejected: Mapping[str, int]

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


def progress_record(value: bytes | None) -> dict[str, Any] | None:
    """A stage's progress record (see meterline.runtime.stage_runner), or None for anything else."""
    try:
        record = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    counts = record.get("counts")
    if not (
        isinstance(record.get("stage"), str)
        and isinstance(record.get("topic"), str)
        and isinstance(record.get("through"), int)
        and isinstance(counts, dict)
        and all(isinstance(v, int) for v in counts.values())
    ):
        return None
    return record


class StatsReader:
    """Reads an installation's stats topic (`Settings.topics.stats`); assigned, never subscribed,
    so `group_id` only names the reader."""

    def __init__(
        self,
        bootstrap_servers: str,
        kafka: Mapping[str, str],
        topic: str = STATS,
        group_id: str = "meterline-progress",
    ) -> None:
        self._latest: dict[bytes, dict[str, Any]] = {}
        self._topic = topic
        self._consumer = Consumer(consumer_config(bootstrap_servers, kafka, group_id))
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])

    def poll(self, timeout: float = 0.2) -> None:
        for message in self._consumer.consume(100000, timeout):
            key = message.key()
            if message.error() is not None or key is None:
                continue
            record = progress_record(message.value())
            if record is None:  # not a stage's progress record: it cannot count
                log.warning("stats_record_skipped", topic=self._topic, offset=message.offset())
                continue
            current = self._latest.get(key)
            if current is None or record["through"] >= current["through"]:
                self._latest[key] = record

    def totals(self, raw_topics: list[str]) -> Totals:
        return totals_of(self._latest.values(), raw_topics)

    def close(self) -> None:
        self._consumer.close()


def totals_of(records: Iterable[Mapping[str, Any]], raw_topics: Collection[str]) -> Totals:
    """Where the pipeline stands, from the latest progress record of every stage and partition."""
    by: dict[str, Counter[str]] = {
        "raw": Counter(),
        "keyed": Counter(),
        "rating": Counter(),
        "chained": Counter(),
        "consolidation": Counter(),
    }
    for record in records:
        stage, topic = record["stage"], record["topic"]
        part = (
            "raw"
            if stage == "mediation" and topic in raw_topics
            else ("keyed" if stage == "mediation" else stage)
        )
        by.setdefault(part, Counter()).update(record["counts"])
    rejected: Counter[str] = Counter()
    for counts in by.values():
        for name, value in counts.items():
            if name.startswith("rejected."):
                rejected[name.removeprefix("rejected.")] += value

    def consumed(c: Counter[str], *outcomes: str) -> int:
        return sum(c[o] for o in outcomes) + sum(v for k, v in c.items() if k.startswith("rejected."))

    raw, keyed, rating, cons = by["raw"], by["keyed"], by["rating"], by["consolidation"]
    # A chained worker settles each raw record's every outcome (mediation's and rating's)
    # in the transaction that moves its offset: all it counted in, it is done with.
    chained = by["chained"]
    return Totals(
        events_in=raw["events_in"] + chained["events_in"],
        raw_outcomes=consumed(raw, "forwarded", "mediated", "duplicates") + chained["events_in"],
        forwarded=raw["forwarded"],
        keyed_consumed=consumed(keyed, "duplicates", "mediated"),
        # A raw topic keyed by account is deduplicated in place: its outcomes count too.
        mediated=keyed["mediated"] + raw["mediated"] + chained["mediated"],
        duplicates=keyed["duplicates"] + raw["duplicates"] + chained["duplicates"],
        rated=rating["rated"] + chained["rated"],
        rating_consumed=consumed(rating, "rated") + chained["mediated"],
        stored=cons["stored"],
        consolidation_consumed=consumed(cons, "stored"),
        rejected=dict(rejected),
    )


def drained(totals: Totals, published: int) -> bool:
    """Every published record has reached its end: rejected, duplicate, or stored."""
    return (
        totals.events_in >= published
        and totals.raw_outcomes >= totals.events_in
        and totals.keyed_consumed >= totals.forwarded
        and totals.rating_consumed >= totals.mediated
        and totals.consolidation_consumed >= totals.rated
    )
