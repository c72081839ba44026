"""`meterline replay` on the real embedded broker, once for each reason a catalog fix cures:
events are rejected with that reason, a corrected catalog is published, the replay
rates them, the invoice equals that of a run where the catalog was right from the
start, and replaying again changes nothing (skipped as replayed, or, when forced, only
duplicates). rejected_events follows the replay markers: while the workers run, its
export shows the replayed records as no longer waiting."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from consolidation.rejected import parquet_path
from meterline.app.cli import main
from meterline.app.publish import publish_catalog, publish_close
from meterline.runtime.broker import EmbeddedBroker
from tests.integration.harness import LivePipeline, meterline_run, table

pytestmark = pytest.mark.integration

GOOD_CATALOG = Path(__file__).parent.parent / "data" / "flat" / "catalog.yaml"
PERIOD = "2026-09"


def _event(event_id: str, account: str, meter: str, quantity: int, day: int, **attributes: str) -> str:
    record: dict[str, Any] = {
        "event_id": event_id,
        "account_id": account,
        "meter": meter,
        "quantity": quantity,
        "timestamp": f"2026-09-{day:02d}T10:00:00Z",
    }
    if attributes:
        record["attributes"] = attributes
    return json.dumps(record)


EVENTS = [
    _event("a-1", "alpha", "api_calls", 1000, 5),
    _event("a-2", "alpha", "api_calls", 250, 10),
    _event("s-1", "alpha", "storage", 12, 6, region="eu"),
    _event("s-2", "alpha", "storage", 3, 7, region="eu"),
    _event("b-1", "beta", "api_calls", 400, 5),
    _event("b-2", "beta", "api_calls", 50, 20),
]


def _without_storage_meter(doc: dict[str, Any]) -> None:
    doc["meters"] = [m for m in doc["meters"] if m["code"] != "storage"]
    for plan in doc["plans"]:
        plan["charges"] = [c for c in plan["charges"] if c["meter"] != "storage"]


def _without_beta(doc: dict[str, Any]) -> None:
    doc["accounts"] = [a for a in doc["accounts"] if a["id"] != "beta"]


def _beta_starts_late(doc: dict[str, Any]) -> None:
    beta = next(a for a in doc["accounts"] if a["id"] == "beta")
    beta["contracts"][0]["start"] = "2026-09-06"  # b-1 (Sep 5) falls before it


def _storage_billed_in_us_only(doc: dict[str, Any]) -> None:
    for plan in doc["plans"]:
        for charge in plan["charges"]:
            if charge["meter"] == "storage":
                charge["filters"] = {"attributes": {"region": ["us"]}}


# reason -> (how the catalog was wrong, how many events that rejects, accounts of those)
CASES: dict[str, tuple[Callable[[dict[str, Any]], None], int, set[str]]] = {
    "unknown_meter": (_without_storage_meter, 2, {"alpha"}),
    "unknown_account": (_without_beta, 2, {"beta"}),
    "no_contract_in_effect": (_beta_starts_late, 1, {"beta"}),
    "no_matching_charge": (_storage_billed_in_us_only, 2, {"alpha"}),
}

DRAFTS = """SELECT account_id, period, currency, subtotal, discount, tax, total, status, event_count
            FROM invoice_drafts ORDER BY ALL"""
LINES = """SELECT account_id, period, line_no, kind, charge_id, description, quantity, unit, unit_price,
                  amount, currency FROM invoice_lines ORDER BY ALL"""
TOTALS = "SELECT * FROM usage_totals ORDER BY ALL"


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replay-events") / "events.jsonl"
    path.write_text("\n".join(EVENTS) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, events_file: Path) -> dict[str, list[Any]]:
    """The invoices of a run where the catalog was right from the start."""
    out = tmp_path_factory.mktemp("replay-reference") / "out"
    completed = meterline_run(
        GOOD_CATALOG, f"json:{events_file}", out, "--close-all", partitions=2, timeout=300
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "rejected: 0" in completed.stdout
    found = {"drafts": table(out, DRAFTS), "lines": table(out, LINES), "totals": table(out, TOTALS)}
    assert all(found.values()) and {row[7] for row in found["drafts"]} == {"final"}
    return found


def _replay(capsys: pytest.CaptureFixture[str], broker: EmbeddedBroker, *options: str) -> dict[str, str]:
    capsys.readouterr()
    code = main(["replay", "--bootstrap-servers", broker.bootstrap_servers, *options])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return dict(line.split(": ", 1) for line in captured.out.splitlines() if ": " in line)


def _wait_for(path: Path, pipeline: LivePipeline, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        for stage, process in pipeline.workers.processes.items():
            assert process.poll() is None, f"{stage} worker died with {process.returncode}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)  # polling a file the consolidator writes; no event to wait on


def _until_waiting(out: Path, reason: str, count: int, pipeline: LivePipeline, timeout: float = 120) -> None:
    """Until the running consolidator's export of rejected_events shows `count` records of
    `reason` waiting (not replayed): billing.duckdb is the writer's alone meanwhile."""
    exported = parquet_path(out)
    query = f"SELECT count(*) FROM read_parquet('{exported}') WHERE NOT replayed AND reason = ?"
    deadline = time.monotonic() + timeout
    found = None
    while True:
        if exported.exists():
            found = duckdb.execute(query, [reason]).fetchone()
            if found == (count,):
                return
        for stage, process in pipeline.workers.processes.items():
            assert process.poll() is None, f"{stage} worker died with {process.returncode}"
        assert time.monotonic() < deadline, f"{reason}: {found} waiting in the export, not {count}"
        time.sleep(0.2)  # polling a file the consolidator rewrites; no event to wait on


# One reason in make test; all four in make test-slow.
@pytest.mark.parametrize(
    "reason", [r if r == "unknown_account" else pytest.param(r, marks=pytest.mark.slow) for r in CASES]
)
def test_replay_after_the_catalog_fix_bills_as_if_it_had_been_right(
    reason: str,
    fresh_broker: EmbeddedBroker,
    tmp_path: Path,
    events_file: Path,
    reference: dict[str, list[Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    spoil, rejected, accounts = CASES[reason]
    document = yaml.safe_load(GOOD_CATALOG.read_text())
    wrong = copy.deepcopy(document)
    spoil(wrong)
    wrong_path = tmp_path / "wrong.yaml"
    wrong_path.write_text(yaml.safe_dump(wrong, sort_keys=False))

    pipeline = LivePipeline(fresh_broker, tmp_path / "out", partitions=2)
    try:
        pipeline.publish(wrong_path, events_file)
        pipeline.start("mediation", "rating", "consolidation")
        # 1. rejected with that reason, and nothing else
        totals = pipeline.wait_drained()
        assert dict(totals.rejected) == {reason: rejected}
        assert totals.rated == len(EVENTS) - rejected
        _until_waiting(tmp_path / "out", reason, rejected, pipeline)

        # A dry run counts by reason and account, and publishes nothing.
        dry = _replay(capsys, fresh_broker, "--dry-run")
        assert dry["would_replay"] == str(rejected)
        assert {k for k in dry if k.startswith(f"would_replay.{reason}.")} == {
            f"would_replay.{reason}.{a}" for a in accounts
        }
        # Another reason selects nothing.
        assert _replay(capsys, fresh_broker, "--dry-run", "--reason", "malformed")["would_replay"] == "0"

        # 2. the corrected catalog; 3. the replay rates the rejected events
        publish_catalog(pipeline.settings, GOOD_CATALOG, force=True)
        report = _replay(capsys, fresh_broker, "--reason", reason)
        assert report["replayed"] == str(rejected) and report[f"replayed.{reason}"] == str(rejected)
        assert report["skipped"] == "0"
        pipeline.published += rejected
        totals = pipeline.wait_drained()
        assert totals.rated == len(EVENTS)
        assert dict(totals.rejected) == {reason: rejected}  # the DLQ keeps the originals
        # The replay's markers: its records wait no more.
        _until_waiting(tmp_path / "out", reason, 0, pipeline)

        # 5. a second replay publishes nothing: every record was replayed once
        again = _replay(capsys, fresh_broker, "--reason", reason)
        assert again["replayed"] == "0" and again[f"skipped.{reason}.already_replayed"] == str(rejected)
        # Forced, its copies are duplicates: the accepted copy holds the key.
        forced = _replay(capsys, fresh_broker, "--reason", reason, "--include-replayed")
        assert forced["replayed"] == str(rejected)
        pipeline.published += rejected
        totals = pipeline.wait_drained()
        assert (totals.rated, totals.duplicates) == (len(EVENTS), rejected)
        assert dict(totals.rejected) == {reason: rejected}

        # 4. the invoice, once the period is closed
        publish_close(pipeline.settings, PERIOD)
        _wait_for(tmp_path / "out" / "invoices" / f"period={PERIOD}" / "invoice_lines.parquet", pipeline)
        # A record of a closed period is reported and skipped.
        closed = _replay(capsys, fresh_broker, "--reason", reason, "--include-replayed", "--dry-run")
        assert closed["would_replay"] == "0"
        assert closed[f"skipped.{reason}.period_closed"] == str(rejected)
    finally:
        pipeline.stop()
    out = tmp_path / "out"
    assert table(out, DRAFTS) == reference["drafts"]
    assert table(out, LINES) == reference["lines"]
    assert table(out, TOTALS) == reference["totals"]
    replayed = f"SELECT count(*) FILTER (replayed), count(*) FROM rejected_events WHERE reason = '{reason}'"
    assert table(out, replayed) == [(rejected, rejected)]
