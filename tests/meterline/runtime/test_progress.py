"""When is a run drained? Only when every published record has reached its end."""

from __future__ import annotations

from meterline.runtime.progress import Totals, drained, progress_record, totals_of


def totals(**overrides: int) -> Totals:
    base = dict(
        events_in=100,
        raw_outcomes=100,
        forwarded=90,
        keyed_consumed=90,
        mediated=80,
        duplicates=5,
        rated=78,
        rating_consumed=80,
        stored=78,
        consolidation_consumed=78,
    )
    base.update(overrides)
    return Totals(rejected={"malformed": 10, "unknown_meter": 5, "no_matching_charge": 2}, **base)


def test_a_finished_pipeline_is_drained() -> None:
    assert drained(totals(), published=100)


def test_each_stage_still_working_holds_the_run() -> None:
    assert not drained(totals(events_in=99), published=100)  # mediation has not read everything
    assert not drained(totals(raw_outcomes=60), published=100)  # read, not yet finished (keyed in place)
    assert not drained(totals(keyed_consumed=89), published=100)  # repartitioned records pending
    assert not drained(totals(rating_consumed=79), published=100)
    assert not drained(totals(consolidation_consumed=77), published=100)


def test_progress_of_a_raw_topic_deduplicated_in_place_counts() -> None:
    # No repartition hop: mediation's outcomes are all on the raw partitions.
    assert drained(totals(forwarded=0, keyed_consumed=0), published=100)
    assert not drained(
        totals(
            forwarded=0,
            keyed_consumed=0,
            raw_outcomes=40,
            mediated=30,
            rating_consumed=30,
            rated=30,
            consolidation_consumed=30,
        ),
        published=100,
    )


def test_only_progress_records_count() -> None:
    good = b'{"stage": "rating", "topic": "t", "partition": 0, "through": 4, "counts": {"rated": 5}}'
    assert progress_record(good) == {
        "stage": "rating", "topic": "t", "partition": 0, "through": 4, "counts": {"rated": 5}
    }  # fmt: skip
    for bad in (None, b"", b"{", b"[]", b'{"stage": "rating"}', good.replace(b"5}", b'"5"}')):
        assert progress_record(bad) is None, bad


def progress(stage: str, topic: str, **counts: int) -> dict[str, object]:
    return {"stage": stage, "topic": topic, "partition": 0, "through": 99, "counts": counts}


def test_a_chained_worker_settles_every_outcome_of_what_it_counted_in() -> None:
    """Mediation and rating chained: one progress record per raw partition holds both stages'
    outcomes, and the run is drained once consolidation has stored what was rated."""
    chained = progress(
        "chained", "meterline.raw", events_in=100, mediated=85, duplicates=5, rated=83,
        **{"rejected.malformed": 10, "rejected.no_matching_charge": 2},
    )  # fmt: skip
    stored = progress("consolidation", "meterline.usage.rated", stored=83)
    found = totals_of([chained, stored], ["meterline.raw"])
    assert (found.events_in, found.raw_outcomes, found.mediated, found.rated) == (100, 100, 85, 83)
    assert found.rating_consumed == 85  # each mediated event was rated or rejected in the same batch
    assert found.rejected == {"malformed": 10, "no_matching_charge": 2}
    assert found.events_in == found.rated + found.duplicates + found.rejected_total
    assert drained(found, published=100)
    assert not drained(totals_of([chained], ["meterline.raw"]), published=100)  # not yet stored
