"""n samples per problem, generated, graded and counted: what the teacher, error exposure and
evaluation all do, written once."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orion_assets.llm import GenerationRequest, GenerationResult, SamplingParams
from orion_assets.llm.types import ProgressFn
from orion_assets.method import prompts
from orion_assets.method.grading import Verdict, grade_batch


@dataclass(frozen=True)
class Sample:
    """One sample of one problem: the problem's row, the call's result, its grade under the primary rule
    (None for a failed call when failed calls are not graded), the tokens of ``tokens_of(result)`` and its
    grade under each rule asked for (``by_rule``, the primary one included; empty when ungraded)."""

    row: Mapping[str, Any]
    sample_index: int
    result: GenerationResult
    verdict: Verdict | None
    n_tokens: int | None
    by_rule: Mapping[str, Verdict] = field(default_factory=dict)


def sample_and_grade(
    endpoint: Any,
    rows: Sequence[Mapping[str, Any]],
    *,
    n: int,
    prompt: str,
    overrides: Mapping[str, Any],
    params: SamplingParams,
    count_tokens: Callable[[Sequence[str]], list[int]],
    tokens_of: Callable[[GenerationResult], str | None] = lambda r: r.text,
    benchmark: str | None = None,
    rule: str = "strict",
    also_grade: Sequence[str] = (),
    grade_failed: bool = True,
    replay: bool = False,
    run_id: str | None = None,
    progress: ProgressFn | None = None,
) -> list[Sample]:
    """``n`` samples of prompt template ``prompt`` for each row (``problem``, ``gold_answer``,
    ``source``), graded by grading rule ``rule`` (default "strict": on the answer after any thinking,
    a result cut at ``max_tokens`` never correct) and by each rule of ``also_grade`` beside it.
    ``benchmark`` grades every row by one benchmark's rules (default: each row's ``source``).
    ``grade_failed=False`` leaves failed calls ungraded (evaluation does not count them as wrong);
    ``replay`` hands each row to a replay backend."""
    owners = [row for row in rows for _ in range(n)]
    requests = [
        GenerationRequest(
            messages=prompts.messages(prompt, dict(overrides), problem=row["problem"]),
            params=params,
            sample_index=index,
            replay_row=dict(row) if replay else None,
        )
        for row in rows
        for index in range(n)
    ]
    results = endpoint.generate(requests, run_id=run_id, progress=progress) if requests else []
    graded = [i for i, r in enumerate(results) if grade_failed or r.ok]
    rules = list(dict.fromkeys([rule, *also_grade]))
    verdicts_by_rule = {
        name: grade_batch(
            [(results[i].answer, owners[i]["gold_answer"]) for i in graded],
            benchmark=benchmark if benchmark is not None else [owners[i]["source"] for i in graded],
            rule=name,
            truncated=[results[i].finish_reason == "length" for i in graded],
        )
        for name in rules
    }
    verdicts: list[Verdict | None] = [None] * len(results)
    by_rule: list[dict[str, Verdict]] = [{} for _ in results]
    for n, i in enumerate(graded):
        verdicts[i] = verdicts_by_rule[rule][n]
        by_rule[i] = {name: verdicts_by_rule[name][n] for name in rules}
    counted = [i for i, v in enumerate(verdicts) if v is not None]
    tokens: list[int | None] = [None] * len(results)
    for i, count in zip(counted, count_tokens([tokens_of(results[i]) or "" for i in counted]), strict=True):
        tokens[i] = count
    return [
        Sample(owner, request.sample_index, result, verdict, count, graded_by)
        for owner, request, result, verdict, count, graded_by in zip(
            owners, requests, results, verdicts, tokens, by_rule, strict=True)
    ]


class ChunkProgress:
    """Progress over all chunks of an asset: each ``generate`` call's own progress (its cache hits
    first, then its calls as they end) goes on as one batch, with the calls ``total`` planned for the
    whole asset, so a bar counts every batch's calls and cache hits and shows the whole way."""

    def __init__(self, report: Callable[..., None], total: int):
        self.report, self.total = report, total

    def chunk(self) -> ProgressFn:
        return lambda done, total: self.report(done, total, planned=self.total)
