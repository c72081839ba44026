"""Fixtures of the fault suite: the report, a broker per test, and the shared inputs
with their clean reference runs (made once per session, only when a test needs them)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from generator import generate_catalog, generate_events
from meterline.app.publish import InputFile
from tests.faults.compare import reference_run
from tests.faults.harness import EVENTS, KILL_EVENTS, MONTH, StallableBroker
from tests.faults.report import FaultResult, write_report
from tests.integration.harness import table

CALL_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.when == "call":
        item.stash[CALL_REPORT] = report


@pytest.fixture(scope="session")
def fault_results() -> Iterator[list[FaultResult]]:
    results: list[FaultResult] = []
    started = time.monotonic()
    yield results
    if results:
        target = os.environ.get("METERLINE_FAULT_REPORT")
        # Not under pytest's basetemp: concurrent sessions of the same user prune those.
        path = Path(target) if target else Path(tempfile.gettempdir()) / "meterline-faults-REPORT.md"
        write_report(path, results, time.monotonic() - started)
        print(f"\nfault report written to {path}")


@pytest.fixture
def fault(request: pytest.FixtureRequest, fault_results: list[FaultResult]) -> Iterator[FaultResult]:
    """This test's line of the report; the outcome is filled in after the test ran."""
    result = FaultResult(test=request.node.name)
    started = time.monotonic()
    yield result
    result.duration_s = time.monotonic() - started
    report = request.node.stash.get(CALL_REPORT, None)
    if report is None:
        result.outcome = "error (setup)"
    elif report.passed:
        result.outcome = "passed"
    else:
        result.outcome = "FAILED"
        crash = getattr(report.longrepr, "reprcrash", None)
        result.detail = str(crash.message if crash is not None else report.longrepr)[:3000]
    fault_results.append(result)


@pytest.fixture
def stallable_broker() -> Iterator[StallableBroker]:
    broker = StallableBroker()
    with broker:
        yield broker


@dataclass(frozen=True)
class Stream:
    """A generated catalog and event files, with the clean run of them."""

    catalog: Path
    document: dict[str, Any]
    files: list[InputFile]
    reference: Path
    summary: dict[str, int]
    periods: list[str]

    @property
    def events(self) -> int:
        return self.summary["events_in"]


def make_stream(
    folder: Path,
    accounts: int,
    events: int,
    seed: int,
    duplicate_rate: float = 0.05,
    parts: int = 1,
    replay_first: bool = False,
) -> Stream:
    """`events` generated lines in `parts` files (the first one again at the end with
    `replay_first`), and their reference run."""
    folder.mkdir(parents=True, exist_ok=True)
    document = generate_catalog(accounts, seed, MONTH)
    catalog = folder / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(document, sort_keys=False))
    lines = list(generate_events(document, events, seed, MONTH, duplicate_rate=duplicate_rate))
    files = []
    size = -(-len(lines) // parts)
    for number in range(parts):
        path = folder / f"events-{number}.jsonl"
        path.write_bytes(b"".join(line + b"\n" for line in lines[number * size : (number + 1) * size]))
        files.append(InputFile(path, "json"))
    if replay_first:
        files.append(files[0])
    reference = folder / "reference"
    summary = reference_run(catalog, files, reference)
    periods = [p for (p,) in table(reference, "SELECT DISTINCT period FROM invoice_drafts ORDER BY 1")]
    return Stream(catalog, document, files, reference, summary, periods)


@pytest.fixture(scope="session")
def stream_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Stream]:
    """Streams made once per session and shared by the faults that use the same input."""
    made: dict[tuple[Any, ...], Stream] = {}

    def get(name: str, accounts: int, events: int, seed: int, **options: Any) -> Stream:
        key = (name, accounts, events, seed, tuple(sorted(options.items())))
        if key not in made:
            made[key] = make_stream(tmp_path_factory.mktemp(name), accounts, events, seed, **options)
        return made[key]

    return get


@pytest.fixture
def base_stream(stream_factory: Callable[..., Stream]) -> Stream:
    """The stream of the big faults: METERLINE_FAULT_EVENTS events, 5% duplicates, 1% bad."""
    return stream_factory("base", accounts=200, events=EVENTS, seed=2026)


@pytest.fixture
def kill_stream(stream_factory: Callable[..., Stream]) -> Stream:
    """The stream of the SIGKILL fault: the base stream, or METERLINE_FAULT_KILL_EVENTS events."""
    return stream_factory(
        "base" if KILL_EVENTS == EVENTS else "kill", accounts=200, events=KILL_EVENTS, seed=2026
    )


@pytest.fixture
def fast_stream(stream_factory: Callable[..., Stream]) -> Stream:
    """A small stream for the fast versions that `make test` runs."""
    return stream_factory("fast", accounts=30, events=3000, seed=7)
