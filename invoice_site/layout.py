"""The page shell shared by every page: one inline stylesheet (screen, phone and print),
the `lang` attribute, and escaping. Nothing is fetched: pages work from file://.

Colours keep WCAG AA contrast (4.5:1 or more for text) on their backgrounds.
"""

from __future__ import annotations

from html import escape
from typing import Final

__all__ = ["STYLE", "e", "page"]

STYLE: Final = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: #1a1a1a; background: #ffffff; }
main, nav.crumbs, footer { max-width: 62rem; margin: 0 auto; padding: 0 1rem; }
nav.crumbs { padding-top: 1rem; font-size: .95rem; }
a { color: #0b4ea2; }
a:focus, a:hover { color: #062f63; }
h1 { font-size: 1.6rem; margin: 1rem 0 .25rem; overflow-wrap: anywhere; }
h2 { font-size: 1.25rem; margin: 2rem 0 .5rem; border-bottom: 2px solid #d0d7de; }
h3 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; overflow-wrap: anywhere; }
.muted { color: #4a4f55; }
.status { display: inline-block; padding: .1rem .6rem; border-radius: 1rem; font-weight: 600; }
.status-open { background: #fff1cc; color: #5c3b00; }
.status-final { background: #dff5e3; color: #14532d; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; margin: 1rem 0; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1rem; }
caption { text-align: left; font-weight: 600; padding: .25rem 0; }
th, td { text-align: left; vertical-align: top; padding: .45rem .5rem; border-bottom: 1px solid #d0d7de; }
thead th { background: #f3f5f7; border-bottom: 2px solid #8c959f; }
tbody th { font-weight: 400; }
.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
tfoot th, tfoot td { font-weight: 600; }
tfoot tr.total th, tfoot tr.total td { font-size: 1.1rem; border-top: 2px solid #1a1a1a; }
.how { margin: .35rem 0 0; padding-left: 1.1rem; color: #3b4046; font-size: .93rem; }
.how li { margin: .1rem 0; }
table.tiers { width: auto; font-size: .9rem; margin: .4rem 0; }
table.tiers th, table.tiers td { padding: .2rem .5rem; }
svg.chart { width: 100%; max-width: 40rem; height: auto; display: block; }
svg.chart .bar { fill: #1f5fa8; }
svg.chart .axis { stroke: #4a4f55; stroke-width: 1; }
svg.chart .tick { fill: #3b4046; font-size: 11px; }
code { font-size: .9em; overflow-wrap: anywhere; }
footer { margin: 3rem auto 2rem; font-size: .85rem; color: #4a4f55; }
@media (max-width: 40rem) {
  body { font-size: 15px; }
  dl.facts { grid-template-columns: 1fr; }
  dl.facts dd { margin-bottom: .4rem; }
  th, td { padding: .35rem .3rem; }
}
@media print {
  @page { margin: 15mm; }
  body { font-size: 11pt; color: #000000; background: #ffffff; }
  nav.crumbs, footer, .no-print, section.usage, section.events { display: none; }
  main { max-width: none; padding: 0; }
  a { color: #000000; text-decoration: none; }
  .status { border: 1px solid #000000; background: none; color: #000000; }
  thead th { background: none; }
  tr, .how, table.tiers { break-inside: avoid; }
  h2 { border-color: #000000; }
}
"""


def e(text: object) -> str:
    """Escaped for HTML text and quoted attribute values."""
    return escape(str(text), quote=True)


def page(title: str, body: str, crumbs: str = "") -> str:
    """A whole document; `title` is plain text, `body` and `crumbs` already HTML."""
    nav = f'<nav class="crumbs" aria-label="Breadcrumb">{crumbs}</nav>' if crumbs else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"{nav}\n<main>\n{body}\n</main>\n"
        "<footer>Rendered by meterline from its billing store. Amounts are the stored "
        "invoice amounts.</footer>\n</body>\n</html>\n"
    )
