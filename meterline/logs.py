"""Structured JSON logs (structlog), one event per line on stderr."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# librdkafka properties whose values must never reach a log line.
SECRET_MARKERS = ("password", "secret", "key.pem", "private", "token")


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if any(marker in key.lower() for marker in SECRET_MARKERS):
            event[key] = "***"
    return event


def configure_logging(level: str = "info", stage: str | None = None) -> None:
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=level.upper())
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
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    if stage:
        structlog.contextvars.bind_contextvars(stage=stage)


def redact_config(config: dict[str, str]) -> dict[str, str]:
    """A copy of a librdkafka config safe to log."""
    return {k: ("***" if any(m in k.lower() for m in SECRET_MARKERS) else v) for k, v in config.items()}
