"""vLLM's runtime-LoRA and sleep endpoints, for the LLM simulator (:mod:`orion_devtools.llm_simulator`).

What a vLLM server does, checked against vLLM's source (vllm-project/vllm):

* ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path", "load_inplace"?}`` and ``POST
  /v1/unload_lora_adapter`` ``{"lora_name"}`` exist only with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``
  set: otherwise the router is never included (``register_vllm_serve_api_routers`` in
  ``vllm/entrypoints/serve/__init__.py``; ``attach_router`` in ``vllm/entrypoints/serve/lora/api_router.py``)
  and the path is FastAPI's plain 404 ``{"detail": "Not Found"}``.
* Success is HTTP 200 with a plain-text body (``Response(status_code=200, content=...)``, no
  content-type): ``Success: LoRA adapter 'x' added successfully.`` / ``... removed successfully.``
  (``OpenAIServingModels.load_lora_adapter`` / ``unload_lora_adapter`` in
  ``vllm/entrypoints/openai/models/serving.py``).
* Refusals, in vLLM's error envelope ``{"error": {"message", "type", "param", "code"}}`` (``code`` =
  the HTTP status), from ``_check_load_lora_adapter_request`` / ``_check_unload_lora_adapter_request``
  (same file) and ``LoRAAdapterNotFoundError`` (``vllm/exceptions.py``, raised by the worker's
  ``WorkerLoRAManager._load_adapter`` when ``adapter_config.json`` cannot be read; mapped to 404
  ``NotFoundError`` by ``create_error_response`` in ``vllm/entrypoints/serve/utils/error_response.py``):

  - no name or path: 400 ``InvalidUserInput`` ``Both 'lora_name' and 'lora_path' must be provided.``
  - name already loaded (``--lora-modules`` ones too: ``init_static_loras`` loads them the same way),
    without ``load_inplace``: 400 ``InvalidUserInput`` ``The lora adapter 'x' has already been loaded.
    If you want to load the adapter in place, set 'load_inplace' to True.``
  - no adapter at the path (no ``adapter_config.json`` there): 404 ``NotFoundError`` ``Loading lora x
    failed: No adapter found for /path``
  - unload without a name: 400 ``InvalidUserInput`` ``'lora_name' needs to be provided to unload a LoRA
    adapter.``; an unknown name: 404 ``NotFoundError`` ``The lora adapter 'x' cannot be found.``

  A loaded adapter is listed by ``/v1/models`` with ``root`` = its path and ``parent`` = the base
  model (``show_available_models``) and answers chat requests under its name; once unloaded a request
  for it is the usual 404 ``The model `x` does not exist.`` (``OpenAIServing._check_model``).
* ``POST /sleep?level=N&mode=abort``, ``POST /wake_up``, ``GET /is_sleeping`` exist only in dev mode
  (``attach_router`` returns early without ``VLLM_SERVER_DEV_MODE``:
  ``vllm/entrypoints/serve/sleep/api_router.py``, v0.14; later ``.../serve/dev/sleep/api_router.py``);
  otherwise 404 ``{"detail": "Not Found"}``. ``/sleep`` and ``/wake_up`` answer an empty 200;
  ``/is_sleeping`` answers ``{"is_sleeping": bool}``. Current vLLM pauses the scheduler before
  sleeping (``EngineCore.sleep`` -> ``pause_scheduler``): a request that arrives while asleep is
  accepted and held, and runs after ``/wake_up`` (``resume_scheduler`` "flushes any requests queued
  while paused"); older releases crashed on it (vllm-project/vllm issue #15483). The simulator holds
  it. The simulator models dev mode and ``--enable-sleep-mode`` as one switch; dev mode *without*
  sleep mode is not modelled.

Not modelled: LoRA resolvers (an unknown model name loaded on demand), ``validate_json_request``'s
content-type check, a missing body key reported as a pydantic 400 (here it is the "must be provided"
400), ``sleep``'s ``mode`` (in-flight requests are not aborted), ``wake_up``'s ``tags``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

LORA_ROUTES = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")
ROUTES = {("POST", LORA_ROUTES[0]), ("POST", LORA_ROUTES[1]), ("POST", "/sleep"), ("POST", "/wake_up"),
          ("GET", "/is_sleeping")}  # fmt: skip

Answer = tuple[int, bytes, str | None]  # status, body, content-type (None: no content-type header)


def _error(status: int, message: str, err_type: str) -> Answer:
    body = {"error": {"message": message, "type": err_type, "param": None, "code": status}}
    return status, json.dumps(body).encode(), "application/json"


def _text(message: str) -> Answer:
    return 200, message.encode(), None


NOT_FOUND: Answer = (404, json.dumps({"detail": "Not Found"}).encode(), "application/json")


class VllmRuntime:
    """The served LoRA adapters (name -> root: the path, or a ``--lora-modules`` revision) and the
    sleep state, changed by vLLM's runtime endpoints when they are switched on."""

    def __init__(self, adapters: dict[str, str], runtime_lora_updating: bool, sleep_mode: bool) -> None:
        self.loras: dict[str, str] = dict(adapters)
        self.runtime_lora_updating = runtime_lora_updating
        self.sleep_mode = sleep_mode
        self.sleeping = False
        self._awake: asyncio.Event | None = None

    def route(self, path: str, query: str, body: bytes) -> Answer:
        """The answer to one of :data:`ROUTES` (the caller checked the method)."""
        if path in LORA_ROUTES:
            if not self.runtime_lora_updating:
                return NOT_FOUND
            try:
                request = json.loads(body or b"{}")
            except ValueError as exc:
                return _error(400, f"Invalid JSON body: {exc}", "BadRequestError")
            if not isinstance(request, dict):
                return _error(400, "the request body must be a JSON object", "BadRequestError")
            return self.load(request) if path == LORA_ROUTES[0] else self.unload(request)
        if not self.sleep_mode:
            return NOT_FOUND
        if path == "/is_sleeping":
            return 200, json.dumps({"is_sleeping": self.sleeping}).encode(), "application/json"
        if path == "/sleep":
            level = parse_qs(query).get("level", ["1"])[0]
            if not level.isdigit():  # vLLM's int(level) raises; its exception handler makes that a 400
                return _error(400, f"invalid literal for int() with base 10: {level!r}", "BadRequestError")
            self.sleeping = True
            self.awake_event().clear()
        else:
            self.sleeping = False
            self.awake_event().set()
        return 200, b"", None

    def load(self, request: dict[str, Any]) -> Answer:
        name, path = request.get("lora_name"), request.get("lora_path")
        if not name or not path:
            return _error(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        if name in self.loras and not request.get("load_inplace"):
            return _error(400, f"The lora adapter '{name}' has already been loaded. If you want to load the "
                               "adapter in place, set 'load_inplace' to True.", "InvalidUserInput")  # fmt: skip
        if not (Path(str(path)) / "adapter_config.json").is_file():
            return _error(404, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError")
        self.loras[str(name)] = str(path)
        return _text(f"Success: LoRA adapter '{name}' added successfully.")

    def unload(self, request: dict[str, Any]) -> Answer:
        name = request.get("lora_name")
        if not name:
            return _error(400, "'lora_name' needs to be provided to unload a LoRA adapter.", "InvalidUserInput")
        if name not in self.loras:
            return _error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        del self.loras[name]
        return _text(f"Success: LoRA adapter '{name}' removed successfully.")

    def awake_event(self) -> asyncio.Event:
        """Set while awake; a chat request waits on it (created in the server's event loop)."""
        if self._awake is None:
            self._awake = asyncio.Event()
            if not self.sleeping:
                self._awake.set()
        return self._awake
