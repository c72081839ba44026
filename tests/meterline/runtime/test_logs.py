"""Structured logging setup."""

from __future__ import annotations

import io
import sys

import pytest
import structlog

from meterline.runtime.logs import configure_logging


def test_logs_follow_stderr_when_it_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream swapped in and closed after logging was configured (as test runners do)
    never breaks a later log line."""
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging("info")
    try:
        first.close()
        monkeypatch.setattr(sys, "stderr", second)
        structlog.get_logger().info("after_swap", n=1)
        assert '"event": "after_swap"' in second.getvalue()
    finally:  # later tests read log lines in structlog's default form
        structlog.reset_defaults()
