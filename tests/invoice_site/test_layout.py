"""The stylesheet's text colours keep WCAG AA contrast (4.5:1) on their backgrounds."""

from __future__ import annotations

import re

from invoice_site.layout import STYLE, e

PAGE_TEXT = "#1a1a1a"
PAGE_BACKGROUND = "#ffffff"


def luminance(colour: str) -> float:
    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(one: str, other: str) -> float:
    high, low = sorted((luminance(one), luminance(other)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_every_text_colour_has_enough_contrast() -> None:
    screen = STYLE.split("@media print")[0]
    pairs = []
    for selector, body in re.findall(r"([^{}]+)\{([^{}]*)\}", screen):
        text = re.search(r"(?<![-\w])(?:color|fill):\s*(#[0-9a-f]{6})", body)
        background = re.search(r"background:\s*(#[0-9a-f]{6})", body)
        if ".bar" in selector or (text is None and background is None):
            continue  # bars are graphics, not text
        pairs.append(
            (
                selector.strip(),
                text.group(1) if text else PAGE_TEXT,
                background.group(1) if background else PAGE_BACKGROUND,
            )
        )
    assert len(pairs) >= 8
    low = [(s, fg, bg, round(contrast(fg, bg), 2)) for s, fg, bg in pairs if contrast(fg, bg) < 4.5]
    assert not low


def test_escape_covers_text_and_attributes() -> None:
    assert (
        e("<a href=\"x\" title='y'>&</a>")
        == "&lt;a href=&quot;x&quot; title=&#x27;y&#x27;&gt;&amp;&lt;/a&gt;"
    )
