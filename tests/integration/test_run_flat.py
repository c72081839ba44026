"""`meterline run` end to end on the real embedded broker, checked against
invoice lines computed by hand (flat charges, two accounts, two periods)."""

from __future__ import annotations

import json
from datetime import UTC
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from consolidation.lake import connect as connect_store
from tests.integration.harness import meterline_run

pytestmark = pytest.mark.integration

DATA = Path(__file__).parent.parent / "data" / "flat"
D = Decimal

# (kind, charge_id, quantity, amount) per invoice, computed by hand:
EXPECTED_LINES: dict[tuple[str, str], list[tuple[str, str | None, Decimal | None, Decimal]]] = {
    ("alpha", "2026-09"): [
        # api: a1 1000 + a2 250.5 (+ five corrected re-sends of 0) = 1250.5 calls x 0.002 = 2.501 -> 2.50
        ("usage", "eur-api", D("1250.5"), D("2.50")),
        # storage (region eu): 12 GB x 0.10 = 1.20; the region=us event matched no charge
        ("usage", "eur-storage", D("12"), D("1.20")),
        ("recurring", "eur-base", None, D("10.00")),  # whole month in effect
        # tax 20% of 13.70 = 2.74
        ("tax", None, None, D("2.74")),
    ],
    ("alpha", "2026-10"): [
        # a4 3000 + a5 500 (22:30Z on Sep 30 is 00:30 on Oct 1 in Paris) = 3500 x 0.002 = 7.00
        ("usage", "eur-api", D("3500"), D("7.00")),
        ("recurring", "eur-base", None, D("10.00")),
        ("tax", None, None, D("3.40")),  # 20% of 17.00
    ],
    # 400 calls, 100 included: 300 x 0.0015 = 0.45
    ("beta", "2026-09"): [("usage", "usd-api", D("400"), D("0.45"))],
    # b2 50 + b3 100 (03:00Z on Nov 1 is 23:00 on Oct 31 in New York) = 150; 50 billable
    # x 0.0015 = 0.075 -> half_even 0.08
    ("beta", "2026-10"): [("usage", "usd-api", D("150"), D("0.08"))],
}
EXPECTED_TOTALS = {
    ("alpha", "2026-09"): (D("13.70"), D("2.74"), D("16.44")),
    ("alpha", "2026-10"): (D("17.00"), D("3.40"), D("20.40")),
    ("beta", "2026-09"): (D("0.45"), D("0"), D("0.45")),
    ("beta", "2026-10"): (D("0.08"), D("0"), D("0.08")),
}
EXPECTED_SUMMARY = {
    "events_in": 24,
    "rated": 13,  # 8 valid + 5 corrected re-sends
    "duplicates": 1,
    "rejected": 10,
    "rejected.malformed": 1,
    "rejected.missing_field": 1,
    "rejected.invalid_timestamp": 1,
    "rejected.future_timestamp": 1,
    "rejected.invalid_quantity": 1,
    "rejected.too_large": 1,
    "rejected.unknown_account": 1,
    "rejected.no_contract_in_effect": 1,
    "rejected.unknown_meter": 1,
    "rejected.no_matching_charge": 1,
    "invoices": 4,
}


@pytest.fixture(scope="module")
def run_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("flat")
    completed = meterline_run(
        DATA / "catalog.yaml", f"json:{DATA / 'events.jsonl'}", out / "out",
        "--close-all", "--summary-json", str(out / "summary.json"), partitions=3, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "events_in: 24" in completed.stdout
    (out / "stdout.txt").write_text(completed.stdout)
    return out


def test_summary_counts_every_event_once(run_output: Path) -> None:
    summary = json.loads((run_output / "summary.json").read_text())
    assert summary == EXPECTED_SUMMARY
    assert summary["events_in"] == summary["rated"] + summary["duplicates"] + summary["rejected"]


def test_invoice_lines_match_hand_computed(run_output: Path) -> None:
    db = connect_store(run_output / "out", read_only=True)
    rows = db.execute(
        "SELECT account_id, period, line_no, kind, charge_id, quantity, amount FROM invoice_lines "
        "ORDER BY account_id, period, line_no"
    ).fetchall()
    found: dict[tuple[str, str], list[tuple[object, ...]]] = {}
    for account, period, line_no, kind, charge, quantity, amount in rows:
        lines = found.setdefault((account, period), [])
        assert line_no == len(lines) + 1
        lines.append((kind, charge, quantity.normalize() if quantity is not None else None, amount))
    expected = {
        key: [(k, c, q.normalize() if q is not None else None, a) for k, c, q, a in items]
        for key, items in EXPECTED_LINES.items()
    }
    assert found == expected


def test_drafts_are_final_with_exact_totals(run_output: Path) -> None:
    db = connect_store(run_output / "out", read_only=True)
    rows = db.execute(
        "SELECT account_id, period, subtotal, tax, total, status, currency, issue_date, due_date, "
        "event_count, typeof(total) FROM invoice_drafts ORDER BY ALL"
    ).fetchall()
    assert {(r[0], r[1]): (r[2], r[3], r[4]) for r in rows} == EXPECTED_TOTALS
    assert {r[5] for r in rows} == {"final"}
    assert all(r[10].startswith("DECIMAL") for r in rows)
    by_key = {(r[0], r[1]): r for r in rows}
    assert str(by_key[("beta", "2026-10")][7]) == "2026-11-01"
    assert str(by_key[("beta", "2026-10")][8]) == "2026-11-16"  # net 15
    assert by_key[("alpha", "2026-09")][9] == 8  # 7 api events (incl. re-sends) + 1 storage


def test_parquet_matches_duckdb(run_output: Path) -> None:
    out = run_output / "out"
    db = connect_store(out, read_only=True)
    for period in ("2026-09", "2026-10"):
        drafts = pq.read_table(out / "invoices" / f"period={period}" / "invoice_drafts.parquet")
        lines = pq.read_table(out / "invoices" / f"period={period}" / "invoice_lines.parquet")
        assert str(drafts.schema.field("total").type).startswith("decimal")
        in_db = db.execute(
            "SELECT invoice_id, total FROM invoice_drafts WHERE period = ? ORDER BY 1", [period]
        ).fetchall()
        assert (
            sorted(
                zip(drafts.column("invoice_id").to_pylist(), drafts.column("total").to_pylist(), strict=True)
            )
            == in_db
        )
        counted = db.execute("SELECT count(*) FROM invoice_lines WHERE period = ?", [period]).fetchone()
        assert counted is not None and lines.num_rows == counted[0]


def test_rated_usage_traces_every_invoice_line(run_output: Path) -> None:
    db = connect_store(run_output / "out", read_only=True)
    mismatches = db.execute(
        """SELECT t.account_id, t.charge_id FROM usage_totals t
           LEFT JOIN (SELECT account_id, period, charge_id, sum(amount) AS amount, count(*) AS n
                      FROM rated_usage GROUP BY ALL) r USING (account_id, period, charge_id)
           WHERE r.amount IS DISTINCT FROM t.amount_exact OR r.n IS DISTINCT FROM t.event_count"""
    ).fetchall()
    assert mismatches == []
    assert db.execute("SELECT count(*), count(DISTINCT event_id) FROM rated_usage").fetchone() == (13, 13)


def test_rejections_by_reason_are_queryable(run_output: Path) -> None:
    db = connect_store(run_output / "out", read_only=True)
    rows = dict(db.execute("SELECT reason, events FROM rejected_counts").fetchall())
    assert rows == {
        k.removeprefix("rejected."): v for k, v in EXPECTED_SUMMARY.items() if k.startswith("rejected.")
    }


def test_rejected_events_holds_every_rejection_of_the_run(run_output: Path) -> None:
    """The run reads the DLQ to its end after its workers stopped: none of its last
    rejections is missing from rejected_events, nor from its Parquet export."""
    out = run_output / "out"
    db = connect_store(out, read_only=True)
    waiting = "SELECT reason, count(*) FROM rejected_events WHERE NOT replayed GROUP BY 1"
    rows = dict(db.execute(waiting).fetchall())
    assert rows == {
        k.removeprefix("rejected."): v for k, v in EXPECTED_SUMMARY.items() if k.startswith("rejected.")
    }
    exported = pq.read_metadata(out / "rejected" / "rejected_events.parquet")
    assert exported.num_rows == EXPECTED_SUMMARY["rejected"]


def test_each_rejection_names_its_input_file_and_line(run_output: Path) -> None:
    # Reproduced defect: the summary gave counts by reason only; nothing said which line failed.
    out = run_output / "out"
    rows = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    events = str(DATA / "events.jsonl")
    assert [(r["file"], r["line"], r["reason"]) for r in rows] == [
        (events, 10, "malformed"),
        (events, 11, "missing_field"),
        (events, 13, "invalid_timestamp"),
        (events, 15, "future_timestamp"),
        (events, 17, "invalid_quantity"),
        (events, 19, "too_large"),
        (events, 21, "unknown_account"),
        (events, 22, "no_contract_in_effect"),
        (events, 23, "unknown_meter"),
        (events, 24, "no_matching_charge"),
    ]
    assert all(r["detail"] and r["stage"] == "mediation" for r in rows)


def test_the_summary_says_where_the_rejections_are(run_output: Path) -> None:
    stdout = (run_output / "stdout.txt").read_text()
    where = run_output / "out" / "rejected.jsonl"
    assert f"10 rejected records, with the file and line of each, are in {where}" in stdout


# --------------------------------------------------------------------------- a second run into the same --out
# These run last in this module: they reuse the first run's output folder.

HUGE_LINE_BYTES = 1_000_000


def test_a_second_run_into_the_same_out_is_refused(run_output: Path) -> None:
    out = run_output / "out"
    before = sorted(p.name for p in out.iterdir())
    completed = meterline_run(DATA / "catalog.yaml", f"json:{DATA / 'events.jsonl'}", out, "--close-all")
    assert completed.returncode == 2, completed.stdout + completed.stderr
    line = completed.stderr.strip()
    assert "\n" not in line
    assert "holds the outputs of an earlier run" in line and "--overwrite" in line
    assert sorted(p.name for p in out.iterdir()) == before


def test_overwrite_replaces_the_earlier_run_and_a_huge_line_is_too_large(
    run_output: Path, tmp_path: Path
) -> None:
    # Reproduced defects: a run into an --out holding an earlier run reused its offsets,
    # lineage and drafts and still said "reconciliation ok"; an input line of ~1,000,000
    # bytes made the run die with MSG_SIZE_TOO_LARGE.
    out = run_output / "out"
    (out / "notes.txt").write_text("mine")
    events = tmp_path / "events.jsonl"
    huge = b'{"event_id": "huge", "account_id": "alpha", "pad": "' + b"x" * HUGE_LINE_BYTES + b'"}\n'
    events.write_bytes((DATA / "events.jsonl").read_bytes() + huge)
    summary = tmp_path / "summary.json"
    completed = meterline_run(
        DATA / "catalog.yaml", f"json:{events}", out, "--close-all", "--overwrite",
        "--summary-json", str(summary), partitions=3, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "reconciliation" in completed.stdout and "ok" in completed.stdout
    expected = {
        **EXPECTED_SUMMARY,
        "events_in": EXPECTED_SUMMARY["events_in"] + 1,
        "rejected": EXPECTED_SUMMARY["rejected"] + 1,
        "rejected.too_large": EXPECTED_SUMMARY["rejected.too_large"] + 1,
    }
    assert json.loads(summary.read_text()) == expected
    assert (out / "notes.txt").read_text() == "mine"  # not meterline's: left alone
    # The same invoices as one clean run: nothing of the first run was reused or doubled.
    test_invoice_lines_match_hand_computed(run_output)
    test_drafts_are_final_with_exact_totals(run_output)
    test_rated_usage_traces_every_invoice_line(run_output)


# --------------------------------------------------------------------------- Asterisk local times

VOICE_CATALOG = """
meters:
  - {code: voice, unit: minute, aggregation: sum, source_unit: second}
plans:
  - id: calls
    currency: EUR
    charges:
      - {id: voice, meter: voice, model: flat, unit_price: "0.01"}
accounts:
  - id: acme
    timezone: Europe/Paris
    contracts:
      - {id: acme-1, plan: calls, start: "2026-01-01", end: null}
"""


def _cdr(uniqueid: str, answer: str, billsec: int) -> str:
    head = ["acme", "1001", "4420794600123", "from-internal", "Alice", "PJSIP/1", "PJSIP/2", "Dial", "x"]
    fields = [*head, answer, answer, answer, str(billsec), str(billsec), "ANSWERED", "DOC", uniqueid]
    return ",".join(f'"{f}"' for f in fields)


def test_run_reads_asterisk_times_in_the_cdr_timezone(tmp_path: Path) -> None:
    # 23:30 in Paris on the last day of September is September's usage; read as UTC it
    # would be 01:30 on October 1 in Paris.
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(VOICE_CATALOG)
    cdrs = tmp_path / "Master.csv"
    rows = [_cdr("1.1", "2026-09-30 23:30:00", 120), _cdr("1.2", "2026-10-01 00:30:00", 60)]
    cdrs.write_text("\n".join(rows) + "\n")
    completed = meterline_run(
        catalog, str(cdrs), tmp_path / "out", "--cdr-timezone", "Europe/Paris", partitions=2, timeout=300
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    db = connect_store(tmp_path / "out", read_only=True)
    rated = db.execute("SELECT event_id, period, event_time FROM rated_usage ORDER BY event_id").fetchall()
    assert [(e, p, t.astimezone(UTC).isoformat()) for e, p, t in rated] == [
        ("1.1", "2026-09", "2026-09-30T21:30:00+00:00"),
        ("1.2", "2026-10", "2026-09-30T22:30:00+00:00"),
    ]
