"""What a faulty run must equal: the clean `meterline run --close-all` of the same input.

`reference_run` makes the clean run; `compare_outputs` lists every difference in the
final invoice_drafts, invoice_lines and usage_totals (the first differing row of
each, with its key); `reconciliation_problems` checks the counts and the rated
amounts against usage_totals.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from meterline.app.publish import InputFile
from meterline.runtime.progress import Totals
from tests.integration.harness import meterline_run, table

# Every column but generated_at (the instant a draft was written).
DRAFT_COLUMNS = (
    "invoice_id", "account_id", "period", "period_start", "period_end", "currency", "subtotal",
    "discount", "tax", "total", "status", "issue_date", "due_date", "event_count",
)  # fmt: skip
LINE_COLUMNS = (
    "invoice_id", "account_id", "period", "line_no", "kind", "charge_id", "description", "quantity",
    "unit", "unit_price", "amount", "currency",
)  # fmt: skip
TOTAL_COLUMNS = (
    "account_id", "period", "charge_id", "meter", "contract_id", "aggregate", "amount_exact", "event_count",
)  # fmt: skip
# name: (columns, how many leading columns make the key)
TABLES: dict[str, tuple[tuple[str, ...], int]] = {
    "invoice_lines": (LINE_COLUMNS, 1),  # keyed by (invoice_id, line_no) below
    "invoice_drafts": (DRAFT_COLUMNS, 1),
    "usage_totals": (TOTAL_COLUMNS, 5),
}


def reference_run(catalog: Path, inputs: Sequence[InputFile], out: Path) -> dict[str, int]:
    """The inputs through `meterline run --close-all` with nothing injected; its summary counts."""
    summary = out.parent / f"{out.name}-summary.json"
    specs = [f"{item.format}:{item.path}" for item in inputs]
    extra = [option for spec in specs[1:] for option in ("--input", spec)]
    completed = meterline_run(
        catalog, specs[0], out, *extra, "--close-all", "--summary-json", str(summary), timeout=3600
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    counts: dict[str, int] = json.loads(summary.read_text())
    return counts


def rows(out: Path, name: str) -> list[tuple[Any, ...]]:
    columns, _ = TABLES[name]
    return table(out, f"SELECT {', '.join(columns)} FROM {name} ORDER BY ALL")


def _key(name: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
    if name == "invoice_lines":
        return (row[0], row[3])
    return row[: TABLES[name][1]]


def first_difference(
    name: str, expected: Sequence[tuple[Any, ...]], actual: Sequence[tuple[Any, ...]]
) -> str:
    """The first row, by key, that differs between two versions of a table ('' if none)."""
    columns, _ = TABLES[name]
    want = {_key(name, row): row for row in expected}
    got = {_key(name, row): row for row in actual}
    for key in sorted(want.keys() | got.keys(), key=repr):
        if want.get(key) != got.get(key):

            def show(row: tuple[Any, ...] | None) -> str:
                if row is None:
                    return "(missing)"
                return ", ".join(f"{c}={v}" for c, v in zip(columns, row, strict=True))

            return (
                f"{name}: {len(expected)} rows expected, {len(actual)} found; first difference at "
                f"{key}:\n  expected {show(want.get(key))}\n  found    {show(got.get(key))}"
            )
    if len(expected) != len(actual):
        return f"{name}: {len(expected)} rows expected, {len(actual)} found (repeated keys)"
    return ""


def compare_outputs(out: Path, reference: Path) -> list[str]:
    """Differences of the final invoices and usage totals from the clean run's."""
    problems = []
    for name in TABLES:
        difference = first_difference(name, rows(reference, name), rows(out, name))
        if difference:
            problems.append(difference)
    open_drafts = table(out, "SELECT count(*) FROM invoice_drafts WHERE status <> 'final'")[0][0]
    if open_drafts:
        problems.append(f"{open_drafts} drafts are not final after the close")
    return problems


def reconciliation_problems(
    out: Path, totals: Totals, published: int, expected: Mapping[str, int] | None = None
) -> list[str]:
    """events in = rated + duplicates + rejected; rated amounts = usage_totals.amount_exact per
    account/charge/period; each rated event stored once; counts as `expected` (summary names)."""
    problems = []
    if totals.events_in != published:
        problems.append(f"published {published:,} records, mediation consumed {totals.events_in:,}")
    accounted = totals.rated + totals.duplicates + totals.rejected_total
    if totals.events_in != accounted:
        problems.append(
            f"events in {totals.events_in:,} != rated {totals.rated:,} + duplicates "
            f"{totals.duplicates:,} + rejected {totals.rejected_total:,}"
        )
    mismatched = table(
        out,
        """WITH rated AS (SELECT account_id, charge_id, period, sum(amount) AS amount, count(*) AS n
                          FROM rated_usage GROUP BY ALL),
                totals AS (SELECT account_id, charge_id, period, sum(amount_exact) AS amount,
                                  sum(event_count) AS n FROM usage_totals GROUP BY ALL)
           SELECT * FROM totals t FULL OUTER JOIN rated r USING (account_id, charge_id, period)
           WHERE t.amount IS DISTINCT FROM r.amount OR t.n IS DISTINCT FROM r.n ORDER BY ALL""",
    )
    if mismatched:
        problems.append(f"{len(mismatched)} account/charge/period sums differ, first: {mismatched[0]}")
    stored = table(out, "SELECT count(*), count(DISTINCT (account_id, event_id)) FROM rated_usage")[0]
    if stored != (totals.rated, totals.rated):
        problems.append(f"rated {totals.rated:,} but rated_usage holds (rows, distinct) {stored}")
    if expected is not None:
        found = summary_of(totals)
        for name in sorted(expected.keys() | found.keys()):
            if name != "invoices" and expected.get(name, 0) != found.get(name, 0):
                problems.append(f"{name}: expected {expected.get(name, 0):,}, found {found.get(name, 0):,}")
    return problems


def summary_of(totals: Totals) -> dict[str, int]:
    """The counts `meterline run` prints, from a live pipeline's progress."""
    counts = {
        "events_in": totals.events_in,
        "rated": totals.rated,
        "duplicates": totals.duplicates,
        "rejected": totals.rejected_total,
    }
    counts.update({f"rejected.{r}": n for r, n in totals.rejected.items() if n})
    return counts


def invoice_total(out: Path) -> Decimal:
    return Decimal(table(out, "SELECT coalesce(sum(total), 0) FROM invoice_drafts")[0][0])


def fail(fault: str, seed: int, problems: Sequence[str]) -> None:
    """Raise with the seed and every problem (the first differing invoice line among them)."""
    if problems:
        raise AssertionError(f"{fault} (seed {seed}):\n" + "\n".join(problems))
