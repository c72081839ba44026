"""The command line: --help everywhere, one clear line and exit 2 on user errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent.parent / "data"
SUBCOMMANDS = [
    ["run"],
    ["demo"],
    ["mediation"],
    ["rating"],
    ["consolidation"],
    ["contracts"],
    ["contracts", "publish"],
    ["produce"],
    ["close"],
    ["query"],
    ["broker"],
]


def meterline(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterline", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


@pytest.mark.parametrize("command", [[], *SUBCOMMANDS], ids=lambda c: " ".join(c) or "meterline")
def test_every_subcommand_has_help(command: list[str]) -> None:
    result = meterline(*command, "--help")
    assert result.returncode == 0
    assert "usage: meterline" in result.stdout
    assert "--help" in result.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "required: COMMAND"),
        (["frobnicate"], "invalid choice"),
        (["run", "--input", "x.jsonl"], "--catalog"),
        (["close", "--period", "2026-13-01", "--bootstrap-servers", "127.0.0.1:1"], "YYYY-MM"),
        (["run", "--catalog", str(DATA / "flat" / "catalog.yaml"), "--input", "nope.jsonl"], "nope.jsonl"),
        (
            [
                "run",
                "--catalog",
                str(DATA / "flat" / "catalog.yaml"),
                "--input",
                "x.jsonl",
                "--format",
                "xml",
            ],
            "unknown format",
        ),
        (["query", "SELECT 1", "--out", "/nonexistent/out"], "no such database"),
        (["mediation", "--config", "/nonexistent/meterline.toml"], "no such config file"),
    ],
)
def test_user_errors_exit_2_with_one_line(args: list[str], fragment: str) -> None:
    result = meterline(*args)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("meterline")
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_catalog_names_file_path_and_problem(tmp_path: Path) -> None:
    bad = tmp_path / "catalog.yaml"
    good = (DATA / "catalog.yaml").read_text()
    bad.write_text(good.replace('unit_price: "0.0005"', 'unit_price: "cheap"'))
    events = tmp_path / "events.jsonl"
    events.write_text("{}\n")
    for args in (["run", "--catalog", str(bad), "--input", str(events)], ["contracts", "publish", str(bad)]):
        result = meterline(*args)
        assert result.returncode == 2
        line = result.stderr.strip()
        assert "\n" not in line
        assert bad.name in line
        assert "plans[0].charges[0].tiers[1].unit_price" in line


def test_query_prints_a_table(tmp_path: Path) -> None:
    import duckdb

    db = duckdb.connect(str(tmp_path / "billing.duckdb"))
    db.execute("CREATE TABLE t AS SELECT 42::DECIMAL(10,2) AS answer")
    db.close()
    result = meterline("query", "SELECT answer FROM t", "--out", str(tmp_path))
    assert result.returncode == 0
    assert "42.00" in result.stdout
    broken = meterline("query", "SELECT * FROM missing_table", "--out", str(tmp_path))
    assert broken.returncode == 2
    assert "missing_table" in broken.stderr
