"""Mediation and rating chained in one transform give what the two stages give apart.

Apart, rating reads mediation's outputs back from the mediated topic; chained, it gets
them in memory, at the raw record's position. For any batch the rated records (bytes,
key, partition), the dead letters, the outcome counts and the state after a restore
from the changelog must be the same.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import date
from decimal import Decimal
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediation.stage import MediationProcessor
from meterline.app.chained import ChainedProcessor, ChainError
from meterline.kernel.catalog import Account, Catalog, Charge, Contract, Meter, Plan, Tier
from meterline.kernel.config import RawTopic, Settings
from meterline.kernel.headers import REASON_HEADER
from meterline.kernel.lineage import LINEAGE_HEADER, parse_lineage
from meterline.kernel.messages import BatchResult, InputRecord, OutputRecord
from meterline.kernel.topics import MEDIATED, RATED, REJECTED
from meterline.runtime.tables import ContractsTable, PeriodsTable
from rating.stage import RatingProcessor
from tests.mediation.test_stage import Contracts, Periods

RAW = "meterline.raw"
PARTITIONS = 3
ACCOUNTS = ("acme", "globex", "initech", "umbrella")
GRADUATED = Charge(
    "calls",
    "api_calls",
    "graduated",
    tiers=(Tier(Decimal(5), Decimal("0.10")), Tier(None, Decimal("0.07"), flat_fee=Decimal(1))),
)


def catalog() -> Catalog:
    plan = Plan("p", "EUR", "half_even", (GRADUATED,))
    return Catalog(
        meters={"api_calls": Meter("api_calls", "call", "sum")},
        plans={"p": plan},
        accounts={
            account: Account(
                account, account, "UTC", (Contract(f"{account}-k", account, "p", date(2020, 1, 1), None),)
            )
            for account in ACCOUNTS
        },
    )


def stages() -> tuple[MediationProcessor, RatingProcessor, Contracts, Periods]:
    contracts, periods = Contracts(catalog()), Periods()
    mediation = MediationProcessor(
        Settings(raw_topics=(RawTopic(RAW, keyed_by_account=True),)),
        cast(ContractsTable, contracts),
        cast(PeriodsTable, periods),
        partitions=PARTITIONS,
    )
    return mediation, RatingProcessor(contracts, periods), contracts, periods


def chained() -> ChainedProcessor:
    mediation, _, contracts, periods = stages()
    chain_rating = RatingProcessor(contracts, periods, rated_partitions=PARTITIONS)
    return ChainedProcessor(mediation, chain_rating, contracts, periods)


# One raw record: an event id (drawn from few, so duplicates happen), an account, a quantity,
# a day of March or April 2026; or a record mediation rejects.
events = st.tuples(
    st.integers(0, 30), st.sampled_from((*ACCOUNTS, "nobody")), st.integers(-1, 9), st.integers(1, 60)
)


def raw_value(event: tuple[int, str, int, int]) -> bytes:
    number, account, quantity, day = event
    month, day_of = (3, day) if day <= 31 else (4, day - 31)
    return json.dumps(
        {
            "event_id": f"e{number}",
            "account_id": account,
            "meter": "api_calls",
            "quantity": quantity,
            "timestamp": f"2026-{month:02d}-{day_of:02d}T10:00:00Z",
        }
    ).encode()


def raw_batch(batch: list[tuple[int, str, int, int]], first_offset: int) -> list[InputRecord]:
    """Records of one raw partition keyed by account, as `meterline run` publishes them."""
    return [
        InputRecord(RAW, 1, first_offset + index, event[1].encode(), raw_value(event), {})
        for index, event in enumerate(batch)
    ]


def apart(mediation: MediationProcessor, rating: RatingProcessor, records: list[InputRecord]) -> BatchResult:
    """The two stages apart: mediation's records read back from the mediated topic by rating."""
    mediated = mediation.process(records)
    at = Counter[int]()
    consumed = []
    for out in mediated.outputs:
        if out.topic == MEDIATED:
            partition = out.partition or 0
            consumed.append(
                InputRecord(MEDIATED, partition, at[partition], out.key, out.value, dict(out.headers or []))
            )
            at[partition] += 1
    rated = rating.process(consumed)
    counts: Counter[str] = Counter()
    for result in (mediated, rated):
        for partition_counts in result.counts.values():
            counts.update(partition_counts)
    outputs = [o for o in mediated.outputs if o.topic != MEDIATED] + rated.outputs
    return BatchResult(outputs, {}, {(RAW, 1): counts})


def rated_of(outputs: list[OutputRecord]) -> list[tuple[bytes | None, bytes | None, int | None]]:
    return sorted((o.value or b"", o.key, o.partition) for o in outputs if o.topic == RATED)


def letters_of(outputs: list[OutputRecord]) -> list[tuple[bytes | None, bytes]]:
    return sorted((o.value, dict(o.headers or [])[REASON_HEADER]) for o in outputs if o.topic == REJECTED)


@settings(max_examples=60)
@given(st.lists(st.lists(events, max_size=25), min_size=1, max_size=4))
def test_chained_gives_exactly_what_the_stages_give_apart(
    batches: list[list[tuple[int, str, int, int]]],
) -> None:
    mediation, rating, _, _ = stages()
    chain = chained()
    offset = 0
    for batch in batches:
        records = raw_batch(batch, offset)
        offset += len(records)
        separate = apart(mediation, rating, records)
        together = chain.process(records)
        assert rated_of(together.outputs) == rated_of(separate.outputs)
        assert letters_of(together.outputs) == letters_of(separate.outputs)
        assert together.counts.get((RAW, 1), Counter()) == separate.counts[(RAW, 1)]
        assert all(o.topic != MEDIATED for o in together.outputs)

    def aggregates(of: RatingProcessor) -> dict[object, Decimal]:
        return {key: value for state in of.state.values() for key, value in state.aggregates.items()}

    assert aggregates(chain.rating) == aggregates(rating)
    assert set(chain.rating.state) <= {(RAW, 1)}  # kept per raw partition


def test_a_restored_chain_carries_on_as_the_one_that_never_stopped() -> None:
    first = [(1, "acme", 3, 2), (2, "acme", 4, 3), (3, "globex", 9, 4)]
    second = [(1, "acme", 3, 2), (4, "acme", 2, 5), (5, "globex", 1, 6)]  # e1 again: a duplicate
    running = chained()
    changelog = running.process(raw_batch(first, 0)).changelog[(RAW, 1)]
    assert {key[:1] for key, _ in changelog} == {b"m", b"r"}
    restored = chained()
    restored.restore((RAW, 1), iter(changelog))
    assert restored.state_entries() == running.state_entries()
    expected, got = running.process(raw_batch(second, 3)), restored.process(raw_batch(second, 3))
    assert rated_of(got.outputs) == rated_of(expected.outputs)
    assert (
        got.counts
        == expected.counts
        == {(RAW, 1): Counter({"events_in": 3, "mediated": 2, "rated": 2, "duplicates": 1})}
    )


def test_rated_records_go_to_their_account_s_partition_with_the_raw_lineage() -> None:
    result = chained().process(raw_batch([(1, account, 1, 1) for account in ACCOUNTS], 40))
    rated = [o for o in result.outputs if o.topic == RATED]
    mediation, _, _, _ = stages()
    mediated = [o for o in mediation.process(raw_batch([(1, a, 1, 1) for a in ACCOUNTS], 40)).outputs]
    assert [o.partition for o in rated] == [o.partition for o in mediated if o.topic == MEDIATED]
    assert [parse_lineage(dict(o.headers or [])[LINEAGE_HEADER]) for o in rated] == [
        (f"{RAW}\x1f1", 40 + index) for index in range(len(ACCOUNTS))
    ]


def test_publish_mediated_keeps_the_mediated_topic_for_downstream_consumers() -> None:
    mediation, _, contracts, periods = stages()
    chain = ChainedProcessor(
        mediation, RatingProcessor(contracts, periods, rated_partitions=3), contracts, periods, True
    )
    result = chain.process(raw_batch([(1, "acme", 1, 1), (2, "globex", 1, 1)], 0))
    assert Counter(o.topic for o in result.outputs) == {MEDIATED: 2, RATED: 2}


def test_only_one_raw_topic_keyed_by_account_can_be_chained() -> None:
    contracts, periods = Contracts(catalog()), Periods()
    for topics in (
        (RawTopic(RAW),),
        (RawTopic(RAW, keyed_by_account=True), RawTopic("b", keyed_by_account=True)),
    ):
        mediation = MediationProcessor(
            Settings(raw_topics=topics), cast(ContractsTable, contracts), cast(PeriodsTable, periods), 3
        )
        with pytest.raises(ChainError, match="exactly one raw topic, keyed by account"):
            ChainedProcessor(mediation, RatingProcessor(contracts, periods), contracts, periods)
