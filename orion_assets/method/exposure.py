"""Error exposure: typing the student's own attempts, and choosing the error a rewrite shows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from orion_assets.ids import content_id
from orion_assets.llm import GenerationResult
from orion_assets.method.grading import Verdict


def error_type(result: GenerationResult, verdict: Verdict) -> str | None:
    """The student's error in one attempt, or None when it solved the problem.

    An endpoint failure is no error of the student's: it is reported as ``"endpoint_error"`` and
    kept out of ``student_errors``.
    """
    if result.finish_reason == "error":
        return "endpoint_error"
    if result.finish_reason == "length":  # cut off: never a solved problem, whatever it showed
        return "truncated"
    if verdict.correct:
        return None
    if verdict.extracted is None:
        return "no_answer"
    return "wrong_answer"


ERROR_PRIORITY = {"wrong_answer": 0, "no_answer": 1, "truncated": 2}


def most_useful_error(errors: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The error to show: by :data:`ERROR_PRIORITY`, then the earliest sample."""
    if not errors:
        return None
    return min(errors, key=lambda e: (ERROR_PRIORITY.get(e["error_type"], 9), e.get("sample_index", 0)))


def attempt_id(problem_id: str, call_id: str) -> str:
    return content_id("attempt", problem_id, call_id)
