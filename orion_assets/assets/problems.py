"""Problem assets: the benchmark sets (one partition each) and the decontaminated training pool."""


import dagster as dg
import polars as pl

from orion_assets.io.metadata import markdown_table
from orion_assets.io.resource import OrionResource
from orion_assets.io.tables import Rows, TableSpec, described, orion_asset
from orion_assets.method import problems

SAMPLE_SHOWN = 10


# The columns of problems.PROBLEM_SCHEMA, described (a column added there without a description fails here).
_PROBLEM_TEXT = {
    "problem": "the problem's text",
    "gold_answer": "the reference final answer, normalized for grading",
}
BENCHMARK_PROBLEMS = TableSpec(
    "benchmark_problems",
    described({("benchmark" if c == "source" else "reference_solution" if c == "solution" else c): t
               for c, t in problems.PROBLEM_SCHEMA.items()}, {
        "problem_id": "the problem's id: a content hash of benchmark, source_id and text",
        "benchmark": "the benchmark it belongs to (the partition)",
        "source_id": "its id in the benchmark's file (its row number there, from 1, where the file has none)",
        "reference_solution": "the benchmark's worked solution, where it has one (gsm_hard: a Python program)",
        "subject": "the problem's subject (MATH-500; NULL in the other benchmarks)",
        "level": "its difficulty level (MATH-500, arithmetic; NULL in the others)",
        **_PROBLEM_TEXT,
    }, table="benchmark_problems"),
    id="problem_id",
    partition_by=("benchmark",),
)
TRAIN_PROBLEMS = TableSpec("train_problems", described(problems.PROBLEM_SCHEMA, {
    "problem_id": "the problem's id: a content hash of its normalized text (one problem, whatever its sources)",
    "source": "the training source it was first loaded from ([data] train_sources' name)",
    "source_id": "its id in that source (its row number there, from 1, where the source has none)",
    "solution": "the source's worked solution, where it has one (its solution_field)",
    "subject": "the problem's subject, where the source names a subject_field (NULL otherwise)",
    "level": "its difficulty level, where the source names a level_field (NULL otherwise)",
    **_PROBLEM_TEXT,
}, table="train_problems"), id="problem_id")


@orion_asset(BENCHMARK_PROBLEMS, group_name="problems", partitions="benchmark", kinds={"polars"},
             code_version="1", tags={"layer": "source"})
def benchmark_problems(context: dg.AssetExecutionContext, orion: OrionResource) -> Rows:
    """One benchmark's problems with normalized gold answers (a deterministic sample in small profiles)."""
    benchmark = context.partition_key
    cfg = orion.active.config.data
    full, report = problems.load_benchmark(benchmark)
    frame = problems.deterministic_sample(full, cfg.benchmark_limit, cfg.sample_seed)
    context.log.info(f"{benchmark}: {frame.height} of {full.height} problems")
    return Rows(
        BENCHMARK_PROBLEMS.conform(frame),
        metadata={
            "benchmark": benchmark,
            "problems_in_source": full.height,
            "rejected_without_gold": report.rejected_count,
        },
    )


@orion_asset(TRAIN_PROBLEMS, group_name="problems", kinds={"polars"}, code_version="1", tags={"layer": "source"})
def train_problems(context: dg.AssetExecutionContext, orion: OrionResource) -> Rows:
    """Training problems with gold answers, decontaminated against all four benchmarks."""
    cfg = orion.active.config.data
    frames: list[pl.DataFrame] = []
    per_source: dict[str, dict[str, int]] = {}
    rejected: list[dict[str, object]] = []
    for source in cfg.train_sources:
        frame, report = problems.load_train_source(source)
        frames.append(frame)
        per_source[source.name] = {"loaded": report.loaded, "rejected": report.rejected_count}
        rejected += [{"source": source.name, **r} for r in report.rejected]
        context.log.info(f"{source.name}: {report.loaded} problems, {report.rejected_count} rejected")
    pool = pl.concat(frames).unique("problem_id", keep="first", maintain_order=True)
    index = problems.ContaminationIndex.build(problems.all_benchmarks(), cfg.decontamination_ngram)
    clean, removed = problems.decontaminate(pool, index)
    frame = problems.deterministic_sample(clean, cfg.train_limit, cfg.sample_seed)
    context.log.info(f"{len(removed)} contaminated problems removed; {frame.height} of {clean.height} kept")
    removed_sample = pl.DataFrame(removed[:SAMPLE_SHOWN]) if removed else pl.DataFrame()
    return Rows(
        TRAIN_PROBLEMS.conform(frame),
        metadata={
            "per_source": per_source,
            "pool_after_dedup": pool.height,
            "rejected_without_gold": len(rejected),
            "rejected_sample": rejected[:SAMPLE_SHOWN],
            "decontamination_ngram": cfg.decontamination_ngram,
            "removed_contaminated": len(removed),
            "removed_sample": dg.MetadataValue.md(markdown_table(removed_sample) if removed else "none"),
            "pool_after_decontamination": clean.height,
        },
    )
