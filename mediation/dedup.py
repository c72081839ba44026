"""Exact deduplication on (account_id, event_id), remembered per billing period (pure).

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

    def admit(self, keys: list[bytes]) -> list[bool]:
        """For each key in order: True if new (and now remembered), False if seen before."""
        self._merge_pending()
        frozen = self.frozen
        if len(frozen):
            probes = np.array(keys, dtype=_DTYPE)
            index = np.searchsorted(frozen, probes)
            found = frozen[np.minimum(index, len(frozen) - 1)] == probes
            in_frozen = (found & (index < len(frozen))).tolist()
        else:
            in_frozen = [False] * len(keys)
        recent = self.recent
        verdicts = []
        for key, old in zip(keys, in_frozen, strict=True):
            if old or key in recent:
                verdicts.append(False)
            else:
                recent.add(key)
                verdicts.append(True)
        if len(recent) > max(_MIN_RECENT, len(frozen) // 4):
            self.compact()
        return verdicts

    def discard(self, key: bytes) -> None:
        """Forget one key (a record that failed after its key was admitted gives it back)."""
        if key in self.recent:
            self.recent.discard(key)
            return
        self._merge_pending()
        frozen = self.frozen
        probe = np.array([key], dtype=_DTYPE)
        index = int(np.searchsorted(frozen, probe)[0])
        if index < len(frozen) and bool(frozen[index : index + 1] == probe):
            self.frozen = np.delete(frozen, index)

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

    def add_if_new(self, key: bytes, period: str) -> bool:
        """True if the key was not seen yet (and is now remembered)."""
        keys = self.by_period.get(period)
        if keys is None:
            keys = self.by_period[period] = PeriodKeys()
        elif key in keys:
            return False
        keys.add(key)
        return True

    def admit(self, keys: list[bytes], periods: list[str]) -> list[bool]:
        """Batched add_if_new: one verdict per key, in order (a repeat within the batch is a duplicate)."""
        verdicts = [False] * len(keys)
        by_period: dict[str, list[int]] = {}
        for i, period in enumerate(periods):
            by_period.setdefault(period, []).append(i)
        for period, indices in by_period.items():
            period_keys = self.by_period.get(period)
            if period_keys is None:
                period_keys = self.by_period[period] = PeriodKeys()
            for i, verdict in zip(indices, period_keys.admit([keys[i] for i in indices]), strict=True):
                verdicts[i] = verdict
        return verdicts

    def discard(self, key: bytes, period: str) -> None:
        keys = self.by_period.get(period)
        if keys is not None:
            keys.discard(key)

    def add_block(self, period: str, block: bytes) -> None:
        keys = self.by_period.get(period)
        if keys is None:
            keys = self.by_period[period] = PeriodKeys()
        keys.add_block(block)

    def forget_period(self, period: str) -> int:
        keys = self.by_period.pop(period, None)
        return len(keys) if keys is not None else 0
