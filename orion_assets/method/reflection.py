"""Self-reflection: the student (or, in an ablation, the teacher) rewrites the teacher's CoT in light of its error.

Plain functions over rows and an :class:`~orion_assets.llm.Endpoint`; the assets in
``orion_assets.assets.exposure`` and ``orion_assets.assets.reflection`` only read, call and write.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from orion_assets.ids import content_id
from orion_assets.llm import (
    Endpoint,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
)
from orion_assets.llm.types import CONTEXT_OVERFLOW
from orion_assets.method import prompts
from orion_assets.method.exposure import most_useful_error
from orion_assets.method.grading import Verdict, grade_batch
from orion_assets.vocabulary import MODE_BY_NAME, MODE_ROLE

UNSPLITTABLE = "unsplittable"




# Which wrong attempt the reflect prompt shows (exposure.ERROR_PRIORITY): a wrong answer says most about the
# student's reasoning; an unanswered or truncated attempt less, a repetition loop nothing.
CLIP_MARKER = "\n\n[... {omitted} tokens of this attempt omitted ...]\n\n"




def clip_middle(text: str, max_tokens: int, tokenizer: Any) -> str:
    """``text`` cut to about ``max_tokens`` tokens by dropping its middle, with a marker saying
    how much went: the start shows the approach, the end the answer or the loop."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    marker = CLIP_MARKER.format(omitted=len(ids))
    keep = max(2, max_tokens - len(tokenizer(marker, add_special_tokens=False)["input_ids"]))
    head, tail = keep // 2, keep - keep // 2
    return (
        tokenizer.decode(ids[:head]).rstrip()
        + CLIP_MARKER.format(omitted=len(ids) - head - tail)
        + tokenizer.decode(ids[len(ids) - tail:]).lstrip()
    )


@dataclass(frozen=True)
class Task:
    """One problem to refine in one mode. ``attempt`` is the shown error's text, already clipped."""

    problem: Mapping[str, Any]  # a train_problems row
    teacher_cot: Mapping[str, Any]  # a teacher_cots row
    errors: tuple[Mapping[str, Any], ...]  # student_errors rows joined with their attempt text
    mode: str
    attempt: str | None = None

    @property
    def shown_error(self) -> Mapping[str, Any] | None:
        return most_useful_error(self.errors) if MODE_BY_NAME[self.mode].shows_error else None

    @property
    def error_context(self) -> bool:
        """Whether the prompt shows a wrong attempt (never for problems the student got right)."""
        return self.shown_error is not None

    def template(self) -> str:
        """The mode's prompt; without an error to show, every mode asks for a plain rewrite."""
        return MODE_BY_NAME[self.mode if self.error_context else "no_error"].template

    def messages(self, overrides: Mapping[str, str | None]) -> tuple[dict[str, str], ...]:
        fields = {"problem": self.problem["problem"], "teacher_cot": self.teacher_cot["cot"]}
        shown = self.shown_error
        if shown is not None:
            fields["student_attempt"] = self.attempt if self.attempt is not None else shown["text"]
        return prompts.messages(self.template(), overrides, **fields)

    @property
    def used_error_ids(self) -> list[str]:
        shown = self.shown_error
        return [shown["attempt_id"]] if shown is not None else []


def make_tasks(
    mode: str,
    problems_by_id: Mapping[str, Mapping[str, Any]],
    teacher_cots: Sequence[Mapping[str, Any]],
    errors_by_problem: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    attempt_max_tokens: int,
    tokenizer: Any,
) -> list[Task]:
    """One task per teacher CoT, showing its problem's most useful error clipped to the budget."""
    tasks = []
    for cot in teacher_cots:
        task = Task(problems_by_id[cot["problem_id"]], cot, tuple(errors_by_problem.get(cot["problem_id"], ())), mode)
        shown = task.shown_error
        if shown is not None:
            clipped = clip_middle(shown["text"] or "", attempt_max_tokens, tokenizer)
            task = Task(task.problem, task.teacher_cot, task.errors, mode, attempt=clipped)
        tasks.append(task)
    return tasks


@dataclass
class Outcome:
    """What refinement produced for one task, after all tries."""

    task: Task
    tries: int = 0
    result: GenerationResult | None = None
    notes: str | None = None
    solution: str | None = None
    verdict: Verdict | None = None
    failures: list[str] = field(default_factory=list)
    thinking: str | None = None

    @property
    def verified(self) -> bool:
        return self.verdict is not None and self.verdict.correct

    @property
    def overflow(self) -> bool:
        """The prompt did not fit the context window: never sent, not retried."""
        return bool(self.failures) and self.failures[-1] == CONTEXT_OVERFLOW

    def sft_cot(self, *, keep_student_thinking: bool) -> str | None:
        """The SFT CoT of a refinement: its solution; with ``keep_student_thinking``, a reasoning
        student's thinking, then its solution (the shape of ``teacher_sft``'s CoTs). A teacher's
        rewrite trains on its solution alone: its thinking reasons about the student's attempt,
        which the SFT prompt (the plain solve prompt) never shows (docs/reflection.md)."""
        if self.solution is None:
            return None
        if keep_student_thinking and self.thinking and MODE_ROLE[self.task.mode] == "student":
            return f"{self.thinking.strip()}\n\n{self.solution}"
        return self.solution


def refine(
    tasks: Sequence[Task],
    endpoint: Endpoint,
    params: SamplingParams,
    *,
    tries: int,
    overrides: Mapping[str, str | None],
    run_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    min_reply_tokens: int = 1,
    unmarked_is_solution: bool = False,
) -> list[Outcome]:
    """Ask for refinements in rounds: try ``k`` goes only to tasks whose earlier tries all failed.

    A refinement counts when the solution part of the reply (not the reflection notes, not the
    thinking) verifies against the gold answer and was not cut off. A reply that cannot be split
    into notes and solution is a failed try (``unsplittable``); a prompt that does not fit the
    context window is not sent and not retried (``context_overflow``).
    """
    outcomes = [Outcome(task) for task in tasks]
    for attempt in range(tries):
        pending = [o for o in outcomes if not o.verified and not o.overflow]
        if not pending:
            break
        requests = [
            GenerationRequest(
                messages=o.task.messages(overrides), params=params, sample_index=attempt,
                replay_row=o.task.problem, min_reply_tokens=min_reply_tokens,
            )
            for o in pending
        ]
        results = endpoint.generate(requests, run_id=run_id, progress=progress)
        split = [
            prompts.split_reflection(r.answer, unmarked_is_solution=unmarked_is_solution) if r.ok else (None, None)
            for r in results
        ]
        verdicts = grade_batch(
            [(solution or "", o.task.problem["gold_answer"]) for (_, solution), o in zip(split, pending, strict=True)],
            benchmark=[o.task.problem["source"] for o in pending],
            truncated=[r.finish_reason == "length" for r in results],
        )
        for outcome, result, (notes, solution), verdict in zip(pending, results, split, verdicts, strict=True):
            outcome.tries = attempt + 1
            outcome.result, outcome.notes, outcome.solution = result, notes, solution
            outcome.thinking = result.thinking
            if result.overflow:
                outcome.verdict, reason = None, CONTEXT_OVERFLOW
            elif not result.ok:
                outcome.verdict, reason = None, f"endpoint_error: {result.error}"
            elif result.finish_reason == "length":
                outcome.verdict, reason = Verdict(False, verdict.extracted, verdict.method, "truncated"), "truncated"
            elif solution is None:
                outcome.verdict, reason = None, UNSPLITTABLE
            else:
                outcome.verdict, reason = verdict, verdict.reason
            if not outcome.verified:
                outcome.failures.append(reason)
    return outcomes


def refined_row(outcome: Outcome, on_failure: str, *, student: str, keep_student_thinking: bool) -> dict[str, Any] | None:
    """The ``refined_cots`` row of one student's outcome: the refinement, the teacher fallback, or None (drop).

    ``rewrite_thinking`` keeps a refinement's thinking whatever ``cot`` trains on."""
    task = outcome.task
    base = {
        "student": student,
        "problem_id": task.problem["problem_id"],
        "teacher_cot_id": task.teacher_cot["teacher_cot_id"],
        "error_attempt_ids": task.used_error_ids,
        "mode": task.mode,
        "error_context": task.error_context,
        "student_ever_wrong": bool(task.errors),
        "tries_used": outcome.tries,
        "failure_reasons": outcome.failures,
    }
    if outcome.verified:
        assert outcome.result is not None and outcome.verdict is not None
        row = {
            **base,
            "source": "refined",
            "cot": outcome.sft_cot(keep_student_thinking=keep_student_thinking),
            "rewrite_thinking": outcome.thinking,
            "reflection_notes": outcome.notes,
            "final_answer": outcome.verdict.extracted,
            "verified": True,
            "finish_reason": outcome.result.finish_reason,
            "llm_call_id": outcome.result.call_id,
        }
    elif on_failure == "teacher":
        row = {
            **base,
            "source": "teacher_fallback",
            "cot": task.teacher_cot["cot"],
            "rewrite_thinking": None,
            "reflection_notes": None,
            "final_answer": task.teacher_cot["final_answer"],
            "verified": True,  # teacher CoTs are kept only when they verify
            "finish_reason": task.teacher_cot["finish_reason"],
            "llm_call_id": outcome.result.call_id if outcome.result else None,
        }
    else:
        return None
    # The teacher CoT is part of the id: with [reflection] teacher_samples = "all", two samples of a
    # problem may be rewritten to the same text.
    row["refined_cot_id"] = content_id("refined_cot", student, row["mode"], row["problem_id"], row["teacher_cot_id"],
                                       row["source"], row["cot"])
    return row


def teacher_cots_to_refine(teacher_cots: pl.DataFrame, teacher_samples: str) -> pl.DataFrame:
    """The teacher CoTs the refined modes rewrite and the other variants train on (``[reflection]
    teacher_samples``): each problem's first verified sample (lowest ``sample_index``), or all of them."""
    if teacher_samples == "all":
        return teacher_cots.sort("problem_id", "sample_index")
    if teacher_samples == "first":
        return teacher_cots.sort("problem_id", "sample_index").unique("problem_id", keep="first", maintain_order=True)
    raise ValueError(f"[reflection] teacher_samples must be 'first' or 'all', got {teacher_samples!r}")


def exposure_failed_problems(problem_ids: Sequence[str], attempts: pl.DataFrame) -> list[str]:
    """The problems of ``problem_ids`` without one exposure attempt that reached the student (every
    call ended in an endpoint error, ``finish_reason == "error"``, or none was made): nothing says
    whether the student gets them wrong, so they are left out of refinement (docs/reflection.md)."""
    answered = set(attempts.filter(pl.col("finish_reason") != "error")["problem_id"].to_list())
    return [pid for pid in problem_ids if pid not in answered]


def drawn_teacher_cots(teacher_cots: pl.DataFrame, attempts: pl.DataFrame, teacher_samples: str) -> pl.DataFrame:
    """The teacher CoTs every variant is made from: those ``[reflection] teacher_samples`` chooses, less the
    problems whose every exposure call failed (``attempts``: their ``problem_id`` and ``finish_reason``), as
    refinement leaves them out (docs/reflection.md)."""
    chosen = teacher_cots_to_refine(teacher_cots, teacher_samples)
    failed = exposure_failed_problems(chosen["problem_id"].unique(maintain_order=True).to_list(), attempts)
    return chosen.filter(~pl.col("problem_id").is_in(failed))


def yield_counts(tasks: Sequence[Task], outcomes: Sequence[Outcome], rows: Sequence[dict | None]) -> dict[str, int]:
    """How one mode went: refined, fell back, dropped, and why tries failed."""
    failures = [reason for o in outcomes for reason in o.failures]
    return {
        "problems": len(tasks),
        "refined": sum(o.verified for o in outcomes),
        "teacher_fallback": sum(r is not None and r["source"] == "teacher_fallback" for r in rows),
        "dropped": sum(r is None for r in rows),
        "never_wrong": sum(not t.errors for t in tasks),
        "context_overflow": sum(o.overflow for o in outcomes),
        "unsplittable_replies": failures.count(UNSPLITTABLE),
        "truncated_replies": failures.count("truncated"),
        "endpoint_errors": sum(f.startswith("endpoint_error") for f in failures),
        "wrong_replies": sum(f.startswith("mismatch") or f == "no_answer" for f in failures),
    }


