"""Invoice drafts and lines as Arrow tables, in the column order of the output tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from consolidation.files import EXACT, MONEY
from consolidation.invoice import InvoiceDraft

DRAFT_SCHEMA = pa.schema(
    [
        ("invoice_id", pa.string()),
        ("account_id", pa.string()),
        ("period", pa.string()),
        ("period_start", pa.date32()),
        ("period_end", pa.date32()),
        ("currency", pa.string()),
        ("subtotal", MONEY),
        ("discount", MONEY),
        ("tax", MONEY),
        ("total", MONEY),
        ("status", pa.string()),
        ("issue_date", pa.date32()),
        ("due_date", pa.date32()),
        ("event_count", pa.int64()),
        ("generated_at", pa.timestamp("us", tz="UTC")),
    ]
)

LINE_SCHEMA = pa.schema(
    [
        ("invoice_id", pa.string()),
        ("account_id", pa.string()),
        ("period", pa.string()),
        ("line_no", pa.int32()),
        ("kind", pa.string()),
        ("charge_id", pa.string()),
        ("description", pa.string()),
        ("quantity", EXACT),
        ("unit", pa.string()),
        ("unit_price", EXACT),
        ("amount", MONEY),
        ("currency", pa.string()),
    ]
)


def draft_table(drafts: Sequence[InvoiceDraft], generated_at: Any) -> pa.Table:
    """The drafts as an Arrow table, built column by column (no dict per row)."""
    columns: dict[str, list[Any]] = {
        name: [getattr(d, name) for d in drafts] for name in DRAFT_SCHEMA.names if name != "generated_at"
    }
    columns["generated_at"] = [generated_at] * len(drafts)
    return pa.table({f.name: pa.array(columns[f.name], f.type) for f in DRAFT_SCHEMA}, schema=DRAFT_SCHEMA)


def line_table(drafts: Sequence[InvoiceDraft]) -> pa.Table:
    """The lines of the drafts as an Arrow table, in draft and line order."""
    lines = [(d, line) for d in drafts for line in d.lines]
    columns: dict[str, list[Any]] = {
        "invoice_id": [d.invoice_id for d, _ in lines],
        "account_id": [d.account_id for d, _ in lines],
        "period": [d.period for d, _ in lines],
        "currency": [d.currency for d, _ in lines],
    }
    for name in ("line_no", "kind", "charge_id", "description", "quantity", "unit", "unit_price", "amount"):
        columns[name] = [getattr(line, name) for _, line in lines]
    return pa.table({f.name: pa.array(columns[f.name], f.type) for f in LINE_SCHEMA}, schema=LINE_SCHEMA)
