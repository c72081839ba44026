"""Names of an installation's topics, groups and transactional ids, with and without a
topic prefix: without one, the names of the constants; with one, every name prefixed."""

from __future__ import annotations

import pytest

from meterline.kernel.topics import (
    CONTRACTS,
    MEDIATED,
    PERIODS,
    RATED,
    RAW,
    REJECTED,
    REPARTITION,
    STATS,
    Topics,
    changelog_topic,
    check_prefix,
    pipeline_topics,
)

CONSTANTS = (RAW, REPARTITION, MEDIATED, RATED, REJECTED, CONTRACTS, PERIODS, STATS)


def named(topics: Topics) -> tuple[str, ...]:
    return (
        topics.raw, topics.repartition, topics.mediated, topics.rated, topics.rejected, topics.contracts,
        topics.periods, topics.stats,
    )  # fmt: skip


def test_no_prefix_keeps_todays_names() -> None:
    topics = Topics()
    assert named(topics) == CONSTANTS
    raw = ["meterline.raw", "pbx.cdr"]
    assert topics.pipeline(raw, 3) == pipeline_topics(raw, 3)
    assert topics.group("meterline-mediation") == "meterline-mediation"


def test_a_prefix_names_every_topic_group_and_transactional_id_of_the_installation() -> None:
    blue = Topics("blue.")
    assert named(blue) == tuple("blue." + name for name in CONSTANTS)
    assert blue.name("pbx.cdr") == "blue.pbx.cdr"
    assert blue.group("meterline-rating-0") == "blue.meterline-rating-0"
    created = blue.pipeline(["meterline.raw", "pbx.cdr"], 3)
    assert all(name.startswith("blue.") for name in created)
    # The runtime names a changelog after its (prefixed) input: those are the ones created.
    for source, stage in [(blue.raw, "mediation"), (blue.name("pbx.cdr"), "mediation"),
                          (blue.repartition, "mediation"), (blue.mediated, "rating")]:  # fmt: skip
        assert changelog_topic(source, stage) in created
    # Two installations share no topic.
    assert not created.keys() & Topics("green.").pipeline(["meterline.raw", "pbx.cdr"], 3).keys()
    assert not created.keys() & pipeline_topics(["meterline.raw", "pbx.cdr"], 3).keys()


@pytest.mark.parametrize("prefix", ["a b.", "a/b", "ü.", "x" * 101, "tenant:"])
def test_a_prefix_kafka_cannot_name_topics_with_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="may only hold letters, digits"):
        check_prefix(prefix)
