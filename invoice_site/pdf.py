"""Invoice PDFs: the invoice page printed by headless Chromium, with the EN 16931 XML
embedded as a Factur-X PDF/A-3 (`factur-x`).

One Chromium process prints every page of a run through the DevTools protocol on a pipe
(`--remote-debugging-pipe`): starting Chromium once per invoice would cost a second or
more each. Chromium is the Debian package `chromium`; `install_chromium` installs it with
apt-get where it is missing.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import structlog

__all__ = [
    "ChromiumMissing",
    "PdfError",
    "PdfPrinter",
    "embed_einvoice",
    "find_chromium",
    "install_chromium",
    "pdf_keywords",
    "with_keywords",
]

log = structlog.get_logger(__name__)

_BROWSERS: Final = ("chromium", "chromium-browser", "google-chrome")
_TIMEOUT_S: Final = 60.0
# A4 less the print stylesheet's 15 mm margins, in CSS pixels (96 per inch).
_A4_INCHES: Final = (8.27, 11.69)
_CONTENT_WIDTH_PX: Final = 680
_SMALLEST_SCALE: Final = 0.5
# The widest box of the page as printed: the document, or a box that would clip (scroll) its
# content, such as a wide invoice-lines table in a horizontally scrolling container.
_WIDEST: Final = """Math.max(document.documentElement.scrollWidth,
  ...Array.from(document.querySelectorAll('*'), el =>
    getComputedStyle(el).overflowX === 'visible' ? 0 : el.scrollWidth))"""
_INSTALL_HINT: Final = "install the Debian package chromium (apt-get install chromium)"


class PdfError(RuntimeError):
    """Chromium could not print a page."""


class ChromiumMissing(PdfError):
    """No Chromium to print PDFs with."""


def find_chromium() -> str | None:
    for name in _BROWSERS:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def install_chromium() -> str:
    """The Chromium executable, installed with apt-get when missing (as root, Debian or
    Ubuntu). Raises ChromiumMissing, saying why, when it cannot be installed."""
    found = find_chromium()
    if found is not None:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise ChromiumMissing(f"Chromium is not installed and apt-get cannot run here: {_INSTALL_HINT}")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in ([apt, "update"], [apt, "install", "-y", "--no-install-recommends", "chromium"]):
        result = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise ChromiumMissing(f"{' '.join(command)} failed: {' / '.join(tail)}")
    found = find_chromium()
    if found is None:
        raise ChromiumMissing(f"apt-get installed chromium but no browser is on PATH: {_INSTALL_HINT}")
    return found


class PdfPrinter:
    """A headless Chromium that prints HTML documents to PDF; use as a context manager."""

    def __init__(self, executable: str | None = None) -> None:
        found = executable or find_chromium()
        if found is None:
            raise ChromiumMissing(f"Chromium is needed for invoice PDFs: {_INSTALL_HINT}")
        self._profile = tempfile.mkdtemp(prefix="meterline-chromium-")
        # fd 3 is what Chromium reads commands from, fd 4 where it writes answers.
        command_read, self._commands = os.pipe()
        self._answers, answer_write = os.pipe()

        def pipes_as_3_and_4() -> None:
            # Moved out of the way first: either pipe end may itself be fd 3 or 4.
            commands, answers = (
                fcntl.fcntl(command_read, fcntl.F_DUPFD, 10),
                fcntl.fcntl(answer_write, fcntl.F_DUPFD, 10),
            )
            os.dup2(commands, 3)
            os.dup2(answers, 4)

        self._process = subprocess.Popen(
            [
                found, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--remote-debugging-pipe",
                f"--user-data-dir={self._profile}", "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=pipes_as_3_and_4,
            pass_fds=(3, 4),
        )  # fmt: skip
        os.close(command_read)
        os.close(answer_write)
        self._buffer = b""
        self._next_id = 0
        self._session = ""
        self._folder = Path(self._profile) / "pages"
        self._folder.mkdir()
        try:
            target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
            attached = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})
            self._session = attached["sessionId"]
            self._call("Page.enable", {})
            self._call("Emulation.setEmulatedMedia", {"media": "print"})
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> PdfPrinter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stderr is not None:
            self._process.stderr.close()
        for fd in (self._commands, self._answers):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    def print_html(self, html: str) -> bytes:
        """The document printed on A4 with its print stylesheet, scaled down when a table
        is wider than the page (a scrolling box would cut it off on paper)."""
        page = self._folder / "invoice.html"
        page.write_text(html, encoding="utf-8")
        # Laid out at the page's width to measure it, then printed.
        metrics = {"width": _CONTENT_WIDTH_PX, "height": 1000, "deviceScaleFactor": 1, "mobile": False}
        self._call("Emulation.setDeviceMetricsOverride", metrics)
        self._call("Page.navigate", {"url": page.as_uri()}, until="Page.loadEventFired")
        widest = self._call("Runtime.evaluate", {"expression": _WIDEST, "returnByValue": True})
        needed = float(widest.get("result", {}).get("value") or _CONTENT_WIDTH_PX)
        self._call("Emulation.clearDeviceMetricsOverride", {})
        scale = max(_SMALLEST_SCALE, min(1.0, _CONTENT_WIDTH_PX / needed))
        width, height = _A4_INCHES
        options = {"printBackground": True, "displayHeaderFooter": False, "scale": round(scale, 3)}
        result = self._call("Page.printToPDF", {**options, "paperWidth": width, "paperHeight": height})
        return base64.b64decode(result["data"])

    # -- the DevTools protocol: NUL-terminated JSON messages

    def _call(self, method: str, params: dict[str, Any], until: str | None = None) -> dict[str, Any]:
        """Send a command; wait for its answer (and for the event `until`, when given)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self._session and method.split(".")[0] != "Target":
            message["sessionId"] = self._session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + _TIMEOUT_S
        answer: dict[str, Any] | None = None
        seen_event = until is None
        while answer is None or not seen_event:
            reply = self._receive(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise PdfError(f"Chromium: {method} failed: {reply['error'].get('message')}")
                answer = reply.get("result", {})
            elif until is not None and reply.get("method") == until:
                seen_event = True
        return answer

    def _receive(self, deadline: float, method: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PdfError(f"Chromium did not answer {method} within {_TIMEOUT_S:.0f} s")
            ready, _, _ = select.select([self._answers], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self._answers, 1 << 20)
            if not chunk:
                raise PdfError(f"Chromium exited while printing: {self._stderr_tail()}")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        reply: dict[str, Any] = json.loads(message)
        return reply

    def _stderr_tail(self) -> str:
        if self._process.poll() is None or self._process.stderr is None:
            return "(still running)"
        lines = self._process.stderr.read().decode("utf-8", "replace").strip().splitlines()
        return " / ".join(lines[-3:]) or f"exit status {self._process.returncode}"


def embed_einvoice(pdf: bytes, xml: bytes, metadata: dict[str, str]) -> bytes:
    """A Factur-X PDF/A-3 (level EN16931): the PDF with the CII XML as factur-x.xml."""
    from facturx import generate_from_binary

    result: bytes = generate_from_binary(
        pdf, xml, flavor="factur-x", level="en16931", check_xsd=True, pdf_metadata=metadata, lang="en"
    )
    return result


def with_keywords(pdf: bytes, metadata: dict[str, str]) -> bytes:
    """The PDF with title, author, subject and keywords set (a PDF without e-invoice)."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.add_metadata({f"/{key.capitalize()}": value for key, value in metadata.items()})
    output = io.BytesIO()
    writer.write(output)
    return output.getvalue()


def pdf_keywords(path: Path) -> str | None:
    """The Keywords of a PDF file; None when it is missing or unreadable."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        info = PdfReader(path).metadata
    except (OSError, PyPdfError, ValueError):
        return None
    if info is None:
        return None
    keywords = info.get("/Keywords")
    return str(keywords) if keywords is not None else None
