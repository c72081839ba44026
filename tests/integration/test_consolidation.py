"""Consolidation on the real embedded broker (DESIGN.md §1, §6, §7).

* `meterline run --close-all` on a generated month of SaaS and telecom usage:
  one final draft per active account, Parquet equal to DuckDB row for row,
  reconciliation.
* The consolidation worker SIGKILLed at three points (mid-stream twice, then
  around the period close published with `meterline close`'s publish_close):
  the final invoices equal those of the uninterrupted run and every rated event
  is stored exactly once.
* Live previews: `open` drafts refreshed within the preview interval.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from consolidation.closing import accounts_active_in
from meterline.broker import EmbeddedBroker
from meterline.catalog_file import load_catalog
from meterline.publish import InputFile, produce_inputs, publish_close
from tests.integration.harness import LivePipeline, meterline_run, table, write_dataset

pytestmark = pytest.mark.integration

ACCOUNTS = 60
EVENTS = 30_000
PERIOD = "2026-10"  # the generator's month

DRAFT_COLUMNS = (
    "invoice_id, account_id, period, period_start, period_end, currency, subtotal, discount, tax, "
    "total, status, issue_date, due_date, event_count"  # all but generated_at
)
DRAFTS = f"SELECT {DRAFT_COLUMNS} FROM invoice_drafts ORDER BY ALL"
LINES = "SELECT * FROM invoice_lines ORDER BY ALL"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("consolidation")
    return write_dataset(folder, accounts=ACCOUNTS, events=EVENTS, seed=23)


@pytest.fixture(scope="module")
def reference(
    dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, int]]:
    """The uninterrupted run: `meterline run --close-all`."""
    catalog, events = dataset
    folder = tmp_path_factory.mktemp("reference")
    out, summary = folder / "out", folder / "summary.json"
    completed = meterline_run(
        catalog, f"json:{events}", out, "--close-all", "--summary-json", str(summary), partitions=4
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return out, json.loads(summary.read_text())


def _parquet_rows(path: Path) -> list[tuple[Any, ...]]:
    data = pq.read_table(path)
    return sorted(tuple(row.values()) for row in data.to_pylist())


def _db_rows(out: Path, sql: str) -> list[tuple[Any, ...]]:
    db = duckdb.connect(str(out / "billing.duckdb"), read_only=True)
    try:
        return sorted(tuple(row.values()) for row in db.sql(sql).to_arrow_table().to_pylist())
    finally:
        db.close()


def _parquet_final(out: Path, name: str, drop: str | None = None) -> list[tuple[Any, ...]]:
    data = pq.read_table(out / "invoices" / f"period={PERIOD}" / f"{name}.parquet")
    if drop:
        data = data.drop_columns([drop])
    return sorted(tuple(row.values()) for row in data.to_pylist())


# -- 1. end to end -----------------------------------------------------------------


def test_one_final_draft_per_active_account(
    dataset: tuple[Path, Path], reference: tuple[Path, dict[str, int]]
) -> None:
    catalog_path, _ = dataset
    out, summary = reference
    catalog = load_catalog(catalog_path)
    drafts = table(out, "SELECT account_id, period, status, invoice_id FROM invoice_drafts")
    with_usage = {
        a for (a,) in table(out, f"SELECT DISTINCT account_id FROM usage_totals WHERE period = '{PERIOD}'")
    }
    expected = set(accounts_active_in(catalog, PERIOD)) | with_usage
    assert len(expected) >= 50
    assert Counter((a, p) for a, p, _, _ in drafts) == Counter({(a, PERIOD): 1 for a in expected})
    assert {s for _, _, s, _ in drafts} == {"final"}
    assert len({i for *_, i in drafts}) == len(drafts)
    assert summary["invoices"] == len(expected)
    # Mixed SaaS and telecom usage made it onto the invoices.
    meters = {m for (m,) in table(out, "SELECT DISTINCT meter FROM usage_totals")}
    assert {"voice", "api_calls"} <= meters, meters


def test_parquet_and_duckdb_hold_the_same_rows(reference: tuple[Path, dict[str, int]]) -> None:
    out, _ = reference
    folder = out / "invoices" / f"period={PERIOD}"
    drafts = _parquet_rows(folder / "invoice_drafts.parquet")
    lines = _parquet_rows(folder / "invoice_lines.parquet")
    assert drafts == _db_rows(out, "SELECT * FROM invoice_drafts")
    assert lines == _db_rows(out, "SELECT * FROM invoice_lines")
    assert len(drafts) >= 50 and len(lines) > len(drafts)
    for name in ("invoice_drafts", "invoice_lines"):
        schema = pq.read_schema(folder / f"{name}.parquet")
        for column in ("total", "subtotal", "amount", "quantity", "unit_price"):
            if column in schema.names:
                assert str(schema.field(column).type).startswith("decimal"), (name, column)
    # Each draft's total is the sum of its lines.
    mismatched = table(
        out,
        """SELECT d.invoice_id FROM invoice_drafts d JOIN invoice_lines l USING (invoice_id)
           GROUP BY d.invoice_id, d.total HAVING sum(l.amount) <> d.total""",
    )
    assert mismatched == []


def test_reconciliation_holds(reference: tuple[Path, dict[str, int]]) -> None:
    out, summary = reference
    assert summary["events_in"] == EVENTS
    assert summary["events_in"] == summary["rated"] + summary["duplicates"] + summary["rejected"]
    assert summary["rejected"] == sum(v for k, v in summary.items() if k.startswith("rejected."))
    mismatches = table(
        out,
        """WITH rated AS (SELECT account_id, charge_id, period, sum(amount) AS amount, count(*) AS n
                          FROM rated_usage GROUP BY ALL),
                totals AS (SELECT account_id, charge_id, period, sum(amount_exact) AS amount,
                                  sum(event_count) AS n FROM usage_totals GROUP BY ALL)
           SELECT * FROM totals t FULL OUTER JOIN rated r USING (account_id, charge_id, period)
           WHERE t.amount IS DISTINCT FROM r.amount OR t.n IS DISTINCT FROM r.n""",
    )
    assert mismatches == []
    assert table(out, "SELECT count(*), count(DISTINCT (account_id, event_id)) FROM rated_usage") == [
        (summary["rated"], summary["rated"])
    ]
    assert table(out, "SELECT sum(event_count) FROM invoice_drafts") == [(summary["rated"],)]


# -- 2. crash recovery -------------------------------------------------------------


def test_consolidator_killed_three_times_gives_the_same_invoices(
    dataset: tuple[Path, Path],
    reference: tuple[Path, dict[str, int]],
    fresh_broker: EmbeddedBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    catalog, events = dataset
    ref, summary = reference
    out = tmp_path / "out"
    pipeline = LivePipeline(fresh_broker, out)
    kills = []
    try:
        pipeline.publish(catalog, events)
        pipeline.start("mediation", "rating")
        # Small sink batches, so a kill lands between a Parquet write and its DuckDB commit as often
        # as between batches.
        monkeypatch.setenv("METERLINE_BATCH_SIZE", "1500")
        pipeline.start("consolidation")
        rated = summary["rated"]
        for fraction in (0.2, 0.5):
            before = pipeline.wait_until(lambda t, f=fraction: t.stored >= rated * f)
            pipeline.kill("consolidation")
            kills.append(before.stored)
            pipeline.start("consolidation")
        assert kills[0] < rated * 0.9, "the first kill must land before the stream is done"
        totals = pipeline.wait_drained()
        # Close the period as `meterline close` does; the worker finalizes it. Kill it right
        # after the close is published, restart, and let it finish the close.
        publish_close(pipeline.settings, PERIOD)
        time.sleep(0.5)
        pipeline.kill("consolidation")
        pipeline.start("consolidation")
        exported = out / "invoices" / f"period={PERIOD}" / "invoice_lines.parquet"
        deadline = time.monotonic() + 120
        while not exported.exists():
            assert time.monotonic() < deadline, "the consolidation worker did not finalize the period"
            assert pipeline.workers.processes["consolidation"].poll() is None
            time.sleep(0.5)
        time.sleep(1)  # the drafts export finishes, then the close is marked done
    finally:
        pipeline.stop()
    assert totals.rated == rated
    assert totals.events_in == totals.rated + totals.duplicates + totals.rejected_total
    # Final invoices: identical to the uninterrupted run, in DuckDB and in Parquet.
    assert table(out, DRAFTS) == table(ref, DRAFTS)
    assert table(out, LINES) == table(ref, LINES)
    assert {s for (s,) in table(out, "SELECT DISTINCT status FROM invoice_drafts")} == {"final"}
    assert _parquet_final(out, "invoice_drafts", "generated_at") == _parquet_final(
        ref, "invoice_drafts", "generated_at"
    )
    assert _parquet_final(out, "invoice_lines") == _parquet_final(ref, "invoice_lines")
    # Every rated event stored exactly once, the same events as the uninterrupted run.
    assert table(out, "SELECT count(*), count(DISTINCT (account_id, event_id)) FROM rated_usage") == [
        (rated, rated)
    ]
    events_sql = "SELECT account_id, event_id, charge_id, period, invoice_id FROM rated_usage ORDER BY ALL"
    assert table(out, events_sql) == table(ref, events_sql)
    assert table(out, "SELECT * FROM usage_totals ORDER BY ALL") == table(
        ref, "SELECT * FROM usage_totals ORDER BY ALL"
    )
    # No leftovers of interrupted writes next to the dataset.
    assert not [p for p in (out / "rated_usage").rglob("*") if p.is_file() and p.suffix != ".parquet"]


# -- 3. live previews --------------------------------------------------------------


def _split(events: Path, folder: Path) -> tuple[Path, Path]:
    lines = events.read_bytes().splitlines(keepends=True)
    cut = len(lines) * 2 // 3
    first, second = folder / "first.jsonl", folder / "second.jsonl"
    first.write_bytes(b"".join(lines[:cut]))
    second.write_bytes(b"".join(lines[cut:]))
    return first, second


def _check_previews(out: Path) -> dict[str, tuple[Any, ...]]:
    """Every account with usage has an open draft whose figures reflect all stored usage."""
    drafts = {
        row[0]: row[1:]
        for row in table(out, "SELECT account_id, status, event_count, total FROM invoice_drafts")
    }
    usage = dict(table(out, "SELECT account_id, sum(event_count) FROM usage_totals GROUP BY 1"))
    assert usage, "no usage stored"
    assert set(usage) <= set(drafts)
    assert {status for status, _, _ in drafts.values()} == {"open"}
    stale = {a: (drafts[a][1], n) for a, n in usage.items() if drafts[a][1] != n}
    assert stale == {}, f"previews not refreshed (draft events, stored events): {stale}"
    return drafts


def test_open_drafts_are_refreshed_within_the_preview_interval(
    dataset: tuple[Path, Path],
    reference: tuple[Path, dict[str, int]],
    fresh_broker: EmbeddedBroker,
    tmp_path: Path,
) -> None:
    catalog, events = dataset
    ref, _ = reference
    first, second = _split(events, tmp_path)
    out = tmp_path / "out"
    pipeline = LivePipeline(fresh_broker, out)
    interval = pipeline.settings.preview_interval_s
    try:
        pipeline.publish(catalog, first)
        pipeline.start("mediation", "rating", "consolidation")
        pipeline.wait_drained()
        # SIGKILL, not SIGTERM: a clean stop refreshes the previews itself, a kill shows what
        # the running worker had already written.
        time.sleep(interval + 2)
        pipeline.kill("consolidation")
        early = _check_previews(out)

        pipeline.start("consolidation")
        pipeline.published += produce_inputs(pipeline.settings, [InputFile(second, "json")])
        pipeline.wait_drained()
        time.sleep(interval + 2)
        pipeline.kill("consolidation")
        late = _check_previews(out)
    finally:
        pipeline.stop()
    grown = [a for a in early if a in late and late[a][1] > early[a][1]]
    assert grown, "the second batch of usage should have moved some previews"
    # With all usage in, the open previews carry the figures of the final invoices.
    final = {
        r[0]: (r[1], r[2]) for r in table(ref, "SELECT account_id, event_count, total FROM invoice_drafts")
    }
    with_usage = {a: (n, total) for a, (_, n, total) in late.items() if n}
    assert with_usage == {a: v for a, v in final.items() if a in with_usage}
    assert sum(n for n, _ in with_usage.values()) == sum(n for n, _ in final.values())
