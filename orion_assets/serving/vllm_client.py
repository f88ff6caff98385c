"""A small client for a vLLM(-like) server's model list, runtime LoRA adapters and sleep mode.

    models = list_models("http://127.0.0.1:8000/v1")      # [ServedModel(id, root, parent), ...]
    load_adapter(base_url, "orion", "/runs/ckpt-123")     # needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=1
    unload_adapter(base_url, "orion")
    sleep(base_url, level=1); is_sleeping(base_url); wake_up(base_url)   # --enable-sleep-mode, VLLM_SERVER_DEV_MODE=1

``base_url`` is the endpoint's OpenAI base URL (``.../v1``, as in a profile) or the server's root:
the sleep routes live at the root, the others under ``/v1``. A refusal raises :class:`ServerError`
with the HTTP status and vLLM's own message (its ``{"error": {"message": ...}}`` envelope, or FastAPI's
``{"detail": ...}`` for a route the server was not started with). The routes, bodies and refusals are
vLLM's (see ``orion_devtools/vllm_runtime.py`` for the vLLM source each one comes from).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

DEFAULT_TIMEOUT_S = 30.0
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the servers are ours, never proxied
SLOW_TIMEOUT_S = 600.0  # loading an adapter, sleeping, waking: weights move between disk, CPU and GPU

# What a 404 "Not Found" from FastAPI (no such route) means on a vLLM server, per route.
_ROUTE_NEEDS = {
    "/v1/load_lora_adapter": "the server must run with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1",
    "/v1/unload_lora_adapter": "the server must run with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1",
    "/sleep": "the server must run with --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1",
    "/wake_up": "the server must run with --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1",
    "/is_sleeping": "the server must run with --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1",
}


class ServerError(RuntimeError):
    """The server refused a call (``status`` is its HTTP status; ``message`` its own words) or did
    not answer (``status`` is None)."""

    def __init__(self, url: str, status: int | None, message: str) -> None:
        self.url = url
        self.status = status
        self.message = message
        said = f"HTTP {status}: {message}" if status is not None else message
        super().__init__(f"{url} -> {said}")


@dataclass(frozen=True)
class ServedModel:
    """One card of ``/v1/models``: a LoRA adapter has ``parent`` = the base model and ``root`` = the
    path it was loaded from; the base model has ``parent`` None and ``root`` its weights' path."""

    id: str
    root: str | None
    parent: str | None


def server_root(base_url: str) -> str:
    """``http://host:port`` from ``http://host:port/v1`` (or from the root itself)."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def _call(base_url: str, method: str, path: str, body: dict[str, Any] | None = None,
          timeout_s: float = DEFAULT_TIMEOUT_S) -> bytes:  # fmt: skip
    url = server_root(base_url) + path
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if method == "POST" and data is None:
        data = b""
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _NO_PROXY.open(request, timeout=timeout_s) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raise ServerError(url, exc.code, _message(exc.read(), path)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServerError(url, None, f"no answer ({reason})") from None


def _message(raw: bytes, path: str) -> str:
    """vLLM's error message from an error body (its envelope, FastAPI's ``detail``, or the text)."""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        return text or "(empty body)"
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        detail = payload.get("detail")
        route = path.split("?", 1)[0]
        if detail == "Not Found" and route in _ROUTE_NEEDS:
            return f"Not Found (no such route: {_ROUTE_NEEDS[route]})"
        if detail is not None:
            return detail if isinstance(detail, str) else json.dumps(detail)
    return text


def is_healthy(base_url: str, *, timeout_s: float = 2.0) -> bool:
    """Whether ``GET /health`` answers 200 (vLLM and transformers serve both have it)."""
    try:
        _call(base_url, "GET", "/health", timeout_s=timeout_s)
    except ServerError:
        return False
    return True


def list_models(base_url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[ServedModel]:
    """The models the server answers for: the base model, then every LoRA adapter."""
    payload = json.loads(_call(base_url, "GET", "/v1/models", timeout_s=timeout_s))
    cards = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(cards, list):
        raise ServerError(server_root(base_url) + "/v1/models", 200, f"not a model list: {str(payload)[:200]}")
    return [ServedModel(str(c["id"]), c.get("root"), c.get("parent")) for c in cards if isinstance(c, dict)]


def load_adapter(base_url: str, name: str, path: str, *, timeout_s: float = SLOW_TIMEOUT_S) -> str:
    """Load the LoRA adapter at ``path`` (a directory with ``adapter_config.json``, on the server's
    host) to be served as ``name``; returns the server's success text. A name already loaded is refused."""
    raw = _call(base_url, "POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)}, timeout_s)
    return raw.decode("utf-8", errors="replace")


def unload_adapter(base_url: str, name: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """Stop serving the adapter ``name``; returns the server's success text."""
    raw = _call(base_url, "POST", "/v1/unload_lora_adapter", {"lora_name": name}, timeout_s)
    return raw.decode("utf-8", errors="replace")


def sleep(base_url: str, level: int = 1, *, timeout_s: float = SLOW_TIMEOUT_S) -> None:
    """Put the engine to sleep (level 1: weights to CPU memory, KV cache dropped; level 2: both dropped)."""
    if level not in (0, 1, 2):
        raise ValueError(f"sleep level must be 0, 1 or 2, got {level!r}")
    _call(base_url, "POST", f"/sleep?level={level}", timeout_s=timeout_s)


def wake_up(base_url: str, *, timeout_s: float = SLOW_TIMEOUT_S) -> None:
    """Wake the engine up (requests held while it slept then run)."""
    _call(base_url, "POST", "/wake_up", timeout_s=timeout_s)


def is_sleeping(base_url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    payload = json.loads(_call(base_url, "GET", "/is_sleeping", timeout_s=timeout_s))
    if not isinstance(payload, dict) or not isinstance(payload.get("is_sleeping"), bool):
        raise ServerError(server_root(base_url) + "/is_sleeping", 200, f"not a sleep state: {str(payload)[:200]}")
    return payload["is_sleeping"]
