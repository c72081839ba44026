"""A meter's daily usage over a period as an inline SVG bar chart: no script, nothing fetched.

Geometry is computed in Decimal and written with one decimal place; each bar carries a
<title> (its day and value) and the chart a text alternative, for screen readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from html import escape
from typing import Final

from invoice_site.model import DailyUsage
from invoice_site.money import Formatter

__all__ = ["daily_chart", "daily_values"]

_WIDTH: Final = Decimal(640)
_HEIGHT: Final = Decimal(180)
_LEFT: Final = Decimal(56)  # room for the y labels
_BOTTOM: Final = Decimal(24)  # room for the day labels
_TOP: Final = Decimal(12)
_TENTH: Final = Decimal("0.1")


def _n(value: Decimal) -> str:
    return str(value.quantize(_TENTH, rounding=ROUND_HALF_EVEN))


def daily_values(days: Sequence[DailyUsage], aggregation: str) -> dict[date, Decimal]:
    """The value the meter's aggregation gives each day: sum (sum meters), max, or events."""
    if aggregation == "max":
        return {d.day: d.peak for d in days}
    if aggregation in ("count", "unique_count"):
        return {d.day: Decimal(d.events) for d in days}
    return {d.day: d.total for d in days}


def daily_chart(
    label: str,
    unit: str,
    first: date,
    last: date,
    values: dict[date, Decimal],
    fmt: Formatter,
    ident: str = "chart",
) -> str:
    """The SVG for the days first..last (inclusive); days without usage are empty bars.
    `ident` makes the ids of its title and description unique on the page."""
    count = (last - first).days + 1
    highest = max((v for v in values.values()), default=Decimal(0))
    scale_top = highest if highest > 0 else Decimal(1)
    plot_width = _WIDTH - _LEFT - Decimal(8)
    plot_height = _HEIGHT - _TOP - _BOTTOM
    slot = plot_width / count
    bar = slot * Decimal("0.7")
    total = sum(values.values(), Decimal(0))
    title = f"Daily {label}"
    summary = (
        f"{title} from {fmt.day(first)} to {fmt.day(last)}: {fmt.number(total)} {unit} in all, "
        f"at most {fmt.number(highest)} {unit} a day."
    )
    parts = [
        f'<svg class="chart" viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" '
        f'aria-labelledby="{ident}-t {ident}-d" xmlns="http://www.w3.org/2000/svg" '
        'preserveAspectRatio="xMinYMin meet">',
        f'<title id="{ident}-t">{escape(title)}</title><desc id="{ident}-d">{escape(summary)}</desc>',
        f'<line class="axis" x1="{_LEFT}" y1="{_n(_TOP + plot_height)}" x2="{_n(_LEFT + plot_width)}" '
        f'y2="{_n(_TOP + plot_height)}"/>',
        f'<text class="tick" x="{_LEFT - 6}" y="{_n(_TOP + 4)}" text-anchor="end">'
        f"{escape(fmt.number(highest))}</text>",
        f'<text class="tick" x="{_LEFT - 6}" y="{_n(_TOP + plot_height)}" text-anchor="end">0</text>',
    ]
    for index in range(count):
        day = first + timedelta(days=index)
        value = values.get(day, Decimal(0))
        x = _LEFT + slot * index + (slot - bar) / 2
        height = plot_height * value / scale_top
        y = _TOP + plot_height - height
        tip = f"{fmt.day(day)}: {fmt.number(value)} {unit}"
        parts.append(
            f'<rect class="bar" x="{_n(x)}" y="{_n(y)}" width="{_n(bar)}" height="{_n(height)}">'
            f"<title>{escape(tip)}</title></rect>"
        )
        if index == 0 or (index + 1) % 7 == 1 or index == count - 1:
            parts.append(
                f'<text class="tick" x="{_n(x + bar / 2)}" y="{_n(_HEIGHT - 6)}" text-anchor="middle">'
                f"{day.day}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)
