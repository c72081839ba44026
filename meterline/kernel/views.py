"""What a stage sees of the control topics: the current catalog and the closed periods.

Small protocols, so that stage transforms are plain code: the Kafka-backed tables
(the runtime's `tables`) implement them in a worker, plain objects in a test or a
benchmark. `poll()` takes what arrived since the last call and says whether anything
changed; a stage calls it only between batches (its idle turn).
"""

from __future__ import annotations

from typing import Protocol

from meterline.kernel.catalog import Catalog


class CatalogView(Protocol):
    @property
    def catalog(self) -> Catalog: ...

    def poll(self) -> bool: ...


class PeriodsView(Protocol):
    """Closed billing periods: `closed_all` for every account, `closed_accounts` as (period, account)."""

    @property
    def closed_all(self) -> set[str]: ...

    @property
    def closed_accounts(self) -> set[tuple[str, str]]: ...

    def is_closed(self, account_id: str, period: str) -> bool: ...

    def poll(self) -> bool: ...
