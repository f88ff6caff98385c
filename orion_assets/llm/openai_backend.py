"""Any OpenAI-compatible chat server (OpenAI, DeepSeek, vLLM, SGLang, ``transformers serve``), with
bounded concurrency, our own retry loop (timeouts get their own budget, every retry is recorded) and
the API key read from the environment only when a request is sent. Specification: ``docs/llm-calls.md``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import importlib.util
import ipaddress
import logging
import os
import random
import time
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import openai

if importlib.util.find_spec("openai._httpx2") is not None:  # openai 3 talks through httpx2
    import httpx2 as _http
else:  # pragma: no cover - openai 1.x and 2.x: httpx
    import httpx as _http  # type: ignore[no-redef]

from orion_assets.llm.cache import FLUSH_EVERY, FLUSH_INTERVAL_S, CallIdentity
from orion_assets.llm.endpoint import BaseEndpoint, Emit, EndpointError, ServerDiedError, managed_server_at
from orion_assets.llm.types import TIMED_OUT, GenerationRequest, GenerationResult
from orion_assets.progress import CALL_FAILED
from orion_assets.store import Store

if TYPE_CHECKING:
    from orion_assets.profiles.schema import EndpointConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 409, 429})
MAX_RETRY_AFTER_S = 300.0
MAX_ERROR_CHARS = 600
CONNECTIONS_PER_CLIENT = 16
# The openai client's aiohttp transport costs about half the CPU per call of its default httpx one.
USE_AIOHTTP = importlib.util.find_spec("aiohttp") is not None and os.environ.get("ORION_OPENAI_HTTPX") != "1"
LOOPBACK_HOSTS = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class _Secret:
    """A string that never shows itself in a repr or str."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


class _Retryable(Exception):
    """A failed attempt worth another try; ``retry_after`` is the server's wish in seconds."""

    def __init__(self, cause: str, retry_after: float | None = None, timed_out: bool = False):
        super().__init__(cause)
        self.cause = cause
        self.retry_after = retry_after
        self.timed_out = timed_out


class _Fatal(Exception):
    """A failed attempt that another try will not fix (400, 401, 403, 404, 422, ...)."""

    def __init__(self, cause: str, status: int | None = None):
        super().__init__(cause)
        self.status = status


# What a server that does not know response_format (or json_object) answers.
REFUSED_FIELD_STATUS = frozenset({400, 422})
JSON_OBJECT = {"type": "json_object"}


def is_loopback(base_url: str | None) -> bool:
    if not base_url:
        return False
    host = (urlsplit(base_url).hostname or "").strip("[]").lower()
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(api_key_env: str | None, base_url: str | None, role: str) -> _Secret:
    """The key from ``$api_key_env``; "EMPTY" for a loopback server without one; else an error naming the variable."""
    value = os.environ.get(api_key_env) if api_key_env else None
    if value:
        return _Secret(value)
    if is_loopback(base_url) or not api_key_env:
        return _Secret("EMPTY")
    raise EndpointError(
        f"the {role} endpoint at {base_url} needs an API key: set the environment variable {api_key_env} "
        f"(the profile's endpoints.{role}.api_key_env)"
    )


def run_coroutine_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code, in this thread or, when an event loop is
    already running here (a notebook, an async caller), in a fresh worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="orion-llm-loop") as pool:
        return pool.submit(asyncio.run, coro).result()


def _parse_retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError | asyncio.TimeoutError) or "timeout" in type(exc).__name__.lower()


def _chain(exc: BaseException) -> list[BaseException]:
    links, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        links.append(current)
        current = current.__cause__ or current.__context__
    return links


def _dropped_connection(exc: BaseException) -> bool:
    """A link that says the peer went away (reset, disconnect), not that time ran out."""
    name = type(exc).__name__
    return (isinstance(exc, ConnectionError) or "Disconnect" in name or "ConnectionError" in name) and not _is_timeout(exc)


def _as_text(value: Any) -> str | None:
    """Message content as text: a string, or the text parts of a list of content parts."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in value)
    return str(value)


def _as_int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _status_message(exc: openai.APIStatusError) -> str:
    message = ""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            message = str(inner.get("message") or "")
        else:
            message = str(inner)
    elif body is not None:
        message = str(body)
    return f"HTTP {exc.status_code}" + (f": {message}" if message else "")


class OpenAIEndpoint(BaseEndpoint):
    backend = "openai"

    def __init__(
        self,
        cfg: EndpointConfig,
        store: Store,
        *,
        role: str,
        model: str | None = None,
        model_revision: str | None = None,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 60.0,
        flush_every: int = FLUSH_EVERY,
        flush_interval_s: float = FLUSH_INTERVAL_S,
    ):
        super().__init__(
            cfg, store, role=role, model_revision=model_revision, flush_every=flush_every,
            flush_interval_s=flush_interval_s,
        )  # fmt: skip
        self.base_url = (cfg.base_url or "").rstrip("/")
        self.model = model or cfg.model
        if not self.base_url:
            raise EndpointError(f"endpoints.{role}.base_url is required for the openai backend")
        if not self.model:
            raise EndpointError(f"endpoints.{role}.model is required for the openai backend")
        self.api_key_env = cfg.api_key_env
        self.backoff_base_s = backoff_base_s
        self._max_tokens_field = "max_tokens"
        # False once a call refused with response_format succeeded without it: not sent again.
        self._json_mode_accepted = True
        self.backoff_max_s = backoff_max_s
        # A server the pipeline runs (``serve``): waited for while its watchdog restarts it, and named by its
        # kind rather than its port in the cache key, so that a re-run on another port finds its calls.
        self.server = managed_server_at(self.base_url)

    @property
    def identity(self) -> CallIdentity:
        where = f"managed:{self.server.plan.kind}" if self.server is not None else self.base_url
        return CallIdentity(self.role, self.backend, where, self.model)

    # -- running the calls -----------------------------------------------------------------------

    def _run(self, todo: Sequence[tuple[str, GenerationRequest]], emit: Emit) -> None:
        key = resolve_api_key(self.api_key_env, self.base_url, self.role)
        run_coroutine_sync(self._run_async(todo, emit, key))
        if self.server is not None and self.server.failure is not None:
            raise self.server.failure  # the step fails; the calls answered before are in the cache

    async def _run_async(self, todo: Sequence[tuple[str, GenerationRequest]], emit: Emit, key: _Secret) -> None:
        n_workers = min(self.cfg.concurrency, len(todo))
        # httpcore scans every pooled connection on each request, so one client with hundreds of
        # connections spends O(concurrency) per call; a few clients of at most 16 keep it flat.
        # With aiohttp installed (``openai[aiohttp]``) one client on its transport is cheaper still.
        n_clients = 1 if USE_AIOHTTP else -(-n_workers // CONNECTIONS_PER_CLIENT)
        clients = [self._client(key) for _ in range(n_clients)]
        queue: asyncio.Queue[tuple[str, GenerationRequest]] = asyncio.Queue()
        for item in todo:
            queue.put_nowait(item)

        async def worker(client: openai.AsyncOpenAI) -> None:
            while True:
                try:
                    call_id, request = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                result = await self._call(client, call_id, request, key)
                emit(call_id, result)

        try:
            workers = [asyncio.create_task(worker(clients[i % len(clients)])) for i in range(n_workers)]
            await asyncio.gather(*workers)
        finally:
            for client in clients:
                await client.close()

    def _client(self, key: _Secret) -> openai.AsyncOpenAI:
        extra: dict[str, Any] = {"http_client": openai.DefaultAioHttpClient()} if USE_AIOHTTP else {}
        return openai.AsyncOpenAI(
            base_url=self.base_url, api_key=key.reveal(), max_retries=0, timeout=self.cfg.timeout_s, **extra
        )

    def _scrub(self, text: str, key: _Secret) -> str:
        secret = key.reveal()
        if secret and secret != "EMPTY":
            text = text.replace(secret, "<api key>")
        return text[:MAX_ERROR_CHARS]

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_S)
        return random.uniform(0.0, min(self.backoff_max_s, self.backoff_base_s * (2**attempt)))

    async def _call(
        self, client: openai.AsyncOpenAI, call_id: str, request: GenerationRequest, key: _Secret
    ) -> GenerationResult:
        params = request.params
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in request.messages],
            self._max_tokens_field: params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        seed = params.seed_for(request.sample_index)
        if seed is not None:
            kwargs["seed"] = seed
        if params.json_mode and self._json_mode_accepted:
            kwargs["response_format"] = JSON_OBJECT
        started = time.monotonic()
        attempt = 0
        timeouts = 0
        dropped_json_mode = False
        while True:
            try:
                # The chat completions route of the same client (auth, status errors, timeouts),
                # without ``create()``'s type-driven transform of the body and model construction
                # of the reply: together about 1 ms of CPU a call, the largest cost at high
                # concurrency. The reply's JSON is read here, which also catches bodies that are
                # not JSON or have no choices.
                reply = await asyncio.wait_for(
                    client.post("/chat/completions", cast_to=_http.Response, body=kwargs),
                    timeout=self.cfg.timeout_s + 1.0,
                )
                result = self._result(call_id, reply, started, attempt)
                if dropped_json_mode and self._json_mode_accepted:
                    self._json_mode_accepted = False
                    log.warning("%s endpoint %s refused response_format json_object; asking without it",
                                self.role, self.base_url)
                return result
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure becomes a retry or a recorded error
                outcome = self._classify(exc)
            retryable = isinstance(outcome, _Retryable)
            if retryable and not outcome.timed_out and self.server is not None:
                try:  # a managed server that died: wait while its watchdog starts it again, then ask again
                    if await asyncio.to_thread(self.server.wait_serving):
                        continue
                except ServerDiedError as exc:
                    outcome, retryable = _Fatal(f"{outcome.cause}; {str(exc).splitlines()[0]}"), False
            retry_after = outcome.retry_after if isinstance(outcome, _Retryable) else None
            if retryable and outcome.timed_out:
                # A reply that ran past timeout_s (a 16k-token reasoning reply) will likely do so
                # again: timeouts get their own, smaller budget of retries.
                timeouts += 1
                if timeouts > self.cfg.timeout_retries:
                    retryable = False
                    outcome = _Fatal(f"{outcome.cause} ({timeouts} timeout{'s' if timeouts > 1 else ''}; "
                                     f"raise endpoints.{self.role}.timeout_s or timeout_retries)")
            cause = self._scrub(outcome.cause if isinstance(outcome, _Retryable) else str(outcome), key)
            if not retryable and "max_tokens" in kwargs and "max_completion_tokens" in cause:
                # OpenAI's reasoning models refuse max_tokens and ask for max_completion_tokens.
                self._max_tokens_field = "max_completion_tokens"
                kwargs["max_completion_tokens"] = kwargs.pop("max_tokens")
                attempt += 1
                continue
            refused = isinstance(outcome, _Fatal) and outcome.status in REFUSED_FIELD_STATUS
            if refused and "response_format" in kwargs:
                # A server without JSON mode (or one that wants the word "JSON" in the prompt)
                # refuses the field: the call is asked once more without it, not lost.
                log.debug("%s call %s: %s; again without response_format", self.role, call_id, cause)
                del kwargs["response_format"]
                dropped_json_mode = True
                attempt += 1
                continue
            if not retryable or attempt >= self.cfg.max_retries:
                attempts = attempt + 1
                error = (
                    f"{cause} (not retried)"
                    if not retryable and attempts == 1
                    else f"{cause} (gave up after {attempts} attempt{'s' if attempts > 1 else ''})"
                )
                log.warning("%s call %s failed: %s", self.role, call_id, error, extra={CALL_FAILED: True})
                return GenerationResult(
                    call_id=call_id, text=None, reasoning=None, finish_reason="error",
                    prompt_tokens=None, completion_tokens=None, latency_s=time.monotonic() - started,
                    retries=attempt, error=error, cached=False,
                )  # fmt: skip
            delay = self._backoff(attempt, retry_after)
            log.debug("%s call %s: %s; retry %d in %.2fs", self.role, call_id, cause, attempt + 1, delay)
            await asyncio.sleep(delay)
            attempt += 1

    def _classify(self, exc: BaseException) -> _Retryable | _Fatal:
        if isinstance(exc, _Retryable):
            return exc
        if isinstance(exc, openai.APIConnectionError | asyncio.TimeoutError | TimeoutError):
            root = _chain(exc)[-1]
            # The aiohttp transport reports a dropped connection as a connect timeout: tell them apart.
            # (httpx2 chains an unrelated "no running event loop" RuntimeError under its ReadTimeout.)
            timed_out = isinstance(exc, asyncio.TimeoutError | TimeoutError) or (
                isinstance(exc, openai.APITimeoutError) and not any(_dropped_connection(e) for e in _chain(exc))
            )
            if timed_out:
                return _Retryable(f"{TIMED_OUT} {self.cfg.timeout_s:g}s", timed_out=True)
            detail = f" ({type(root).__name__}: {root})" if root is not exc else ""
            return _Retryable(f"connection error{detail}")
        if isinstance(exc, openai.APIStatusError):
            message = _status_message(exc)
            if exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500:
                return _Retryable(message, _parse_retry_after(exc.response.headers))
            return _Fatal(message, exc.status_code)
        if isinstance(exc, openai.APIResponseValidationError | ValueError):
            return _Retryable(f"unparseable response body ({type(exc).__name__}: {exc})")
        return _Retryable(f"{type(exc).__name__}: {exc}")

    def _result(self, call_id: str, response: Any, started: float, attempt: int) -> GenerationResult:
        try:
            data = response.json()
        except ValueError:
            raise _Retryable(f"unparseable response body (not JSON): {response.text[:120]!r}") from None
        if not isinstance(data, dict):
            raise _Retryable(f"unparseable response body (JSON {type(data).__name__}, not an object)")
        choices = data.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            error = data.get("error")
            raise _Retryable("response has no choices" + (f": {str(error)[:200]}" if error else ""))
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise _Retryable("response choice has no message")
        text = _as_text(message.get("content"))
        # DeepSeek's API and vLLM's reasoning parsers put the thinking beside the answer.
        reasoning = _as_text(message.get("reasoning_content")) or _as_text(message.get("reasoning"))
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        details = usage.get("completion_tokens_details")
        return GenerationResult(
            call_id=call_id,
            text=text,
            reasoning=reasoning or None,
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
            prompt_tokens=_as_int(usage.get("prompt_tokens")),
            completion_tokens=_as_int(usage.get("completion_tokens")),
            latency_s=time.monotonic() - started,
            retries=attempt,
            error=None,
            cached=False,
            reasoning_tokens=_as_int(details.get("reasoning_tokens")) if isinstance(details, dict) else None,
        )

    def __repr__(self) -> str:
        return (
            f"OpenAIEndpoint(role={self.role!r}, base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r}, concurrency={self.cfg.concurrency})"
        )


