"""``refined_cots`` without Dagster: chunk by chunk, each reflection mode's rewrites of the teacher CoTs every variant
draws on, and how each mode went. The asset only opens the endpoints and the tables and hands them in."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from orion_assets.llm import Endpoint, SamplingParams
from orion_assets.llm.types import ProgressFn
from orion_assets.method import reflection
from orion_assets.vocabulary import MODE_ROLE


@dataclass(frozen=True)
class ChunkInputs:
    """How a chunk's rows are read: exposure attempts (``problem_id``, ``finish_reason``), training problems and
    student errors by problem id, and the attempts' texts by attempt id (``attempt_id``, ``sample_index``, ``text``)."""

    attempts: Callable[[list[str]], pl.DataFrame]
    problems: Callable[[list[str]], pl.DataFrame]
    errors: Callable[[list[str]], pl.DataFrame]
    texts: Callable[[list[str]], pl.DataFrame]


@dataclass
class RefineStats:
    """How each mode went (:func:`reflection.yield_counts`), refined lengths over the teacher's, and the problems
    exposure never reached."""

    yields: dict[str, collections.Counter] = field(default_factory=dict)
    length_ratios: list[float] = field(default_factory=list)
    exposure_failed: list[str] = field(default_factory=list)


def refine_chunks(
    teacher_chunks: Iterable[pl.DataFrame], read: ChunkInputs, *, modes: Sequence[str], student: str, cfg: Any,
    overrides: Mapping[str, str | None], endpoints: Mapping[str, Endpoint], params_for: Mapping[str, SamplingParams],
    tokenizer: Any, count_tokens: Callable[[list[str]], list[int]], progress_for: Mapping[str, Callable[[], ProgressFn]],
    stats: RefineStats, run_id: str | None = None,
) -> Iterator[list[dict]]:
    """Per chunk of teacher CoTs, the ``refined_cots`` records of every mode in ``modes`` (``cfg``: the profile's
    [reflection]); a problem whose every exposure call failed is left out (``stats.exposure_failed``)."""
    for mode in modes:
        stats.yields.setdefault(mode, collections.Counter())
    for teacher in teacher_chunks:
        chunk_ids = teacher["problem_id"].unique(maintain_order=True).to_list()
        chosen = reflection.drawn_teacher_cots(teacher, read.attempts(chunk_ids), cfg.teacher_samples)
        ids = chosen["problem_id"].unique(maintain_order=True).to_list()
        stats.exposure_failed.extend(sorted(set(chunk_ids) - set(ids)))
        problems_by_id = {row["problem_id"]: row for row in read.problems(ids).iter_rows(named=True)}
        errors = read.errors(ids)
        errors_by_problem: dict[str, list[dict]] = collections.defaultdict(list)
        for row in errors.join(read.texts(errors["attempt_id"].to_list()), on="attempt_id").sort(
                "problem_id", "sample_index").iter_rows(named=True):
            errors_by_problem[row["problem_id"]].append({**row, "text": row["text"] or ""})
        records: list[dict] = []
        for mode in modes:
            records += _mode_records(mode, problems_by_id, chosen, errors_by_problem, student=student, cfg=cfg,
                                     overrides=overrides, endpoint=endpoints[MODE_ROLE[mode]],
                                     params=params_for[MODE_ROLE[mode]], tokenizer=tokenizer, count_tokens=count_tokens,
                                     progress=progress_for[mode](), stats=stats, run_id=run_id)
        yield records


def _mode_records(mode: str, problems_by_id: Mapping[str, Mapping[str, Any]], chosen: pl.DataFrame,
                  errors_by_problem: Mapping[str, list[dict]], *, student: str, cfg: Any,
                  overrides: Mapping[str, str | None], endpoint: Endpoint, params: SamplingParams, tokenizer: Any,
                  count_tokens: Callable[[list[str]], list[int]], progress: ProgressFn, stats: RefineStats,
                  run_id: str | None) -> list[dict]:
    """One mode's records for one chunk: its tasks refined, each kept row with its length and ratio."""
    tasks = reflection.make_tasks(mode, problems_by_id, list(chosen.iter_rows(named=True)), errors_by_problem,
                                  attempt_max_tokens=cfg.attempt_max_tokens, tokenizer=tokenizer)
    outcomes = reflection.refine(tasks, endpoint, params, tries=cfg.tries, overrides=overrides, run_id=run_id,
                                 progress=progress, min_reply_tokens=cfg.min_reply_tokens,
                                 unmarked_is_solution=cfg.unmarked_reply == "solution")
    rows = [reflection.refined_row(o, cfg.on_failure, student=student, keep_student_thinking=cfg.keep_student_thinking)
            for o in outcomes]
    kept = [(row, task) for row, task in zip(rows, tasks, strict=True) if row is not None]
    for (row, task), n_tokens in zip(kept, count_tokens([row["cot"] for row, _ in kept]), strict=True):
        row["n_tokens"] = n_tokens
        row["length_ratio"] = n_tokens / (task.teacher_cot["n_tokens"] or 1)
        if row["source"] == "refined":
            stats.length_ratios.append(row["length_ratio"])
    stats.yields.setdefault(mode, collections.Counter()).update(reflection.yield_counts(tasks, outcomes, rows))
    return [row for row, _ in kept]
