"""Deterministic demo and benchmark data: a contract catalog and a month of raw usage.

Outside the runtime packages: `meterline demo`, the benchmarks and the tests use it,
the pipeline never does.

`generate_catalog` (generator.catalog) builds a realistic catalog document: SaaS and
telecom plans (generator.plans) in EUR, USD, GBP and a few JPY, for accounts across
time zones from America/New_York to Pacific/Auckland, with minimum commitments,
discounts, one-time items, contracts starting mid-month and mid-period plan changes.

`generate_events` (generator.events) streams native-JSON usage lines for one month of
any catalog: per contract and charge it derives event templates whose attributes match
that charge's filters (generator.templates), then fills them in a tight loop because
benchmarks generate millions of events. Exact duplicates and bad records
(generator.bad_records) are mixed in at the requested rates.

`write_month` (generator.files) writes both as the files `meterline run` reads.

Randomness uses floats (`random.Random`), money and quantities never do: they are
written as decimal text. The same arguments always give the same bytes.
"""

from __future__ import annotations

from generator.bad_records import BAD_REASONS
from generator.catalog import generate_catalog
from generator.events import generate_events, planned_counts
from generator.files import write_month

__all__ = ["BAD_REASONS", "generate_catalog", "generate_events", "planned_counts", "write_month"]
