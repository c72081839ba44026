"""The documentation says what the code does.

docs/ and the README are the repository's own statement of its contracts: the
catalog format, the input formats, the reason codes, the outputs and the
operations. These tests read the examples and tables out of the pages and check
each against the code that implements it, so a page cannot drift from the code
unnoticed: prices, invoice lines, parsed records, table columns, settings,
metrics, alerts and the README's query examples.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from confluent_kafka import Producer

from consolidation.invoice import UsageTotal, assemble_invoice
from consolidation.lake import connect as connect_store
from consolidation.store import BillingStore
from mediation.formats import parse_record
from meterline.app.publish import create_topics
from meterline.kernel.catalog import Catalog
from meterline.kernel.catalog_file import CatalogError, load_catalog, parse_catalog, read_catalog_document
from meterline.kernel.config import Settings
from meterline.kernel.dlq import dead_letter
from meterline.kernel.reasons import REASONS, Rejected
from meterline.runtime.broker import EmbeddedBroker
from meterline.runtime.health import Health
from rating.pricing import price
from tests.test_deploy import ALERTS, _registry

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
CATALOG = EXAMPLES / "catalog.yaml"
PAGES = sorted(DOCS.glob("*.md"))


def _page(name: str) -> str:
    return (DOCS / name).read_text()


def _marked(text: str, marker: str) -> Iterator[tuple[str, str]]:
    """(marker arguments, the block after it) for every `<!-- test: MARKER ... -->`.

    The block is the fenced code block or the Markdown table that follows the marker.
    """
    for match in re.finditer(rf"<!-- test: {marker}(?P<args>[^>]*)-->\n", text):
        rest = text[match.end() :]
        if rest.startswith("```"):
            body = rest.split("\n", 1)[1].split("\n```", 1)[0]
        else:
            body = rest.split("\n\n", 1)[0]
        yield match.group("args").strip(), body


def _table(body: str) -> list[list[str]]:
    """The rows of a Markdown table (header and separator dropped), cells stripped of backticks."""
    rows = [line for line in body.splitlines() if line.startswith("|")]
    return [[cell.strip().strip("`") for cell in row.strip("|").split("|")] for row in rows[2:]]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(CATALOG)


# --------------------------------------------------------------------------- catalog.md


def test_example_catalog_uses_every_feature(catalog: Catalog) -> None:
    charges = [c for p in catalog.plans.values() for c in p.charges]
    assert {c.model for c in charges} == {"flat", "graduated", "volume", "package"}
    assert {m.aggregation for m in catalog.meters.values()} == {"sum", "count", "max", "unique_count"}
    assert any(m.source_unit for m in catalog.meters.values())
    assert any(c.included for c in charges)
    assert any(c.filters.attributes for c in charges)
    assert any(c.filters.destination_prefixes for c in charges)
    assert any(c.filters.local_time and c.filters.local_time.days for c in charges)
    assert any(
        c.filters.local_time and c.filters.local_time.start > c.filters.local_time.end for c in charges
    )
    assert any(c.rounding and c.rounding.minimum for c in charges)
    assert any(t.flat_fee for c in charges for t in c.tiers)
    assert any(p.recurring for p in catalog.plans.values())
    assert {p.rounding for p in catalog.plans.values()} == {"half_even", "half_up"}
    accounts = list(catalog.accounts.values())
    assert any(a.tax_rate for a in accounts) and any(a.tax_rate is None for a in accounts)
    assert any(a.net_terms_days != 30 for a in accounts)
    contracts = [c for a in accounts for c in a.contracts]
    assert any(c.discount_percent for c in contracts) and any(c.minimum_commitment for c in contracts)
    assert any(c.one_time for c in contracts) and any(c.end for c in contracts)
    assert any(len(a.contracts) > 1 for a in accounts)


def test_catalog_page_mentions_every_schema_field() -> None:
    schema = yaml.safe_load((ROOT / "schemas" / "catalog.schema.json").read_text())
    page = _page("catalog.md")
    for name, definition in schema["$defs"].items():
        for field_name in definition.get("properties", {}):
            assert f"`{field_name}`" in page or f"{field_name}:" in page, f"{name}.{field_name}"


def test_price_table_matches_the_pricing_code(catalog: Catalog) -> None:
    charges = {c.id: c for p in catalog.plans.values() for c in p.charges}
    ((_, body),) = _marked(_page("catalog.md"), "prices")
    rows = _table(body)
    assert len(rows) >= 10
    for charge_id, _, aggregate, expected, _ in rows:
        assert price(charges[charge_id], Decimal(aggregate)) == Decimal(expected), (charge_id, aggregate)


def _invoice_examples() -> list[tuple[str, str]]:
    return list(_marked(_page("catalog.md"), "invoice"))


def _expected_lines(body: str) -> list[tuple[int, str, str | None, Decimal]]:
    return [(int(no), kind, charge or None, Decimal(amount)) for no, kind, charge, amount, _ in _table(body)]


@pytest.mark.parametrize(
    ("args", "body"), _invoice_examples(), ids=lambda v: v.split()[0] if " " in v else ""
)
def test_worked_invoices_match_invoice_assembly(catalog: Catalog, args: str, body: str) -> None:
    account_id, period, *usage = args.split()
    charges = {c.id: c for p in catalog.plans.values() for c in p.charges}
    totals = []
    for item in usage:
        key, aggregate = item.split("=")
        contract_id, charge_id = key.split("/")
        charge = charges[charge_id]
        a = Decimal(aggregate)
        totals.append(
            UsageTotal(account_id, period, contract_id, charge_id, charge.meter, a, price(charge, a), 1)
        )
    draft = assemble_invoice(catalog.accounts[account_id], catalog, period, totals, "final")
    assert draft is not None
    got = [(line.line_no, line.kind, line.charge_id, line.amount) for line in draft.lines]
    assert got == _expected_lines(body)


def test_worked_invoice_totals_are_stated() -> None:
    page = _page("catalog.md")
    assert "`subtotal` 1648.00, `discount` −82.40, `tax` 313.12, `total` 1878.72" in page
    assert "issued 2026-12-01,\ndue 2026-12-31" in page


def _mutated(change: Any) -> str:
    document = read_catalog_document(CATALOG)
    document = copy.deepcopy(document)
    change(document)
    with pytest.raises(CatalogError) as caught:
        parse_catalog(document, source="catalog.yaml")
    return str(caught.value)


def test_error_examples_are_the_loaders_messages() -> None:
    page = _page("catalog.md")

    def shrink_tier(document: dict[str, Any]) -> None:
        document["plans"][0]["charges"][3]["tiers"][1]["up_to"] = "5"

    def gold(document: dict[str, Any]) -> None:
        document["plans"][1]["currency"] = "XAU"

    for change in (shrink_tier, gold):
        assert f"meterline: error: {_mutated(change)}" in page


def test_cross_object_rules_hold(catalog: Catalog) -> None:
    """A sample of the rules the page lists, each refused by the loader."""

    def overlap(document: dict[str, Any]) -> None:
        document["accounts"][1]["contracts"][1]["start"] = "2026-11-10"

    def mixed_currency(document: dict[str, Any]) -> None:
        document["accounts"][1]["contracts"][1]["plan"] = "starter-usd"

    def duplicate_charge(document: dict[str, Any]) -> None:
        document["plans"][2]["charges"][0]["id"] = "api"

    def foreign_field(document: dict[str, Any]) -> None:
        document["plans"][0]["charges"][0]["unit_price"] = "1"

    assert "overlaps contract" in _mutated(overlap)
    assert "bills in USD" in _mutated(mixed_currency)
    assert "duplicate charge id 'api'" in _mutated(duplicate_charge)
    assert "not used by model graduated" in _mutated(foreign_field)


# --------------------------------------------------------------------------- input-formats.md

NOW = datetime(2026, 11, 20, tzinfo=UTC)


def _format_examples() -> list[tuple[str, str, str | None]]:
    """(format, record, expected reason or None) for every example of input-formats.md."""
    examples: list[tuple[str, str, str | None]] = []
    page = _page("input-formats.md")
    for kind in ("parse", "reject"):
        for args, body in _marked(page, kind):
            fmt, *reason = args.split()
            for line in body.splitlines():
                if line.strip():
                    examples.append((fmt, line, reason[0] if reason else None))
    return examples


def test_every_format_has_parsing_examples() -> None:
    formats = {fmt for fmt, _, reason in _format_examples() if reason is None}
    assert formats == {"json", "cloudevents", "lago", "asterisk-csv"}


@pytest.mark.parametrize(("fmt", "record", "reason"), _format_examples())
def test_format_examples_parse_as_documented(
    catalog: Catalog, fmt: str, record: str, reason: str | None
) -> None:
    raw = record.encode()
    if reason is None:
        event = parse_record(raw, fmt, catalog.meters, NOW)
        assert event.account_id and event.event_id and event.meter in catalog.meters
        if fmt != "asterisk-csv":  # auto detects the same format
            assert parse_record(raw, "auto", catalog.meters, NOW).source_format == fmt
    else:
        with pytest.raises(Rejected) as caught:
            parse_record(raw, fmt, catalog.meters, NOW)
        assert caught.value.reason == reason


def test_example_event_files_parse(catalog: Catalog) -> None:
    outcomes: dict[str, int] = {}
    for name, fmt in (("events.jsonl", "auto"), ("Master.csv", "asterisk-csv")):
        for line in (EXAMPLES / name).read_bytes().splitlines():
            try:
                parse_record(line, fmt, catalog.meters, datetime(2026, 12, 1, tzinfo=UTC))
                key = "ok"
            except Rejected as rejected:
                key = rejected.reason
            outcomes[key] = outcomes.get(key, 0) + 1
    assert outcomes == {"ok": 8, "missing_field": 1, "not_billable": 1}


def test_voice_conversion_example(catalog: Catalog) -> None:
    line = b'{"event_id": "v", "account_id": "globex", "meter": "voice", "quantity": "61", "timestamp": 0}'
    event = parse_record(line, "json", catalog.meters, NOW)
    assert event.quantity == Decimal("1.016666666666666667")
    assert "1.016666666666666667" in _page("input-formats.md")


# --------------------------------------------------------------------------- reason-codes.md


def test_every_reason_code_is_documented_in_precedence_order() -> None:
    page = _page("reason-codes.md")
    headings = re.findall(r"^### `([a-z_]+)`$", page, re.M)
    assert tuple(headings) == REASONS
    summary = [row[1] for row in _table(page.split("| # | code |", 1)[1].join(["| # | code |", ""]))]
    assert tuple(summary) == REASONS
    assert "internal_error" in headings


def test_reason_list_in_input_formats_is_consistent() -> None:
    page = _page("input-formats.md")
    for reason in ("too_large", "malformed", "missing_field", "not_billable", "invalid_timestamp",
                   "future_timestamp", "invalid_quantity"):  # fmt: skip
        assert f"`{reason}`" in page


# --------------------------------------------------------------------------- outputs.md


def test_documented_columns_match_the_store(tmp_path: Path) -> None:
    page = _page("outputs.md")
    store = BillingStore(tmp_path)
    try:
        documented = dict(_marked(page, "columns"))
        assert set(documented) == {
            "invoice_drafts",
            "invoice_lines",
            "usage_totals",
            "rated_usage",
            "rejected_events",
        }
        for table, body in documented.items():
            actual = [(name, kind) for name, kind, *_ in store.db.execute(f"DESCRIBE {table}").fetchall()]
            rows = [(row[0], row[1]) for row in _table(body)]
            assert [name for name, _ in rows] == [name for name, _ in actual], table
            assert rows == actual, table
        query = "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database()"
        tables = [t for (t,) in store.db.execute(query).fetchall()]
        for table in tables:
            assert f"`{table}`" in page, f"table {table} is not documented"
    finally:
        store.close()


# --------------------------------------------------------------------------- operations.md


def test_every_setting_is_documented() -> None:
    ((_, body),) = _marked(_page("operations.md"), "settings")
    documented = [row[0] for row in _table(body)]
    assert sorted(documented) == sorted(f.name for f in fields(Settings))
    defaults = {row[0]: row[1] for row in _table(body)}
    for f in fields(Settings):
        if isinstance(f.default, int | float | str) and not isinstance(f.default, bool):
            assert defaults[f.name].strip("`") == (str(f.default) or "(none)"), f.name


def test_every_metric_is_documented() -> None:
    """Counters by their `_total` name, as PromQL uses them; every exported family, its labels."""
    ((_, body),) = _marked(_page("operations.md"), "metrics")
    documented = {row[0]: {x.strip() for x in row[2].split(",") if x.strip()} for row in _table(body)}
    exported: dict[str, set[str]] = {}
    for name, (family, labels) in _registry().items():
        exported[name if name == f"{family}_total" else family] = set(labels)
    assert documented == exported


def test_every_alert_is_documented() -> None:
    ((_, body),) = _marked(_page("operations.md"), "alerts")
    documented = {row[0]: row[1] for row in _table(body)}
    rules = {
        rule["alert"]: rule["labels"]["severity"]
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert documented == rules


def test_health_reasons_are_documented() -> None:
    page = _page("operations.md")
    health = Health(stall_s=0.0, broker_timeout_s=0.0)
    reasons = [health.status()[1]]  # starting
    health.start("test")
    health.broker_down()
    reasons.append(health.status()[1])
    health.broker_up()
    reasons.append(health.status()[1])  # stalled (stall_s = 0)
    for _ in range(health.max_aborts):
        health.aborted()
    reasons.append(health.status()[1])
    health.fail("producer fenced")
    reasons.append(health.status()[1])
    for reason in reasons:
        prefix = re.split(r" \d|:", reason)[0]
        assert f"`{prefix}" in page, reason


# --------------------------------------------------------------------------- links and references


def _links(path: Path) -> Iterator[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+:", target):
            yield target


@pytest.mark.parametrize(
    "path", [ROOT / "README.md", ROOT / "deploy" / "README.md", *PAGES], ids=lambda p: p.name
)
def test_relative_links_resolve(path: Path) -> None:
    for target in _links(path):
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        assert resolved.exists(), f"{path.name}: {target}"
        if anchor and resolved.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", resolved.read_text(), re.M)
            slugs = {re.sub(r"[^a-z0-9 _-]", "", h.lower()).replace(" ", "-") for h in headings}
            assert anchor in slugs, f"{path.name}: {target}"


def test_no_reference_to_files_outside_the_repository() -> None:
    for path in [ROOT / "README.md", *PAGES]:
        text = path.read_text()
        assert "../shared" not in text and "DESIGN.md" not in text, path.name


# --------------------------------------------------------------------------- against a broker


def _cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "meterline", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _shell_commands(block: str) -> Iterator[list[str]]:
    """The commands of a sh block: a command may span lines inside its quotes; # starts a comment."""
    pending = ""
    for line in block.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # a quote still open: the command goes on
            continue
        pending = ""
        if words:
            yield words


def _query_examples(text: str) -> list[list[str]]:
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for words in _shell_commands(block):
            if words[0].endswith("/meterline"):  # .venv/bin/meterline
                words = ["meterline", *words[1:]]
            if words[:2] == ["meterline", "query"]:
                commands.append(words)
    return commands


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small `meterline demo` into ./meterline-out, where the README's examples look."""
    folder = tmp_path_factory.mktemp("demo")
    done = _cli(["demo", "--accounts", "20", "--events", "3000", "--out", "meterline-out"], folder)
    assert done.returncode == 0, done.stderr
    assert "reconciliation" in done.stdout and ": ok" in done.stdout
    return folder


def _rows(folder: Path, sql: str) -> int:
    con = connect_store(folder / "meterline-out", read_only=True)
    try:
        return len(con.sql(sql).fetchall())
    finally:
        con.close()


@pytest.mark.integration
def test_readme_query_examples_run_as_written_on_the_demo(demo_dir: Path) -> None:
    commands = _query_examples((ROOT / "README.md").read_text())
    assert len(commands) >= 7
    for words in commands:
        done = _cli(words[1:], demo_dir)
        assert done.returncode == 0, f"{words[2]!r}: {done.stderr}"
        assert done.stdout.strip() and not re.search(r"\b0 rows\b", done.stdout), words[2]
        assert _rows(demo_dir, words[2]) > 0, words[2]


@pytest.mark.integration
def test_outputs_page_queries_run_on_the_demo(demo_dir: Path) -> None:
    page = _page("outputs.md")
    checked = 0
    for args, body in _marked(page, "query"):
        for words in _shell_commands(body):
            done = _cli(words[1:], demo_dir)
            assert done.returncode == 0, f"{words[2]!r}: {done.stderr}"
            rows = _rows(demo_dir, words[2])
            assert (rows == 0) if args == "no rows" else (rows > 0), words[2]
            checked += 1
    assert checked >= 6


@pytest.mark.integration
def test_worked_examples_come_out_of_meterline_run(tmp_path: Path) -> None:
    """The example catalog and events, run end to end, give the invoices of catalog.md."""
    out = tmp_path / "out"
    done = _cli(
        ["run", "--catalog", str(CATALOG), "--input", str(EXAMPLES / "events.jsonl"),
         "--input", str(EXAMPLES / "Master.csv"), "--out", str(out), "--close-all"],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    assert "rated: 7" in done.stdout and "duplicates: 1" in done.stdout
    con = connect_store(out, read_only=True)
    try:
        for args, body in _invoice_examples():
            account_id, period, *_ = args.split()
            got = con.execute(
                "SELECT line_no, kind, charge_id, amount FROM invoice_lines l JOIN invoice_drafts d "
                "USING (invoice_id) WHERE l.account_id = ? AND l.period = ? AND d.status = 'final' "
                "ORDER BY line_no",
                [account_id, period],
            ).fetchall()
            assert [(n, k, c, Decimal(a)) for n, k, c, a in got] == _expected_lines(body), account_id
    finally:
        con.close()
    # outputs.md's queries of the plain Parquet files, for when the worker holds the database
    statements = [
        line
        for block in re.findall(r"```sql\n(.*?)```", _page("outputs.md"), re.S)
        for line in block.splitlines()
        if "read_parquet(" in line
    ]
    assert len(statements) >= 3
    plain = duckdb.connect()  # not duckdb's shared default connection, which other tests use
    try:
        for sql in statements:
            assert plain.execute(sql.replace("'meterline-out/", f"'{out}/")).fetchall(), sql
    finally:
        plain.close()


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.integration
def test_dlq_reader_example_reads_what_a_stage_writes(fresh_broker: EmbeddedBroker) -> None:
    broker = fresh_broker  # its own topics: the partition count chosen here affects no other test
    create_topics(Settings(bootstrap_servers=broker.bootstrap_servers, partitions=2))
    marker = f"docs-{os.getpid()}"
    record = dead_letter(
        b'{"event_id": "x"}', b"acme", "missing_field", "timestamp is missing", "mediation",
        "meterline.raw", 0, int.from_bytes(os.urandom(4), "big"),
    )  # fmt: skip
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
    headers = [*record.headers, ("test.marker", marker.encode())]
    producer.produce(record.topic, value=record.value, key=b"acme", headers=headers)
    assert producer.flush(30) == 0
    namespace: dict[str, Any] = {}
    exec(_python_blocks(_page("dlq.md"))[0], namespace)
    found = [
        r for r in namespace["read_rejected"](broker.bootstrap_servers) if r["value"] == b'{"event_id": "x"}'
    ]
    assert any(
        r["reason"] == "missing_field" and r["stage"] == "mediation" and r["source"][0] == "meterline.raw"
        and r["detail"] == "timestamp is missing" and not r["truncated"]
        for r in found
    )  # fmt: skip


def test_files_named_in_the_pages_exist() -> None:
    """A path in backticks (`consolidation/invoice.py`) names a file of the repository."""
    for page in [ROOT / "README.md", *PAGES]:
        for path in re.findall(
            r"`([\w.-]+(?:/[\w.-]+)+\.(?:py|yaml|yml|json|md|toml|avsc|csv|jsonl))`", page.read_text()
        ):
            if path.startswith("DIR/"):
                continue  # an output, not a file of the repository
            assert (ROOT / path).exists() or (page.parent / path).exists(), f"{page.name}: {path}"
