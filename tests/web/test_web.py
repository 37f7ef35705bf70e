"""``torchbearer web`` for real: the server starts, headless Chromium loads the page, and the queue appears.

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it); the test skips, saying so, where it is absent.
The browser is driven over the DevTools protocol (aiohttp, already a textual-serve dependency): a script put in
the page before it loads keeps what the dashboard sends to the terminal over its websocket, so the test can read
the queue the browser received; the screenshot of the page is kept beside the test's temporary files.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.conftest import tb
from tests.tui.conftest import seed_store

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

#: Flags for a quiet, self-contained headless browser (no first-run, no calls home, no GPU).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,800"]  # fmt: skip

#: Run in the page before its own scripts: keep the text of every websocket message the page receives.
KEEP_WEBSOCKET_TEXT = """
window.__received = "";
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener("message", (event) => {
      const keep = (buffer) => { window.__received += new TextDecoder().decode(buffer); };
      if (typeof event.data === "string") window.__received += event.data;
      else if (event.data instanceof ArrayBuffer) keep(event.data);
      else if (event.data instanceof Blob) event.data.arrayBuffer().then(keep);
    });
  }
};
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"torchbearer web exited with {process.returncode}: {process.stdout.read()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port} after {timeout:.0f} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class DevTools:
    """A minimal DevTools-protocol client for one page."""

    def __init__(self, websocket) -> None:
        self.websocket = websocket
        self.next_id = 0

    async def call(self, method: str, **params) -> dict:
        self.next_id += 1
        await self.websocket.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message = await self.websocket.receive_json(timeout=60)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")


async def load_dashboard(devtools_port: int, url: str, screenshot: Path, timeout: float = 90) -> tuple[str, int]:
    """Open ``url``; wait until the page received the queue; save a screenshot. Returns (text, canvases)."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{devtools_port}/json/list") as response:
            pages = [t for t in await response.json() if t["type"] == "page"]
        async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as websocket:
            tools = DevTools(websocket)
            await tools.call("Page.enable")
            await tools.call("Page.addScriptToEvaluateOnNewDocument", source=KEEP_WEBSOCKET_TEXT)
            await tools.call("Page.navigate", url=url)
            deadline = time.monotonic() + timeout
            text = ""
            while time.monotonic() < deadline:
                text = await tools.evaluate("window.__received || ''") or ""
                if "farseg" in text and "succeeded" in text and "dep-failed" in text:
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(1.0)  # let the terminal draw what arrived
            shot = await tools.call("Page.captureScreenshot", format="png")
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            canvases = await tools.evaluate("document.querySelectorAll('.textual-terminal canvas').length")
            return text, canvases or 0


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (Debian: apt-get install chromium)")
def test_web_serves_the_dashboard_to_a_headless_browser(project, store, monkeypatch, tmp_path):
    with monkeypatch.context() as patch:
        seed_store(store, project, patch)
    store.set_meta("tui_last_opened", time.time())  # nothing ended since: the queue, not the morning summary
    opened = time.time()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "torchbearer", "web", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "COLUMNS": "120"})  # fmt: skip
    browser = None
    try:
        wait_for_port(port, server)
        profile = tmp_path / "chromium-profile"  # a fresh profile each run
        browser = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                    "--remote-debugging-port=0", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (active.is_file() and active.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.2)
        devtools_port = int(active.read_text().split()[0])
        screenshot = tmp_path / "dashboard.png"
        text, canvases = asyncio.run(load_dashboard(devtools_port, f"http://127.0.0.1:{port}/", screenshot))
    finally:
        if browser is not None:
            stop(browser)
        stop(server)
    print(f"screenshot: {screenshot}")
    (tmp_path / "received.txt").write_text(text)
    assert "farseg" in text and "succeeded" in text and "dep-failed" in text, text[-2000:]  # the queue arrived
    assert canvases > 0  # and the page's terminal drew it
    assert screenshot.stat().st_size > 10_000
    assert store.meta("tui_last_opened") >= opened  # the dashboard the page started opened this store


def test_web_refuses_another_address_without_public(project):
    result = tb("web", "--host", "0.0.0.0")
    assert result.returncode == 2
    assert "--public" in result.stderr and "cancel" in result.stderr
