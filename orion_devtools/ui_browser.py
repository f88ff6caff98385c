"""Helpers for the end-to-end UI test: a ``dagster dev`` process, its GraphQL API, headless Chromium.

Chromium is driven over the Chrome DevTools Protocol (CDP) with the ``websockets`` package that
``dagster-webserver`` already pulls in (through uvicorn), so the test needs no browser-automation
dependency: ``chromium --remote-debugging-port=0`` writes its port to ``DevToolsActivePort`` in the
profile folder, ``/json/list`` names the page's websocket, and a few CDP commands do the rest
(``Page.navigate``, ``Runtime.evaluate``, ``Page.captureScreenshot``).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from orion_assets.serving.managed_server import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
# Without the background-networking flags Chromium's own connections are refused in a closed
# network and it stalls; --no-sandbox because CI runs as root.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
)


def find_chromium() -> str | None:
    env = os.environ.get("ORION_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _default_interrupts() -> None:
    """In the child before exec: SIGINT and SIGTERM back to their defaults.

    A shell's background job (CI, ``nohup``) starts with SIGINT ignored, exec keeps it ignored, and
    ``dagster dev`` maps SIGTERM to SIGINT's handler: it would then ignore both and never stop.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stop_group(proc: subprocess.Popen, grace: float = 15.0, first: signal.Signals = signal.SIGTERM,
                leader_only: bool = False) -> None:
    """Signal ``proc`` (or its whole process group), wait ``grace``, then SIGKILL the group."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    for sig, wait in ((first, grace), (signal.SIGKILL, 5.0)):
        try:
            if sig != signal.SIGKILL and leader_only:
                os.kill(proc.pid, sig)
            else:
                os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; children (webserver, daemon, code server) may linger a moment.
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------------------------
# dagster dev


class CodeLocationError(RuntimeError):
    """The workspace's code location loaded with an error."""


class DagsterDev:
    """``python -m dagster dev -w workspace.yaml`` in its own process group, on a free port."""

    def __init__(self, env: Mapping[str, str], log_path: Path, cwd: Path = REPO_ROOT):
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> DagsterDev:
        cmd = [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml",
               "-h", "127.0.0.1", "-p", str(self.port)]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            cmd, cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_default_interrupts,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=5) as r:
                    json.load(r)
                entries = self.graphql(
                    "{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus"
                    " locationOrLoadError { __typename ... on PythonError { message } } } } } }"
                )["workspaceOrError"]["locationEntries"]
                last = json.dumps(entries)
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    errors = [e for e in entries if e["locationOrLoadError"]["__typename"] != "RepositoryLocation"]
                    if errors:
                        raise CodeLocationError(f"code location failed to load: {errors}\n{self.log_tail()}")
                    return
            except CodeLocationError:
                raise
            except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
                # not listening yet, a half-started server's error page or GraphQL error
                last = repr(exc)
            time.sleep(0.5)
        raise TimeoutError(f"dagster dev not ready after {timeout:.0f}s ({last}):\n{self.log_tail()}")

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None, timeout: float = 60) -> dict:
        body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
        req = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            payload = json.load(r)
        if payload.get("errors"):
            raise RuntimeError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]

    def stop(self) -> None:
        if self.proc is not None:
            # Ctrl-C for dagster dev: it asks the webserver and daemon to shut down over their
            # pipes and waits for them; whatever is left in the group after that is killed.
            _stop_group(self.proc, grace=30.0, first=signal.SIGINT, leader_only=True)
            self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def __enter__(self) -> DagsterDev:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Chromium over CDP


class Chromium:
    """A headless Chromium with a fresh profile and one page, driven over CDP."""

    def __init__(self, binary: str, width: int = 1600, height: int = 1000):
        self.binary = binary
        self.width = width
        self.height = height
        self.root = Path(tempfile.mkdtemp(prefix="orion-chromium-"))
        self.profile = self.root / "profile"
        self.log_path = self.root / "chromium.log"
        self.proc: subprocess.Popen | None = None
        self.ws = None
        self._ids = itertools.count(1)

    def start(self, timeout: float = 60.0) -> Chromium:
        cmd = [self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
               "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
               f"--window-size={self.width},{self.height}", "about:blank"]
        self._err = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._err,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            port = self._devtools_port(timeout)
            deadline = time.monotonic() + timeout
            while True:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                if pages or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            if not pages:
                raise RuntimeError("Chromium opened no page")
            self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout)
            self.send("Page.enable")
            self.send("Runtime.enable")
            self.send("Emulation.setDeviceMetricsOverride",
                      {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.stop()
            raise
        return self

    def _devtools_port(self, timeout: float) -> int:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Chromium exited with {self.proc.returncode}: {self.stderr_tail()}")
            if marker.exists():
                first = marker.read_text().splitlines()[:1]
                if first and first[0].strip().isdigit():
                    return int(first[0])
            time.sleep(0.1)
        raise TimeoutError(f"Chromium wrote no DevToolsActivePort in {timeout:.0f}s: {self.stderr_tail()}")

    def stderr_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def send(self, method: str, params: Mapping[str, Any] | None = None, timeout: float = 60.0) -> dict:
        """Send one CDP command and return its result (events in between are dropped)."""
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": dict(params or {})}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"CDP {method}: no answer in {timeout:.0f}s")
            msg = json.loads(self.ws.recv(timeout=left))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"CDP {method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"JS error in {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise RuntimeError(f"navigating to {url}: {result['errorText']}")

    def wait_for(self, predicate_js: str, timeout: float = 60.0, interval: float = 0.5,
                 describe: Callable[[], str] | None = None) -> Any:
        """Poll a JS expression until it is truthy; return its value or raise with a description."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.evaluate(predicate_js)
            if value:
                return value
            time.sleep(interval)
        detail = describe() if describe else repr(value)
        raise TimeoutError(f"waited {timeout:.0f}s for {predicate_js!r}: {detail}")

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data

    def stop(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:  # noqa: BLE001 (the browser may already be gone)
                pass
            self.ws = None
        if self.proc is not None:
            _stop_group(self.proc, grace=5.0)
            self.proc = None
        if getattr(self, "_err", None):
            self._err.close()
            self._err = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
