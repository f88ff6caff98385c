"""``teacher_cots`` without Dagster: the teacher's CoTs for each chunk of training problems, kept only when their
final answer (the one after the thinking) verifies, and why the others were rejected."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from orion_assets.ids import content_id
from orion_assets.llm import Endpoint, SamplingParams
from orion_assets.llm.types import ProgressFn
from orion_assets.method.grading import Verdict
from orion_assets.method.sampling import Sample, sample_and_grade

REJECTIONS: tuple[str, ...] = ("error", "truncated", "no_answer", "wrong_answer")


@dataclass
class TeacherStats:
    """Rejected samples by reason, and each kept CoT's length and whether it had thinking."""

    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECTIONS, 0))
    n_tokens: list[int] = field(default_factory=list)
    with_thinking: int = 0


def teacher_chunks(
    problem_chunks: Iterable[pl.DataFrame], endpoint: Endpoint, *, samples: int, prompt: str,
    overrides: Mapping[str, str | None], params: SamplingParams, count_tokens: Callable[[list[str]], list[int]],
    progress_for: Callable[[], ProgressFn], stats: TeacherStats, run_id: str | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Per chunk of problems, ``samples`` teacher replies each, graded; the ``teacher_cots`` records of those that
    verify (a boxed guess while thinking never counts)."""
    for problems in problem_chunks:
        drawn = sample_and_grade(endpoint, problems.to_dicts(), n=samples, prompt=prompt, overrides=overrides,
                                 params=params, count_tokens=count_tokens, tokens_of=lambda r: r.cot, replay=True,
                                 run_id=run_id, progress=progress_for())
        records = []
        for sample in drawn:
            reason = rejection(sample.result.finish_reason, sample.verdict)
            if reason is not None:
                stats.rejected[reason] += 1
                continue
            records.append(cot_record(sample))
            stats.n_tokens.append(sample.n_tokens)
            stats.with_thinking += records[-1]["has_thinking"]
        yield records


def cot_record(sample: Sample) -> dict[str, Any]:
    result = sample.result
    return {
        "teacher_cot_id": content_id("teacher_cot", sample.row["problem_id"], result.call_id),
        "problem_id": sample.row["problem_id"],
        "sample_index": sample.sample_index,
        "cot": result.cot,  # the thinking, then the solution
        "solution": result.answer,  # the solution alone: the reply after the thinking (short_cot's CoT)
        "has_thinking": result.thinking is not None,
        "final_answer": sample.verdict.extracted,
        "answer_method": sample.verdict.method,
        "n_tokens": sample.n_tokens,
        "completion_tokens": result.completion_tokens,
        "prompt_tokens": result.prompt_tokens,
        "finish_reason": result.finish_reason,
        "llm_call_id": result.call_id,
    }


def rejection(finish_reason: str, verdict: Verdict) -> str | None:
    """Why a generated CoT cannot be used (None: it can)."""
    if finish_reason == "error":
        return "error"
    if finish_reason == "length":
        return "truncated"
    if verdict.extracted is None:
        return "no_answer"
    if not verdict.correct:
        return "wrong_answer"
    return None
