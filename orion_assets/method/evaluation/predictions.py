"""``benchmark_predictions`` without Dagster: one checkpoint's graded samples of one benchmark, and what the failed
calls say about them (docs/scoring.md)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orion_assets.ids import content_id
from orion_assets.llm import Endpoint, GenerationResult, SamplingParams
from orion_assets.llm.types import ProgressFn
from orion_assets.method.evaluation import scoring
from orion_assets.method.sampling import sample_and_grade
from orion_assets.vocabulary import GRADING_RULES


def error_share(n_errors: int, n_calls: int) -> float:
    return n_errors / n_calls if n_calls else 0.0


@dataclass(frozen=True)
class Predictions:
    """The ``benchmark_predictions`` records of one (benchmark, checkpoint), the calls behind them, and their
    failed (``finish_reason`` "error") and timed-out counts."""

    records: list[dict[str, Any]]
    results: list[GenerationResult]

    @property
    def n_errors(self) -> int:
        return sum(r["finish_reason"] == scoring.ERROR_FINISH_REASON for r in self.records)

    @property
    def n_timeouts(self) -> int:
        return sum(r["finish_reason"] == scoring.TIMEOUT_FINISH_REASON for r in self.records)

    @property
    def error_share(self) -> float:
        return error_share(self.n_errors, len(self.results))

    @property
    def accuracy(self) -> float:
        graded = [r["correct"] for r in self.records if r["correct"] is not None]
        return sum(graded) / len(graded) if graded else 0.0

    def too_many_errors(self, where: str, max_error_rate: float) -> str | None:
        """Why the partition fails (more failed calls than ``[eval] max_error_rate``), or None."""
        if self.error_share <= max_error_rate:
            return None
        return (f"{where}: {self.n_errors} of {len(self.results)} calls failed ({self.error_share:.1%}, more than "
                f"[eval] max_error_rate = {max_error_rate:.1%}); first error: {self.first_error()}. The predictions are "
                f"written (failed calls with finish_reason 'error'), but not scored. Re-materializing this partition "
                f"sends only the {self.n_errors} failed calls again: the call cache keeps every answer and retries "
                "errors.")

    def metadata(self) -> dict[str, Any]:
        """The counts a materialization shows: samples, failed and timed-out calls, the graded accuracy."""
        return {"samples": len(self.records), "n_errors": self.n_errors, "error_rate": self.error_share,
                "n_timeouts": self.n_timeouts, "accuracy": self.accuracy}

    def first_error(self) -> str | None:
        return next((r.error for r in self.results if not r.ok and not r.timed_out), None)


def predict(
    endpoint: Endpoint, problems: Sequence[Mapping[str, Any]], *, benchmark: str, model_key: str,
    identity: Mapping[str, Any], checkpoint_id: str, k: int, params: SamplingParams, overrides: Mapping[str, str | None],
    rule: str, also_grade: Sequence[str], count_tokens: Callable[[list[str]], list[int]], run_id: str | None = None,
    progress: ProgressFn | None = None,
) -> Predictions:
    """``k`` samples of every problem of ``benchmark`` through ``endpoint``, each graded by ``rule`` (``correct``)
    and every rule of ``also_grade`` (``correct_<rule>``); ``identity``: the student, variant and seed columns.
    A failed call is no answer (``correct`` null); a timed-out reply is wrong under every rule graded."""
    samples = sample_and_grade(
        endpoint, list(problems), n=k, prompt="solve", overrides=overrides, params=params, count_tokens=count_tokens,
        benchmark=benchmark, rule=rule, also_grade=also_grade, grade_failed=False, run_id=run_id, progress=progress,
    )
    asked = {rule, *also_grade}
    records = [
        {
            "prediction_id": content_id("prediction", benchmark, model_key, s.row["problem_id"], s.result.call_id),
            "benchmark": benchmark, **identity, "problem_id": s.row["problem_id"], "checkpoint_id": checkpoint_id,
            "sample_index": s.sample_index, "text": s.result.text, "n_tokens": s.n_tokens,
            "llm_call_id": s.result.call_id, "grading_rule": rule, **scoring.prediction_outcome(s.result, s.verdict),
            **{f"correct_{r}": s.by_rule[r].correct if r in s.by_rule
               else False if s.result.timed_out and r in asked else None for r in GRADING_RULES},
        }
        for s in samples
    ]  # fmt: skip
    return Predictions(records, [s.result for s in samples])
