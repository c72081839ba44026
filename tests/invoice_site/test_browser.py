"""Acceptance: the demo's invoice site in a real browser.

`meterline demo` writes the site and prints its index; headless Chromium (installed with
apt-get when missing, the test fails where it cannot be) then opens the top index, every
account's index and every invoice page, following the site's own links. Each page loads
with no console error and nothing fetched from outside the site, its screenshot is not
blank, and every total and line amount in its DOM is the store's value, digit for digit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from consolidation import lake
from tests.support.chromium import Chromium, Visit, find_or_install_chromium, png_colours

# Chromium (installed with apt-get when absent) and a demo run: make test-slow runs them.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ACCOUNTS = 20

# Each invoice link on an account index (the invoice id is the link's code text) with the
# total shown beside it, in the same table row or paragraph.
INVOICE_LINKS = """[...document.querySelectorAll('a[href] code')].map(code => {
  const link = code.closest('a');
  const shown = link.closest('tr, p').querySelector('[data-total]');
  return [code.textContent, link.href, shown ? shown.dataset.total : null];
})"""
ACCOUNT_LINKS = "[...document.querySelectorAll('tbody a[href]')].map(a => a.href)"
PAGE_TOTALS = "[...document.querySelectorAll('[data-total]')].map(e => e.dataset.total)"
LINE_AMOUNTS = """[...document.querySelectorAll('tr[data-line]')].map(row =>
  [Number(row.dataset.line), row.querySelector(':scope > td[data-amount]').dataset.amount])"""


@dataclass(frozen=True)
class Demo:
    out: Path
    stdout: str
    # invoice_id -> (account_id, total) and invoice_id -> [(line_no, amount)], from the store
    totals: dict[str, tuple[str, Decimal]]
    lines: dict[str, list[tuple[int, Decimal]]]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    out = tmp_path_factory.mktemp("browser") / "demo"
    command = ["demo", "--accounts", str(ACCOUNTS), "--events", "3000", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "meterline", *command],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    db = lake.connect(out, read_only=True)
    try:
        totals = {
            invoice: (account, total)
            for invoice, account, total in db.execute(
                "SELECT invoice_id, account_id, total FROM invoice_drafts"
            ).fetchall()
        }
        lines: dict[str, list[tuple[int, Decimal]]] = {}
        for invoice, line_no, amount in db.execute(
            "SELECT invoice_id, line_no, amount FROM invoice_lines ORDER BY invoice_id, line_no"
        ).fetchall():
            lines.setdefault(invoice, []).append((line_no, amount))
    finally:
        db.close()
    return Demo(out, done.stdout, totals, lines)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Chromium]:
    with Chromium(find_or_install_chromium()) as browser:
        yield browser


def test_demo_prints_its_site_index(demo: Demo) -> None:
    index = demo.out / "site" / "index.html"
    assert f"site: {index.as_uri()}" in demo.stdout.splitlines()
    assert index.is_file()
    # the summary's counts are still there, after the site line
    assert f"invoices: {len(demo.totals)}" in demo.stdout.splitlines()
    assert demo.totals and demo.lines, "the demo made no invoice"


def check_page(visit: Visit, site: Path) -> None:
    assert visit.errors == [], (visit.url, visit.errors)
    outside = [url for url in visit.requests if not _inside(url, site)]
    assert outside == [], (visit.url, outside)
    assert png_colours(visit.screenshot) > 1, f"{visit.url}: blank screenshot"


def _inside(url: str, site: Path) -> bool:
    if url.startswith("data:"):
        return True
    parsed = urlparse(url)
    return parsed.scheme == "file" and Path(unquote(parsed.path)).is_relative_to(site)


def test_every_page_loads_cleanly_and_shows_the_stored_amounts(demo: Demo, chromium: Chromium) -> None:
    site = demo.out / "site"
    check_page(chromium.visit((site / "index.html").as_uri()), site)
    accounts = chromium.evaluate(ACCOUNT_LINKS)
    assert len(accounts) == ACCOUNTS
    seen: dict[str, str] = {}  # invoice id -> the account page that links it
    for account_url in accounts:
        check_page(chromium.visit(account_url), site)
        listed = chromium.evaluate(INVOICE_LINKS)
        for invoice_id, invoice_url, shown in listed:
            assert invoice_id in demo.totals, (account_url, invoice_id)
            assert shown == str(demo.totals[invoice_id][1]), (account_url, invoice_id)
            assert invoice_id not in seen, f"{invoice_id} listed on {seen[invoice_id]} and {account_url}"
            seen[invoice_id] = account_url
            check_page(chromium.visit(invoice_url), site)
            account_id, total = demo.totals[invoice_id]
            assert chromium.evaluate(PAGE_TOTALS) == [str(total)], invoice_url
            assert invoice_id in chromium.evaluate("document.querySelector('h1').textContent")
            assert account_id in chromium.evaluate("document.body.textContent"), invoice_url
            shown_lines = [(n, Decimal(a)) for n, a in chromium.evaluate(LINE_AMOUNTS)]
            assert shown_lines == demo.lines.get(invoice_id, []), invoice_url
            # the same digits, not only the same value: nothing rounded on the way
            assert [a for _, a in chromium.evaluate(LINE_AMOUNTS)] == [
                str(a) for _, a in demo.lines.get(invoice_id, [])
            ]
    assert set(seen) == set(demo.totals), "invoices of the store with no page linked from the site"


def test_pages_fit_a_phone_screen(demo: Demo) -> None:
    site = demo.out / "site"
    pages = [site / "index.html", *sorted(site.glob("accounts/*/*.html"))[:6]]
    with Chromium(find_or_install_chromium(), width=390, height=844) as phone:
        phone.set_viewport(390, 844, mobile=True)
        for page in pages:
            check_page(phone.visit(page.as_uri()), site)
            # wide tables scroll inside their own box; the page itself never scrolls sideways
            width = phone.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], (page, width)


def test_the_checks_see_console_errors_failed_loads_and_blank_pages(
    chromium: Chromium, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text(
        '<!doctype html><html lang="en"><body><p>text</p><img src="missing.png" alt="">'
        '<script>console.error("boom"); undefined_name();</script></body></html>'
    )
    visit = chromium.visit(broken.as_uri())
    assert any("console.error: boom" in error for error in visit.errors), visit.errors
    assert any("undefined_name" in error for error in visit.errors), visit.errors
    assert any("missing.png" in error for error in visit.errors), visit.errors
    blank = tmp_path / "blank.html"
    blank.write_text('<!doctype html><html lang="en"><body></body></html>')
    assert png_colours(chromium.visit(blank.as_uri()).screenshot) == 1
    outside = tmp_path / "outside.html"
    outside.write_text('<!doctype html><img src="https://example.invalid/x.png" alt="">')
    assert not _inside_all(chromium.visit(outside.as_uri()), tmp_path)


def _inside_all(visit: Visit, site: Path) -> bool:
    return all(_inside(url, site) for url in visit.requests)
