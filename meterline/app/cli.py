"""The `meterline` command line (README.md, "The CLI"): runs the subcommand the parser
(meterline.app.cli_parser) read.

Exit codes: 0 success; 2 bad usage, bad input or an invalid catalog; 1 anything
else, always as one clear line, never a bare traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from meterline.app.cli_parser import UsageError, build_parser
from meterline.kernel.catalog_read import CatalogError
from meterline.kernel.command_errors import CommandFailed, UserError
from meterline.kernel.config import ConfigError, Settings, load_settings
from meterline.kernel.headers import check_zone
from meterline.runtime.logs import configure_logging

EXIT_USAGE = 2
EXIT_FAILURE = 1


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(getattr(args, "config", None))
    overrides = {
        "bootstrap_servers": getattr(args, "bootstrap_servers", None),
        "metrics_port": getattr(args, "metrics_port", None),
        "instance_id": getattr(args, "instance_id", None),
        "out_dir": getattr(args, "out", None),
        "partitions": getattr(args, "partitions", None),
    }
    if getattr(args, "no_auto_close", False):
        overrides["auto_close"] = False
    return settings.with_overrides(**overrides)


def _run(args: argparse.Namespace) -> int:
    from meterline.app.pipeline import print_summary, run_pipeline, write_summary_json
    from meterline.app.publish import parse_input

    inputs = [parse_input(spec, args.format) for spec in args.input]
    zone = check_zone(args.cdr_timezone) if args.cdr_timezone is not None else None
    result = run_pipeline(
        _settings(args),
        args.catalog,
        inputs,
        args.out,
        args.close_all,
        args.config,
        overwrite=args.overwrite,
        cdr_timezone=zone,
    )
    print_summary(result, args.out)
    if args.summary_json:
        write_summary_json(result, args.summary_json)
    return 0 if result.reconciled else EXIT_FAILURE


def _demo(args: argparse.Namespace) -> int:
    from generator.files import write_month
    from meterline.app.pipeline import print_summary, run_pipeline
    from meterline.app.publish import InputFile

    work = Path(tempfile.mkdtemp(prefix="meterline-demo-"))
    catalog, events = write_month(work, args.accounts, args.events, args.seed)
    print(f"demo: {args.accounts} accounts, {args.events:,} events generated in {work}", flush=True)
    started = time.monotonic()
    # The demo owns its output folder: each demo replaces the previous one's outputs.
    result = run_pipeline(
        load_settings(None), str(catalog), [InputFile(events, "auto")], args.out, True, overwrite=True,
        documents=True,
    )  # fmt: skip
    print_summary(result, args.out)
    print(f"elapsed: {time.monotonic() - started:.1f}s")
    return 0 if result.reconciled else EXIT_FAILURE


def _query(args: argparse.Namespace) -> int:
    from meterline.app.query import parse_at, run_query

    at = parse_at(args.at) if args.at is not None else None  # before reading any settings
    settings = _settings(args)
    out = Path(settings.out_dir)
    return run_query(args.sql, out, catalog=settings.store_catalog, at=at, fmt=args.format)


def _broker(args: argparse.Namespace) -> int:
    from meterline.runtime.broker import EmbeddedBroker

    stop = False

    def handler(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    # Installed first: a SIGTERM while the broker starts still stops it cleanly.
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    # Said at start: the bundled Tansu has no persistent storage engine (memory, or S3/Postgres
    # that it is not built with or that need a server), so a restart loses every topic.
    print(
        "meterline: the embedded broker keeps topics in memory only; everything is lost when it stops",
        file=sys.stderr,
        flush=True,
    )
    with EmbeddedBroker(args.port) as broker:
        print(f"bootstrap servers: {broker.bootstrap_servers}", flush=True)
        while not stop:
            time.sleep(0.2)
    return 0


# The long-running workers: each stage alone, or mediation and rating chained.
WORKERS = ("mediation", "rating", "chained", "consolidation")


def dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command == "run":
        return _run(args)
    if command == "demo":
        return _demo(args)
    if command in WORKERS:
        from meterline.app.workers import run_worker

        run_worker(command, _settings(args))
        return 0
    if command == "contracts":
        from meterline.app.publish import publish_catalog

        count = publish_catalog(_settings(args), args.file, force=args.force)
        print(f"published {count} catalog entities from {args.file}")
        return 0
    if command == "produce":
        from meterline.app.publish import parse_input, produce_inputs

        zone = check_zone(args.cdr_timezone) if args.cdr_timezone is not None else None
        item = parse_input(args.input, args.format)
        count = produce_inputs(_settings(args), [item], args.topic, cdr_timezone=zone)
        print(f"produced {count} records")
        return 0
    if command == "close":
        from meterline.app.publish import check_period, publish_close

        check_period(args.period)  # before reading any settings: nothing is published
        publish_close(_settings(args), args.period, args.account)
        print(f"close of {args.period}{' for ' + args.account if args.account else ''} published")
        return 0
    if command == "replay":
        from meterline.app.replay import command as replay_command

        return replay_command(_settings(args), args)
    if command == "query":
        return _query(args)
    if command == "broker":
        return _broker(args)
    if command == "site":
        from invoice_site.cli import command as site_command

        return site_command(args)
    raise UsageError(f"unknown command {command!r}")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command not in WORKERS:
            # Commands that print results keep stdout for them; logs go to stderr, warnings only.
            configure_logging("warning")
        return dispatch(args)
    except (UsageError, UserError, ConfigError, CatalogError) as exc:
        print(f"meterline: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except CommandFailed as exc:  # unreachable broker, undelivered records
        print(f"meterline: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("meterline: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line instead of a traceback
        if os.environ.get("METERLINE_DEBUG"):
            raise
        print(f"meterline: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n"))
    return text if len(text) <= 2000 else text[:2000] + "..."


if __name__ == "__main__":
    sys.exit(main())
