"""Reading an LLM judge's reply: the 1-5 coherence and logical-consistency scores it gives a CoT."""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any

__all__ = ["parse_judge_reply"]

_JUDGE_KEYS = {
    "coherence": 0,
    "coherent": 0,
    "coherence_score": 0,
    "logical_consistency": 1,
    "logicalconsistency": 1,
    "logical_consistency_score": 1,
    "consistency": 1,
    "logic": 1,
    "logical": 1,
}
_FENCE = re.compile(r"```[a-zA-Z]*")
_FLAT_OBJECT = re.compile(r"\{[^{}]*\}", re.DOTALL)
_NUMBER = r"(-?\d+(?:\.\d+)?)(?:\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?"
_PROSE = (
    re.compile(r"\bcoheren(?:ce|t)\b(?:\s+score)?[\s\"'*]*(?:[:=]|\bis\b|-)?[\s\"'*]*" + _NUMBER, re.IGNORECASE),
    re.compile(
        r"\blogical[\s_-]*consistency\b(?:\s+score)?[\s\"'*]*(?:[:=]|\bis\b|-)?[\s\"'*]*" + _NUMBER,
        re.IGNORECASE,
    ),
)


def _score(value: Any, scale: float | None = None) -> int | None:
    """A 1-5 score from a judge value; None when it is missing, unreadable or out of range."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*" + _NUMBER + r"\s*", value, re.IGNORECASE)
        if not match:
            return None
        value, scale = float(match.group(1)), float(match.group(2)) if match.group(2) else None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    number = float(value)
    if scale and scale != 5:
        if scale <= 0:
            return None
        number = number * 5.0 / scale
    rounded = math.floor(number + 0.5)  # half up: 4.5 -> 5
    return rounded if 1 <= rounded <= 5 else None


def _key_slot(key: Any) -> int | None:
    normalized = re.sub(r"[\s\-]+", "_", str(key).strip().lower())
    normalized = re.sub(r"(?<=[a-z])(?=consistency)", "_", normalized)  # logicalconsistency
    return _JUDGE_KEYS.get(normalized, _JUDGE_KEYS.get(normalized.replace("_", "")))


def _load_object(text: str) -> dict[str, Any] | None:
    for attempt in (text, re.sub(r"'", '"', text)):
        try:
            value = json.loads(attempt)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def parse_judge_reply(text: str) -> tuple[int | None, int | None]:
    """``(coherence, logical_consistency)`` from an LLM judge's reply, each 1-5 or None.

    A JSON object anywhere in the text (the last naming a score wins) is trusted over prose such as
    ``Coherence: 4/5``; other scales are rescaled to 5 and rounded half up (docs/quality.md).
    """
    if not text:
        return None, None
    cleaned = _FENCE.sub("", text)
    scores: list[int | None] = [None, None]
    found = [False, False]
    for match in reversed(list(_FLAT_OBJECT.finditer(cleaned))):
        obj = _load_object(match.group(0))
        if not obj:
            continue
        hits = [(slot, value) for key, value in obj.items() if (slot := _key_slot(key)) is not None]
        for slot, value in hits:
            if not found[slot]:
                scores[slot] = _score(value)
                found[slot] = True
        if all(found):
            break
    for slot, pattern in enumerate(_PROSE):
        if found[slot]:
            continue
        matches = list(pattern.finditer(cleaned))
        if matches:
            last = matches[-1]
            scale = float(last.group(2)) if last.group(2) else None
            scores[slot] = _score(float(last.group(1)), scale)
    return scores[0], scores[1]
