"""One invoice's page: its facts, every line explained, daily usage charts and the
largest rated events behind each usage line. Every catalog and event string is escaped."""

from __future__ import annotations

from datetime import UTC
from decimal import ROUND_HALF_UP, Decimal
from typing import Final

from invoice_site.chart import daily_chart, daily_values
from invoice_site.einvoice import documents_html
from invoice_site.explain import Explanation, charge_index, explain_line, time_band_windows
from invoice_site.layout import e, page
from invoice_site.model import Invoice, Line, RatedEvent
from invoice_site.money import Formatter
from meterline.kernel.catalog import Account, Catalog, Charge
from meterline.kernel.catalog import zone as zone_of
from rating.charges import in_window

__all__ = ["account_label", "invoice_body", "invoice_document", "status_text"]

# Meter units whose event quantities are durations: seconds per unit.
_SECONDS: Final = {"second": 1, "s": 1, "minute": 60, "min": 60, "hour": 3600, "h": 3600}


def account_label(account_id: str, account: Account | None) -> str:
    return account.name if account is not None else account_id


def status_text(invoice: Invoice, fmt: Formatter, zone: str) -> str:
    """`Final` or `Open draft, as of <generated_at>` (HTML)."""
    draft = invoice.draft
    if draft.status == "final":
        return '<span class="status status-final">Final</span>'
    as_of = fmt.instant(draft.generated_at, zone)
    return f'<span class="status status-open">Open draft</span> as of {e(as_of)}'


def invoice_document(invoice: Invoice, account: Account | None, catalog: Catalog, crumbs: str = "") -> str:
    """The whole HTML document of one invoice page, standalone (inline style, nothing fetched)."""
    draft = invoice.draft
    title = f"Invoice {draft.invoice_id} — {account_label(draft.account_id, account)}"
    return page(title, invoice_body(invoice, account, catalog), crumbs)


def invoice_body(invoice: Invoice, account: Account | None, catalog: Catalog) -> str:
    draft = invoice.draft
    locale = account.locale if account is not None else "en"
    zone = account.timezone if account is not None else "UTC"
    fmt = Formatter(locale, draft.currency)
    name = account_label(draft.account_id, account)
    facts = [
        ("Account", f"{e(name)} (<code>{e(draft.account_id)}</code>)"),
        ("Period", f"{e(fmt.day(draft.period_start))} – {e(fmt.day(draft.period_end))}"),
        ("Issue date", e(fmt.day(draft.issue_date))),
        ("Due date", e(fmt.day(draft.due_date))),
        ("Currency", e(draft.currency)),
        ("Rated events", e(fmt.number(draft.event_count))),
    ]
    parts = [
        f"<h1>Invoice <code>{e(draft.invoice_id)}</code></h1>",
        f"<p>{status_text(invoice, fmt, zone)}</p>",
        '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>",
        documents_html(draft, invoice.lines, account, catalog),
        _lines_table(invoice, account, catalog, fmt),
        _usage_section(invoice, catalog, fmt),
        _events_section(invoice, account, catalog, fmt),
    ]
    return "\n".join(part for part in parts if part)


def _lines_table(invoice: Invoice, account: Account | None, catalog: Catalog, fmt: Formatter) -> str:
    draft = invoice.draft
    charges = charge_index(catalog)
    rows = []
    for line in invoice.lines:
        how = explain_line(line, draft, invoice.lines, account, catalog, charges, fmt)
        quantity = f"{fmt.number(line.quantity)} {line.unit or ''}" if line.quantity is not None else ""
        unit_price = fmt.exact(line.unit_price) if line.unit_price is not None else ""
        rows.append(
            f'<tr data-line="{line.line_no}" data-kind="{e(line.kind)}"><td class="num">{line.line_no}</td>'
            f'<th scope="row">{e(line.description)}{_explanation(how)}</th>'
            f'<td class="num">{e(quantity.strip())}</td><td class="num">{e(unit_price)}</td>'
            f'<td class="num" data-amount="{e(line.amount)}">{e(fmt.money(line.amount))}</td></tr>'
        )
    totals = [("Subtotal", "subtotal", draft.subtotal)]
    if draft.discount:
        totals.append(("Discount", "discount", draft.discount))
    if draft.tax:
        totals.append(("Tax", "tax", draft.tax))
    foot = "".join(
        f'<tr><th scope="row" colspan="4">{label}</th>'
        f'<td class="num" data-{key}="{e(value)}">{e(fmt.money(value))}</td></tr>'
        for label, key, value in totals
    )
    foot += (
        f'<tr class="total"><th scope="row" colspan="4">Total</th>'
        f'<td class="num"><span data-total="{e(draft.total)}">{e(fmt.money(draft.total))}</span></td></tr>'
    )
    return (
        '<section class="lines" aria-labelledby="lines-h"><h2 id="lines-h">Invoice lines</h2>'
        '<div class="scroll"><table class="lines">'
        "<caption>Each line, how it is computed, and its amount</caption>"
        '<thead><tr><th scope="col" class="num">#</th><th scope="col">Description</th>'
        '<th scope="col" class="num">Quantity</th><th scope="col" class="num">Unit price</th>'
        '<th scope="col" class="num">Amount</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody><tfoot>{foot}</tfoot></table></div></section>"
    )


def _explanation(how: Explanation) -> str:
    if not how.sentences and not how.tiers:
        return ""
    items = "".join(f"<li>{e(sentence)}</li>" for sentence in how.sentences)
    html = f'<ul class="how">{items}</ul>' if items else ""
    if how.tiers:
        rows = "".join(
            f'<tr><th scope="row">{e(t.label)}</th><td class="num">{e(t.quantity)}</td>'
            f'<td class="num">× {e(t.unit_price)}</td><td class="num">{e(t.flat_fee or "")}</td>'
            f'<td class="num">{e(t.amount)}</td></tr>'
            for t in how.tiers
        )
        html += (
            '<table class="tiers"><caption>Quantity per tier × unit price</caption>'
            '<thead><tr><th scope="col">Tier</th><th scope="col" class="num">Quantity</th>'
            '<th scope="col" class="num">Unit price</th><th scope="col" class="num">Flat fee</th>'
            f'<th scope="col" class="num">Amount</th></tr></thead><tbody>{rows}</tbody></table>'
        )
    return html


def _usage_section(invoice: Invoice, catalog: Catalog, fmt: Formatter) -> str:
    if not invoice.daily:
        return ""
    draft = invoice.draft
    charts = []
    for number, (meter_code, days) in enumerate(sorted(invoice.daily.items()), start=1):
        meter = catalog.meters.get(meter_code)
        aggregation = meter.aggregation if meter is not None else "sum"
        unit = meter.unit if meter is not None and aggregation in ("sum", "max") else "events"
        values = daily_values(days, aggregation)
        label = f"{meter_code} ({'daily peak' if aggregation == 'max' else 'per day'}, {unit})"
        first, last = draft.period_start, draft.period_end
        chart = daily_chart(meter_code, unit, first, last, values, fmt, f"chart-{number}")
        charts.append(f"<h3>{e(label)}</h3><figure>{chart}</figure>")
    return (
        '<section class="usage" aria-labelledby="usage-h"><h2 id="usage-h">Daily usage</h2>'
        + "".join(charts)
        + "</section>"
    )


def _events_section(invoice: Invoice, account: Account | None, catalog: Catalog, fmt: Formatter) -> str:
    charges = charge_index(catalog)
    zone = account.timezone if account is not None else "UTC"
    tables = []
    shown: set[str] = set()
    for line in invoice.lines:
        if line.kind != "usage" or line.charge_id is None or line.charge_id in shown:
            continue
        shown.add(line.charge_id)
        events = invoice.top_events.get(line.charge_id)
        if events:
            peak = time_band_windows(charges, line.charge_id)
            tables.append(_events_table(line, events, peak, zone, fmt))
    if not tables:
        return ""
    return (
        '<section class="events" aria-labelledby="events-h"><h2 id="events-h">Largest events behind '
        'each usage line</h2><p class="muted">Event ids are those of the <code>rated_usage</code> '
        "table of the billing store.</p>" + "".join(tables) + "</section>"
    )


def _events_table(line: Line, events: list[RatedEvent], peak: list[Charge], zone: str, fmt: Formatter) -> str:
    unit = line.unit or ""
    has_destination = any("destination" in ev.attributes for ev in events)
    rounded = any(ev.rated_quantity != ev.quantity for ev in events)
    others = any(set(ev.attributes) - {"destination"} for ev in events)
    head = ["Event", "Time"]
    if has_destination:
        head.append("Destination")
    seconds = _SECONDS.get(unit)
    head.append("Duration" if seconds is not None else f"Quantity ({unit})" if unit else "Quantity")
    if rounded:
        head.append("Billed quantity")
    if peak:
        head.append("Time band")
    if others:
        head.append("Attributes")
    head.append("Amount")
    numeric = {"Duration", f"Quantity ({unit})", "Quantity", "Billed quantity", "Amount"}
    rows = []
    for ev in events:
        cells = [
            f'<th scope="row"><code>{e(ev.event_id)}</code></th>',
            f"<td>{e(fmt.instant(ev.event_time, zone))}</td>",
        ]
        if has_destination:
            cells.append(f"<td>{e(ev.attributes.get('destination', ''))}</td>")
        shown = fmt.number(ev.quantity) if seconds is None else _duration(ev.quantity * seconds)
        cells.append(f'<td class="num">{e(shown)}</td>')
        if rounded:
            cells.append(f'<td class="num">{e(fmt.number(ev.rated_quantity))}</td>')
        if peak:
            cells.append(f"<td>{e(_band(ev, peak, zone))}</td>")
        if others:
            text = ", ".join(f"{k}={v}" for k, v in sorted(ev.attributes.items()) if k != "destination")
            cells.append(f"<td>{e(text)}</td>")
        cells.append(f'<td class="num">{e(fmt.exact(ev.amount))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f'<th scope="col"{" class=num" if h in numeric else ""}>{e(h)}</th>' for h in head)
    return (
        f'<h3>Line {line.line_no}: {e(line.description)}</h3><div class="scroll"><table class="events">'
        f"<caption>{_largest(len(events))} of line {line.line_no}</caption>"
        f"<thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _band(event: RatedEvent, peak: list[Charge], zone: str) -> str:
    """Peak when the event's local time falls in one of the plan's daytime windows."""
    local = event.event_time.astimezone(UTC).astimezone(zone_of(zone))
    for charge in peak:
        window = charge.filters.local_time
        if window is not None and in_window(window, local):
            return "peak"
    return "off-peak"


def _duration(seconds: Decimal) -> str:
    """h:mm:ss or m:ss, to the nearest second (the billed quantity beside it is exact)."""
    total = int(seconds.to_integral_value(rounding=ROUND_HALF_UP))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _largest(count: int) -> str:
    return "The largest rated event" if count == 1 else f"The {count} largest rated events"
