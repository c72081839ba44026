"""`meterline query`: table, CSV and JSON output of the billing store, --at, a moved store."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from consolidation import lake
from meterline.app.cli import main
from meterline.app.query import parse_at
from meterline.kernel.command_errors import UserError

BIG = Decimal("12345678901234567890.123456789012345678")
TINY = Decimal("-0.000000000000000001")
LABEL = 'a "quoted", two-line\nlabel'


def _build(out: Path) -> None:
    db = lake.connect(out)
    try:
        db.execute(
            "CREATE TABLE amounts (id BIGINT, exact DECIMAL(38,18), amount DECIMAL(38,4), "
            "day DATE, seen TIMESTAMPTZ, label VARCHAR, paid BOOLEAN)"
        )
        db.execute(
            "INSERT INTO amounts VALUES "
            "(1, ?, 1.5, DATE '2026-11-30', TIMESTAMPTZ '2026-11-30 23:30:00-02:00', ?, true), "
            "(2, ?, -0.0001, NULL, NULL, NULL, false), "
            "(3, 0, NULL, NULL, NULL, '', NULL)",
            [BIG, LABEL, TINY],
        )
    finally:
        db.close()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "meterline-out"
    _build(folder)
    return folder


def _query(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["query", *args]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterline", "query", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_json_is_one_array_with_exact_decimals_iso_times_and_nulls(
    out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _query(capsys, "SELECT * FROM amounts ORDER BY id", "--out", str(out), "--format", "json")
    rows = json.loads(text, parse_float=lambda _: pytest.fail("a float in the JSON"))
    assert rows == [
        {
            "id": 1,
            "exact": "12345678901234567890.123456789012345678",
            "amount": "1.5000",
            "day": "2026-11-30",
            "seen": "2026-12-01T01:30:00+00:00",
            "label": LABEL,
            "paid": True,
        },
        {
            "id": 2,
            "exact": "-0.000000000000000001",
            "amount": "-0.0001",
            "day": None,
            "seen": None,
            "label": None,
            "paid": False,
        },
        {
            "id": 3,
            "exact": "0.000000000000000000",
            "amount": None,
            "day": None,
            "seen": None,
            "label": "",
            "paid": None,
        },
    ]
    assert [Decimal(row["exact"]) for row in rows] == [BIG, TINY, 0]
    # Aggregates keep their DECIMAL type and scale too.
    text = _query(capsys, "SELECT sum(exact) AS s FROM amounts", "--out", str(out), "--format", "json")
    assert json.loads(text) == [{"s": "12345678901234567890.123456789012345677"}]


def test_json_of_no_rows_is_an_empty_array(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = _query(capsys, "SELECT * FROM amounts WHERE id < 0", "--out", str(out), "--format", "json")
    assert json.loads(text) == []


def test_csv_has_a_header_rfc4180_quoting_full_scale_and_empty_nulls(
    out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _query(capsys, "SELECT * FROM amounts ORDER BY id", "--out", str(out), "--format", "csv")
    assert text.startswith("id,exact,amount,day,seen,label,paid\r\n")
    assert '"a ""quoted"", two-line\nlabel"' in text
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows == [
        ["id", "exact", "amount", "day", "seen", "label", "paid"],
        ["1", str(BIG), "1.5000", "2026-11-30", "2026-12-01T01:30:00+00:00", LABEL, "true"],
        ["2", "-0.000000000000000001", "-0.0001", "", "", "", "false"],
        ["3", "0.000000000000000000", "", "", "", "", ""],
    ]


def test_table_is_the_default(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = _query(capsys, "SELECT id, exact, amount FROM amounts ORDER BY id", "--out", str(out))
    assert "12345678901234567890.123456789012345678" in text
    assert "-0.000000000000000001" in text
    assert "decimal(38,18)" in text and "NULL" in text


def _last_snapshot(db: duckdb.DuckDBPyConnection) -> datetime:
    """When the last commit happened, as the store records it."""
    row = db.execute("SELECT max(snapshot_time) FROM ducklake_snapshots('billing')").fetchone()
    assert row is not None and isinstance(row[0], datetime)
    return row[0]


def test_at_reads_the_store_as_it_was(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = lake.connect(out)
    try:
        before = _last_snapshot(db)
        db.execute("UPDATE amounts SET amount = 99 WHERE id = 1")
        after = _last_snapshot(db)
    finally:
        db.close()
    assert before < after
    sql = "SELECT amount FROM amounts WHERE id = 1"

    def amount(*extra: str) -> str:
        text = _query(capsys, sql, "--out", str(out), "--format", "json", *extra)
        return str(json.loads(text)[0]["amount"])

    assert amount() == "99.0000"
    before = before.astimezone(UTC)
    assert amount("--at", before.isoformat().replace("+00:00", "Z")) == "1.5000"
    # The same instant with another offset, and without one (UTC).
    paris = before.astimezone(timezone(timedelta(hours=1)))
    assert amount("--at", paris.isoformat()) == "1.5000"
    assert amount("--at", before.replace(tzinfo=None).isoformat()) == "1.5000"
    assert amount("--at", after.isoformat()) == "99.0000"


def test_a_moved_store_still_queries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = tmp_path / "first"
    db = lake.connect(first)
    try:
        # Enough rows for a Parquet data file: DuckLake keeps a few rows in the catalog itself.
        db.execute(
            "CREATE TABLE big AS SELECT range AS id, (range * 0.25)::DECIMAL(38,18) AS x FROM range(1000)"
        )
    finally:
        db.close()
    assert list((first / lake.DATA_DIR).rglob("*.parquet"))
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(first, moved)
    text = _query(
        capsys, "SELECT count(*) AS n, sum(x) AS s FROM big", "--out", str(moved), "--format", "csv"
    )
    assert text.splitlines() == ["n,s", "1000,124875.000000000000000000"]


def test_out_comes_from_the_config_file(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = out.parent / "meterline.toml"
    config.write_text(f'out_dir = "{out.as_posix()}"\n')
    text = _query(capsys, "SELECT count(*) AS n FROM amounts", "--config", str(config), "--format", "json")
    assert json.loads(text) == [{"n": 3}]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["SELECT 1", "--at", "yesterday"], "--at 'yesterday' is not an ISO 8601 time"),
        (["SELECT 1", "--at", "2000-01-01T00:00:00Z"], "the store has no snapshot that early"),
        (["SELECT * FROM no_such_table"], "query failed: Catalog Error"),
        (["DELETE FROM amounts"], "read-only"),
        (["SELECT 1 AS a, 2 AS a", "--format", "json"], "column 'a' appears twice"),
        (["SELECT 1", "--format", "xml"], "invalid choice: 'xml'"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(out: Path, args: list[str], fragment: str) -> None:
    done = _cli(*args, "--out", str(out), cwd=out.parent)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("meterline: error: ") and fragment in done.stderr


def test_a_missing_store_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = _cli("SELECT 1", cwd=tmp_path)  # the default ./meterline-out
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "meterline-out: no billing store here" in done.stderr
    assert not (tmp_path / "meterline-out").exists()  # a reader creates nothing


def test_the_history_start_is_named(out: Path) -> None:
    done = _cli("SELECT 1", "--at", "2000-01-01", "--out", str(out), cwd=out.parent)
    assert done.returncode == 2
    assert "its history starts at 20" in done.stderr


def test_parse_at() -> None:
    moment = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
    assert parse_at("2026-12-06T10:00:00Z") == moment
    assert parse_at("2026-12-06T11:00:00+01:00") == moment
    assert parse_at("2026-12-06 10:00") == moment
    with pytest.raises(UserError, match="not an ISO 8601 time"):
        parse_at("06/12/2026 10:00")
