"""Error exposure: typing the student's own attempts, and choosing the error a rewrite shows.

Error types (:data:`orion_assets.vocabulary.ERROR_TYPES`) and the loop rule: docs/exposure.md.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from orion_assets.ids import content_id
from orion_assets.llm import Endpoint, GenerationResult, SamplingParams
from orion_assets.llm.types import ProgressFn
from orion_assets.method.grading import Verdict
from orion_assets.method.quality.lexical import repeated_ngram_ratio
from orion_assets.method.sampling import sample_and_grade
from orion_assets.vocabulary import ERROR_TYPES

# The loop rule: a reply of at least LOOP_MIN_WORDS words is a repetition loop when over LOOP_RATIO of the word
# LOOP_N-grams of its last words (each window of LOOP_WINDOWS_WORDS: it ends in a loop) or of the whole reply (it
# is mostly a loop) repeat an earlier one. A unit of u words repeated to the end of a window of w words scores about
# 1 - u / (w - LOOP_N): the short window catches a sentence or a line repeated a few times after any preamble, the
# long one a paragraph of up to ~55 words. Worked solutions written by people (GSM8K, MATH, AIME) score at most
# ~0.2 over the last 60 words, ~0.35 over the last 120 (docs/exposure.md).
LOOP_N = 8
LOOP_WINDOWS_WORDS = (60, 120)
LOOP_RATIO = 0.5
LOOP_MIN_WORDS = 40


def is_repetition_loop(text: str | None) -> bool:
    """Whether ``text`` ends in, or mostly is, the same words repeated (the loop rule above)."""
    if not text or len(text.split()) < LOOP_MIN_WORDS:
        return False
    return any(repeated_ngram_ratio(text, LOOP_N, last=window) > LOOP_RATIO
               for window in (*LOOP_WINDOWS_WORDS, None))


def _generated(result: GenerationResult) -> str:
    """All the model wrote: its separate reasoning (if any), then its reply."""
    return "\n\n".join(part for part in (result.reasoning, result.text) if part)


def error_type(result: GenerationResult, verdict: Verdict) -> str | None:
    """The student's error in one attempt, or None when it solved the problem.

    A reply that loops (:func:`is_repetition_loop`) is a ``"repetition_loop"``, cut off or not, unless it stopped
    with the right answer; another cut-off reply is ``"truncated"`` (never a solved problem, whatever it showed).
    An endpoint failure is no error of the student's: it is reported as ``"endpoint_error"`` and kept out of
    ``student_errors``.
    """
    if result.finish_reason == "error":
        return "endpoint_error"
    if result.finish_reason == "length":
        return "repetition_loop" if is_repetition_loop(_generated(result)) else "truncated"
    if verdict.correct:
        return None
    if is_repetition_loop(_generated(result)):
        return "repetition_loop"
    if verdict.extracted is None:
        return "no_answer"
    return "wrong_answer"


# Which error a reflection shows: ERROR_TYPES' order. A wrong answer says most about the student's reasoning; a
# loop teaches nothing.
ERROR_PRIORITY = {name: rank for rank, name in enumerate(ERROR_TYPES)}


def most_useful_error(errors: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The error to show: by :data:`ERROR_PRIORITY`, then the earliest sample."""
    if not errors:
        return None
    return min(errors, key=lambda e: (ERROR_PRIORITY.get(e["error_type"], 9), e.get("sample_index", 0)))


def attempt_id(problem_id: str, call_id: str) -> str:
    return content_id("attempt", problem_id, call_id)


@dataclass
class ExposureStats:
    """Each attempt's verdict and length, the errors by type, and each problem's share of wrong attempts."""

    correct: list[bool] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    error_types: collections.Counter = field(default_factory=collections.Counter)
    wrong_share: dict[str, float] = field(default_factory=dict)


def attempt_chunks(
    problem_chunks: Iterable[pl.DataFrame], endpoint: Endpoint, *, student: str, model_id: str, n: int, prompt: str,
    overrides: Mapping[str, str | None], params: SamplingParams, count_tokens: Callable[[list[str]], list[int]],
    progress_for: Callable[[], ProgressFn], stats: ExposureStats, run_id: str | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Per chunk of problems, ``n`` graded attempts of the student at each: the ``student_attempts`` records, each
    typed by :func:`error_type`."""
    for problems in problem_chunks:
        drawn = sample_and_grade(endpoint, problems.to_dicts(), n=n, prompt=prompt, overrides=overrides, params=params,
                                 count_tokens=count_tokens, run_id=run_id, progress=progress_for())
        records = [{
            "attempt_id": attempt_id(s.row["problem_id"], s.result.call_id), "student": student,
            "problem_id": s.row["problem_id"], "model_id": model_id, "sample_index": s.sample_index,
            "text": s.result.text, "extracted_answer": s.verdict.extracted, "answer_method": s.verdict.method,
            "correct": s.verdict.correct, "error_type": error_type(s.result, s.verdict), "grade_reason": s.verdict.reason,
            "finish_reason": s.result.finish_reason, "n_tokens": s.n_tokens, "llm_call_id": s.result.call_id,
        } for s in drawn]  # fmt: skip
        wrong: dict[str, list[bool]] = collections.defaultdict(list)
        for record in records:
            stats.correct.append(record["correct"])
            stats.tokens.append(record["n_tokens"])
            wrong[record["problem_id"]].append(not record["correct"])
            if record["error_type"]:
                stats.error_types[record["error_type"]] += 1
        stats.wrong_share.update({problem: sum(w) / len(w) for problem, w in wrong.items()})
        yield records
