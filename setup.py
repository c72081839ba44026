"""Build hook: compiles the per-event hot path to C with mypyc, from the same sources.

Every event crosses ~60 Avro field reads/writes, a validation and a pricing step on its
way through three stages; interpreted, that per-event Python work is what bounds
throughput (bench/RESULTS.md). mypyc compiles these type-annotated modules as they
are: there is no second copy of the logic, and the .py files stay the source of truth.

Compiled only where mypyc is importable (the dev install has it: `make` builds the
extensions in place after installing, see the Makefile) and METERLINE_PURE_PYTHON is
unset; otherwise the package installs as plain Python and behaves the same, slower.
"""

from __future__ import annotations

import os

from setuptools import setup

# Modules on the per-event path of a stage, the runtime's consume-produce loop included.
# The rest (CLI, configuration, orchestration, the store writes of the sink, whose cost is
# in Arrow and DuckDB) gains nothing measurable and stays interpreted.
COMPILED = [
    "schemas/binary.py",
    "schemas/codec.py",
    "meterline/kernel/catalog.py",
    "meterline/kernel/lineage.py",
    "meterline/kernel/messages.py",
    "meterline/runtime/kafka_checkpoint.py",  # the Kafka stages' commit steps (a produce per output)
    "meterline/runtime/rebalance.py",  # the rebalance callbacks, split out of the runtime
    "meterline/kernel/records.py",
    "meterline/runtime/restore.py",  # the changelog restore loop, split out of the runtime
    "meterline/runtime/stage_runner.py",
    "consolidation/batch.py",  # the sink's per-record checks, totals and rows
    "mediation/dedup.py",
    "mediation/dedup_state.py",  # the dedup state's changelog, split out of the stage
    "mediation/enrich.py",
    "mediation/fields.py",  # field and timestamp reading, split out of normalize
    "mediation/formats.py",
    "mediation/normalize.py",
    "mediation/stage.py",
    "mediation/timestamps.py",
    "meterline/kernel/units.py",
    "rating/charges.py",
    "rating/pricing.py",
    "rating/rater.py",
    "rating/stage.py",
]


def compiled_extensions() -> list[object]:
    if os.environ.get("METERLINE_PURE_PYTHON"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # an isolated build without mypy: plain Python
        return []
    return list(mypycify(COMPILED, opt_level="3", group_name="meterline.native"))


setup(ext_modules=compiled_extensions())
