"""``sft_dataset`` without Dagster: one variant's kept candidate CoTs as chat prompt/completion examples, held to
the common problems when ``[sft] common_problems`` is on (docs/quality.md), with what was left out and why."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from orion_assets.ids import content_id
from orion_assets.method import prompts
from orion_assets.method.quality.common import NOT_COMMON, CommonProblems
from orion_assets.method.quality.rules import reason_counts

#: The ``cot_quality`` columns an example is made from.
CANDIDATE_COLUMNS: tuple[str, ...] = ("cot_quality_id", "cot_table", "problem_id", "teacher_cot_id", "refined_cot_id",
                                      "baseline_cot_id", "source", "n_tokens", "kept", "drop_reasons")
_REASONS = {"drop_reasons": pl.List(pl.Utf8)}


@dataclass
class SftStats:
    """Candidates read, examples made, kept rows the common-problems rule left out, drop reasons, sources, lengths."""

    candidates: int = 0
    examples: int = 0
    not_common: int = 0
    dropped: list[pl.DataFrame] = field(default_factory=list)
    by_source: collections.Counter = field(default_factory=collections.Counter)
    tokens: list[int] = field(default_factory=list)

    def metadata(self, variant: str, shared: CommonProblems | None) -> dict[str, Any]:
        drops = pl.concat(self.dropped) if self.dropped else pl.DataFrame({"drop_reasons": []}, schema=_REASONS)
        rule = {} if shared is None else {
            "common_problems": {"variants": list(shared.variants), "kept": len(shared.problems),
                                "dropped": len(shared.dropped_of(variant))},
            "dropped_by_common_problems": self.not_common,
        }
        return {"examples": self.examples, "candidates": self.candidates,
                "dropped_by_quality": drops.height - self.not_common, **rule,
                "dropped_by_reason": reason_counts(drops), "by_source": dict(self.by_source)}

    def nothing_to_train_on(self, student: str, variant: str, shared: CommonProblems | None) -> str:
        why = ""
        if shared is not None and self.not_common:
            why = (f" ([sft] common_problems: it kept {len(shared.kept.get(variant, ()))} problems, none of them kept "
                   f"by every variant of {', '.join(shared.variants)})")
        return f"no SFT examples for {student}/{variant}: nothing to train on{why}"


def sft_records(
    candidate_chunks: Iterable[pl.DataFrame], *, student: str, variant: str, overrides: Mapping[str, str | None],
    problems_of: Callable[[list[str]], Mapping[str, str]], texts_of: Callable[[pl.DataFrame], Mapping[str, str]],
    common: frozenset[str] | None, stats: SftStats,
) -> Iterator[list[dict[str, Any]]]:
    """Per chunk of the variant's ``cot_quality`` rows (:data:`CANDIDATE_COLUMNS`), its ``sft_dataset`` records: the
    kept rows (of the ``common`` problems when given), each the solve prompt and its CoT (``texts_of(rows)``:
    ``{cot_quality_id: text}``) as the assistant's reply."""
    for chunk in candidate_chunks:
        stats.candidates += chunk.height
        stats.dropped.append(chunk.filter(~pl.col("kept")).select("drop_reasons"))
        if common is not None:  # a kept row of a problem another variant did not keep is left out too
            in_common = pl.col("problem_id").is_in(sorted(common))
            left_out = chunk.filter(pl.col("kept") & ~in_common).height
            stats.not_common += left_out
            stats.dropped.append(pl.DataFrame({"drop_reasons": [[NOT_COMMON]] * left_out}, schema=_REASONS))
            chunk = chunk.filter(in_common)
        cots = chunk.filter(pl.col("kept")).sort("cot_quality_id")
        problem_text = problems_of(cots["problem_id"].unique().to_list())
        texts = texts_of(cots)
        records = []
        for cot in cots.iter_rows(named=True):
            prompt = list(prompts.messages("solve", overrides, problem=problem_text[cot["problem_id"]]))
            completion = [{"role": "assistant", "content": texts[cot["cot_quality_id"]]}]
            records.append({
                "sft_example_id": content_id("sft", student, variant, prompt, completion), "student": student,
                "variant": variant, **{c: cot[c] for c in ("cot_quality_id", "problem_id", "teacher_cot_id",
                                                           "refined_cot_id", "baseline_cot_id", "source", "n_tokens")},
                "prompt": prompt, "completion": completion,
            })
        stats.examples += len(records)
        stats.by_source.update(r["source"] for r in records)
        stats.tokens.extend(r["n_tokens"] for r in records)
        yield records
