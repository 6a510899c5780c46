"""Headless Chromium driven over the DevTools protocol, stdlib only (``tests.websocket`` carries the messages).

    with Chromium(port=9400) as browser:
        page = browser.new_page(1600, 1000)
        page.navigate("http://127.0.0.1:8400/")
        page.wait_for("!!window.app", timeout=60, what="the app")
        page.screenshot(Path("shot.png"))

``CHROMIUM`` is the browser binary (``$CHROMIUM``, else Debian's ``chromium`` on the PATH, else None).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.websocket import WebSocket

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# The networking flags keep a browser on a closed network from retrying refused connections all the time.
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
         "--remote-allow-origins=*"]


class BrowserError(RuntimeError):
    pass


class Page:
    """One tab: ``call`` any DevTools method, ``evaluate`` JavaScript (promises awaited), click, screenshot.
    Console messages and uncaught exceptions are kept in ``console`` (a list of strings)."""

    def __init__(self, ws: WebSocket, target_id: str = ""):
        self.ws, self.target_id, self.next_id, self.console = ws, target_id, 0, []
        self.call("Runtime.enable")
        self.call("Page.enable")

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send({"id": self.next_id, "method": method, "params": params})
        while True:
            message = self.ws.receive()
            if not isinstance(message, dict):
                continue
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error'].get('message')}")
                return message.get("result", {})
            self._event(message)

    def _event(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append(f"console.{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.console.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression (awaited if it is a promise), as JSON."""
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript failed: {text}\n--- in:\n{expression[:600]}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, *, timeout: float, what: str):
        """Poll an expression until it is truthy; returns its value."""
        deadline = time.time() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.time() > deadline:
                raise BrowserError(f"timed out after {timeout:.0f}s waiting for {what} ({expression[:200]})\n"
                                   + "\n".join(self.console[-20:]))
            time.sleep(0.25)

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def click(self, x: float, y: float) -> None:
        """A left click at page coordinates, as a mouse does it (move, press, release)."""
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def press(self, key: str, code: int) -> None:
        """A key press and release, e.g. ``press("Escape", 27)``."""
        for kind in ("rawKeyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self.ws.close()


class Chromium:
    """A headless Chromium with a fresh profile, listening for DevTools on ``port``; a context manager."""

    def __init__(self, port: int, *, binary: str | None = None, timeout: float = 60):
        self.port, self.binary, self.timeout = port, binary or CHROMIUM, timeout
        self.process = None
        self.profile = None

    def _get(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.loads(r.read())

    def __enter__(self):
        if not self.binary:
            raise BrowserError("no chromium binary: install Debian's chromium or set CHROMIUM")
        self.profile = tempfile.mkdtemp(prefix="imagen-chromium-")
        self.process = subprocess.Popen(
            [self.binary, *FLAGS, f"--user-data-dir={self.profile}", f"--remote-debugging-port={self.port}",
             "--window-size=1600,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + self.timeout
        while True:
            try:
                self._get("/json/version")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                if self.process.poll() is not None or time.time() > deadline:
                    self.__exit__()
                    raise BrowserError(f"chromium did not open DevTools on port {self.port}")
                time.sleep(0.25)

    def new_page(self, width: int, height: int, *, timeout: float = 300) -> Page:
        target = self._get("/json/new?about:blank", method="PUT")
        ws = WebSocket("127.0.0.1", self.port, target["webSocketDebuggerUrl"].split(str(self.port), 1)[1],
                       timeout=timeout)
        page = Page(ws, target["id"])
        page.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)
        return page

    def close_page(self, page: Page) -> None:
        page.close()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/close/{page.target_id}", timeout=10).close()
        except (urllib.error.URLError, OSError):
            pass  # the tab is gone already

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.profile:
            shutil.rmtree(self.profile, ignore_errors=True)
