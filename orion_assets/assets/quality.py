"""The quality gate: metrics for every candidate SFT CoT, and a blocking Great Expectations check."""

from datetime import UTC, datetime

import dagster as dg
import polars as pl

from orion_assets.ids import content_id
from orion_assets.io.blueprint import blueprint
from orion_assets.io.metadata import percentiles, progress_logger
from orion_assets.io.resource import OrionResource
from orion_assets.io.tables import Rows, Table, TableSpec, col, described, orion_asset
from orion_assets.llm import GenerationRequest, sampling_params
from orion_assets.llm.usage import Metered, usage_metadata
from orion_assets.method import problems, prompts, reflection
from orion_assets.method.quality import embedding, gate, lexical, metrics, rules, verdicts
from orion_assets.method.quality.judge import parse_judge_reply
from orion_assets.method.sampling import ChunkProgress
from orion_assets.method.variants import skipped_variants
from orion_assets.vocabulary import MODE_VARIANT, REFERENCE_VARIANT

COT_QUALITY = TableSpec(
    "cot_quality",
    {
        "student": col(pl.Utf8, "the student the SFT data is for (the partition)"),
        "variant": col(pl.Utf8, "the training variant the CoT is a candidate for (teacher_sft, orion, ..., a baseline)"),
        "cot_table": col(pl.Utf8, "the table that holds the CoT's text: teacher_cots, refined_cots or baseline_cots"),
        "problem_id": col(pl.Utf8, "the training problem"),
        "teacher_cot_id": col(pl.Utf8, "the teacher CoT (teacher_sft's own, the one a rewrite or a baseline came "
                                       "from; NULL for rft)"),
        "refined_cot_id": col(pl.Utf8, "the refined_cots row (refined variants only)"),
        "baseline_cot_id": col(pl.Utf8, "the baseline_cots row (baselines only)"),
        "source": col(pl.Utf8, "where the text comes from: teacher, refined, teacher_fallback, or a baseline's "
                               "teacher_solution, teacher_cot or student_solution"),
        "verified": col(pl.Boolean, "whether the CoT's answer verified against the gold answer"),
        "truncated": col(pl.Boolean, "whether its generation stopped at the token limit (finish_reason length)"),
        "cot_quality_id": col(pl.Utf8, "the row's id: a content hash of student, variant, cot_table and the CoT's ids"),
        "cot_hash": col(pl.Utf8, "a content hash of the CoT's text (duplicates share it)"),
        **described(metrics.COT_METRICS_SCHEMA, {
            "n_tokens": "the CoT's length in the student's tokens (no special tokens)",
            "n_words": "its words (runs of word characters, lowercased)",
            "n_steps": "its reasoning steps: lines, then sentences within a line (docs/quality.md)",
            "reflection_markers": "reflection markers in it (\"wait\", \"let me check\", ...)",
            "reflection_density": "reflection markers per 100 words",
            "repeated_4gram_ratio": "(total - distinct) / total over its word 4-grams: near 1.0 for a loop",
            "coherence": "the mean cosine similarity of adjacent steps' sentence embeddings (NULL: fewer than 2 steps)",
        }, table="cot_quality"),
        "contaminated": col(pl.Boolean, "whether the CoT shares an n-gram with a benchmark problem ([data] "
                                        "decontamination_ngram words)"),
        "contaminated_with": col(pl.Utf8, "the benchmark problem it overlaps (its problem_id; NULL: none)"),
        "judge_coherence": col(pl.Int64, "the LLM judge's coherence score, 1-5 (NULL: no judge, or no score read)"),
        "judge_consistency": col(pl.Int64, "the LLM judge's logical-consistency score, 1-5 (NULL likewise)"),
        "teacher_similarity": col(pl.Float64, "the share of a refined CoT's word 4-grams found in the teacher CoT it "
                                              "rewrites: 1.0 for a copy (NULL: not a refined_cots row, or under 4 words)"),
        "drop_reasons": col(pl.List(pl.Utf8), "every rule the row breaks (unverified, too_short, truncated, "
                                              "contaminated, incoherent, duplicate, ...; docs/quality.md)"),
        "kept": col(pl.Boolean, "no drop reason: sft_dataset takes the row"),
    },
    id="cot_quality_id",
    parents={"teacher_cot_id": "teacher_cots", "refined_cot_id": "refined_cots", "baseline_cot_id": "baseline_cots",
             "problem_id": "train_problems"},
    partition_by=("student",),
)


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


# 7: baselines; teacher_sft draws on the teacher CoTs of every problem exposure reached (refined or not)
@orion_asset(COT_QUALITY, group_name="quality", partitions="student", kinds={"polars"}, code_version="7")
def cot_quality(
    context: dg.AssetExecutionContext,
    orion: OrionResource,
    teacher_cots: Table,
    refined_cots: Table,
    baseline_cots: Table,
    student_attempts: Table,
    train_problems: Table,
    student_base_model: Table,
) -> Rows:
    """Metrics of every candidate SFT CoT: tokens, steps, reflection markers, repetition,
    embedding coherence, benchmark contamination, similarity to the teacher CoT (refined rows),
    an LLM-judge score when a judge is set, and the per-row verdict: ``drop_reasons`` (empty =
    kept) and ``kept``, the rows ``sft_dataset`` takes (rules in :mod:`orion_assets.method.quality.rules`).

    Works in chunks of ``[data] chunk_size`` problems. A CoT repeated within a variant keeps its
    first copy: the cleanest in its chunk, and across chunks the one in the earlier chunk. The CoT
    text is not copied here: ``cot_table`` and its id name the row that holds it, and ``cot_hash``
    identifies it."""
    student = context.partition_key
    cfg = orion.config_for(student)
    from transformers import AutoTokenizer  # deferred: heavy

    tokenizer = AutoTokenizer.from_pretrained(student_base_model.first()["path"])
    embedder = embedding.load_embedder(cfg.quality.embedding_model, device="auto", backend=cfg.quality.embedding_backend)
    index = problems.ContaminationIndex.build(problems.all_benchmarks(), cfg.data.decontamination_ngram)
    judge = Metered(orion.endpoint("judge")) if cfg.endpoints.judge is not None else None
    progress = ChunkProgress(progress_logger(context, "judge"), 0) if judge else None
    seen: set[tuple[str, str]] = set()  # (variant, cot_hash) of every CoT kept so far
    skipped = skipped_variants(cfg)  # rows an earlier profile's refinement left for variants this one skips
    summary_rows: list[pl.DataFrame] = []  # the columns the metadata reads, of every chunk

    def chunk_rows(teacher: pl.DataFrame) -> pl.DataFrame:
        """One chunk's rows; its texts and intermediate frames are freed when it returns, before the next chunk."""
        ids = teacher["problem_id"].unique(maintain_order=True).to_list()
        refined = refined_cots.rows_for("problem_id", ids)
        # teacher_sft draws on the teacher CoTs refinement and the baselines drew on ([reflection] teacher_samples)
        attempts = student_attempts.rows_for("problem_id", ids, ["problem_id", "finish_reason"])
        drawn = reflection.drawn_teacher_cots(teacher, attempts, cfg.reflection.teacher_samples)
        frame = candidates(drawn, refined, baseline_cots.rows_for("problem_id", ids), student)
        frame = frame.filter(~pl.col("variant").is_in(sorted(skipped)))
        measured = metrics.cot_metrics(frame["cot"].to_list(), tokenizer=tokenizer, embedder=embedder,
                                       max_pairs=cfg.quality.coherence_max_pairs or None)
        hits = [index.match(cot) for cot in frame["cot"]]
        frame = pl.concat([frame, measured], how="horizontal").with_columns(
            pl.Series("contaminated", [h is not None for h in hits], dtype=pl.Boolean),
            pl.Series("contaminated_with", [h[1] if h else None for h in hits], dtype=pl.Utf8),
        )
        frame = frame.with_columns(_judge_scores(context, cfg, judge, frame, train_problems, ids, progress))
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
        frame = _drop_earlier_duplicates(rules.row_drop_reasons(frame, cfg.quality, id_column="cot_quality_id"), seen)
        return frame.select(list(COT_QUALITY.columns))  # the text stays in its own table (cot_table)

    def chunks():
        # map: no local of this generator holds a chunk's texts while the I/O manager writes its rows
        for frame in map(chunk_rows, teacher_cots.chunks("problem_id", cfg.data.chunk_size)):
            summary_rows.append(frame.select(list(SUMMARY_COLUMNS)))
            yield frame

    def metadata() -> dict:
        frame = pl.concat(summary_rows) if summary_rows else COT_QUALITY.empty().select(list(SUMMARY_COLUMNS))
        return {**_summary(frame), "judge": judge is not None,
                **(usage_metadata(judge.results, cfg.endpoints.judge, "judge") if judge else {})}

    return Rows(chunks(), metadata)


#: The columns of cot_quality's rows that its metadata reads (:func:`_summary`): what the step keeps of every chunk
#: until the last one is written, rather than every column.
SUMMARY_COLUMNS = ("variant", "source", "n_tokens", "coherence", "contaminated", "kept", "drop_reasons",
                   "teacher_similarity")


def _summary(frame: pl.DataFrame) -> dict:
    """cot_quality's metadata from its rows' :data:`SUMMARY_COLUMNS`."""
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


def _judge_scores(context, cfg, judge, frame: pl.DataFrame, train_problems: Table, ids, progress) -> list[pl.Series]:
    """LLM-judge coherence and logical consistency (1-5) per CoT; nulls without a judge."""
    if judge is None:
        return [pl.lit(None, dtype=pl.Int64).alias("judge_coherence"), pl.lit(None, dtype=pl.Int64).alias("judge_consistency")]
    problem_text = train_problems.column_map("problem_id", "problem", ids)
    requests = [
        GenerationRequest(
            messages=prompts.messages("judge", cfg.prompts.model_dump(), problem=problem_text[pid], cot=cot),
            params=sampling_params(cfg.endpoints.judge, json_mode=True),
        )
        for pid, cot in frame.select("problem_id", "cot").iter_rows()
    ]
    progress.total += len(requests)
    results = judge.generate(requests, run_id=context.run.run_id, progress=progress.chunk())
    scores = [parse_judge_reply(r.text or "") if r.ok else (None, None) for r in results]
    return [
        pl.Series("judge_coherence", [s[0] for s in scores], dtype=pl.Int64),
        pl.Series("judge_consistency", [s[1] for s in scores], dtype=pl.Int64),
    ]


@blueprint(dg.asset_check, asset=COT_QUALITY.name, partitions="student",
           description="Great Expectations suite per variant on the candidate SFT CoTs")
def quality_gate(context: dg.AssetCheckExecutionContext, orion: OrionResource, cot_quality: Table) -> dg.AssetCheckResult:
    """Gate each training variant of one student's ``cot_quality`` on dataset-level expectations (GX 1.x); the
    rules are in the README ("The quality gate"). The check fails when any variant fails, but does not block:
    each variant's verdict is stored in ``orion.quality_gate_results``, and ``sft_dataset`` and
    ``student_checkpoint`` of a variant that passed proceed while one that failed is refused with its reasons."""
    cfg = orion.config_for(context.partition_key) if context.has_partition_key else orion.active.config
    frame = cot_quality.frame()
    (checked,) = cot_quality.upstream
    result = gate.run_gate(frame, cfg.quality, id_column="cot_quality_id")
    metadata = result.to_metadata()
    checked_at = datetime.now(UTC)
    rows = [
        {"checked_materialization_id": checked.materialization_id, "dagster_run_id": context.run.run_id, **row,
         "checked_at": checked_at}
        for row in verdicts.verdict_rows(result)
    ]
    verdicts.append_verdicts(orion.store, pl.DataFrame(rows, schema=verdicts.GATE_SCHEMA))
    for verdict in result.verdicts:
        (context.log.info if verdict.passed else context.log.warning)(f"quality gate: {verdict.message}")
    return dg.AssetCheckResult(
        passed=result.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"checked_materialization_id": checked.materialization_id, **metadata},
    )


