"""The argument parser of the `meterline` command line: every subcommand, its options and
its --help text. Bad usage raises UsageError with one line, never argparse's usage block.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from meterline.kernel.command_errors import UserError

__all__ = ["UsageError", "build_parser"]


class UsageError(UserError):
    """Bad command-line use."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block.
        raise UsageError(f"{self.prog}: {message} (see --help)")


def _kafka_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="meterline.toml settings file (env METERLINE_CONFIG)"
    )
    parser.add_argument("--bootstrap-servers", metavar="HOST:PORT", help="Kafka bootstrap servers")


def _worker_options(parser: argparse.ArgumentParser) -> None:
    _kafka_options(parser)
    parser.add_argument(
        "--metrics-port", type=int, metavar="N", help="serve /metrics and /healthz on this port"
    )
    parser.add_argument(
        "--instance-id",
        metavar="ID",
        help="stable id of this worker (transactional id suffix; keep it across restarts)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="meterline",
        description="Streaming usage mediation and rating: raw usage events in, exact invoice drafts out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="batch mode: the whole pipeline on the embedded broker",
        description="Publish the catalog and the input files to an embedded broker, run all "
        "stages until the input is drained, write the outputs and print the summary.",
    )
    run.add_argument("--catalog", required=True, metavar="FILE", help="contract catalog (YAML or JSON)")
    run.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="[FORMAT:]FILE",
        help="input file, repeatable, published in the order given; FORMAT is one of auto, json, "
        "cloudevents, lago, asterisk-csv",
    )
    run.add_argument(
        "--format", default="auto", help="format of inputs without a FORMAT: prefix (default auto)"
    )
    run.add_argument("--out", default="meterline-out", metavar="DIR", help="output folder")
    run.add_argument("--close-all", action="store_true", help="finalize every draft at the end of the run")
    run.add_argument("--summary-json", metavar="FILE", help="also write the summary counts as JSON")
    run.add_argument("--config", metavar="FILE", help="meterline.toml settings file")
    run.add_argument("--partitions", type=_positive, help="partitions per topic (default 12)")
    _cdr_timezone_option(run)
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the outputs of an earlier run in DIR (without it such a DIR is refused; "
        "other files in DIR are left alone)",
    )

    demo = sub.add_parser(
        "demo",
        help="`run` on a generated month of SaaS and telecom usage",
        description="Generate a realistic month of usage and run the whole pipeline on it.",
    )
    demo.add_argument("--accounts", type=_positive, default=300, help="number of accounts (default 300)")
    demo.add_argument("--events", type=_positive, default=200_000, help="number of events (default 200000)")
    demo.add_argument(
        "--out",
        default="meterline-out",
        metavar="DIR",
        help="output folder; the demo replaces its own earlier output there",
    )
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")

    for stage, text in (
        ("mediation", "normalize, validate, deduplicate and enrich raw events"),
        ("rating", "price mediated events incrementally"),
        ("chained", "mediation and rating in one process, on a raw topic keyed by account"),
        ("consolidation", "write rated usage and invoice drafts to DuckDB and Parquet"),
    ):
        worker = sub.add_parser(
            stage,
            help=f"long-running {stage} worker: {text}",
            description=f"Run a {stage} worker against Kafka until SIGTERM.",
        )
        _worker_options(worker)
        if stage == "consolidation":
            worker.add_argument("--out", metavar="DIR", help="output folder (default ./meterline-out)")
            worker.add_argument(
                "--no-auto-close",
                action="store_true",
                help="do not close periods automatically (e.g. to backfill past periods)",
            )

    contracts = sub.add_parser(
        "contracts", help="manage the contract catalog", description="Manage the contract catalog topic."
    )
    csub = contracts.add_subparsers(dest="action", required=True, parser_class=_Parser, metavar="ACTION")
    publish = csub.add_parser(
        "publish",
        help="validate a catalog and publish it",
        description="Validate a catalog file and publish it to meterline.contracts. Accounts and "
        "contracts missing from FILE are removed, except those that may have usage in an open "
        "period: a removed contract may have usage in every billing period it was in effect "
        "during, from its start until now, and a period counts as open until it is closed for "
        "the account on meterline.periods. Such removals are refused, naming them, unless "
        "--force (a forced removal leaves that usage without terms at the close).",
    )
    publish.add_argument("file", metavar="FILE")
    publish.add_argument(
        "--force",
        action="store_true",
        help="remove accounts and contracts even if they may have usage in an open period",
    )
    _kafka_options(publish)

    produce = sub.add_parser(
        "produce",
        help="publish raw events from a file",
        description="Publish raw usage records from a file to the raw topic.",
    )
    produce.add_argument("input", metavar="[FORMAT:]FILE")
    produce.add_argument("--format", default="auto", help="format when FILE has no prefix (default auto)")
    produce.add_argument("--topic", help="raw topic (default: the first configured raw topic)")
    _cdr_timezone_option(produce)
    _kafka_options(produce)

    close = sub.add_parser(
        "close",
        help="finalize drafts for a period",
        description="Publish a period close; the consolidation worker finalizes the drafts.",
    )
    close.add_argument("--period", required=True, metavar="YYYY-MM", help="the billing period, e.g. 2026-11")
    close.add_argument("--account", metavar="ID", help="close for one account only")
    _kafka_options(close)

    from meterline.app.replay_options import add_parser as add_replay_parser

    add_replay_parser(sub, _kafka_options)

    from invoice_site.cli import add_parser as add_site_parser

    add_site_parser(sub)

    query = sub.add_parser(
        "query",
        help="DuckDB SQL over the billing store, also while the workers run",
        description="Run DuckDB SQL over the billing store in DIR (invoice_drafts, invoice_lines, "
        "usage_totals, rated_usage, rejected_events), read-only: the latest committed snapshot, "
        "or the one current at --at. Times print in UTC.",
    )
    query.add_argument("sql", metavar="SQL", help='the query, e.g. "SELECT * FROM invoice_drafts"')
    query.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default="table",
        help="table (default, for reading); csv (RFC 4180, header first, NULL as an empty field); "
        "json (one array of objects; DECIMAL as strings at full scale, times as ISO 8601, NULL as null)",
    )
    query.add_argument(
        "--at",
        metavar="TIMESTAMP",
        help="read the store as it was at this ISO 8601 time, e.g. 2026-12-06T10:00:00Z or "
        "2026-12-06T11:00:00+01:00; a time without an offset is UTC",
    )
    query.add_argument("--out", metavar="DIR", help="output folder (default ./meterline-out)")
    query.add_argument(
        "--config",
        metavar="FILE",
        help="meterline.toml settings file, for store_catalog (env METERLINE_CONFIG)",
    )

    broker = sub.add_parser(
        "broker",
        help="run the embedded broker in the foreground",
        description="Run the embedded Kafka-compatible broker (Tansu) until Ctrl-C. It keeps "
        "topics in memory only: everything is lost when it stops (the bundled Tansu has no "
        "persistent storage engine).",
    )
    broker.add_argument("--port", type=_port, help="port (default: a free one)")
    return parser


def _cdr_timezone_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cdr-timezone",
        metavar="ZONE",
        help="IANA time zone (e.g. Europe/Paris) of the times in Asterisk CSV inputs; Asterisk "
        "writes local time unless usegmtime=yes (default: UTC)",
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    value = _positive(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value
