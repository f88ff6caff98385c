"""Fit requests into a served model's context window before they are sent.

vLLM refuses (HTTP 400) any request whose prompt tokens plus ``max_tokens`` exceed its
``max_model_len``: a long reflect prompt (problem, teacher CoT, the student's attempt) with
``max_tokens = 8192`` on a 4096-token student fails every time, and a retry cannot help. So a
request's ``max_tokens`` is cut to the room its prompt leaves, and a prompt that leaves less than
the request's ``min_reply_tokens`` is not sent at all: it becomes a ``context_overflow`` result.

Prompt tokens are counted with the student's tokenizer and chat template, the way vLLM counts
them for the student. For another model (a teacher behind an API) it is an estimate: give that
endpoint's ``context_window`` some headroom.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from orion_assets.llm.types import CONTEXT_OVERFLOW, GenerationRequest
from orion_assets.tokens import load_tokenizer


class ContextBudget:
    """A context window of ``window`` tokens, prompts counted with the tokenizer at ``tokenizer_path``."""

    def __init__(self, window: int, tokenizer_path: str):
        self.window = int(window)
        self.tokenizer_path = str(tokenizer_path)

    def prompt_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        tokenizer = load_tokenizer(self.tokenizer_path)
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        else:
            text = "\n".join(m["content"] for m in messages)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def fit(self, request: GenerationRequest) -> GenerationRequest | str:
        """The request with ``max_tokens`` cut to the room left, or why it cannot be sent."""
        used = self.prompt_tokens(request.messages)
        room = self.window - used
        if room < max(1, request.min_reply_tokens):
            return (
                f"{CONTEXT_OVERFLOW}: the prompt has {used} tokens, leaving {max(room, 0)} of the "
                f"{self.window}-token context window for the reply (at least {request.min_reply_tokens} needed); not sent"
            )
        if request.params.max_tokens <= room:
            return request
        params = dataclasses.replace(request.params, max_tokens=room)
        return dataclasses.replace(request, params=params)

    def __repr__(self) -> str:
        return f"ContextBudget(window={self.window}, tokenizer={self.tokenizer_path!r})"


def model_context_window(model_dir: str | Path) -> int | None:
    """The context window of a local model directory: its config's ``max_position_embeddings`` (a LoRA
    adapter's: its base model's); None when the directory does not say."""
    path = Path(model_dir)
    adapter = path / "adapter_config.json"
    if not (path / "config.json").is_file() and adapter.is_file():
        base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        path = Path(base) if base else path
    config_file = path / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    config = config.get("text_config", config)
    window = config.get("max_position_embeddings")
    return int(window) if isinstance(window, int) and window > 0 else None
