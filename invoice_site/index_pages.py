"""The account index (open draft as of its time, every final invoice) and the site's
top index listing the accounts."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from invoice_site.invoice_page import account_label, status_text
from invoice_site.layout import e, page
from invoice_site.model import AccountSite
from invoice_site.money import Formatter
from meterline.kernel.catalog import Account

__all__ = ["account_index", "top_index"]


def account_index(site: AccountSite, account: Account | None, href: Callable[[str], str]) -> str:
    """`href(invoice_id)` is the invoice page's link, relative to the account's folder."""
    name = account_label(site.account_id, account)
    locale = account.locale if account is not None else "en"
    zone = account.timezone if account is not None else "UTC"
    parts = [f"<h1>{e(name)}</h1>", f'<p class="muted">Account <code>{e(site.account_id)}</code></p>']
    open_drafts = [inv for inv in site.invoices if inv.draft.status != "final"]
    final = [inv for inv in site.invoices if inv.draft.status == "final"]
    parts.append('<section aria-labelledby="open-h"><h2 id="open-h">Current period</h2>')
    if not open_drafts:
        parts.append("<p>No open draft.</p>")
    for invoice in open_drafts:
        draft = invoice.draft
        fmt = Formatter(locale, draft.currency)
        parts.append(
            f'<p><a href="{e(href(draft.invoice_id))}">Invoice <code>{e(draft.invoice_id)}</code></a>, '
            f"{e(fmt.day(draft.period_start))} – {e(fmt.day(draft.period_end))}: "
            f"{status_text(invoice, fmt, zone)}. Total so far "
            f'<strong><span data-total="{e(draft.total)}">{e(fmt.money(draft.total))}</span></strong>.</p>'
        )
    parts.append("</section>")
    parts.append('<section aria-labelledby="final-h"><h2 id="final-h">Invoices</h2>')
    if not final:
        parts.append("<p>No final invoice yet.</p>")
    else:
        rows = []
        for invoice in final:
            draft = invoice.draft
            fmt = Formatter(locale, draft.currency)
            link = f'<a href="{e(href(draft.invoice_id))}"><code>{e(draft.invoice_id)}</code></a>'
            total = f'<span data-total="{e(draft.total)}">{e(fmt.money(draft.total))}</span>'
            rows.append(
                f'<tr><th scope="row">{link}</th><td>{e(draft.period)}</td>'
                f"<td>{e(fmt.day(draft.issue_date))}</td><td>{e(fmt.day(draft.due_date))}</td>"
                f'<td class="num">{total}</td></tr>'
            )
        parts.append(
            '<div class="scroll"><table><caption>Final invoices, latest first</caption>'
            '<thead><tr><th scope="col">Invoice</th><th scope="col">Period</th>'
            '<th scope="col">Issue date</th><th scope="col">Due date</th>'
            f'<th scope="col" class="num">Total</th></tr></thead><tbody>{"".join(rows)}</tbody>'
            "</table></div>"
        )
    parts.append("</section>")
    crumbs = '<a href="../../index.html">All accounts</a>'
    return page(f"Invoices — {name}", "\n".join(parts), crumbs)


def top_index(
    entries: Sequence[tuple[str, int]],
    accounts: Mapping[str, Account],
    href: Callable[[str], str],
    now: datetime,
) -> str:
    """`entries`: (account id, number of invoices) in display order."""
    rows = "".join(
        f'<tr><th scope="row"><a href="{e(href(account_id))}">'
        f"{e(account_label(account_id, accounts.get(account_id)))}</a></th>"
        f'<td><code>{e(account_id)}</code></td><td class="num">{count}</td></tr>'
        for account_id, count in entries
    )
    body = (
        "<h1>Invoices by account</h1>"
        f'<p class="muted">Site rendered {e(now.isoformat(timespec="seconds"))}.</p>'
        '<div class="scroll"><table><caption>Accounts</caption><thead><tr>'
        '<th scope="col">Account</th><th scope="col">Id</th><th scope="col" class="num">Invoices</th>'
        f"</tr></thead><tbody>{rows}</tbody></table></div>"
    )
    return page("Invoices by account", body)
