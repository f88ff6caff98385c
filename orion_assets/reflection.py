"""Error exposure and self-reflection: the two steps that make ORION differ from plain distillation.

Plain functions over rows and an :class:`~orion_assets.llm.Endpoint`; the assets in
``orion_assets.assets.exposure`` and ``orion_assets.assets.reflection`` only read, call and write.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orion_assets import prompts
from orion_assets.grading import Verdict, grade_batch
from orion_assets.llm import Endpoint, GenerationRequest, GenerationResult, SamplingParams
from orion_assets.store import content_id

ERROR_TYPES = ("wrong_answer", "no_answer", "truncated")
MODES = ("orion", "no_error", "no_reflection")
# Which endpoint rewrites in each mode: the student reflects; the ablation hands it to the teacher.
MODE_ROLE = {"orion": "student", "no_error": "student", "no_reflection": "teacher"}


def error_type(result: GenerationResult, verdict: Verdict) -> str | None:
    """The student's error in one attempt, or None when it solved the problem.

    An endpoint failure is no error of the student's: it is reported as ``"endpoint_error"`` and
    kept out of ``student_errors``.
    """
    if result.finish_reason == "error":
        return "endpoint_error"
    if verdict.correct:
        return None
    if result.finish_reason == "length":
        return "truncated"
    if verdict.extracted is None:
        return "no_answer"
    return "wrong_answer"


@dataclass(frozen=True)
class Task:
    """One problem to refine in one mode."""

    problem: Mapping[str, Any]  # a train_problems row
    teacher_cot: Mapping[str, Any]  # a teacher_cots row
    errors: tuple[Mapping[str, Any], ...]  # student_errors rows joined with their attempt text
    mode: str

    @property
    def error_context(self) -> bool:
        """Whether the prompt shows a wrong attempt (never for problems the student got right)."""
        return self.mode != "no_error" and bool(self.errors)

    def template(self) -> str:
        if not self.error_context:
            return "reflect_no_error"
        return "reflect_no_reflection" if self.mode == "no_reflection" else "reflect_orion"

    def messages(self, overrides: Mapping[str, str | None]) -> tuple[dict[str, str], ...]:
        fields = {"problem": self.problem["problem"], "teacher_cot": self.teacher_cot["cot"]}
        if self.error_context:
            fields["student_attempt"] = self.errors[0]["text"]
        return prompts.messages(self.template(), overrides, **fields)

    @property
    def used_error_ids(self) -> list[str]:
        return [self.errors[0]["attempt_id"]] if self.error_context else []


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

    @property
    def verified(self) -> bool:
        return self.verdict is not None and self.verdict.correct


def refine(
    tasks: Sequence[Task],
    endpoint: Endpoint,
    params: SamplingParams,
    *,
    tries: int,
    overrides: Mapping[str, str | None],
    run_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Outcome]:
    """Ask for refinements in rounds: try ``k`` goes only to tasks whose earlier tries all failed.

    A refinement counts when the solution part of the reply (not the reflection notes) verifies
    against the gold answer and was not cut off.
    """
    outcomes = [Outcome(task) for task in tasks]
    for attempt in range(tries):
        pending = [o for o in outcomes if not o.verified]
        if not pending:
            break
        requests = [
            GenerationRequest(
                messages=o.task.messages(overrides), params=params, sample_index=attempt, replay_row=o.task.problem
            )
            for o in pending
        ]
        results = endpoint.generate(requests, run_id=run_id, progress=progress)
        split = [prompts.split_reflection(r.cot) if r.ok else (None, "") for r in results]
        verdicts = grade_batch(
            [(solution, o.task.problem["gold_answer"]) for (_, solution), o in zip(split, pending, strict=True)],
            benchmark=[o.task.problem["source"] for o in pending],
        )
        for outcome, result, (notes, solution), verdict in zip(pending, results, split, verdicts, strict=True):
            outcome.tries = attempt + 1
            outcome.result, outcome.notes, outcome.solution, outcome.verdict = result, notes, solution, verdict
            if result.finish_reason == "length":
                outcome.verdict = Verdict(False, verdict.extracted, verdict.method, "truncated")
            if not outcome.verified:
                outcome.failures.append(result.error or outcome.verdict.reason)
    return outcomes


def refined_row(outcome: Outcome, on_failure: str) -> dict[str, Any] | None:
    """The ``refined_cots`` row for an outcome: the refinement, the teacher fallback, or None (drop)."""
    task = outcome.task
    base = {
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
            "cot": outcome.solution,
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
            "reflection_notes": None,
            "final_answer": task.teacher_cot["final_answer"],
            "verified": True,  # teacher CoTs are kept only when they verify
            "finish_reason": task.teacher_cot["finish_reason"],
            "llm_call_id": outcome.result.call_id if outcome.result else None,
        }
    else:
        return None
    row["refined_cot_id"] = content_id("refined_cot", row["mode"], row["problem_id"], row["source"], row["cot"])
    return row


def attempt_id(problem_id: str, call_id: str) -> str:
    return content_id("attempt", problem_id, call_id)
