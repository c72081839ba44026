"""Mediation and rating chained in one process, on the same raw partition.

Like a Flink operator chain or a Kafka Streams sub-topology: where no repartition
separates two stages they run as one task. A raw topic keyed by account (as `meterline
run` publishes it) needs no repartition, so one worker consumes a raw partition,
mediates a batch, rates what it mediated and commits it all in one transaction:
rated records, DLQ records, both stages' changelog entries and the raw offsets. No
mediated record is produced and consumed again (unless `publish_mediated` asks for
the mediated topic, for downstream consumers).

Both stages keep their state per raw partition, in one changelog per raw topic (stage
`chained`): a key starts with `m` for mediation's entries and `r` for rating's. One raw
topic only: an account's running aggregates must live in one partition's state, which
two raw topics would split.

Rating takes each mediated event as mediation built it (no decode) at the raw record's
position, so its lineage header names the raw record, and a rated record goes to its
account's partition as it would from the separate stages.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Final

from mediation.stage import MediationProcessor
from meterline.kernel.headers import RAW_HEADER
from meterline.kernel.messages import TP, BatchResult, InputRecord, OutputRecord
from meterline.kernel.records import UsageEvent
from meterline.kernel.views import CatalogView, PeriodsView
from rating.stage import RatingProcessor

STAGE: Final = "chained"
MEDIATION_KEY: Final = b"m"
RATING_KEY: Final = b"r"


class ChainError(ValueError):
    """The raw topics cannot be chained (a worker says so and exits)."""


class ChainedProcessor:
    stage = STAGE

    def __init__(
        self,
        mediation: MediationProcessor,
        rating: RatingProcessor,
        contracts: CatalogView,
        periods: PeriodsView,
        publish_mediated: bool = False,
    ) -> None:
        raw = list(mediation.raw_topics.values())
        if len(raw) != 1 or not raw[0].keyed_by_account:
            raise ChainError(
                "chaining needs exactly one raw topic, keyed by account (keyed_by_account = true); "
                "run mediation and rating as separate stages otherwise"
            )
        self.mediation = mediation
        self.rating = rating
        self.contracts = contracts
        self.periods = periods
        self.publish_mediated = publish_mediated
        self.mediated_topic = mediation.mediated_topic
        mediation.keep_events = True  # rating takes the events as mediation built them

    # -- state: both stages' entries in one changelog, told apart by a key prefix ------------

    def restore(self, tp: TP, entries: Iterator[tuple[bytes, bytes | None]]) -> None:
        mediation: list[tuple[bytes, bytes | None]] = []
        rating: list[tuple[bytes, bytes | None]] = []
        for key, value in entries:
            (mediation if key[:1] == MEDIATION_KEY else rating).append((key[1:], value))
        self.mediation.restore(tp, iter(mediation))
        self.rating.restore(tp, iter(rating))

    def release(self, tp: TP) -> None:
        self.mediation.release(tp)
        self.rating.release(tp)

    def idle(self) -> None:
        # The stages share the tables: poll once, then tell both what changed.
        catalog_changed = self.contracts.poll()
        periods_changed = self.periods.poll()
        self.mediation.refresh(catalog_changed, periods_changed)
        self.rating.refresh(periods_changed)

    def state_entries(self) -> int:
        return self.mediation.state_entries() + self.rating.state_entries()

    # -- one batch ---------------------------------------------------------------------------

    def process(self, records: Sequence[InputRecord]) -> BatchResult:
        mediated = self.mediation.process(records)
        outputs: list[OutputRecord] = []
        handed: list[InputRecord] = []
        events: list[UsageEvent] = []
        emitted = iter(self.mediation.mediated_events)
        for out in mediated.outputs:
            if out.topic != self.mediated_topic:
                outputs.append(out)  # DLQ records
                continue
            if self.publish_mediated:
                outputs.append(out)
            raw, event = next(emitted)
            # At the raw record's position, so rating's state, counts and lineage are the raw
            # partition's; its original bytes for a DLQ copy, should rating reject it.
            handed.append(
                InputRecord(
                    raw.topic, raw.partition, raw.offset, out.key, out.value, {RAW_HEADER: raw.value or b""}
                )
            )
            events.append(event)
        rated = self.rating.process_mediated(handed, events)
        outputs.extend(rated.outputs)
        counts: dict[TP, Counter[str]] = mediated.counts
        for tp, rating_counts in rated.counts.items():
            counts.setdefault(tp, Counter()).update(rating_counts)
        changelog: dict[TP, list[tuple[bytes, bytes | None]]] = {}
        for prefix, result in ((MEDIATION_KEY, mediated), (RATING_KEY, rated)):
            for tp, entries in result.changelog.items():
                changelog.setdefault(tp, []).extend((prefix + key, value) for key, value in entries)
        return BatchResult(outputs, changelog, counts, mediated.newest_event_time, rated.amounts)
