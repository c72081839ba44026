"""Exact deduplication on (account_id, event_id), remembered per billing period (pure).

Keys are stored as 16-byte BLAKE2b digests (collision odds ~1e-26 at 5M keys)
grouped by the period they belong to, so a closed period's keys can be dropped
in one step.
"""

from __future__ import annotations

import hashlib


def dedup_key(account_id: str, event_id: str) -> bytes:
    return hashlib.blake2b(f"{account_id}\x1f{event_id}".encode(), digest_size=16).digest()


class SeenSet:
    """The keys one partition has seen, by period."""

    __slots__ = ("by_period",)

    def __init__(self) -> None:
        self.by_period: dict[str, set[bytes]] = {}

    def __len__(self) -> int:
        return sum(len(keys) for keys in self.by_period.values())

    def add_if_new(self, key: bytes, period: str) -> bool:
        """True if the key was not seen yet (and is now remembered)."""
        keys = self.by_period.get(period)
        if keys is None:
            keys = self.by_period[period] = set()
        elif key in keys:
            return False
        keys.add(key)
        return True

    def forget_period(self, period: str) -> int:
        return len(self.by_period.pop(period, ()))
