"""The customer invoice site, kept live by a consolidation worker (setting `site_dir`).

The worker notes the accounts whose drafts it changed (previews, closes) and, at most
every preview interval, regenerates their pages (invoice_site.render_site writes each
page atomically). A failure to render is logged and retried at the next turn: the site
never stops billing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

import structlog

from consolidation.store import BillingStore
from invoice_site import render_site
from meterline.kernel.catalog import Catalog

log = structlog.get_logger()


class LiveSite:
    def __init__(
        self,
        site_dir: str,
        store: BillingStore,
        catalog: Callable[[], Catalog],
        clock: Callable[[], datetime],
    ) -> None:
        self.site_dir = site_dir
        self._store = store
        self._catalog = catalog
        self._clock = clock
        self._due: set[str] = set()

    def changed(self, accounts: Iterable[str]) -> None:
        if self.site_dir:
            self._due.update(accounts)

    def render(self) -> None:
        if not self._due:
            return
        due, self._due = self._due, set()
        try:
            written = render_site(self._store.db, self._catalog(), self.site_dir, due, self._clock())
        except Exception as exc:  # the site must never stop billing: next turn, again
            self._due |= due
            log.error("site_not_rendered", accounts=len(due), error=f"{type(exc).__name__}: {exc}")
            return
        log.info("site_rendered", accounts=len(due), pages=len(written))
