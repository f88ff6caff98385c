"""One short HTTP GET for the probes (no proxy for a loopback server) and why a connection failed."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any


def is_loopback(url: str) -> bool:
    # Deferred: openai_backend loads the openai SDK (about half a second); only a probe needs it.
    from orion_assets.llm.openai_backend import is_loopback as loopback

    return loopback(url)


def http_get(url: str, key: str | None, timeout_s: float) -> tuple[int, Any, float]:
    """(status, parsed JSON body or text, seconds); raises ``OSError`` when no answer came."""
    handlers = [urllib.request.ProxyHandler({})] if is_loopback(url) else []
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    started = time.monotonic()
    try:
        with opener.open(request, timeout=timeout_s) as reply:
            status, body = reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    text = body.decode("utf-8", "replace")
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parsed = text
    return status, parsed, time.monotonic() - started


def why_unreachable(exc: BaseException, timeout_s: float) -> str:
    """A short reason for a failed connection (refused, no such host, timeout)."""
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return f"no answer within {timeout_s:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the server running on that port?)"
    if "Name or service not known" in str(reason) or "nodename nor servname" in str(reason) or "getaddrinfo" in str(reason):
        return "the host name does not resolve (no network?)"
    return str(reason)
