"""The worker's live invoice site: pages of changed accounts, a failure retried, never raised."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from consolidation import live_site
from consolidation.closing import refresh_previews
from consolidation.live_site import LiveSite
from consolidation.store import BillingStore, Position
from meterline.kernel.catalog_file import load_catalog
from tests.support.store_batches import apply_batch

FLAT = Path(__file__).parent.parent / "data" / "flat" / "catalog.yaml"
NOW = datetime(2026, 9, 20, tzinfo=UTC)
KEY = ("alpha", "2026-09", "eur-api", "api_calls", "alpha-1")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BillingStore]:
    opened = BillingStore(tmp_path / "out")
    yield opened
    opened.close()


def test_changed_accounts_get_their_pages_and_a_failed_render_is_retried(
    store: BillingStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = load_catalog(FLAT)
    apply_batch(store, "t", {0: Position(1, {}, {})}, [(KEY, Decimal(1000), Decimal(2), 1)])
    refresh_previews(store, catalog, [("alpha", "2026-09")], NOW)
    site = LiveSite(str(tmp_path / "site"), store, lambda: catalog, lambda: NOW)

    def broken(*args: object) -> list[Path]:
        raise OSError("disk full")

    monkeypatch.setattr(live_site, "render_site", broken)
    site.changed(["alpha"])
    site.render()  # logged, not raised: billing goes on
    assert not (tmp_path / "site").exists()
    monkeypatch.undo()
    site.render()  # the next turn renders what failed
    pages = sorted(p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("*.html"))
    assert "index.html" in pages and any(p.startswith("accounts/alpha/") for p in pages)


def test_without_a_site_dir_nothing_is_rendered(store: BillingStore, tmp_path: Path) -> None:
    site = LiveSite("", store, lambda: load_catalog(FLAT), lambda: NOW)
    site.changed(["alpha"])
    site.render()
    assert list(tmp_path.rglob("*.html")) == []
