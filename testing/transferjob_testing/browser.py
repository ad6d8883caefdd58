"""Open an HTML file in headless Chromium and say what a person would have seen go wrong.

Debian's `chromium` (installed by `make test-prereqs`, see mk/cluster.mk) runs with a DevTools port;
the page is loaded over the DevTools protocol (websocket-client, which the kubernetes client brings),
and what the page did is collected: every request it made, console messages and uncaught exceptions,
each picture's decoded size (`naturalWidth` is 0 for a picture that did not load or decode).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket

#: Debian names the binary `chromium`; other distributions `chromium-browser`.
CHROMIUM_NAMES = ("chromium", "chromium-browser")
MISSING = "headless Chromium is not installed: `make test-prereqs` installs Debian's chromium package"


@dataclass(frozen=True)
class Picture:
    src: str
    width: int
    height: int


@dataclass
class PageCheck:
    """What loading the page did."""

    load_seconds: float = 0.0
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    pictures: list[Picture] = field(default_factory=list)
    text: str = ""

    def external_requests(self) -> list[str]:
        """Requests for anything but the page itself and its data: URIs."""
        return [url for url in self.requests if not url.startswith(("data:", "file:"))]


def chromium_binary() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(MISSING)


class _DevTools:
    """One page's DevTools connection: commands answered in order, events kept as they arrive."""

    def __init__(self, url: str) -> None:
        self.socket = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.events: list[dict[str, Any]] = []
        self._next = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        self.socket.send(json.dumps({"id": self._next, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self._next:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
            self.events.append(message)

    def wait_for(self, method: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if any(e.get("method") == method for e in self.events):
            return
        while time.monotonic() < deadline:
            self.socket.settimeout(max(0.1, deadline - time.monotonic()))
            message = json.loads(self.socket.recv())
            self.events.append(message)
            if message.get("method") == method:
                return
        raise TimeoutError(f"no {method} within {timeout} s")

    def close(self) -> None:
        self.socket.close()


def _devtools_port(profile: Path, process: subprocess.Popen[bytes], timeout: float) -> tuple[str, str]:
    """The port and path of the browser's DevTools endpoint, which Chromium writes once it listens."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists() and len(lines := marker.read_text().splitlines()) >= 2:
            return lines[0], lines[1]
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with code {process.returncode} before it listened")
        time.sleep(0.05)
    raise TimeoutError(f"chromium did not open its DevTools port within {timeout} s")


def check_page(path: Path, timeout: float = 60) -> PageCheck:
    """Load `path` in a fresh headless Chromium and report what happened (see `PageCheck`)."""
    binary = chromium_binary()
    with tempfile.TemporaryDirectory(prefix="tj-chromium-") as profile:
        process = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",  # the tests run as root, where Chromium's sandbox refuses to start
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port, browser_path = _devtools_port(Path(profile), process, timeout)
            browser = _DevTools(f"ws://127.0.0.1:{port}{browser_path}")
            target = browser.call("Target.createTarget", url="about:blank")["targetId"]
            browser.close()
            page = _DevTools(f"ws://127.0.0.1:{port}/devtools/page/{target}")
            try:
                return _load(page, path, timeout)
            finally:
                page.close()
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _load(page: _DevTools, path: Path, timeout: float) -> PageCheck:
    for domain in ("Page", "Runtime", "Log", "Network"):
        page.call(f"{domain}.enable")
    started = time.monotonic()
    page.call("Page.navigate", url=path.resolve().as_uri())
    page.wait_for("Page.loadEventFired", timeout)
    check = PageCheck(load_seconds=time.monotonic() - started)
    pictures = page.call(
        "Runtime.evaluate",
        expression="JSON.stringify(Array.from(document.images, i => [i.src.slice(0, 40), i.naturalWidth,"
        " i.naturalHeight]))",
        returnByValue=True,
    )
    check.pictures = [Picture(src, w, h) for src, w, h in json.loads(pictures["result"]["value"])]
    text = page.call("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)
    check.text = str(text["result"]["value"])
    for event in page.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            check.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
            check.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            check.errors.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
            check.errors.append(f"{params['entry']['source']}: {params['entry']['text']}")
    return check
