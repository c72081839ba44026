"""What `/healthz` answers: 200 only while the stage makes progress, or is idle with
the broker reachable; otherwise 503 with the reason.

The loop reports what happens to it; this module decides. Reasons, in the order
they are checked:

- a fatal error (fenced producer, authorization, unknown topic, offsets past a
  topic's end): the worker is about to exit and says why;
- the same batch aborted `MAX_CONSECUTIVE_ABORTS` times in a row;
- the broker unreachable for longer than `broker_timeout_s`;
- a stalled loop: no turn of the loop (nor of a restore or a close) for `stall_s`.

A loop that turns but only aborts is not progress: the abort count catches it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from prometheus_client import Gauge

LAST_PROGRESS = Gauge(
    "meterline_last_progress_timestamp_seconds",
    "Unix time of the last committed batch, idle turn with the broker reachable, or close step",
    ["stage"],
)
CONSECUTIVE_ABORTS = Gauge(
    "meterline_consecutive_aborts", "Aborts of the same batch in a row (0 after a commit)", ["stage"]
)
HEALTHY = Gauge("meterline_healthy", "1 while /healthz answers 200", ["stage"])

# After this many aborts of one batch the runtime stops retrying it as a whole.
MAX_CONSECUTIVE_ABORTS = 5


@dataclass
class Health:
    stage: str = "meterline"
    stall_s: float = 120.0
    broker_timeout_s: float = 60.0
    max_aborts: int = MAX_CONSECUTIVE_ABORTS
    started: bool = False
    fatal: str | None = None
    aborts: int = 0
    _last_turn: float = field(default_factory=time.monotonic)
    _broker_down_since: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def configure(self, stall_s: float, broker_timeout_s: float) -> None:
        with self._lock:
            self.stall_s = stall_s
            self.broker_timeout_s = broker_timeout_s

    def start(self, stage: str) -> None:
        """The worker restored its state and enters its loop."""
        with self._lock:
            self.stage = stage
            self.started = True
            self.fatal = None
            self.aborts = 0
            self._broker_down_since = None
            self._last_turn = time.monotonic()
        LAST_PROGRESS.labels(stage).set(time.time())

    def progress(self) -> None:
        """A batch committed, a close step finished, or the loop turned idle with the broker up."""
        with self._lock:
            self._last_turn = time.monotonic()
            self.aborts = 0
        LAST_PROGRESS.labels(self.stage).set(time.time())
        CONSECUTIVE_ABORTS.labels(self.stage).set(0)

    def beat(self) -> None:
        """The loop turned (or a long restore read a chunk) without committing anything yet."""
        with self._lock:
            self._last_turn = time.monotonic()

    def aborted(self) -> int:
        """The current batch was aborted once more; returns how many times in a row."""
        with self._lock:
            self.aborts += 1
            self._last_turn = time.monotonic()
            count = self.aborts
        CONSECUTIVE_ABORTS.labels(self.stage).set(count)
        return count

    def broker_down(self) -> None:
        with self._lock:
            if self._broker_down_since is None:
                self._broker_down_since = time.monotonic()

    def broker_up(self) -> None:
        with self._lock:
            self._broker_down_since = None

    def broker_reachable(self) -> bool:
        """False from a report of the broker down until one of it answering."""
        with self._lock:
            return self._broker_down_since is None

    def fail(self, reason: str) -> None:
        """A fatal error: unhealthy from now on (the worker exits after saying so)."""
        with self._lock:
            self.fatal = reason

    def status(self) -> tuple[bool, str]:
        with self._lock:
            now = time.monotonic()
            if self.fatal is not None:
                reason: str | None = f"fatal: {self.fatal}"
            elif not self.started:
                reason = "starting"
            elif self.aborts >= self.max_aborts:
                reason = f"the same batch aborted {self.aborts} times in a row"
            elif (down := self._broker_down_since) is not None and now - down > self.broker_timeout_s:
                reason = f"broker unreachable for {now - down:.0f}s"
            elif now - self._last_turn > self.stall_s:
                reason = f"stalled loop: no turn for {now - self._last_turn:.0f}s"
            else:
                reason = None
        HEALTHY.labels(self.stage).set(0 if reason else 1)
        return (reason is None, reason or "ok")


# One per process: a worker runs one stage.
HEALTH = Health()
