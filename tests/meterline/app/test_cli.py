"""The command line: --help everywhere, one clear line and exit 2 on user errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parents[2] / "data"
NO_BROKER = ["--bootstrap-servers", "127.0.0.1:1"]
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
    ["replay"],
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
        (["query", "SELECT 1", "--out", "/nonexistent/out"], "no billing store here"),
        # Reproduced defect: an unknown prefix said "no such input file".
        (
            [
                "run",
                "--catalog",
                str(DATA / "flat" / "catalog.yaml"),
                "--input",
                f"xml:{DATA / 'events.jsonl'}",
            ],
            "unknown format 'xml'; use one of auto, json, cloudevents, lago, asterisk-csv",
        ),
        (
            ["produce", f"xml:{DATA / 'events.jsonl'}", "--bootstrap-servers", "127.0.0.1:1"],
            "unknown format 'xml'",
        ),
        (["close", "--period", "2026-13", "--bootstrap-servers", "127.0.0.1:1"], "month must be 01 to 12"),
        (["close", "--period", "2026-00", "--bootstrap-servers", "127.0.0.1:1"], "month must be 01 to 12"),
        (["close", "--period", "0000-01", "--bootstrap-servers", "127.0.0.1:1"], "year 0000"),
        (["close", "--period", "2026-1", "--bootstrap-servers", "127.0.0.1:1"], "YYYY-MM"),
        (["demo", "--accounts", "0"], "must be at least 1"),
        (["demo", "--events", "many"], "not a whole number"),
        (["broker", "--port", "70000"], "not a TCP port"),
        (["run", "--catalog", "c.yaml", "--input", "x", "--partitions", "0"], "must be at least 1"),
        (["mediation", "--config", "/nonexistent/meterline.toml"], "no such config file"),
        # Unknown zones are named before anything is published.
        (
            ["produce", str(DATA / "Master.csv"), "--cdr-timezone", "Mars/Olympus", *NO_BROKER],
            "--cdr-timezone 'Mars/Olympus' is not an IANA time zone",
        ),
        (
            [
                "run",
                "--catalog",
                str(DATA / "catalog.yaml"),
                "--input",
                str(DATA / "Master.csv"),
                "--cdr-timezone",
                "Europe",
            ],
            "--cdr-timezone 'Europe' is not an IANA time zone",
        ),
        (["replay", "--reason", "typo", *NO_BROKER], "--reason 'typo' is not a reason code"),
        (["replay", "--since", "yesterday", *NO_BROKER], "--since 'yesterday' is not an ISO 8601"),
        (["replay", "--until", "2026-13-01", *NO_BROKER], "--until '2026-13-01'"),
        (["replay", "--account", "", *NO_BROKER], "--account must not be empty"),
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
    from consolidation import lake

    db = lake.connect(tmp_path)
    db.execute("CREATE TABLE t AS SELECT 42::DECIMAL(10,2) AS answer")
    db.close()
    result = meterline("query", "SELECT answer FROM t", "--out", str(tmp_path))
    assert result.returncode == 0
    assert "42.00" in result.stdout
    broken = meterline("query", "SELECT * FROM missing_table", "--out", str(tmp_path))
    assert broken.returncode == 2
    assert "missing_table" in broken.stderr


def test_catalog_currency_outside_iso_4217_is_exit_2(tmp_path: Path) -> None:
    # Reproduced defect: XAU validated, then consolidation raised UnknownCurrencyError.
    bad = tmp_path / "catalog.yaml"
    bad.write_text((DATA / "flat" / "catalog.yaml").read_text().replace("currency: USD", "currency: XAU"))
    events = tmp_path / "events.jsonl"
    events.write_text("{}\n")
    for args in (
        ["run", "--catalog", str(bad), "--input", str(events), "--out", str(tmp_path / "out")],
        ["contracts", "publish", str(bad), "--bootstrap-servers", "127.0.0.1:1"],
    ):
        result = meterline(*args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == (
            "meterline: error: catalog.yaml: plans[1].currency: "
            "'XAU' is not an ISO 4217 currency with minor units (e.g. EUR, USD, JPY)"
        )
    assert not (tmp_path / "out").exists()


def test_contracts_publish_help_explains_the_removal_rule() -> None:
    text = " ".join(meterline("contracts", "publish", "--help").stdout.split())
    assert "--force" in text
    assert "open period" in text
    assert "meterline.periods" in text


def test_run_help_mentions_overwrite() -> None:
    text = " ".join(meterline("run", "--help").stdout.split())
    assert "--overwrite" in text and "earlier run" in text


@pytest.mark.integration
def test_demo_replaces_its_own_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = meterline("demo", "--accounts", "3", "--events", "200", "--out", str(out))
    assert first.returncode == 0, first.stderr
    (out / "notes.txt").write_text("mine")
    second = meterline("demo", "--accounts", "3", "--events", "200", "--out", str(out))
    assert second.returncode == 0, second.stderr
    summary = [
        line for line in first.stdout.splitlines() if line.startswith(("events_in", "rated", "invoices"))
    ]
    assert summary == [
        line for line in second.stdout.splitlines() if line.startswith(("events_in", "rated", "invoices"))
    ]
    assert "reconciliation" in second.stdout and "MISMATCH" not in second.stdout
    assert (out / "notes.txt").read_text() == "mine"


def test_replay_help_says_what_is_replayed_by_default() -> None:
    result = meterline("replay", "--help")
    text = " ".join(result.stdout.split())
    assert "unknown_account, no_contract_in_effect, unknown_meter, no_matching_charge" in text
    for option in ("--reason", "--account", "--since", "--until", "--dry-run", "--bootstrap-servers"):
        assert option in text


def test_replay_with_no_broker_is_one_line_and_exit_1() -> None:
    result = meterline("replay", "--bootstrap-servers", "127.0.0.1:1")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Kafka at 127.0.0.1:1" in lines[0], result.stderr
