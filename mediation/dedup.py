"""Exact deduplication on (account_id, event_id), remembered per billing period (pure).

A key is held by the one copy of an event that was accepted, under that copy's period, and
a later copy is a duplicate whatever its own timestamp: lookups span every period held.

A month of a large platform's keys must fit in memory, so keys are 16-byte
BLAKE2b digests (collision odds ~1e-25 at 5M keys) kept in a sorted numpy array
per period (16 bytes a key), plus a small set of recent keys that is merged into
the array when it grows past a quarter of it. Lookups are batched: one vectorized
search per batch and period instead of one numpy call per key. Keys are grouped by the period they
belong to, so a closed period's keys are dropped in one step.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

KEY_BYTES = 16
_DTYPE = f"S{KEY_BYTES}"
_MIN_RECENT = 65536


def dedup_key(account_id: str, event_id: str) -> bytes:
    return hashlib.blake2b(f"{account_id}\x1f{event_id}".encode(), digest_size=KEY_BYTES).digest()


class PeriodKeys:
    """The keys of one period: a sorted array plus recently added keys."""

    __slots__ = ("_pending", "frozen", "recent")

    def __init__(self) -> None:
        self.frozen: npt.NDArray[np.bytes_] = np.empty(0, dtype=_DTYPE)
        self.recent: set[bytes] = set()
        self._pending: list[npt.NDArray[np.bytes_]] = []

    def __len__(self) -> int:
        self._merge_pending()
        return len(self.frozen) + len(self.recent)

    def __contains__(self, key: bytes) -> bool:
        if key in self.recent:
            return True
        self._merge_pending()
        frozen = self.frozen
        if not len(frozen):
            return False
        # Compare inside numpy: converting an element back to bytes would strip trailing NULs.
        probe = np.array([key], dtype=_DTYPE)
        index = int(np.searchsorted(frozen, probe)[0])
        return index < len(frozen) and bool(frozen[index : index + 1] == probe)

    def add(self, key: bytes) -> None:
        self.recent.add(key)
        if len(self.recent) > max(_MIN_RECENT, len(self.frozen) // 4):
            self.compact()

    def in_frozen(self, probes: npt.NDArray[np.bytes_]) -> npt.NDArray[np.bool_] | None:
        """Which probes the sorted array holds (None when it is empty); `recent` is not consulted."""
        self._merge_pending()
        frozen = self.frozen
        if not len(frozen):
            return None
        index = np.searchsorted(frozen, probes)
        found: npt.NDArray[np.bool_] = (frozen[np.minimum(index, len(frozen) - 1)] == probes) & (
            index < len(frozen)
        )
        return found

    def add_block(self, block: bytes) -> None:
        """Keys restored from a changelog block (concatenated digests); merged lazily."""
        self._pending.append(np.frombuffer(block, dtype=_DTYPE))

    def compact(self) -> None:
        self._merge_pending()
        if self.recent:
            self.frozen = np.union1d(self.frozen, np.array(list(self.recent), dtype=_DTYPE))
            self.recent = set()

    def _merge_pending(self) -> None:
        if self._pending:
            self.frozen = np.unique(np.concatenate([self.frozen, *self._pending]))
            self._pending = []

    def nbytes(self) -> int:
        """Approximate memory held: the array plus the recent set and its bytes objects."""
        import sys

        recent = sys.getsizeof(self.recent) + sum(sys.getsizeof(k) for k in self.recent)
        return int(self.frozen.nbytes) + recent + sum(int(p.nbytes) for p in self._pending)


class SeenSet:
    """The keys one partition has seen, by period."""

    __slots__ = ("by_period",)

    def __init__(self) -> None:
        self.by_period: dict[str, PeriodKeys] = {}

    def __len__(self) -> int:
        return sum(len(keys) for keys in self.by_period.values())

    def held(self, keys: list[bytes]) -> list[bool]:
        """For each key, whether a copy holds it in any period (one vectorized search per period)."""
        verdicts = [False] * len(keys)
        if not keys or not self.by_period:
            return verdicts
        probes = np.array(keys, dtype=_DTYPE)
        in_any: npt.NDArray[np.bool_] | None = None
        recents: list[set[bytes]] = []
        for period_keys in self.by_period.values():
            found = period_keys.in_frozen(probes)
            if found is not None:
                in_any = found if in_any is None else in_any | found
            if period_keys.recent:
                recents.append(period_keys.recent)
        if in_any is not None:
            verdicts = in_any.tolist()
        if recents:
            for i, key in enumerate(keys):
                if not verdicts[i]:
                    for recent in recents:
                        if key in recent:
                            verdicts[i] = True
                            break
        return verdicts

    def take(self, key: bytes, period: str) -> None:
        """Remember a key as held by an accepted copy of `period` (held() said nobody holds it)."""
        keys = self.by_period.get(period)
        if keys is None:
            keys = self.by_period[period] = PeriodKeys()
        keys.add(key)

    def admit(self, keys: list[bytes], periods: list[str]) -> list[bool]:
        """Take each key nobody holds yet, in order, under its period: True if taken, False if
        already held (in any period, or by an earlier key of the same call)."""
        verdicts = self.held(keys)
        taken: set[bytes] = set()
        for i, key in enumerate(keys):
            if verdicts[i] or key in taken:
                verdicts[i] = False
            else:
                taken.add(key)
                self.take(key, periods[i])
                verdicts[i] = True
        return verdicts

    def add_block(self, period: str, block: bytes) -> None:
        keys = self.by_period.get(period)
        if keys is None:
            keys = self.by_period[period] = PeriodKeys()
        keys.add_block(block)

    def forget_period(self, period: str) -> int:
        keys = self.by_period.pop(period, None)
        return len(keys) if keys is not None else 0
