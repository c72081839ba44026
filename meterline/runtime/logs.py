"""Structured JSON logs (structlog), one event per line on stderr.

librdkafka's own log lines reach the same JSON log through :data:`LIBRDKAFKA_LOG`
(a stdlib logger that every client meterline creates is given, see
meterline.runtime.kafka_config), throttled: a broker that cannot be reached makes librdkafka
repeat the same line several times a second, and the log shows it once a minute
with a count of the repeats.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any, Final

import structlog

# librdkafka properties whose values must never reach a log line.
SECRET_MARKERS = ("password", "secret", "key.pem", "private", "token", "user_info")


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if any(marker in key.lower() for marker in SECRET_MARKERS):
            event[key] = "***"
    return event


class _Stderr:
    """Whatever `sys.stderr` is when a line is written, not when logging was configured:
    a stream captured at configure time may be closed by then (test runners swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "info", stage: str | None = None) -> None:
    logging.basicConfig(format="%(message)s", stream=_Stderr(), level=level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    if stage:
        structlog.contextvars.bind_contextvars(stage=stage)


def redact_config(config: dict[str, str]) -> dict[str, str]:
    """A copy of a librdkafka config safe to log."""
    return {k: ("***" if any(m in k.lower() for m in SECRET_MARKERS) else v) for k, v in config.items()}


class Throttle:
    """At most one line per distinct message per `interval_s`; repeats are counted."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self._seen: dict[str, tuple[float, int]] = {}  # key -> (last logged, repeats since)
        self._lock = threading.Lock()

    def admit(self, key: str) -> int | None:
        """None to drop this line; else how many repeats were dropped since the last one logged."""
        now = time.monotonic()
        with self._lock:
            last = self._seen.get(key)
            if last is not None and now - last[0] < self.interval_s:
                self._seen[key] = (last[0], last[1] + 1)
                return None
            if len(self._seen) > 1000:  # many distinct lines: forget the old ones
                self._seen.clear()
            self._seen[key] = (now, 0)
            return 0 if last is None else last[1]


# Numbers (timings, counts, offsets) differ between repeats of one librdkafka line.
_NUMBERS: Final = re.compile(r"\d+")


class _LibrdkafkaHandler(logging.Handler):
    """librdkafka lines (`logger.log(level, "%s [%s] %s", facility, client, message)`) as JSON events."""

    def __init__(self, throttle: Throttle) -> None:
        super().__init__(logging.DEBUG)
        self.throttle = throttle

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) == 3:
            facility, client, message = (str(a) for a in args)
        else:
            facility, client, message = "", "", record.getMessage()
        repeats = self.throttle.admit(facility + _NUMBERS.sub("#", message))
        if repeats is None:
            return
        logger = structlog.get_logger()
        event: dict[str, Any] = {"facility": facility, "client": client, "message": message}
        if repeats:
            event["repeats_suppressed"] = repeats
        if record.levelno >= logging.ERROR:
            logger.error("librdkafka", **event)
        elif record.levelno >= logging.WARNING:
            logger.warning("librdkafka", **event)
        else:
            logger.info("librdkafka", **event)


# Given to every librdkafka client as its `logger`; never propagates to the root logger.
LIBRDKAFKA_LOG: Final = logging.getLogger("meterline.librdkafka")
LIBRDKAFKA_LOG.propagate = False
LIBRDKAFKA_LOG.setLevel(logging.DEBUG)
LIBRDKAFKA_LOG.addHandler(_LibrdkafkaHandler(Throttle()))
