"""Reading rendered pages back in tests: the text of each invoice line, data attributes."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path


class _Lines(HTMLParser):
    """The text of each `<tr data-line="N">` (nested tables included) and every element's
    `data-total` / `data-amount` attribute values."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[int, list[str]] = {}
        self.totals: list[str] = []
        self.amounts: list[str] = []
        self._line: int | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("data-total") is not None:
            self.totals.append(str(values["data-total"]))
        if values.get("data-amount") is not None:
            self.amounts.append(str(values["data-amount"]))
        if tag != "tr":
            return
        if self._line is not None:
            self._depth += 1
        elif values.get("data-line") is not None:
            self._line = int(str(values["data-line"]))
            self.lines[self._line] = []

    def handle_endtag(self, tag: str) -> None:
        if tag != "tr" or self._line is None:
            return
        if self._depth:
            self._depth -= 1
        else:
            self._line = None

    def handle_data(self, data: str) -> None:
        if self._line is not None:
            self.lines[self._line].append(data)


def parse(path: Path) -> _Lines:
    parser = _Lines()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def line_texts(path: Path) -> dict[int, str]:
    """Each invoice line's text, whitespace collapsed (NBSP included: Babel puts one before €)."""
    return {
        number: " ".join(" ".join(parts).replace("\xa0", " ").split())
        for number, parts in parse(path).lines.items()
    }


def text(path: Path) -> str:
    class _All(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.parts: list[str] = []
            self._skip = False

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self._skip = tag == "style"

        def handle_endtag(self, tag: str) -> None:
            self._skip = False

        def handle_data(self, data: str) -> None:
            if not self._skip:
                self.parts.append(data)

    parser = _All()
    parser.feed(path.read_text(encoding="utf-8"))
    return " ".join(" ".join(parser.parts).replace("\xa0", " ").split())
