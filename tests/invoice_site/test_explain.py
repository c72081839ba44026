"""Line explanations of the pricing models the site's store tests do not reach (volume,
package), and a line the catalog no longer explains."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

from invoice_site.explain import charge_index, explain_line
from invoice_site.model import Draft, Line
from invoice_site.money import Formatter
from meterline.kernel.catalog_file import load_catalog

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "docs" / "examples" / "catalog.yaml"
CATALOG = load_catalog(EXAMPLES)
DRAFT = Draft(
    "INV-202611-000000000000", "acme", "2026-11", date(2026, 11, 1), date(2026, 11, 30), "EUR",
    Decimal("0"), Decimal("0"), Decimal("0"), Decimal("0"), "open", date(2026, 12, 1),
    date(2026, 12, 31), 1, datetime(2026, 11, 30, tzinfo=UTC),
)  # fmt: skip


def explain(charge_id: str, quantity: str, amount: str) -> tuple[list[str], list[tuple[str, ...]]]:
    line = Line(1, "usage", charge_id, "x", Decimal(quantity), "u", None, Decimal(amount))
    how = explain_line(
        line, DRAFT, [line], CATALOG.accounts["acme"], CATALOG, charge_index(CATALOG), Formatter("en", "EUR")
    )
    return how.sentences, [(t.label, t.quantity, t.unit_price, t.flat_fee or "", t.amount) for t in how.tiers]


def test_volume_prices_every_unit_at_the_tier_reached() -> None:
    # 25 seats: all at tier 2 (above 10 up to 50): 25 × 6 + 10 = 160
    sentences, tiers = explain("seats", "25", "160.00")
    assert sentences == ["Volume: all 25 u at the price of the tier they reach."]
    assert tiers == [("above 10 up to 50 u", "25 u", "€6.00", "€10.00", "€160.00")]


def test_package_counts_started_packages_after_the_included_units() -> None:
    # 167 messages, 50 included: 117 billable -> 2 packages of 100 at 2
    sentences, tiers = explain("sms", "167", "4.00")
    assert sentences == [
        "167 u used, 50 u included: 117 u billable.",
        "117 u in packages of 100: 2 × €2.00 = €4.00.",
    ]
    assert tiers == []


def test_a_line_the_catalog_no_longer_prices_so_is_not_explained() -> None:
    # 100 GB-hours at the catalog's 0.02 would be 2.00, not the stored 3.00
    sentences, tiers = explain("storage-eu", "100", "3.00")
    assert sentences == ["Priced under the charge's terms when the usage was rated."]
    assert tiers == []
