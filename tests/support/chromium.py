"""Headless Chromium for tests: find or install it, and drive it over the DevTools protocol.

`find_or_install_chromium()` finds the Debian `chromium` binary, installing the package
with apt-get when it is missing; anything that goes wrong fails the test with the reason
(a test that asked for a browser never passes without one). `Chromium` starts it headless
and speaks the DevTools protocol over `--remote-debugging-pipe` (NUL-separated JSON on
file descriptors 3 and 4): no websocket client, no Selenium, no port to pick. `visit(url)`
loads a page and returns what it logged, what it fetched and a PNG screenshot;
`evaluate` runs an expression in the page; `print_pdf` prints the current page.
`png_colours` decodes a PNG with the standard library only.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import select
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import orjson
import pytest

__all__ = ["Chromium", "Visit", "find_or_install_chromium", "png_colours"]

_NAMES = ("chromium", "chromium-browser")
_INSTALL_LOCK = Path(tempfile.gettempdir()) / "meterline-chromium-install.lock"


def _fail(reason: str) -> NoReturn:
    pytest.fail(f"Chromium for tests: {reason}", pytrace=False)


def _find() -> Path | None:
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def _run(command: Sequence[str], env: dict[str, str]) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _fail(f"{' '.join(command)} failed: {exc}")
    if done.returncode != 0:
        _fail(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def find_or_install_chromium() -> Path:
    """The `chromium` binary, installing the Debian package when it is missing."""
    found = _find()
    if found is not None:
        return found
    if os.geteuid() != 0:
        _fail("no chromium on PATH, and only root may install the chromium package")
    # Test processes running side by side would fight over the dpkg lock: one installs.
    with _INSTALL_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _find()
        if found is None:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            _run(["apt-get", "update"], env)
            _run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], env)
            found = _find()
    if found is None:
        _fail("installed the chromium package but found no chromium on PATH")
    return found


def _above_nine(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class DevToolsError(RuntimeError):
    """Chromium answered a DevTools command with an error."""


@dataclass
class Visit:
    """One page load: the problems the page logged, the URLs it requested, its screenshot."""

    url: str
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    screenshot: bytes = b""


class Chromium:
    """A headless Chromium with one tab, driven over the DevTools pipe. Use as a context manager."""

    def __init__(self, binary: Path, width: int = 1280, height: int = 900) -> None:
        self.width, self.height = width, height
        self._profile = Path(tempfile.mkdtemp(prefix="meterline-chromium-"))
        self._log = (self._profile / "chromium.log").open("wb")
        commands_r, self._commands = os.pipe()
        self._replies, replies_w = os.pipe()
        # The child's ends move above 9: redirecting them onto 3 and 4 then never
        # overwrites one of them (os.pipe may well have returned 3 or 4).
        commands_r, replies_w = _above_nine(commands_r), _above_nine(replies_w)
        flags = [
            "--headless",
            "--remote-debugging-pipe",
            f"--user-data-dir={self._profile / 'profile'}",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--mute-audio",
        ]
        if os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium refuses to run its sandbox as root
        # The protocol wants the pipe on fds 3 (commands in) and 4 (replies out): bash (dash
        # knows single-digit fds only) moves them there, so no Python runs between fork and exec.
        script = f'exec "$@" 3<&{commands_r} 4>&{replies_w} {commands_r}<&- {replies_w}>&-'
        try:
            self._process = subprocess.Popen(
                ["bash", "-c", script, "bash", str(binary), *flags, "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                pass_fds=(commands_r, replies_w),
            )
        finally:
            os.close(commands_r)
            os.close(replies_w)
        self._next_id = 0
        self._buffer = b""
        self._events: list[dict[str, Any]] = []
        self._session = ""
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            attached = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
            self._session = attached["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.call(f"{domain}.enable")
            self.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the protocol ----------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        data = orjson.dumps(message) + b"\0"
        while data:
            data = data[os.write(self._commands, data) :]

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time; see " + str(self._log.name))
            ready, _, _ = select.select([self._replies], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self._replies, 1 << 20)
                if not chunk:
                    raise DevToolsError(
                        f"Chromium closed the DevTools pipe (exit {self._process.poll()}): {self.log_tail()}"
                    )
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        parsed: dict[str, Any] = orjson.loads(message)
        return parsed

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> dict[str, Any]:
        """Send a command (to the tab once attached) and return its result; events that
        arrive meanwhile are kept for `_wait_event`."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self._session:
            message["sessionId"] = self._session
        self._send(message)
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise DevToolsError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            if "method" in reply:
                self._events.append(reply)

    def _wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self._events:
                if event["method"] == method:
                    return event
            reply = self._receive(deadline)
            if "method" in reply:
                self._events.append(reply)

    # -- pages -----------------------------------------------------------------

    def visit(self, url: str, timeout: float = 30) -> Visit:
        """Load `url`, wait for its load event, and return its errors, requests and screenshot."""
        self._events.clear()
        navigated = self.call("Page.navigate", {"url": url}, timeout)
        if navigated.get("errorText"):
            raise DevToolsError(f"{url}: {navigated['errorText']}")
        self._wait_event("Page.loadEventFired", timeout)
        # A round trip after the load: what the page logged while loading has arrived.
        self.evaluate("document.readyState")
        visit = Visit(url)
        shot = self.call("Page.captureScreenshot", {"format": "png"}, timeout)
        visit.screenshot = base64.b64decode(shot["data"])
        for event in self._events:
            visit.errors += _problems(event)
            if event["method"] == "Network.requestWillBeSent":
                visit.requests.append(event["params"]["request"]["url"])
        return visit

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (returned by value, as JSON)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def set_viewport(self, width: int, height: int, mobile: bool = False) -> None:
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )

    def print_pdf(self) -> bytes:
        """The current page printed to PDF with its print stylesheet (A4, backgrounds kept)."""
        result = self.call(
            "Page.printToPDF",
            {"paperWidth": 8.27, "paperHeight": 11.69, "printBackground": True, "preferCSSPageSize": True},
            timeout=60,
        )
        return base64.b64decode(result["data"])

    def log_tail(self, size: int = 2000) -> str:
        self._log.flush()
        return Path(self._log.name).read_bytes()[-size:].decode("utf-8", "replace")

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self._session = ""
                self.call("Browser.close", timeout=5)
            except (DevToolsError, TimeoutError, OSError):
                pass
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for fd in (self._commands, self._replies):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)


def _problems(event: dict[str, Any]) -> list[str]:
    """What a DevTools event says went wrong on the page: console errors, uncaught
    exceptions, and error entries of the browser's log (failed loads, blocked content)."""
    method, params = event["method"], event.get("params", {})
    if method == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        return [f"exception: {details.get('exception', {}).get('description') or details.get('text')}"]
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
        return [f"console.{params['type']}: {text}"]
    if method == "Log.entryAdded" and params["entry"]["level"] == "error":
        entry = params["entry"]
        return [f"{entry['source']}: {entry['text']} {entry.get('url', '')}".rstrip()]
    return []


# -- PNG -------------------------------------------------------------------------

_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel (8-bit, no palette)


def png_colours(data: bytes, limit: int = 2) -> int:
    """How many distinct colours a PNG holds, counting up to `limit`.

    Reads 8-bit greyscale or truecolour images, with or without alpha, not interlaced:
    what Chromium's screenshots are. Raises ValueError for anything else.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    position, idat, header = 8, [], b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        if zlib.crc32(kind + body) != crc:
            raise ValueError(f"PNG chunk {kind!r}: bad CRC")
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        position += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour not in _CHANNELS or interlace:
        raise ValueError(f"PNG with depth {depth}, colour type {colour}, interlace {interlace}")
    step = _CHANNELS[colour]
    stride = width * step
    raw = zlib.decompress(b"".join(idat))
    if len(raw) != height * (stride + 1):
        raise ValueError("PNG data does not match its size")
    colours: set[bytes] = set()
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        row = _unfilter(raw[start], bytearray(raw[start + 1 : start + 1 + stride]), previous, step)
        colours.update(bytes(row[x : x + step]) for x in range(0, stride, step))
        if len(colours) >= limit:
            return len(colours)
        previous = row
    return len(colours)


def _unfilter(kind: int, row: bytearray, previous: bytearray, step: int) -> bytearray:
    if kind == 0:
        return row
    if kind == 2:  # Up: whole-row addition, no dependency along the row
        return bytearray((a + b) & 0xFF for a, b in zip(row, previous, strict=True))
    for i in range(len(row)):
        left = row[i - step] if i >= step else 0
        up = previous[i]
        if kind == 1:
            predicted = left
        elif kind == 3:
            predicted = (left + up) >> 1
        elif kind == 4:
            corner = previous[i - step] if i >= step else 0
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            predicted = left if pa <= pb and pa <= pc else up if pb <= pc else corner
        else:
            raise ValueError(f"PNG filter type {kind}")
        row[i] = (row[i] + predicted) & 0xFF
    return row
