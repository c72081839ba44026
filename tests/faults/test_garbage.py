"""Fault 5: hostile records of every input format mixed into a valid stream.

No stage crashes (the worker processes started first are the ones still running at
the end), every hostile record is in the DLQ with a reason it may have, the DLQ copy
is the original bytes (or their prefix, marked `meterline.truncated`), the counts
reconcile by reason, and the invoices equal the clean run of the valid stream alone.
The fast version runs in `make test`; the full one (METERLINE_FAULT_GARBAGE hostile
records, default 100,000) in `make faults`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from meterline.app.publish import InputFile
from meterline.kernel.reasons import INTERNAL_ERROR, REASONS
from meterline.kernel.topics import RAW, REJECTED
from tests.faults.compare import compare_outputs, fail, reconciliation_problems
from tests.faults.conftest import Stream
from tests.faults.garbage import FORMATS, Hostile
from tests.faults.harness import GARBAGE, MONTH, FaultPipeline, StallableBroker, fault_seed
from tests.faults.mutations import hostile_records
from tests.faults.report import FaultResult
from tests.integration.harness import read_topic, table

TRUNCATED = "meterline.truncated"
Position = tuple[str, int, int]


def mixed_inputs(stream: Stream, hostile: list[Hostile], folder: Path, rounds: int) -> list[InputFile]:
    """The valid files cut into `rounds` pieces, each followed by a piece of hostile records
    of every format."""
    folder.mkdir(parents=True, exist_ok=True)
    valid = [line for item in stream.files for line in item.path.read_bytes().splitlines()]
    inputs = []
    for number in range(rounds):
        piece = folder / f"valid-{number}.jsonl"
        piece.write_bytes(b"".join(line + b"\n" for line in valid[number::rounds]))
        inputs.append(InputFile(piece, "json"))
        for fmt in FORMATS:
            records = [h.data for h in hostile[number::rounds] if h.fmt == fmt]
            path = folder / f"hostile-{fmt}-{number}.txt"
            path.write_bytes(b"".join(data + b"\n" for data in records))
            inputs.append(InputFile(path, fmt))
    return inputs


def hostile_positions(
    messages: list[Any], hostile: list[Hostile]
) -> tuple[dict[Position, Hostile], list[str]]:
    """Where each hostile record landed on the raw topic (a publisher-cut one by its prefix)."""
    by_data = {h.data: h for h in hostile}
    by_length: dict[int, list[Hostile]] = {}
    for h in hostile:
        by_length.setdefault(len(h.data), []).append(h)
    found: dict[Position, Hostile] = {}
    for message in messages:
        value = message.value() or b""
        cut = dict(message.headers() or []).get(TRUNCATED)
        if cut is not None:
            match = next((h for h in by_length.get(int(cut), []) if h.data.startswith(value)), None)
        else:
            match = by_data.get(value)
        if match is not None:
            found[(message.topic(), message.partition(), message.offset())] = match
    published = Counter(h.data for h in found.values())
    wanted = Counter(h.data for h in hostile)
    problems = []
    if published != wanted:
        lost = wanted - published
        problems.append(
            f"{sum(lost.values())} hostile records are not on the raw topic as published, e.g. "
            f"{[data[:80] for data in list(lost)[:3]]}"
        )
    return found, problems


def dlq_by_origin(messages: list[Any]) -> tuple[dict[Position, tuple[dict[str, bytes], bytes]], list[str]]:
    found: dict[Position, tuple[dict[str, bytes], bytes]] = {}
    problems = []
    for message in messages:
        headers = dict(message.headers() or [])
        try:
            origin = (
                headers["meterline.source.topic"].decode(),
                int(headers["meterline.source.partition"]),
                int(headers["meterline.source.offset"]),
            )
        except (KeyError, ValueError):
            problems.append(f"a DLQ record without its source headers: {sorted(headers)}")
            continue
        found[origin] = (headers, message.value() or b"")
    return found, problems[:5]


def check_dead_letters(
    found: dict[Position, Hostile],
    dlq: dict[Position, tuple[dict[str, bytes], bytes]],
    raw: dict[Position, bytes],
) -> tuple[Counter[str], list[str]]:
    """Every hostile record in the DLQ with a reason it may have and its original bytes."""
    by_reason: Counter[str] = Counter()
    missing: list[Hostile] = []
    wrong: dict[tuple[str, str, str], tuple[int, str]] = {}
    bad_copies: list[str] = []
    for position, h in found.items():
        entry = dlq.get(position)
        if entry is None:
            missing.append(h)
            continue
        headers, value = entry
        reason = headers.get("meterline.reason", b"").decode(errors="replace")
        by_reason[reason] += 1
        if reason not in REASONS or (h.expected is not None and reason not in h.expected):
            count, example = wrong.get((h.kind, h.fmt, reason), (0, ""))
            detail = headers.get("meterline.detail", b"").decode(errors="replace")
            wrong[(h.kind, h.fmt, reason)] = (count + 1, example or f"{h.data[:100]!r} -> {detail[:200]}")
        original = raw[position]
        if value != original and not (TRUNCATED in headers and original.startswith(value)):
            bad_copies.append(f"{h.kind}/{h.fmt}: DLQ holds {value[:60]!r}, raw {original[:60]!r}")
    problems = []
    if missing:
        kinds = Counter((h.kind, h.fmt) for h in missing)
        problems.append(
            f"{len(missing)} hostile records are not in the DLQ, by kind: {dict(kinds.most_common(8))}; "
            f"first: {missing[0].data[:120]!r}"
        )
    for (kind, fmt, reason), (count, example) in sorted(wrong.items()):
        problems.append(f"{count} {kind}/{fmt} records rejected as {reason!r}, e.g. {example}")
    if bad_copies:
        problems.append(f"{len(bad_copies)} DLQ copies differ from the original: {bad_copies[:3]}")
    return by_reason, problems


def run_garbage(
    stream: Stream, broker: StallableBroker, folder: Path, count: int, seed: int, fault: FaultResult
) -> None:
    fault.fault, fault.seed, fault.runs = "5. garbage", seed, 2
    hostile = hostile_records(stream.document, count, seed, MONTH)
    inputs = mixed_inputs(stream, hostile, folder / "inputs", rounds=8)
    out = folder / "out"
    pipeline = FaultPipeline(broker, out)
    try:
        pipeline.publish_catalog(stream.catalog)
        pipeline.start()
        pids = pipeline.pids()
        fault.events = pipeline.publish(inputs)
        totals = pipeline.wait_drained()
        raw_messages = read_topic(pipeline.settings.bootstrap_servers, RAW)
        dlq_messages = read_topic(pipeline.settings.bootstrap_servers, REJECTED)
        pipeline.close_periods(stream.periods)
        restarted = {key for key, pid in pipeline.pids().items() if pids.get(key) != pid}
    finally:
        pipeline.stop()
    fault.injections = [f"{count:,} hostile records in {len(inputs) - 8} files between 8 valid pieces"]
    problems = [f"worker processes were replaced: {sorted(restarted)}"] if restarted else []
    found, lost = hostile_positions(raw_messages, hostile)
    raw = {(m.topic(), m.partition(), m.offset()): m.value() or b"" for m in raw_messages}
    dlq, dlq_problems = dlq_by_origin(dlq_messages)
    by_reason, dead_letter_problems = check_dead_letters(found, dlq, raw)
    problems += lost + dlq_problems + dead_letter_problems
    billed = table(
        out, "SELECT event_id, account_id, meter, quantity FROM rated_usage WHERE event_id LIKE 'hostile-%'"
    )
    if billed:
        problems.append(f"{len(billed)} hostile records were rated, e.g. {sorted(billed)[:3]}")
    kinds = Counter(h.kind for h in hostile)
    fault.notes += [
        f"hostile records by kind: {dict(sorted(kinds.items()))}",
        f"hostile records by DLQ reason: {dict(sorted(by_reason.items()))}",
        f"{by_reason.get(INTERNAL_ERROR, 0)} rejected as internal_error",
    ]
    expected = dict(stream.summary)
    expected["events_in"] += count
    expected["rejected"] += count
    for reason, n in by_reason.items():
        expected[f"rejected.{reason}"] = expected.get(f"rejected.{reason}", 0) + n
    problems += reconciliation_problems(out, totals, fault.events, expected)
    problems += compare_outputs(out, stream.reference)
    fail("fault 5 (garbage)", seed, problems)


@pytest.mark.integration
@pytest.mark.faults
@pytest.mark.slow  # make test-slow; kept out of make test's 10 minutes
def test_garbage_fast(
    fast_stream: Stream, stallable_broker: StallableBroker, tmp_path: Path, fault: FaultResult
) -> None:
    run_garbage(fast_stream, stallable_broker, tmp_path, 2_000, fault_seed(5), fault)


@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.integration
def test_garbage(
    base_stream: Stream, stallable_broker: StallableBroker, tmp_path: Path, fault: FaultResult
) -> None:
    run_garbage(base_stream, stallable_broker, tmp_path, GARBAGE, fault_seed(55), fault)
