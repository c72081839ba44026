"""Prometheus metrics of a meterline process and its `/metrics` + `/healthz` endpoint."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from meterline.runtime.health import HEALTH

CONSUMED = Counter("meterline_events_consumed_total", "Records consumed", ["stage", "topic"])
PRODUCED = Counter("meterline_events_produced_total", "Records produced (outputs)", ["stage", "topic"])
REJECTED = Counter("meterline_events_rejected_total", "Records sent to the DLQ", ["stage", "reason"])
DEDUPLICATED = Counter("meterline_events_deduplicated_total", "Duplicate events dropped", ["stage"])
RATED = Counter("meterline_events_rated_total", "Events rated", ["stage"])
AMOUNT_RATED = Gauge(  # a Gauge: volume/package deltas can be negative
    "meterline_amount_rated",
    "Amount rated per currency (dashboards only; invoices use exact decimals)",
    ["currency"],
)
REPLAYS_SKIPPED = Counter(
    "meterline_replayed_records_skipped_total",
    "Upstream records already applied (replays of aborted transactions) that were skipped",
    ["stage"],
)
BATCH_SECONDS = Histogram(
    "meterline_batch_processing_seconds",
    "Time to process one batch (transform + produce + commit)",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
COMMIT_SECONDS = Histogram(
    "meterline_transaction_commit_seconds",
    "Time to commit one transaction",
    ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
ABORTS = Counter("meterline_transaction_aborts_total", "Aborted transactions", ["stage", "kind"])
EVENT_TIME_LAG = Gauge(
    "meterline_event_time_lag_seconds",
    "Processing time minus event time of the last batch's newest event",
    ["stage"],
)
CONSUMER_LAG = Gauge(
    "meterline_consumer_lag", "High watermark minus position", ["stage", "topic", "partition"]
)
STATE_ENTRIES = Gauge("meterline_state_entries", "Entries held in stage state", ["stage"])
RESTORE_SECONDS = Histogram(
    "meterline_state_restore_seconds",
    "Time to restore a partition's state from its changelog",
    ["stage"],
    buckets=(0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60),
)
INVOICES = Gauge("meterline_invoices", "Invoice drafts by status", ["status"])
RECONCILIATION_ERRORS = Counter(
    "meterline_reconciliation_errors_total", "Reconciliation mismatches found at period close", ["check"]
)
READY = Gauge("meterline_ready", "1 once the process has restored its state and is processing", ["stage"])

CONTROL_RECORDS_SKIPPED = Counter(
    "meterline_control_records_skipped_total",
    "Unreadable records on a control topic (contracts, periods), skipped",
    ["topic"],
)
CLOSE_ACCOUNTS_SKIPPED = Counter(
    "meterline_close_accounts_skipped_total",
    "Accounts with usage that a period close could not finalize (reported, never silent)",
    ["period"],
)
INTERNAL_ERRORS = Counter(
    "meterline_internal_errors_total", "Records a stage failed on unexpectedly (sent to the DLQ)", ["stage"]
)
DLQ_TRUNCATED = Counter(
    "meterline_dlq_truncated_total", "DLQ copies cut to fit the DLQ topic's record size", ["stage"]
)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/metrics"):
            HEALTH.status()  # refreshes meterline_healthy for scrapes between probes
            body, status, kind = generate_latest(), 200, CONTENT_TYPE_LATEST
        elif self.path.startswith("/healthz"):
            ok, reason = HEALTH.status()
            body, status, kind = (reason + "\n").encode(), (200 if ok else 503), "text/plain"
        else:
            body, status, kind = b"not found\n", 404, "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep access logs out of JSON logs
        return


def serve_metrics(port: int) -> ThreadingHTTPServer | None:
    """Serve /metrics and /healthz on a daemon thread; port 0 disables the endpoint."""
    if port <= 0:
        return None
    server = ThreadingHTTPServer(("0.0.0.0", port), _Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
