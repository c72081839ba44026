"""Rendered invoice pages, checked line by line against amounts computed by hand, and
against the store to the last minor unit; escaping; the page's accessibility basics."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from invoice_site import invoice_page_html, render_site
from invoice_site.render import account_folder
from tests.invoice_site.conftest import Store
from tests.invoice_site.pages import line_texts, parse, text

NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


@pytest.fixture
def site(store: Store, tmp_path: Path) -> Path:
    db = store.reader()
    try:
        render_site(db, store.catalog, tmp_path / "site", now=NOW)
    finally:
        db.close()
    return tmp_path / "site"


def invoice_page(site: Path, account: str, period: str) -> Path:
    (page,) = account_folder(site, account).glob(f"INV-{period.replace('-', '')}-*.html")
    return page


def test_tiered_saas_account_with_minimum_true_up(site: Path) -> None:
    """mueller, locale de: 5,100 calls (100 included) on graduated tiers, a minimum of 100,
    a platform fee prorated from 16 November, 10 % discount, 19 % tax."""
    page = invoice_page(site, "mueller", "2026-11")
    assert line_texts(page) == {
        # B = 5,000: 1,000 × 0.01 = 10.00; 4,000 × 0.005 + 2 = 22.00; 32.00 in all
        1: "1 API calls 5.100 call used, 100 call included: 5.000 call billable. "
        "Graduated: each call at the price of its tier, 32,00 € in all. "
        "Quantity per tier × unit price Tier Quantity Unit price Flat fee Amount "
        "up to 1.000 call 1.000 call × 0,01 € 10,00 € "
        "above 1.000 up to 10.000 call 4.000 call × 0,005 € 2,00 € 22,00 € "
        "5.100 call 32,00 €",
        2: "2 Minimum commitment 100 EUR Minimum commitment 100,00 €; usage lines total 32,00 €. "
        "True-up: 100,00 € − 32,00 € = 68,00 €. 68,00 €",
        # in effect 16-30 November
        3: "3 Platform fee (15/30 days) Prorated: in effect 15 of 30 days. "
        "30,00 € × 15 / 30 = 15,00 € (rounded once). 15,00 €",
        4: "4 Discount 10% 10% of the subtotal 115,00 € = 11,50 € off. -11,50 €",
        # 19 % of 103.50 = 19.665 -> half_even 19.66
        5: "5 Tax 19% 19% of the tax base 103,50 € (subtotal 115,00 € − discount 11,50 €) = 19,66 €. 19,66 €",
    }
    assert parse(page).totals == ["123.1600"]
    page_text = text(page)
    assert "Total 123,16 €" in page_text
    assert "Final" in page_text
    assert "Issue date 01.12.2026 Due date 31.12.2026" in page_text
    # the largest events behind line 1, with their exact rated amounts
    assert "m1 17.11.2026, 11:00:00 (Europe/Berlin) 3.000 21,50 €" in page_text
    assert "m2 20.11.2026, 11:00:00 (Europe/Berlin) 2.100 10,50 €" in page_text


def test_telecom_account_peak_off_peak_and_destinations(site: Path) -> None:
    """acme-tel, en_US, New York: calls per started minute, peak Mon-Fri 08-18 to +1,
    off-peak to +1 otherwise, international to +44/+33 at any time."""
    page = invoice_page(site, "acme-tel", "2026-11")
    rounding = "Each event is rounded up to a multiple of 1 minute, at least 1 minute."
    assert line_texts(page) == {
        # t1: Tue 10:00, 2.5 min -> 3
        1: "1 Calls in North America, peak Applies to destinations starting 1; "
        f"Mon, Tue, Wed, Thu, Fri 08:00–18:00 local time. {rounding} "
        "3 minute × $0.10 = $0.30. 3 minute $0.10 $0.30",
        # t2: Tue 21:00, 4.5 -> 5; t3: Saturday 11:00, 10
        2: f"2 Calls in North America, off-peak Applies to destinations starting 1. {rounding} "
        "15 minute × $0.04 = $0.60. 15 minute $0.04 $0.60",
        # t4: 7.2 -> 8
        3: f"3 International calls Applies to destinations starting 44, 33. {rounding} "
        "8 minute × $0.50 = $4.00. 8 minute $0.50 $4.00",
        4: "4 Line rental Whole period, 30 days. $10.00",
    }
    assert parse(page).totals == ["14.9000"]
    page_text = text(page)
    assert "Total $14.90" in page_text
    assert "Due date Dec 16, 2026" in page_text  # net 15
    # the rated events: destination, duration, billed minutes, time band, amount
    events = "Event Time Destination Duration Billed quantity Time band Amount"
    assert (
        f"Line 1: Calls in North America, peak The largest rated event of line 1 {events} "
        "t1 Nov 3, 2026, 10:00:00 AM (America/New_York) 12125550100 2:30 3 peak $0.30" in page_text
    )
    assert (
        f"The 2 largest rated events of line 2 {events} "
        "t3 Nov 7, 2026, 11:00:00 AM (America/New_York) 12125550111 10:00 10 off-peak $0.40 "
        "t2 Nov 3, 2026, 9:00:00 PM (America/New_York) 13105550199 4:30 5 off-peak $0.20" in page_text
    )
    # international calls cost the same at any hour: no time band told
    assert (
        "Event Time Destination Duration Billed quantity Amount "
        "t4 Nov 11, 2026, 9:30:00 AM (America/New_York) 442071234567 7:12 8 $4.00" in page_text
    )


def test_jpy_account_without_minor_units(site: Path) -> None:
    page = invoice_page(site, "tanaka", "2026-11")
    assert line_texts(page) == {
        # 734,040.5 × 3 = 2,202,121.5 -> half_even to the yen: 2,202,122
        1: "1 API calls 734,040.5 call × ¥3 = ¥2,202,121.5. ¥2,202,121.5 rounded to ¥2,202,122. "
        "734,040.5 call ¥3 ¥2,202,122",
    }
    assert parse(page).totals == ["2202122.0000"]
    assert "Total ¥2,202,122" in text(page)


def test_account_index_shows_the_open_draft_as_of_its_time_and_final_invoices(site: Path) -> None:
    index = account_folder(site, "mueller") / "index.html"
    index_text = text(index)
    # 09:15 UTC is 10:15 in Berlin
    assert re.search(
        r"Invoice INV-202612-\w+ , 01\.12\.2026 – 31\.12\.2026: Open draft as of "
        r"03\.12\.2026, 10:15:00 \(Europe/Berlin\)\. Total so far 139,23 €",
        index_text,
    ), index_text
    assert re.search(r"INV-202611-\w+ 2026-11 01\.12\.2026 31\.12\.2026 123,16 €", index_text)
    assert parse(index).totals == ["139.2300", "123.1600"]
    top = text(site / "index.html")
    assert "Müller GmbH mueller 2" in top
    assert "Acme Telecom Inc. acme-tel 1" in top


def test_every_amount_equals_the_store(store: Store, site: Path) -> None:
    db = store.reader()
    try:
        drafts = db.execute("SELECT account_id, invoice_id, total FROM invoice_drafts").fetchall()
        lines = db.execute("SELECT invoice_id, line_no, amount FROM invoice_lines").fetchall()
    finally:
        db.close()
    assert len(drafts) == 6
    for account_id, invoice_id, total in drafts:
        page = parse(account_folder(site, account_id) / f"{invoice_id}.html")
        assert page.totals == [str(total)]
        stored = [str(amount) for inv, _, amount in sorted(lines) if inv == invoice_id]
        assert page.amounts == stored


def test_catalog_and_event_strings_are_escaped(site: Path) -> None:
    pages = [*account_folder(site, "markup").glob("*.html"), site / "index.html"]
    assert len(pages) == 3
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert "<script" not in html and "<img" not in html and "<b>" not in html and "<i>" not in html
    html = invoice_page(site, "markup", "2026-11").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot; calls" in html
    assert "<code>&lt;i&gt;ev&lt;/i&gt;</code>" in html
    # what a reader sees is the name as written
    assert "Invoice INV-202611-" in text(invoice_page(site, "markup", "2026-11"))
    assert "<script>alert(1)</script> ( markup )" in text(invoice_page(site, "markup", "2026-11"))


def test_pages_are_self_contained_accessible_and_printable(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    assert len(pages) == 11  # top index, 4 account indexes, 6 invoices
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert html.startswith('<!DOCTYPE html>\n<html lang="en">')
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
        assert "@media print" in html and "@media (max-width" in html
        # nothing fetched, no script: works from file://
        assert not re.search(r"<(script|link|img|iframe)\b", html)
        assert not re.search(r"(src|href)=\"(https?:)?//", html)
        assert "<th scope=" in html
    page = invoice_page(site, "acme-tel", "2026-11").read_text(encoding="utf-8")
    # one daily chart for the voice meter: a bar per day of November, each with its title
    (chart,) = re.findall(r"<svg .*?</svg>", page)
    assert 'role="img" aria-labelledby="chart-1-t chart-1-d"' in chart
    assert '<title id="chart-1-t">Daily voice</title>' in chart
    assert '<desc id="chart-1-d">Daily voice from Nov 1, 2026 to Nov 30, 2026: 26 minute in all, ' in chart
    assert chart.count("<rect ") == 30
    assert "<title>Nov 3, 2026: 8 minute</title>" in chart  # t1's 3 and t2's 5 (both local Nov 3)


def test_one_invoice_page_standalone_for_a_pdf_renderer(store: Store, site: Path) -> None:
    page = invoice_page(site, "tanaka", "2026-11")
    db = store.reader()
    try:
        html = invoice_page_html(db, store.catalog, page.stem)
        with pytest.raises(KeyError):
            invoice_page_html(db, store.catalog, "INV-209901-000000000000")
    finally:
        db.close()
    assert 'data-total="2202122.0000"' in html and "<nav" not in html
    # the same page as the site's, less the breadcrumbs
    assert re.sub(r'<nav class="crumbs".*?</nav>', "", page.read_text(encoding="utf-8")) == html
