"""Regenerating the site: only the pages whose content changed are rewritten, each one
atomically; rendering a set of accounts touches only their pages and the top index."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from invoice_site import render_site
from invoice_site.render import account_folder, page_name, write_atomically
from tests.invoice_site.conftest import Store, event

NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
LATER = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)


def snapshot(site: Path) -> dict[Path, tuple[bytes, int]]:
    return {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in sorted(site.rglob("*"))
            if path.is_file()}  # fmt: skip


def render(store: Store, site: Path, accounts: set[str] | None = None, now: datetime = NOW) -> list[Path]:
    db = store.reader()
    try:
        return render_site(db, store.catalog, site, accounts, now=now)
    finally:
        db.close()


def test_one_more_event_changes_only_that_accounts_pages(store: Store, tmp_path: Path) -> None:
    site = tmp_path / "site"
    first = render(store, site)
    assert len(first) == 11
    before = snapshot(site)
    assert render(store, site) == []  # nothing changed: nothing rewritten
    assert snapshot(site) == before

    # one more December event for tanaka: its open draft, its page and its index change
    store.builder.add([event("k4", "tanaka", "api_calls", "5", "2026-12-03T08:00:00+00:00")], LATER)
    written = render(store, site)
    after = snapshot(site)

    tanaka = account_folder(site, "tanaka")
    changed = {path for path in after if before.get(path) != after[path]}
    assert set(written) == changed
    (december,) = tanaka.glob("INV-202612-*.html")
    assert changed == {december, tanaka / "index.html"}
    others = {path for path in after if tanaka not in path.parents}
    assert all(after[path] == before[path] for path in others)  # same bytes, same mtime


def test_a_set_of_accounts_renders_their_pages_and_the_top_index(store: Store, tmp_path: Path) -> None:
    site = tmp_path / "site"
    written = render(store, site, {"acme-tel"})
    folder = account_folder(site, "acme-tel")
    assert sorted(written) == sorted([*folder.glob("INV-*.html"), folder / "index.html", site / "index.html"])
    assert {path.name for path in (site / "accounts").iterdir()} == {"acme-tel"}
    # the top index lists every account all the same
    index = (site / "index.html").read_text(encoding="utf-8")
    for account in ("mueller", "tanaka", "markup", "acme-tel"):
        assert f'href="accounts/{page_name(account)}/index.html"' in index
    # a later render of another account rewrites the top index only if it changed
    assert render(store, site, {"tanaka"}, now=NOW) == [
        *sorted(account_folder(site, "tanaka").glob("INV-*.html"), reverse=True),
        account_folder(site, "tanaka") / "index.html",
    ]


def test_writes_are_atomic_and_skip_unchanged_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "a" / "index.html"
    assert write_atomically(page, "one")
    assert not write_atomically(page, "one")
    assert write_atomically(page, "two")
    assert page.read_text() == "two"

    def fail(source: object, target: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomically(page, "three")
    # the reader still sees the whole old page, and no temporary file is left
    assert page.read_text() == "two"
    assert [path.name for path in page.parent.iterdir()] == ["index.html"]


@pytest.mark.parametrize(
    ("account_id", "name"),
    [
        ("acme", "acme"),
        ("cust-42.eu_x", "cust-42.eu_x"),
        ("ACME", "acme-" + "[0-9a-f]" * 12),
        ("../etc", "etc-" + "[0-9a-f]" * 12),
        ("a/b", "a_b-" + "[0-9a-f]" * 12),
        ("<script>", "script-" + "[0-9a-f]" * 12),
        ("...", "[0-9a-f]" * 12),
    ],
)
def test_page_names_are_safe_file_names(account_id: str, name: str) -> None:
    assert re.fullmatch(name, page_name(account_id))
