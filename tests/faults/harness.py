"""The fault-injection harness: the whole pipeline as real worker processes on the real
embedded broker, any number of processes per stage (each with its own instance id),
that a test can SIGKILL, SIGSTOP, restart or multiply while it watches progress.

Sizes and seeds come from the environment, so `make faults` and a developer's run
differ only there:

    METERLINE_FAULT_EVENTS   events of the shared stream (default 500,000)
    METERLINE_FAULT_KILL_EVENTS  events of the SIGKILL fault (default: METERLINE_FAULT_EVENTS)
    METERLINE_FAULT_GARBAGE  hostile records of the garbage fault (default 100,000)
    METERLINE_FAULT_SEED     overrides every fault's own default seed
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from meterline.app.pipeline import Workers
from meterline.app.publish import InputFile, create_topics, produce_inputs, publish_catalog, publish_close
from meterline.app.workers import CHAINED_STAGES, STAGES
from meterline.kernel.config import RawTopic, Settings, settings_to_toml
from meterline.runtime.broker import EmbeddedBroker
from meterline.runtime.progress import StatsReader, Totals, drained

EVENTS = int(os.environ.get("METERLINE_FAULT_EVENTS", "500000"))
KILL_EVENTS = int(os.environ.get("METERLINE_FAULT_KILL_EVENTS", EVENTS))
GARBAGE = int(os.environ.get("METERLINE_FAULT_GARBAGE", "100000"))
MONTH = "2026-10"  # the generator's month


def fault_seed(default: int) -> int:
    """The seed of one fault: its default, or METERLINE_FAULT_SEED; printed for reruns."""
    seed = int(os.environ.get("METERLINE_FAULT_SEED", default))
    print(f"fault seed: {seed} (rerun with METERLINE_FAULT_SEED={seed})")
    return seed


class StallableBroker(EmbeddedBroker):
    """The embedded broker, whose process a test can stop and continue."""

    def send(self, signum: int) -> None:
        process = self._process
        assert process is not None and process.poll() is None, "the broker is not running"
        os.kill(process.pid, signum)


class InstanceWorkers(Workers):
    """The stage processes of one instance id. The first instance logs to
    `<out>/logs/<stage>.log`, the others to `<stage>-<instance>.log`."""

    def __init__(
        self, settings: Settings, out_dir: Path, instance: str, first: bool, config: str | None = None
    ) -> None:
        super().__init__(settings, out_dir, config)
        self.log_name = "{stage}.log" if first else "{stage}-" + instance + ".log"

    def start(self, stage: str) -> subprocess.Popen[bytes]:
        log_dir = self.out_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        handle = (log_dir / self.log_name.format(stage=stage)).open("ab")
        self._logs.append(handle)
        env = {**os.environ, "METERLINE_PARTITIONS": str(self.settings.partitions)}
        process = subprocess.Popen(
            self.command(stage), stdout=handle, stderr=handle, env=env, stdin=subprocess.DEVNULL
        )
        self.processes[stage] = process
        return process


@dataclass
class Kill:
    """One injection: a stage process killed (or stopped) at a point of its progress."""

    stage: str
    instance: str
    progress: int  # records the stage had consumed
    total: int  # records it will consume in all
    at: float  # time.monotonic() of the kill
    recovered_s: float | None = None  # until its progress moved past `progress` again

    def describe(self) -> str:
        share = f"{self.progress / self.total:.0%}" if self.total else "?"
        return f"{self.stage}@{self.progress:,} ({share})"


def progress_of(stage: str, totals: Totals) -> int:
    """Records a stage has consumed, by the progress it published."""
    if stage in ("mediation", "chained"):
        return totals.events_in
    if stage == "rating":
        return totals.rating_consumed
    return totals.consolidation_consumed


class Feeder:
    """Publishes input files piece by piece, at most `window` pieces ahead of the records
    that reached their end, so that a long series of injections lands while the stream
    still flows through every stage (published at once, mediation would be done long
    before the last kill)."""

    def __init__(self, files: Sequence[InputFile], folder: Path, pieces: int, window: int = 3) -> None:
        formats = {item.format for item in files}
        assert len(formats) == 1, "one format per feeder"
        fmt = formats.pop()
        lines = [line for item in files for line in item.path.read_bytes().splitlines() if line.strip()]
        self.size = -(-len(lines) // pieces)
        self.window = window
        self.paused = False
        folder.mkdir(parents=True, exist_ok=True)
        self.pieces: list[InputFile] = []
        for number in range(0, len(lines), self.size):
            path = folder / f"piece-{number // self.size:04d}.jsonl"
            path.write_bytes(b"".join(line + b"\n" for line in lines[number : number + self.size]))
            self.pieces.append(InputFile(path, fmt))
        self.next = 0

    @property
    def done(self) -> bool:
        return self.next == len(self.pieces)

    def feed(self, pipeline: FaultPipeline, totals: Totals) -> None:
        finished = totals.consolidation_consumed + totals.duplicates + totals.rejected_total
        while not self.paused and not self.done and finished >= pipeline.published - self.window * self.size:
            pipeline.publish([self.pieces[self.next]])
            self.next += 1


class FaultPipeline:
    """Worker processes of the pipeline; `chained`: mediation and rating in one worker, on a
    raw topic keyed by account (as `meterline run` runs them), else every stage apart."""

    def __init__(self, broker: EmbeddedBroker, out: Path, partitions: int = 4, chained: bool = False) -> None:
        self.settings = Settings(
            bootstrap_servers=broker.bootstrap_servers,
            partitions=partitions,
            instance_id="fault-a",
            raw_topics=(RawTopic("meterline.raw", keyed_by_account=chained),),
        )
        self.out = out
        self.chained = chained
        self.stages = CHAINED_STAGES if chained else STAGES
        self.config: str | None = None
        if chained:  # the workers learn that the raw topic is keyed from a config file
            out.mkdir(parents=True, exist_ok=True)
            config = out.parent / f"{out.name}-meterline.toml"
            config.write_text(settings_to_toml(self.settings))
            self.config = str(config)
        create_topics(self.settings)
        self.reader = StatsReader(self.settings.bootstrap_servers, {})
        self.instances: dict[str, InstanceWorkers] = {}
        self.alive: set[tuple[str, str]] = set()  # processes that must be running
        self.published = 0
        self.restarts = 0
        self.stopped = False
        self.feeder: Feeder | None = None
        self.keep_going = False
        self.deaths: list[str] = []

    # -- inputs ----------------------------------------------------------------

    def publish_catalog(self, catalog: Path) -> None:
        publish_catalog(self.settings, catalog)

    def publish(self, inputs: Sequence[InputFile]) -> int:
        self.published += produce_inputs(self.settings, list(inputs), key_by_account=self.chained)
        return self.published

    def feed(self, files: Sequence[InputFile], folder: Path, pieces: int = 50) -> None:
        """Publish `files` piece by piece while the test watches (see Feeder)."""
        self.feeder = Feeder(files, folder, pieces)
        self.feeder.feed(self, self.totals())

    # -- processes -------------------------------------------------------------

    def workers(self, instance: str) -> InstanceWorkers:
        if instance not in self.instances:
            settings = replace(self.settings, instance_id=f"fault-{instance}")
            first = not self.instances
            self.instances[instance] = InstanceWorkers(settings, self.out, instance, first, self.config)
        return self.instances[instance]

    def start(self, *stages: str, instance: str = "a") -> None:
        for stage in stages or self.stages:
            self.workers(instance).start(stage)
            self.alive.add((stage, instance))

    def process(self, stage: str, instance: str = "a") -> subprocess.Popen[bytes]:
        return self.workers(instance).processes[stage]

    def pids(self) -> dict[tuple[str, str], int]:
        return {(stage, inst): self.process(stage, inst).pid for stage, inst in sorted(self.alive)}

    def kill(self, stage: str, instance: str = "a", signum: int = signal.SIGKILL) -> None:
        """End a stage process (SIGKILL by default) and wait until it is gone."""
        process = self.process(stage, instance)
        self.alive.discard((stage, instance))
        process.send_signal(signum)
        process.wait(60)

    def restart(self, stage: str, instance: str = "a") -> None:
        self.kill(stage, instance)
        self.start(stage, instance=instance)
        self.restarts += 1

    def pause(self, stage: str, instance: str = "a") -> None:
        self.process(stage, instance).send_signal(signal.SIGSTOP)

    def resume(self, stage: str, instance: str = "a") -> None:
        self.process(stage, instance).send_signal(signal.SIGCONT)

    def check_alive(self) -> None:
        """A worker that exited fails the test, or with `keep_going` is noted in `deaths`
        (while another process of its stage runs on)."""
        for stage, instance in sorted(self.alive):
            process = self.process(stage, instance)
            if process.poll() is not None:
                log = self.out / "logs" / self.workers(instance).log_name.format(stage=stage)
                death = (
                    f"the {stage} worker (instance {instance}) exited with {process.returncode}; "
                    f"{log}: {last_error(log)}"
                )
                others = [i for s, i in self.alive if s == stage and i != instance]
                if not self.keep_going or not others:
                    raise AssertionError(death)
                self.deaths.append(death)
                self.alive.discard((stage, instance))

    # -- progress --------------------------------------------------------------

    def totals(self) -> Totals:
        self.reader.poll(0.2)
        return self.reader.totals([t.name for t in self.settings.raw_topics])

    def watch(self, until: Callable[[Totals], bool], timeout: float, what: str) -> Totals:
        """Poll progress until `until` holds; every worker that should run must stay alive."""
        deadline = time.monotonic() + timeout
        while True:
            totals = self.totals()
            if self.feeder is not None:
                self.feeder.feed(self, totals)
            if until(totals):
                return totals
            self.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last {totals}")

    def hold(self, seconds: float) -> Totals:
        """Keep watching for `seconds` (the length of an injected fault), workers alive throughout."""
        end = time.monotonic() + seconds
        return self.watch(lambda _: time.monotonic() >= end, seconds + 60, f"{seconds:.0f}s to pass")

    def drained(self, totals: Totals) -> bool:
        return (self.feeder is None or self.feeder.done) and drained(totals, self.published)

    def wait_drained(self, timeout: float = 1800) -> Totals:
        return self.watch(self.drained, timeout, "every input record to reach its end")

    def wait_recovered(self, kills: Sequence[Kill], timeout: float = 600) -> Totals:
        """Until every kill's stage made progress again (or the stream is drained)."""

        def recovered(totals: Totals) -> bool:
            note_recoveries(kills, totals)
            return all(k.recovered_s is not None for k in kills) or self.drained(totals)

        return self.watch(recovered, timeout, "the stages to make progress again")

    # -- closing ---------------------------------------------------------------

    def close_periods(self, periods: Sequence[str], timeout: float = 600, stop: bool = True) -> None:
        """Close each period as `meterline close` does and wait until consolidation exported
        its final invoices; then (`stop`) stop the workers, so the billing store can be read."""
        for period in periods:
            publish_close(self.settings, period)
        wanted = [
            self.out / "invoices" / f"period={p}" / f"{name}.parquet"
            for p in periods
            for name in ("invoice_drafts", "invoice_lines")
        ]
        self.watch(lambda _: all(path.exists() for path in wanted), timeout, f"final invoices of {periods}")
        if stop:
            self.stop()

    def stop(self) -> None:
        """SIGTERM every worker (they finish the step they are in: a close completes) and wait."""
        if self.stopped:
            return
        self.stopped = True
        for workers in self.instances.values():
            for process in workers.processes.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            workers.stop(60)
        self.alive.clear()
        self.reader.close()


def note_recoveries(kills: Sequence[Kill], totals: Totals) -> None:
    now = time.monotonic()
    for kill in kills:
        if kill.recovered_s is None and progress_of(kill.stage, totals) > kill.progress:
            kill.recovered_s = now - kill.at


def last_error(log: Path) -> str:
    """The last traceback line or error event of a worker log, for a failure message."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    for line in reversed(lines):
        if (
            line
            and not line.startswith((" ", "\t", "Traceback"))
            and ("Error" in line or "Exception" in line or '"error"' in line)
        ):
            return line[:500]
    return lines[-1][:500] if lines else "(empty log)"
