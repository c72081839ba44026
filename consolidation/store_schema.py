"""The billing store's tables: one Arrow schema each, and the DDL derived from it.

The Arrow schemas are also what batches, drafts and exports are built with, so a
column is declared once. Tables a reader sees (rated_usage, invoice_drafts,
invoice_lines, usage_totals, rejected_events, close_problems) keep the names and
columns documented in docs/outputs.md; the others are the consolidator's own.

Every table written per batch is append-only (rated_usage, usage_deltas,
consumer_positions, rejected_events): appends by several processes never conflict
in DuckLake, where two commits deleting from the same file do. `usage_totals` is a
view summing `usage_deltas`; store maintenance rolls the deltas up.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Final

import duckdb
import pyarrow as pa

from consolidation.files import EXACT, RATED_SCHEMA
from consolidation.invoice_tables import DRAFT_SCHEMA, LINE_SCHEMA
from consolidation.rejected import REJECTED_SCHEMA

DELTA_SCHEMA: Final = pa.schema(
    [
        ("account_id", pa.string()),
        ("period", pa.string()),
        ("charge_id", pa.string()),
        ("meter", pa.string()),
        ("contract_id", pa.string()),
        ("aggregate", EXACT),  # the running aggregate after the batch
        ("amount_exact", EXACT),  # the batch's amount
        ("event_count", pa.int64()),
        ("partition", pa.int32()),  # the rated topic's partition (its owner writes the row)
        ("through", pa.int64()),  # the batch's last offset: orders the aggregates
    ]
)

POSITION_SCHEMA: Final = pa.schema(
    [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("next_offset", pa.int64()),
        ("lineage", pa.string()),  # JSON: the lineage guard's applied offsets
        ("counts", pa.string()),  # JSON: the partition's running event counts
    ]
)

CLOSE_DONE_SCHEMA: Final = pa.schema(
    [("period", pa.string()), ("account_id", pa.string()), ("partition", pa.int32())]
)

CLOSE_PROBLEM_SCHEMA: Final = pa.schema(
    [
        ("period", pa.string()),
        ("account_id", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("noticed_at", pa.timestamp("us", tz="UTC")),
    ]
)

REJECTED_TABLE_SCHEMA: Final = REJECTED_SCHEMA.append(pa.field("replayed", pa.bool_())).append(
    pa.field("replayed_at", pa.timestamp("us", tz="UTC"))
)

COUNT_SCHEMA: Final = pa.schema([("name", pa.string()), ("events", pa.int64())])
REJECTED_COUNT_SCHEMA: Final = pa.schema([("reason", pa.string()), ("events", pa.int64())])

# name -> (schema, partitioned by)
TABLES: Final[dict[str, tuple[pa.Schema, str | None]]] = {
    "rated_usage": (RATED_SCHEMA, "period"),
    "usage_deltas": (DELTA_SCHEMA, "partition"),
    "invoice_drafts": (DRAFT_SCHEMA, None),
    "invoice_lines": (LINE_SCHEMA, None),
    "consumer_positions": (POSITION_SCHEMA, None),
    "closes_done": (CLOSE_DONE_SCHEMA, None),
    "close_problems": (CLOSE_PROBLEM_SCHEMA, None),
    "rejected_events": (REJECTED_TABLE_SCHEMA, None),
    "run_counts": (COUNT_SCHEMA, None),
    "rejected_counts": (REJECTED_COUNT_SCHEMA, None),
}

# The running aggregate of a key is the one written last (its partition's latest offset).
USAGE_TOTALS_VIEW: Final = """
CREATE OR REPLACE VIEW usage_totals AS
SELECT account_id, period, charge_id, meter, contract_id,
       arg_max(aggregate, through) AS aggregate,
       sum(amount_exact)::DECIMAL(38,18) AS amount_exact,
       sum(event_count)::BIGINT AS event_count
FROM usage_deltas
GROUP BY account_id, period, charge_id, meter, contract_id
"""


def duck_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_decimal(arrow_type):
        return f"DECIMAL({arrow_type.precision},{arrow_type.scale})"
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMPTZ" if arrow_type.tz else "TIMESTAMP"
    if pa.types.is_date(arrow_type):
        return "DATE"
    if pa.types.is_int32(arrow_type):
        return "INTEGER"
    if pa.types.is_integer(arrow_type):
        return "BIGINT"
    if pa.types.is_boolean(arrow_type):
        return "BOOLEAN"
    return "VARCHAR"


def create_table_sql(name: str, schema: pa.Schema) -> str:
    columns = ", ".join(f"{f.name} {duck_type(f.type)}" for f in schema)
    return f"CREATE TABLE {name}({columns})"


def column_list(schema: pa.Schema) -> str:
    return ", ".join(schema.names)


def create_missing(db: duckdb.DuckDBPyConnection) -> None:
    """Create the tables and views that do not exist yet, in one transaction."""
    existing = {
        name
        for (name,) in db.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
        ).fetchall()
    }
    views = {
        name
        for (name,) in db.execute(
            "SELECT view_name FROM duckdb_views() WHERE database_name = current_database()"
        ).fetchall()
    }
    missing = {name: spec for name, spec in TABLES.items() if name not in existing}
    if not missing and "usage_totals" in views:
        return
    db.execute("BEGIN TRANSACTION")
    try:
        for name, (schema, partitioned_by) in missing.items():
            db.execute(create_table_sql(name, schema))
            if partitioned_by is not None:
                db.execute(f"ALTER TABLE {name} SET PARTITIONED BY ({partitioned_by})")
        if "usage_totals" not in views:
            db.execute(USAGE_TOTALS_VIEW)
        db.execute("COMMIT")
    except BaseException:
        with suppress(duckdb.Error):  # a failed COMMIT has ended the transaction already
            db.execute("ROLLBACK")
        raise
