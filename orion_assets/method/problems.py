"""Problems with gold answers: the four benchmarks, the training pool, and decontamination.

Plain functions over polars frames; the assets in ``orion_assets.assets.problems`` only call
them and write the results.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from orion_assets.ids import content_id
from orion_assets.method.grading import extract_answer, normalize_gold
from orion_assets.profiles.schema import TrainSource
from orion_assets.records import (
    PACKAGE_DATA,
    InputError,
    read_records,
    resolve_data_path,
)
from orion_assets.vocabulary import BENCHMARKS

PROBLEM_SCHEMA = {
    "problem_id": pl.Utf8,
    "source": pl.Utf8,
    "source_id": pl.Utf8,
    "problem": pl.Utf8,
    "gold_answer": pl.Utf8,
    "solution": pl.Utf8,
    "subject": pl.Utf8,
    "level": pl.Utf8,
}




@dataclass(frozen=True)
class BenchmarkSpec:
    file: str
    problem_field: str
    answer_field: str
    id_field: str | None
    solution_field: str | None = None
    subject_field: str | None = None
    level_field: str | None = None
    answer_format: str = "plain"


BENCHMARK_SPECS: dict[str, BenchmarkSpec] = {
    "gsm_hard": BenchmarkSpec("gsm_hard.jsonl", "input", "target", None, solution_field="code"),
    "math500": BenchmarkSpec(
        "math500.jsonl", "problem", "answer", "unique_id", "solution", "subject", "level"
    ),
    "aime24": BenchmarkSpec("aime24.jsonl", "problem", "answer", "id", "solution"),
    "amc23": BenchmarkSpec("amc23.jsonl", "problem", "answer", "id"),
    "gsm8k": BenchmarkSpec("gsm8k_test.jsonl", "question", "answer", None, "answer", answer_format="gsm8k"),
    "arithmetic": BenchmarkSpec("arithmetic_test.jsonl", "question", "answer", "id", "solution", level_field="level"),
}


@dataclass
class LoadReport:
    """What loading kept and what it refused, for asset metadata."""

    loaded: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rejected_count(self) -> int:
        return len(self.rejected)


# -- reading files -------------------------------------------------------------------------------






def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN
        return None
    text = str(value).strip()
    return text or None


def _gold_from(raw: Any, answer_format: str) -> str | None:
    text = _text(raw)
    if text is None:
        return None
    if answer_format == "gsm8k":
        if "####" not in text:
            return None
        text = text.rsplit("####", 1)[1].strip().replace(",", "")
    elif answer_format == "boxed":
        text, method = extract_answer(text)
        if method not in {"boxed", "fbox"}:
            return None
    return text or None


def _rows(
    records: Iterable[tuple[int, dict[str, Any]]],
    *,
    origin: str,
    source: str,
    problem_field: str,
    answer_field: str,
    answer_format: str = "plain",
    id_field: str | None = None,
    solution_field: str | None = None,
    subject_field: str | None = None,
    level_field: str | None = None,
    benchmark: str | None = None,
) -> tuple[pl.DataFrame, LoadReport]:
    report = LoadReport()
    rows: list[dict[str, Any]] = []
    for number, record in records:
        problem = _text(record.get(problem_field))
        if problem is None:
            report.rejected.append({"row": number, "field": problem_field, "reason": "missing problem text"})
            continue
        gold = _gold_from(record.get(answer_field), answer_format)
        if gold is None:
            report.rejected.append({"row": number, "field": answer_field, "reason": "missing gold answer"})
            continue
        try:
            gold = normalize_gold(gold, benchmark or source)
        except Exception as exc:  # a gold the grader cannot read is bad input, not a crash
            raise InputError(f"{origin}: row {number}: field {answer_field!r}: unreadable gold answer {gold!r}: {exc}") from None
        source_id = _text(record.get(id_field)) if id_field else None
        rows.append(
            {
                "source": source,
                "source_id": source_id or str(number),
                "problem": problem,
                "gold_answer": gold,
                "solution": _text(record.get(solution_field)) if solution_field else None,
                "subject": _text(record.get(subject_field)) if subject_field else None,
                "level": _text(record.get(level_field)) if level_field else None,
            }
        )
    report.loaded = len(rows)
    for row in rows:
        # Benchmark rows are identified within their benchmark; a training problem by its text
        # alone, so the same problem from two sources is one problem.
        key = (benchmark, row["source_id"], row["problem"]) if benchmark else ("train", normalize_text(row["problem"]))
        row["problem_id"] = content_id(*key)
    return pl.DataFrame(rows, schema=PROBLEM_SCHEMA), report


# -- benchmarks ----------------------------------------------------------------------------------


def load_benchmark(name: str, data_dir: Path | None = None) -> tuple[pl.DataFrame, LoadReport]:
    """All problems of one benchmark, gold answers normalized, ids content-hashed."""
    if name not in BENCHMARK_SPECS:
        raise ValueError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
    spec = BENCHMARK_SPECS[name]
    path = (data_dir or PACKAGE_DATA / "benchmarks") / spec.file
    frame, report = _rows(
        read_records(path),
        origin=str(path),
        source=name,
        problem_field=spec.problem_field,
        answer_field=spec.answer_field,
        answer_format=spec.answer_format,
        id_field=spec.id_field,
        solution_field=spec.solution_field,
        subject_field=spec.subject_field,
        level_field=spec.level_field,
        benchmark=name,
    )
    return frame.rename({"source": "benchmark", "solution": "reference_solution"}), report


# -- training pool -------------------------------------------------------------------------------


def _source_records(source: TrainSource) -> tuple[str, Iterable[tuple[int, dict[str, Any]]]]:
    if source.path is not None:
        path = resolve_data_path(source.path)
        return str(path), read_records(path)
    import datasets  # deferred: heavy; only real profiles read a Hub or local dataset

    dataset = datasets.load_dataset(source.hf_dataset, source.hf_config, split=source.split)
    return f"{source.hf_dataset}[{source.split}]", enumerate(dataset, start=1)


def load_train_source(source: TrainSource) -> tuple[pl.DataFrame, LoadReport]:
    origin, records = _source_records(source)
    return _rows(
        records,
        origin=origin,
        source=source.name,
        problem_field=source.problem_field,
        answer_field=source.answer_field,
        answer_format=source.answer_format,
        id_field=source.id_field,
        solution_field=source.solution_field,
        subject_field=source.subject_field,
        level_field=source.level_field,
    )


# -- decontamination and sampling ----------------------------------------------------------------

_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalize_text(text: str) -> str:
    """Lowercase, unicode-folded, punctuation and LaTeX markup reduced to single spaces."""
    folded = unicodedata.normalize("NFKC", text).lower()
    return _NON_WORD.sub(" ", folded).strip()


def ngrams(text: str, n: int) -> set[str]:
    tokens = normalize_text(text).split()
    return {" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


@dataclass(frozen=True)
class ContaminationIndex:
    """The n-grams of every benchmark problem, for overlap checks on training and SFT text.

    A benchmark problem shorter than n words has no n-gram; it counts as contamination when
    its whole normalized text appears in the checked text.
    """

    n: int
    owners: dict[str, tuple[str, str]]  # n-gram -> (benchmark, benchmark problem_id)
    short: dict[str, tuple[str, str]]  # whole normalized text of a short problem -> owner

    @classmethod
    def build(cls, benchmarks: pl.DataFrame, n: int) -> ContaminationIndex:
        owners: dict[str, tuple[str, str]] = {}
        short: dict[str, tuple[str, str]] = {}
        for bench, pid, problem in benchmarks.select("benchmark", "problem_id", "problem").iter_rows():
            grams = ngrams(problem, n)
            for gram in grams:
                owners.setdefault(gram, (bench, pid))
            if not grams and normalize_text(problem):
                short.setdefault(normalize_text(problem), (bench, pid))
        return cls(n=n, owners=owners, short=short)

    def match(self, text: str) -> tuple[str, str, str] | None:
        """The first benchmark n-gram found in ``text``: (benchmark, problem_id, n-gram)."""
        for gram in ngrams(text, self.n):
            owner = self.owners.get(gram)
            if owner is not None:
                return owner[0], owner[1], gram
        padded = f" {normalize_text(text)} "
        for whole, owner in self.short.items():
            if f" {whole} " in padded:
                return owner[0], owner[1], whole
        return None


def all_benchmarks(data_dir: Path | None = None) -> pl.DataFrame:
    return pl.concat([load_benchmark(name, data_dir)[0] for name in BENCHMARKS])


def decontaminate(
    train: pl.DataFrame, index: ContaminationIndex
) -> tuple[pl.DataFrame, list[dict[str, str]]]:
    """Drop training problems that share an n-gram with any benchmark problem."""
    keep: list[bool] = []
    removed: list[dict[str, str]] = []
    for pid, problem in train.select("problem_id", "problem").iter_rows():
        hit = index.match(problem)
        keep.append(hit is None)
        if hit is not None:
            removed.append(
                {"problem_id": pid, "problem": problem, "benchmark": hit[0], "benchmark_problem_id": hit[1], "ngram": hit[2]}
            )
    return train.filter(pl.Series(keep, dtype=pl.Boolean)), removed


def deterministic_sample(frame: pl.DataFrame, limit: int, seed: int, id_column: str = "problem_id") -> pl.DataFrame:
    """The ``limit`` rows whose seeded id hash is smallest: stable across runs and pool growth."""
    if limit <= 0 or frame.height <= limit:
        return frame
    keys = frame[id_column].map_elements(lambda pid: content_id(seed, pid), return_dtype=pl.Utf8)
    return frame.with_columns(keys.alias("_key")).sort("_key").head(limit).drop("_key")
