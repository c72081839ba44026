"""Two installations with different `topic_prefix` share one broker: each bills exactly
what a run of its own would, and neither creates, reads or writes the other's topics
(their consumer groups and transactional ids are prefixed too, so the same instance id
fences nothing across them)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka.admin import AdminClient

from meterline.app.publish import publish_close
from meterline.runtime.broker import EmbeddedBroker
from tests.integration.harness import LivePipeline, meterline_run, read_topic, table

pytestmark = pytest.mark.integration

FLAT_CATALOG = Path(__file__).parent.parent / "data" / "flat" / "catalog.yaml"
PERIOD = "2026-09"
PREFIXES = ("acme.", "globex-")

DRAFTS = """SELECT account_id, period, currency, subtotal, discount, tax, total, status, event_count
            FROM invoice_drafts ORDER BY ALL"""
LINES = """SELECT account_id, period, line_no, kind, charge_id, description, quantity, unit, unit_price,
                  amount, currency FROM invoice_lines ORDER BY ALL"""
TOTALS = "SELECT * FROM usage_totals ORDER BY ALL"


def _event(event_id: str, account: str, meter: str, quantity: int, day: int, **attributes: str) -> str:
    record: dict[str, Any] = {
        "event_id": event_id,
        "account_id": account,
        "meter": meter,
        "quantity": quantity,
        "timestamp": f"2026-09-{day:02d}T10:00:00Z",
    }
    if attributes:
        record["attributes"] = attributes
    return json.dumps(record)


# The same event ids in both installations, with other quantities: a shared dedup state
# or a record read by the wrong installation would change an invoice.
EVENTS = {
    "acme.": [
        _event("a-1", "alpha", "api_calls", 1000, 5),
        _event("a-2", "alpha", "api_calls", 250, 10),
        _event("s-1", "alpha", "storage", 12, 6, region="eu"),
        _event("b-1", "beta", "api_calls", 400, 5),
    ],
    "globex-": [
        _event("a-1", "alpha", "api_calls", 7000, 8),
        _event("s-1", "alpha", "storage", 40, 9, region="eu"),
        _event("b-1", "beta", "api_calls", 90, 12),
        _event("b-2", "beta", "api_calls", 35, 21),
        _event("b-3", "beta", "api_calls", 35, 22),
    ],
}


def _dearer(path: Path) -> Path:
    """The flat catalog with the EUR API price doubled: the second installation's catalog."""
    document = yaml.safe_load(FLAT_CATALOG.read_text())
    for plan in document["plans"]:
        for charge in plan["charges"]:
            if charge["id"] == "eur-api":
                charge["unit_price"] = "0.004"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _wait_for(path: Path, pipelines: list[LivePipeline], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        for pipeline in pipelines:
            for stage, process in pipeline.workers.processes.items():
                assert process.poll() is None, f"{stage} worker died with {process.returncode}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)  # polling a file the consolidator writes; no event to wait on


@pytest.mark.slow  # make test-slow; kept out of make test's 10 minutes
def test_two_prefixed_installations_share_a_broker_without_seeing_each_other(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    catalogs = {"acme.": FLAT_CATALOG, "globex-": _dearer(tmp_path / "globex.yaml")}
    events: dict[str, Path] = {}
    references: dict[str, dict[str, list[Any]]] = {}
    for prefix in PREFIXES:
        events[prefix] = tmp_path / f"{prefix}events.jsonl"
        events[prefix].write_text("\n".join(EVENTS[prefix]) + "\n")
        ref = tmp_path / f"{prefix}reference"
        completed = meterline_run(
            catalogs[prefix], f"json:{events[prefix]}", ref, "--close-all", partitions=2, timeout=300
        )
        assert completed.returncode == 0, completed.stdout + completed.stderr
        references[prefix] = {
            "drafts": table(ref, DRAFTS),
            "lines": table(ref, LINES),
            "totals": table(ref, TOTALS),
        }
    assert references["acme."]["drafts"] != references["globex-"]["drafts"]

    pipelines = {
        prefix: LivePipeline(fresh_broker, tmp_path / f"{prefix}out", partitions=2, topic_prefix=prefix)
        for prefix in PREFIXES
    }
    try:
        for prefix, pipeline in pipelines.items():
            pipeline.publish(catalogs[prefix], events[prefix])
            pipeline.start("mediation", "rating", "consolidation")
        for prefix, pipeline in pipelines.items():
            totals = pipeline.wait_drained()
            # Only its own records: as many in, all rated, no duplicates across installations.
            assert (totals.events_in, totals.rated, totals.duplicates) == (len(EVENTS[prefix]),) * 2 + (0,)
            assert totals.rejected_total == 0
        for pipeline in pipelines.values():
            publish_close(pipeline.settings, PERIOD)
        for prefix in PREFIXES:
            invoices = tmp_path / f"{prefix}out" / "invoices" / f"period={PERIOD}" / "invoice_lines.parquet"
            _wait_for(invoices, list(pipelines.values()))

        # Every topic on the broker belongs to one installation, and the two have the same set.
        admin = AdminClient({"bootstrap.servers": fresh_broker.bootstrap_servers})
        names = {n for n in admin.list_topics(timeout=10).topics if not n.startswith("__")}
        mine = {p: {n.removeprefix(p) for n in names if n.startswith(p)} for p in PREFIXES}
        assert names == {p + n for p, found in mine.items() for n in found}, "an unprefixed topic"
        assert mine["acme."] == mine["globex-"] and "meterline.usage.rated" in mine["acme."]
        # Each rated topic holds its own installation's records only.
        for prefix in PREFIXES:
            rated = read_topic(fresh_broker.bootstrap_servers, f"{prefix}meterline.usage.rated")
            assert len(rated) == len(EVENTS[prefix])
    finally:
        for pipeline in pipelines.values():
            pipeline.stop()
    for prefix in PREFIXES:
        out = tmp_path / f"{prefix}out"
        assert table(out, DRAFTS) == references[prefix]["drafts"], prefix
        assert table(out, LINES) == references[prefix]["lines"], prefix
        assert table(out, TOTALS) == references[prefix]["totals"], prefix
