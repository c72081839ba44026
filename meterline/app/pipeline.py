"""`meterline run`: the whole pipeline on the embedded broker, in batch mode.

Publishes the catalog and the inputs, runs the workers (mediation and rating chained
in one process, consolidation in another) until every input record has reached its
end (stored, duplicate or rejected), then closes the periods (with --close-all),
checks the reconciliation and prints the summary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Final

import orjson

from consolidation.close_control import export_final_invoices
from consolidation.closing import accounts_active_in, finalize_period, reconcile_amounts, refresh_previews
from consolidation.currency import minor_units
from consolidation.lake import CATALOG_FILE, DATA_DIR, LOCK_FILE
from consolidation.rejected_feed import catch_up
from consolidation.store import BillingStore
from invoice_site.run_outputs import write_invoice_documents, write_site
from meterline.app.chained import STAGE as CHAINED
from meterline.app.publish import InputFile, create_topics, produce_inputs, publish_catalog, publish_close
from meterline.app.rejected_file import write_rejected
from meterline.app.workers import CHAINED_STAGES
from meterline.kernel.catalog import Catalog
from meterline.kernel.catalog_file import load_catalog
from meterline.kernel.command_errors import UserError
from meterline.kernel.config import Settings, settings_to_toml
from meterline.kernel.headers import REJECTED_FILE, SourceLines
from meterline.runtime.broker import EmbeddedBroker
from meterline.runtime.progress import StatsReader, Totals, drained


class PipelineError(RuntimeError):
    """The pipeline could not finish (a worker died, or the run timed out)."""


class OutputExists(UserError):
    """--out holds the outputs of an earlier run and --overwrite was not given."""


# What a run writes into --out: the billing store, its Parquet datasets, the workers'
# logs and the invoice site. Only these are ever removed by --overwrite.
OUTPUTS: Final = (
    CATALOG_FILE, f"{CATALOG_FILE}-wal", f"{CATALOG_FILE}-shm", LOCK_FILE, DATA_DIR,
    "invoices", "logs", "site", "rejected", REJECTED_FILE,
)  # fmt: skip


def earlier_outputs(out: Path) -> list[Path]:
    """The outputs of an earlier run found in `out` (nothing else that folder holds)."""
    return [out / name for name in OUTPUTS if (out / name).exists() or (out / name).is_symlink()]


def prepare_out(out: Path, overwrite: bool) -> None:
    """Make `out` ready for a run: refuse earlier outputs, or remove them with `overwrite`.

    A run never reuses an earlier run's stored offsets, lineage or drafts: mixed, they
    would double or drop usage while the reconciliation still adds up.
    """
    if out.exists() and not out.is_dir():
        raise OutputExists(f"--out {out}: not a directory")
    found = earlier_outputs(out)
    if found and not overwrite:
        names = ", ".join(path.name for path in found)
        raise OutputExists(
            f"--out {out} holds the outputs of an earlier run ({names}); "
            "pass --overwrite to replace them, or choose another --out"
        )
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True, slots=True)
class RunResult:
    totals: Totals
    published: int
    invoices: int
    reconciled: bool
    problems: tuple[str, ...]
    accounts: int = 0
    # (currency, invoices, total) over all drafts, for the summary.
    invoice_totals: tuple[tuple[str, int, Decimal], ...] = ()
    # Each rejection with its input file and line.
    rejected_file: Path | None = None
    # The invoice site's top page, written after the close.
    site_index: Path | None = None
    # What became of the PDFs and e-invoices of the final invoices (demo only).
    documents: str | None = None

    def summary(self) -> dict[str, int]:
        t = self.totals
        counts = {
            "events_in": t.events_in,
            "rated": t.rated,
            "duplicates": t.duplicates,
            "rejected": t.rejected_total,
        }
        counts.update({f"rejected.{r}": n for r, n in sorted(t.rejected.items()) if n})
        counts["invoices"] = self.invoices
        return counts


class Workers:
    """A run's worker processes: `<stage>`, and `<stage>-<n>` for a stage's n-th (id `<id>-<n>`)."""

    def __init__(self, settings: Settings, out_dir: Path, config: str | None) -> None:
        self.settings = settings
        self.out_dir = out_dir
        self.config = config
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def command(self, stage: str, instance: int = 1) -> list[str]:
        s = self.settings
        cmd = [
            sys.executable,
            "-m",
            "meterline",
            stage,
            "--bootstrap-servers",
            s.bootstrap_servers,
            "--instance-id",
            s.instance_id if instance == 1 else f"{s.instance_id}-{instance}",
        ]
        if self.config:
            cmd += ["--config", self.config]
        if stage == "consolidation":
            cmd += ["--out", str(self.out_dir), "--no-auto-close"]
        return cmd

    def start(self, stage: str, instance: int = 1) -> subprocess.Popen[bytes]:
        name = stage if instance == 1 else f"{stage}-{instance}"
        log_dir = self.out_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        handle = (log_dir / f"{name}.log").open("ab")
        self._logs.append(handle)
        env = {
            **os.environ,
            "METERLINE_PARTITIONS": str(self.settings.partitions),
            "METERLINE_TOPIC_PREFIX": self.settings.topic_prefix,
        }
        process = subprocess.Popen(
            self.command(stage, instance), stdout=handle, stderr=handle, env=env, stdin=subprocess.DEVNULL
        )
        self.processes[name] = process
        return process

    def check(self) -> None:
        for stage, process in self.processes.items():
            if process.poll() is not None:
                raise PipelineError(
                    f"the {stage} worker exited with code {process.returncode}; "
                    f"see {self.out_dir / 'logs' / (stage + '.log')}"
                )

    def stop(self, timeout: float = 30) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for handle in self._logs:
            handle.close()


class ProgressLine:
    """A one-line progress display on terminals; silent in pipes and CI."""

    def __init__(self, total: int, stream: IO[str] = sys.stderr) -> None:
        self.total = total
        self.stream = stream
        self.enabled = stream.isatty() and not os.environ.get("CI")
        self.started = time.monotonic()
        self._last = 0.0

    def show(self, totals: Totals) -> None:
        if not self.enabled or time.monotonic() - self._last < 0.5:
            return
        self._last = time.monotonic()
        elapsed = max(time.monotonic() - self.started, 1e-3)
        done = (
            totals.consolidation_consumed
            + totals.duplicates
            + totals.rejected_total
            - totals.rejected.get("period_closed", 0)
        )
        rate = done / elapsed
        left = f"{(self.total - done) / rate:.0f}s" if rate > 0 and done < self.total else "-"
        self.stream.write(
            f"\rmediation {totals.events_in:,}/{self.total:,}  rating {totals.rating_consumed:,}"
            f"  consolidation {totals.consolidation_consumed:,}  {rate:,.0f} ev/s  left {left}   "
        )
        self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\n")


def _month_range(first: str, last: str) -> list[str]:
    year, month = int(first[:4]), int(first[5:7])
    periods = []
    while f"{year:04d}-{month:02d}" <= last:
        periods.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return periods


def chained_workers(settings: Settings) -> int:
    """How many chained workers a run starts: one per core, at most one per partition."""
    return max(1, min(os.cpu_count() or 1, settings.partitions))


def run_pipeline(
    settings: Settings,
    catalog_path: str,
    inputs: Sequence[InputFile],
    out_dir: str,
    close_all: bool,
    config: str | None = None,
    timeout_s: float = 3600,
    overwrite: bool = False,
    cdr_timezone: str | None = None,
    documents: bool = False,
    stages: Sequence[str] = CHAINED_STAGES,
) -> RunResult:
    """Run the whole pipeline on a private embedded broker; outputs go to `out_dir`.

    An `out_dir` holding an earlier run's outputs is refused (OutputExists) unless
    `overwrite`, which removes those outputs first. Each rejection is listed with its
    input file and line in `out_dir/rejected.jsonl`. `cdr_timezone` is the zone of the
    times of Asterisk CSV inputs. `documents`: also print the final invoices' PDFs and
    e-invoices (the demo does; `meterline site` does it for any output). `stages`: the
    workers, mediation and rating chained in one process unless told otherwise.
    """
    catalog = load_catalog(catalog_path)  # a bad catalog fails here, before anything starts
    out = Path(out_dir).resolve()
    prepare_out(out, overwrite)
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory(prefix="meterline-run-") as private:
        # The run owns its raw topic and keys it by account as it publishes, so mediation
        # deduplicates without the repartition hop, and rating runs chained after it.
        raw = settings.raw_topics[0]
        s = replace(
            settings.with_overrides(bootstrap_servers=broker.bootstrap_servers, instance_id="run"),
            raw_topics=(replace(raw, keyed_by_account=True),),
        )
        worker_config = Path(private) / "meterline.toml"  # may hold secrets: private folder, not DIR
        worker_config.write_text(settings_to_toml(s))
        worker_config.chmod(0o600)
        create_topics(s)
        publish_catalog(s, catalog_path)
        workers = Workers(s, out, str(worker_config))
        lines = SourceLines(s.partitions)
        try:
            for stage in stages:
                # Chained workers share the partitions: one per core, so both stages use every core.
                for instance in range(1, (chained_workers(s) if stage == CHAINED else 1) + 1):
                    workers.start(stage, instance)
            published = produce_inputs(
                s, list(inputs), key_by_account=True, cdr_timezone=cdr_timezone, lines=lines
            )
            totals = _wait_drained(s, workers, published, timeout_s)
        finally:
            workers.stop()
        _, rejected_file = write_rejected(s, s.topics.name(raw.name), lines, out)
        result = _finish(s, catalog, out, totals, published, close_all)
        site_index = write_site(s, catalog, out)
        made = write_invoice_documents(s, catalog, out, site_index.parent) if documents else None
        return replace(result, rejected_file=rejected_file, site_index=site_index, documents=made)


def _wait_drained(settings: Settings, workers: Workers, published: int, timeout_s: float) -> Totals:
    topics = settings.topics
    reader = StatsReader(
        settings.bootstrap_servers, settings.kafka, topics.stats, topics.group("meterline-progress")
    )
    progress = ProgressLine(published)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            reader.poll(0.2)
            totals = reader.totals([topics.name(t.name) for t in settings.raw_topics])
            progress.show(totals)
            if drained(totals, published):
                progress.done()
                return totals
            workers.check()
            if time.monotonic() > deadline:
                raise PipelineError(f"the pipeline did not drain within {timeout_s:.0f}s")
    finally:
        reader.close()


def _finish(
    settings: Settings, catalog: Catalog, out: Path, totals: Totals, published: int, close_all: bool
) -> RunResult:
    store = BillingStore(out, settings.store_catalog)
    try:
        # The workers stopped: read the DLQ to its end, so rejected_events holds the run's
        # last rejections too (the consolidator may have stopped before it stored them).
        catch_up(settings, store, catalog)
        now = datetime.now(UTC)
        with_usage = store.periods_with_usage()
        periods = _month_range(with_usage[0], with_usage[-1]) if with_usage else []
        problems: list[str] = []
        for period in periods:
            if close_all:  # closing builds every draft of the period itself
                finalize_period(store, catalog, period, now)
                store.mark_close_done(period, None, range(settings.partitions))
                export_final_invoices(store, period)
                publish_close(settings, period)
            else:
                active = accounts_active_in(catalog, period)
                refresh_previews(store, catalog, [(a, period) for a in active], now)
            problems += [
                f"{p}: {a}/{c} rated amounts differ from usage_totals"
                for a, c, p in reconcile_amounts(store, period)
            ]
        if totals.events_in != published:
            problems.append(f"published {published} records but mediation consumed {totals.events_in}")
        accounted = totals.rated + totals.duplicates + totals.rejected_total
        if totals.events_in != accounted:
            problems.append(
                f"events in {totals.events_in} != rated {totals.rated} + duplicates "
                f"{totals.duplicates} + rejected {totals.rejected_total}"
            )
        counts = {"events_in": totals.events_in, "rated": totals.rated, "duplicates": totals.duplicates}
        with store.transaction() as db:  # `run_counts`, and rejections by reason (`rejected_counts`)
            db.execute("DELETE FROM run_counts")
            db.execute("DELETE FROM rejected_counts")
            db.executemany("INSERT INTO run_counts VALUES (?, ?)", list(counts.items()))
            for reason, events in sorted(totals.rejected.items()):
                db.execute("INSERT INTO rejected_counts VALUES (?, ?)", [reason, events])
        invoices = store.count_drafts("final") + store.count_drafts("open")
        by_currency = store.db.execute(
            "SELECT currency, count(*), sum(total) FROM invoice_drafts GROUP BY 1 ORDER BY 1"
        ).fetchall()
        return RunResult(
            totals,
            published,
            invoices,
            not problems,
            tuple(problems),
            accounts=len(catalog.accounts),
            invoice_totals=tuple((c, int(n), Decimal(t)) for c, n, t in by_currency),
        )
    finally:
        store.close()


def print_summary(result: RunResult, out_dir: str, stream: IO[str] = sys.stdout) -> None:
    t = result.totals
    stream.write(f"meterline run: {result.published:,} records in, output in {out_dir}\n")
    stream.write(
        f"reconciliation: events in {t.events_in} = rated {t.rated} + duplicates {t.duplicates}"
        f" + rejected {t.rejected_total}: {'ok' if result.reconciled else 'MISMATCH'}\n"
    )
    for problem in result.problems:
        stream.write(f"problem: {problem}\n")
    if result.rejected_file is not None and t.rejected_total:
        stream.write(
            f"{t.rejected_total} rejected records, with the file and line of each, are in "
            f"{result.rejected_file} (file, line, reason, detail)\n"
        )
    stream.write(f"accounts in catalog: {result.accounts}\n")
    for currency, count, total in result.invoice_totals:
        exact = total.quantize(Decimal(1).scaleb(-minor_units(currency)))
        stream.write(f"invoice totals {currency}: {count} drafts, {exact:,}\n")
    if result.site_index is not None:
        stream.write(f"site: {result.site_index.as_uri()}\n")
    if result.documents is not None:
        stream.write(f"documents: {result.documents}\n")
    for name, value in result.summary().items():
        stream.write(f"{name}: {value}\n")


def write_summary_json(result: RunResult, path: str) -> None:
    Path(path).write_bytes(orjson.dumps(result.summary(), option=orjson.OPT_INDENT_2))
