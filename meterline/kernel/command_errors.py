"""The two kinds of failure a user's command reports, as one line each.

Kept apart from the modules that raise them, so the command line can tell them
apart without importing Kafka clients or the pipeline.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the user asked for cannot be done as asked (exit 2): fix the command."""


class CommandFailed(RuntimeError):
    """The command could not do its work (exit 1); `str()` is the one line to show."""
