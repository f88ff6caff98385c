"""``cot_quality`` without Dagster: one student's candidate SFT CoTs, chunk by chunk, each measured (tokens, steps,
reflection markers, repetition, embedding coherence, benchmark contamination, similarity to the teacher CoT, an LLM
judge's scores when one is set) and judged by the per-row rules (:mod:`orion_assets.method.quality.rules`), and the
summary of the rows made. The asset only loads the tokenizer, the embedder and the judge and hands the tables in."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from orion_assets.ids import content_id
from orion_assets.llm import Endpoint, GenerationRequest, sampling_params
from orion_assets.method import prompts, reflection
from orion_assets.method.problems import ContaminationIndex
from orion_assets.method.quality import lexical, metrics, rules
from orion_assets.method.quality.embedding import Embedder
from orion_assets.method.quality.judge import parse_judge_reply
from orion_assets.method.sampling import ChunkProgress
from orion_assets.method.variants import skipped_variants
from orion_assets.profiles.schema import OrionConfig
from orion_assets.tokens import percentiles
from orion_assets.vocabulary import MODE_VARIANT, REFERENCE_VARIANT

__all__ = ["SUMMARY_COLUMNS", "QualityChunks", "QualityInputs", "candidates", "summary"]

#: The columns of cot_quality's rows that its summary reads (:func:`summary`): what the step keeps of every chunk
#: until the last one is written, rather than every column.
SUMMARY_COLUMNS = ("variant", "source", "n_tokens", "coherence", "contaminated", "kept", "drop_reasons",
                   "teacher_similarity")


def candidates(teacher: pl.DataFrame, refined: pl.DataFrame, baseline: pl.DataFrame, student: str) -> pl.DataFrame:
    """One row per (variant, CoT) of one student that could become SFT data: ``teacher_sft``'s teacher CoTs, the
    refined modes' rows and the baselines' (``cot_table`` names the table that holds each text)."""
    none = pl.lit(None, dtype=pl.Utf8)
    truncated = (pl.col("finish_reason") == "length").alias("truncated")
    teacher_rows = teacher.select(
        pl.lit(student).alias("student"), pl.lit(REFERENCE_VARIANT).alias("variant"),
        pl.lit("teacher_cots").alias("cot_table"), "problem_id", "teacher_cot_id", none.alias("refined_cot_id"),
        none.alias("baseline_cot_id"), pl.lit("teacher").alias("source"), "cot", pl.lit(True).alias("verified"),
        truncated,
    )
    refined_rows = refined.select(
        pl.lit(student).alias("student"), pl.col("mode").replace_strict(MODE_VARIANT, return_dtype=pl.Utf8).alias("variant"),
        pl.lit("refined_cots").alias("cot_table"), "problem_id", "teacher_cot_id", "refined_cot_id",
        none.alias("baseline_cot_id"), "source", "cot", "verified", truncated,
    )
    baseline_rows = baseline.select(
        pl.lit(student).alias("student"), "variant", pl.lit("baseline_cots").alias("cot_table"), "problem_id",
        "teacher_cot_id", none.alias("refined_cot_id"), "baseline_cot_id", "source", "cot", "verified", truncated,
    )
    frame = pl.concat([teacher_rows, refined_rows, baseline_rows])
    return frame.with_columns(
        pl.struct("student", "variant", "cot_table", "teacher_cot_id", "refined_cot_id", "baseline_cot_id")
        .map_elements(lambda r: _quality_id(**r), return_dtype=pl.Utf8)
        .alias("cot_quality_id"),
        pl.col("cot").map_elements(lambda c: content_id("cot", c), return_dtype=pl.Utf8).alias("cot_hash"),
    )


def _quality_id(student, variant, cot_table, teacher_cot_id, refined_cot_id, baseline_cot_id) -> str:
    """A candidate's id: a teacher or refined row's as before baselines existed, a baseline row's with its id."""
    parts = (student, variant, cot_table, teacher_cot_id, refined_cot_id)
    return content_id("cot_quality", *parts, *((baseline_cot_id,) if baseline_cot_id is not None else ()))


@dataclass(frozen=True)
class QualityInputs:
    """How a chunk's rows are read by problem id: ``refined_cots`` and ``baseline_cots`` rows, exposure attempts
    (``problem_id``, ``finish_reason``), and the training problems' texts (``{problem_id: problem}``, read only
    for a judge)."""

    refined: Callable[[list[str]], pl.DataFrame]
    baseline: Callable[[list[str]], pl.DataFrame]
    attempts: Callable[[list[str]], pl.DataFrame]
    problems: Callable[[list[str]], Mapping[str, str]]


class QualityChunks:
    """One student's ``cot_quality`` rows, chunk by chunk (:meth:`chunks`), and the summary of those made so far
    (:meth:`summary`).

    ``cfg``: the profile's configuration as the student sees it; ``columns``: the rows' columns in order (the table
    spec's), which leave out the CoT text: ``cot_table`` and its id name the row that holds it. ``judge``: the LLM
    judge's endpoint, or None (no judge: its scores are null); ``report(done, total, planned=...)`` hears of its
    calls, ``run_id`` goes with them. A CoT repeated within a variant keeps its first copy: the cleanest in its
    chunk, and across chunks the one in the earlier chunk."""

    def __init__(self, read: QualityInputs, *, student: str, cfg: OrionConfig, columns: Mapping[str, Any], tokenizer: Any,
                 embedder: Embedder, index: ContaminationIndex, judge: Endpoint | None = None,
                 report: Callable[..., None] | None = None, run_id: str | None = None) -> None:
        self.read, self.student, self.cfg, self.columns = read, student, cfg, columns
        self.tokenizer, self.embedder, self.index, self.judge, self.run_id = tokenizer, embedder, index, judge, run_id
        self.progress = ChunkProgress(report or (lambda *_, **__: None), 0)  # over every chunk's judge calls
        self.skipped = skipped_variants(cfg)  # rows an earlier profile's refinement left for variants this one skips
        self.seen: set[tuple[str, str]] = set()  # (variant, cot_hash) of every CoT kept so far
        self.summary_rows: list[pl.DataFrame] = []  # the columns the summary reads, of every chunk

    def chunks(self, teacher_chunks: Iterable[pl.DataFrame]) -> Iterator[pl.DataFrame]:
        """The rows of each chunk of teacher CoTs (all the CoTs of its problems), in turn."""
        # map: no local of this generator holds a chunk's texts while the I/O manager writes its rows
        for frame in map(self.chunk_rows, teacher_chunks):
            self.summary_rows.append(frame.select(list(SUMMARY_COLUMNS)))
            yield frame

    def chunk_rows(self, teacher: pl.DataFrame) -> pl.DataFrame:
        """One chunk's rows; its texts and intermediate frames are freed when it returns, before the next chunk."""
        cfg, read = self.cfg, self.read
        ids = teacher["problem_id"].unique(maintain_order=True).to_list()
        refined = read.refined(ids)
        # teacher_sft draws on the teacher CoTs refinement and the baselines drew on ([reflection] teacher_samples)
        drawn = reflection.drawn_teacher_cots(teacher, read.attempts(ids), cfg.reflection.teacher_samples)
        frame = candidates(drawn, refined, read.baseline(ids), self.student)
        frame = frame.filter(~pl.col("variant").is_in(sorted(self.skipped)))
        measured = metrics.cot_metrics(frame["cot"].to_list(), tokenizer=self.tokenizer, embedder=self.embedder,
                                       max_pairs=cfg.quality.coherence_max_pairs or None)
        hits = [self.index.match(cot) for cot in frame["cot"]]
        frame = pl.concat([frame, measured], how="horizontal").with_columns(
            pl.Series("contaminated", [h is not None for h in hits], dtype=pl.Boolean),
            pl.Series("contaminated_with", [h[1] if h else None for h in hits], dtype=pl.Utf8),
        )
        frame = frame.with_columns(self._judge_scores(frame, ids))
        teacher_text = dict(teacher.select("teacher_cot_id", "cot").iter_rows())
        frame = frame.with_columns(
            pl.Series(
                "teacher_similarity",
                [
                    lexical.teacher_similarity(cot, teacher_text.get(tid)) if table == "refined_cots" else None
                    for cot, tid, table in frame.select("cot", "teacher_cot_id", "cot_table").iter_rows()
                ],
                dtype=pl.Float64,
            )
        )
        frame = _drop_earlier_duplicates(rules.row_drop_reasons(frame, cfg.quality, id_column="cot_quality_id"),
                                         self.seen)
        return frame.select(list(self.columns))  # the text stays in its own table (cot_table)

    def summary(self) -> dict:
        """The summary (:func:`summary`) of every row made so far."""
        empty = pl.DataFrame(schema={c: self.columns[c] for c in SUMMARY_COLUMNS})
        return summary(pl.concat(self.summary_rows) if self.summary_rows else empty)

    def _judge_scores(self, frame: pl.DataFrame, ids: list[str]) -> list[pl.Series | pl.Expr]:
        """LLM-judge coherence and logical consistency (1-5) per CoT; nulls without a judge."""
        if self.judge is None:
            return [pl.lit(None, dtype=pl.Int64).alias("judge_coherence"),
                    pl.lit(None, dtype=pl.Int64).alias("judge_consistency")]
        problem_text = self.read.problems(ids)
        requests = [
            GenerationRequest(
                messages=prompts.messages("judge", self.cfg.prompts.model_dump(), problem=problem_text[pid], cot=cot),
                params=sampling_params(self.cfg.endpoints.judge, json_mode=True),
            )
            for pid, cot in frame.select("problem_id", "cot").iter_rows()
        ]
        self.progress.total += len(requests)
        results = self.judge.generate(requests, run_id=self.run_id, progress=self.progress.chunk())
        scores = [parse_judge_reply(r.text or "") if r.ok else (None, None) for r in results]
        return [
            pl.Series("judge_coherence", [s[0] for s in scores], dtype=pl.Int64),
            pl.Series("judge_consistency", [s[1] for s in scores], dtype=pl.Int64),
        ]


def summary(frame: pl.DataFrame) -> dict:
    """cot_quality's summary from its rows' :data:`SUMMARY_COLUMNS`: per variant (:func:`_variant_summary`), the
    length and coherence percentiles, and the rows contaminated, kept and dropped (by reason)."""
    by_variant = {v: _variant_summary(g) for (v,), g in sorted(frame.group_by("variant"), key=lambda item: item[0])}
    return {
        "by_variant": by_variant,
        "n_tokens_percentiles": percentiles(frame["n_tokens"]),
        "coherence_percentiles": percentiles(frame["coherence"].drop_nulls()),
        "contaminated": int(frame["contaminated"].sum()),
        "kept": int(frame["kept"].sum()),
        "dropped": int((~frame["kept"]).sum()),
        "dropped_by_reason": rules.reason_counts(frame.filter(~pl.col("kept"))),
    }


def _drop_earlier_duplicates(frame: pl.DataFrame, seen: set[tuple[str, str]]) -> pl.DataFrame:
    """Mark ``duplicate`` the rows whose (variant, CoT) an earlier chunk already kept; remember
    this chunk's kept ones."""
    earlier = pl.Series([(v, h) in seen for v, h in frame.select("variant", "cot_hash").iter_rows()], dtype=pl.Boolean)
    frame = frame.with_columns(
        pl.when(earlier & pl.col("kept"))
        .then(pl.col("drop_reasons").list.concat(pl.lit(["duplicate"], dtype=pl.List(pl.Utf8))))
        .otherwise(pl.col("drop_reasons"))
        .alias("drop_reasons")
    ).with_columns((pl.col("drop_reasons").list.len() == 0).alias("kept"))
    seen.update(frame.filter(pl.col("kept")).select("variant", "cot_hash").iter_rows())
    return frame


def _variant_summary(rows: pl.DataFrame) -> dict:
    """Rows, kept, drops by reason, median coherence and the teacher-similarity percentiles of
    the variant's true rewrites (``source == 'refined'``; teacher fallbacks are copies, 1.0)."""
    rewrites = rows.filter(pl.col("source") == "refined")["teacher_similarity"].drop_nulls()
    return {
        "rows": int(rows.height),
        "kept": int(rows["kept"].sum()),
        "dropped_by_reason": rules.reason_counts(rows.filter(~pl.col("kept"))),
        "coherence_p50": percentiles(rows["coherence"].drop_nulls(), (0.5,))["p50"],
        "teacher_similarity": percentiles(rewrites, (0.1, 0.5, 0.9)) | {"n": int(rewrites.len())},
    }
