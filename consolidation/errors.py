"""The consolidation worker's fatal error: it stops, says why, and /healthz says so too."""

from __future__ import annotations


class FatalStageError(RuntimeError):
    """The stage cannot go on without losing or skipping data (fenced, unauthorized, a topic
    gone or recreated under stored offsets); the worker exits non-zero with this message."""
