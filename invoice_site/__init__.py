"""The customer invoice site: static HTML pages rendered from the billing store.

`render_site` writes, per account, an index (the open draft and every final invoice)
and one page per invoice with each line explained, daily usage charts as inline SVG
and the largest rated events behind each usage line; `invoice_page_html` renders one
invoice page on its own (for a PDF renderer). docs/invoice-site.md describes the site.
"""

from invoice_site.render import invoice_page_html, render_site

__all__ = ["invoice_page_html", "render_site"]
