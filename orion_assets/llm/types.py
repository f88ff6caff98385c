"""The value types of the LLM layer: what the asset code sends and what it gets back."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length", "error"]


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings of one call. ``seed`` is the base seed; the sample index is added to it.

    ``json_mode`` asks the server for a JSON object reply (openai backend: ``response_format``
    ``{"type": "json_object"}``; a server that refuses the field is asked again without it). It
    enters :meth:`to_json`, and so the cache key, only when set: keys without it are unchanged.
    """

    max_tokens: int
    temperature: float
    top_p: float = 1.0
    seed: int | None = None
    json_mode: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.json_mode:  # the keys and stored params of calls made before the field existed
            del data["json_mode"]
        return data

    def seed_for(self, sample_index: int) -> int | None:
        """The seed sent for sample ``sample_index`` (``None`` when no seed is configured)."""
        return None if self.seed is None else self.seed + sample_index


@dataclass(frozen=True)
class GenerationRequest:
    """One call: chat messages, sampling settings and which of the n samples of a prompt it is.

    ``replay_row`` is read by the replay backend only (it needs ``problem_id`` and the replay
    field); it is not part of the cache key except through the text it yields.
    ``min_reply_tokens``: with a known context window, a prompt that leaves less room than this
    for the reply is not sent (it is a ``context_overflow``); otherwise ``max_tokens`` is cut to
    the room left.
    """

    messages: tuple[dict[str, str], ...]
    params: SamplingParams
    sample_index: int = 0
    replay_row: Mapping[str, Any] | None = None
    min_reply_tokens: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.messages, tuple):
            object.__setattr__(self, "messages", tuple(self.messages))
        for message in self.messages:
            if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
                raise ValueError(f"a chat message needs 'role' and 'content', got {message!r:.200}")
        if self.sample_index < 0:
            raise ValueError(f"sample_index must be >= 0, got {self.sample_index}")


@dataclass(frozen=True)
class GenerationResult:
    """The outcome of one call, fresh or from the cache. ``finish_reason`` is stop|length|error.

    ``latency_s`` is the wall time of the call including retries and backoff (openai), or the time
    of the batch it ran in (hf). ``retries`` counts the attempts after the first.
    ``reasoning_tokens``: the part of ``completion_tokens`` spent thinking, when the server says
    (DeepSeek's ``usage.completion_tokens_details.reasoning_tokens``); billed as completion.
    """

    call_id: str
    text: str | None
    reasoning: str | None
    finish_reason: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float | None
    retries: int
    error: str | None
    cached: bool
    reasoning_tokens: int | None = None

    @property
    def ok(self) -> bool:
        return self.finish_reason != "error"

    @property
    def timed_out(self) -> bool:
        """Failed because its last attempt ran past ``timeout_s`` (the reply took too long), not
        because the server could not be reached or refused: evaluation grades it as wrong."""
        return self.finish_reason == "error" and (self.error or "").startswith(TIMED_OUT)

    @property
    def overflow(self) -> bool:
        """Not sent: the prompt left no room for a reply inside the context window."""
        return self.finish_reason == "error" and (self.error or "").startswith(CONTEXT_OVERFLOW)

    @property
    def thinking(self) -> str | None:
        """A reasoning model's thinking: ``reasoning_content`` (DeepSeek API, vLLM's reasoning
        parsers) or a ``<think>`` block that opens the content (R1-distill models served raw).
        A block cut off before ``</think>`` is all thinking."""
        return split_thinking(self.reasoning, self.text)[0]

    @property
    def answer(self) -> str:
        """The reply after the thinking: where the final answer must be."""
        return split_thinking(self.reasoning, self.text)[1]

    @property
    def cot(self) -> str:
        """The whole chain of thought in one shape for every teacher: thinking, then the answer."""
        thinking, answer = split_thinking(self.reasoning, self.text)
        parts = [p.strip("\n") for p in (thinking, answer) if p and p.strip()]
        return "\n\n".join(parts)


CONTEXT_OVERFLOW = "context_overflow"
# How the error of a call whose last attempt ran past timeout_s begins (openai backend).
TIMED_OUT = "timeout after"
_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"


def split_thinking(reasoning: str | None, text: str | None) -> tuple[str | None, str]:
    """(thinking, answer) of a reply: ``reasoning`` when the server split it off, else a leading
    ``<think>...</think>`` block of ``text`` (an unclosed block is all thinking, no answer)."""
    text = text or ""
    thinking = reasoning.strip() if reasoning and reasoning.strip() else None
    stripped = text.lstrip()
    if stripped.startswith(_THINK_OPEN) or (_THINK_CLOSE in text and _THINK_OPEN not in text):
        # vLLM without a reasoning parser; some chat templates put "<think>" in the prompt, so
        # the reply holds only the closing tag.
        body = stripped[len(_THINK_OPEN):] if stripped.startswith(_THINK_OPEN) else stripped
        inner, closed, after = body.partition(_THINK_CLOSE)
        inner = inner.strip()
        if inner:
            thinking = f"{thinking}\n\n{inner}" if thinking else inner
        return thinking, after.strip() if closed else ""
    return thinking, text.strip()


ProgressFn = Callable[[int, int], None]


@runtime_checkable
class Endpoint(Protocol):
    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        run_id: str | None = None,
        progress: ProgressFn | None = None,
    ) -> list[GenerationResult]:
        """Results in request order; cached calls are not sent again; never raises for one bad call."""
        ...
