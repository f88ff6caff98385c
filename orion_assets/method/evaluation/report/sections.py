"""The report's per-mode and per-variant sections: reflection yield, SFT data quality (and the problems the
variants share under [sft] common_problems), LLM usage and cost.

Each has a frame (one row per mode, variant or stage) and a function turning it into Markdown lines.
Mode and variant names come from :mod:`orion_assets.vocabulary`.
"""

from __future__ import annotations

import polars as pl

from orion_assets.method.evaluation.report.format import MISSING, _md_table, _money, _ordered, _pct
from orion_assets.method.evaluation.report.scores import with_model_keys
from orion_assets.method.quality.common import common_problems
from orion_assets.method.quality.rules import reason_counts
from orion_assets.vocabulary import (
    BASE_VARIANT,
    BASELINE_BY_VARIANT,
    MODE_BY_NAME,
    MODES,
    OWN_PROBLEMS_VARIANTS,
    REFERENCE_VARIANT,
    ROLES,
    VARIANT_MODE,
    VARIANTS,
)

# -- reflection yield ----------------------------------------------------------------------------

# Above this share of teacher fallbacks, a mode's SFT data is mostly the teacher's: say so loudly.
FALLBACK_WARNING_SHARE = 0.5


def reflection_frame(teacher: pl.DataFrame | None, refined: pl.DataFrame | None) -> pl.DataFrame:
    """Per reflection mode: problems tried, refined, teacher fallbacks, dropped, and why tries failed
    (context overflows, unsplittable and truncated replies), from ``refined_cots``' rows and their
    ``failure_reasons``. A mode with no row did not run (e.g. no_reflection with a replay teacher)."""
    columns = ["mode", "problems", "refined", "teacher_fallback", "dropped", "fallback_share",
               "context_overflow", "unsplittable", "truncated"]
    if refined is None or refined.is_empty() or "mode" not in refined.columns:
        return pl.DataFrame(schema=dict.fromkeys(columns, pl.Int64) | {"mode": pl.Utf8, "fallback_share": pl.Float64})
    problems = teacher["problem_id"].n_unique() if teacher is not None and "problem_id" in teacher.columns else None
    if "failure_reasons" not in refined.columns:  # no failure reasons recorded
        refined = refined.with_columns(pl.lit([], dtype=pl.List(pl.Utf8)).alias("failure_reasons"))
    reasons = pl.col("failure_reasons").fill_null([])
    frame = refined.group_by("mode").agg(
        (pl.col("source") == "refined").sum().alias("refined"),
        (pl.col("source") == "teacher_fallback").sum().alias("teacher_fallback"),
        pl.len().alias("rows"),
        reasons.list.contains("context_overflow").sum().alias("context_overflow"),
        reasons.list.eval(pl.element() == "unsplittable").list.sum().sum().alias("unsplittable"),
        reasons.list.eval(pl.element() == "truncated").list.sum().sum().alias("truncated"),
    )
    frame = frame.with_columns(pl.lit(problems if problems is not None else None).cast(pl.Int64).alias("problems"))
    frame = frame.with_columns(
        pl.coalesce("problems", "rows").alias("problems"),
    ).with_columns(
        (pl.col("problems") - pl.col("rows")).clip(lower_bound=0).alias("dropped"),
        (pl.col("teacher_fallback") / pl.col("problems")).alias("fallback_share"),
    )
    order = {m: i for i, m in enumerate(MODES)}
    return frame.sort(pl.col("mode").replace_strict(order, default=len(order), return_dtype=pl.Int64), "mode").select(columns)


def _reflection_section(frame: pl.DataFrame) -> list[str]:
    if frame.is_empty():
        return []
    rows = [
        [f"`{r['mode']}`", str(r["problems"]), str(r["refined"]), str(r["teacher_fallback"]), str(r["dropped"]),
         _pct(r["fallback_share"]), str(r["context_overflow"]), str(r["unsplittable"]), str(r["truncated"])]
        for r in frame.iter_rows(named=True)
    ]
    parts = [
        "## Self-reflection per mode\n",
        _md_table(["mode", "problems", "refined", "teacher fallback", "dropped", "fallback %",
                   "prompt over context", "unsplittable replies", "truncated replies"], rows),
        "",
    ]
    ran = set(frame["mode"])
    missing = [m for m in MODES if m not in ran]
    if missing:
        parts.append("Not run: " + ", ".join(f"`{m}`" for m in missing) + " (see the run's output for why).\n")
    for r in frame.iter_rows(named=True):
        if r["fallback_share"] is not None and r["fallback_share"] > FALLBACK_WARNING_SHARE:
            parts.append(
                f"**Warning:** {_pct(r['fallback_share'])}% of `{r['mode']}`'s SFT data is the teacher's own CoT "
                f"(no refinement verified): that variant is close to `{REFERENCE_VARIANT}`.\n"
            )
    return parts


# -- SFT data quality ----------------------------------------------------------------------------


def quality_frame(cot_quality: pl.DataFrame) -> pl.DataFrame:
    """Per variant (canonical order): candidate rows, kept, dropped, drops per reason (a row with two
    reasons counts under both) and the median similarity to the teacher of the true rewrites
    (``source == 'refined'``: teacher fallbacks are copies by construction; null for teacher_sft)."""
    rows: list[dict[str, object]] = []
    for variant in _ordered(cot_quality["variant"].drop_nulls().unique().to_list(), VARIANTS):
        group = cot_quality.filter(pl.col("variant") == variant)
        kept = group["kept"].fill_null(False)
        dropped = group.filter(~kept) if "drop_reasons" in group.columns else None
        similarity = None
        if "teacher_similarity" in group.columns and "source" in group.columns:
            rewrites = group.filter(pl.col("source") == "refined")["teacher_similarity"].drop_nulls()
            similarity = float(rewrites.median()) if rewrites.len() else None
        rows.append({
            "variant": variant,
            "rows": group.height,
            "kept": int(kept.sum()),
            "dropped": group.height - int(kept.sum()),
            "dropped_by_reason": reason_counts(dropped) if dropped is not None else {},
            "teacher_similarity_p50": similarity,
        })
    return pl.DataFrame(rows, schema={
        "variant": pl.Utf8, "rows": pl.Int64, "kept": pl.Int64, "dropped": pl.Int64,
        "dropped_by_reason": pl.Object, "teacher_similarity_p50": pl.Float64,
    })


def common_problems_frame(cot_quality: pl.DataFrame | None, sft: pl.DataFrame | None) -> pl.DataFrame:
    """Per student whose trained variants ([sft] common_problems) all train on exactly the problems every variant
    in its ``cot_quality`` kept (``sft``: ``sft_dataset``'s student, variant, problem_id): the variants, the
    problems they share and those the rule dropped (kept by some variants only)."""
    schema = {"student": pl.Utf8, "variants": pl.Int64, "shared": pl.Int64, "dropped": pl.Int64, "own": pl.Object}
    if cot_quality is None or sft is None or "problem_id" not in cot_quality.columns or sft.is_empty():
        return pl.DataFrame(schema=schema)
    quality, sft = with_model_keys(cot_quality), with_model_keys(sft).filter(pl.col("variant") != BASE_VARIANT)
    rows = []
    for student in sorted(sft["student"].drop_nulls().unique().to_list()):
        trained = {v: set(g["problem_id"]) for (v,), g in sft.filter(pl.col("student") == student).group_by("variant")}
        own = {v: len(trained.pop(v)) for v in OWN_PROBLEMS_VARIANTS if v in trained}  # outside the rule
        mine = quality.filter(pl.col("student") == student)
        common = common_problems(mine, [v for v in mine["variant"].drop_nulls().unique().to_list()
                                        if v not in OWN_PROBLEMS_VARIANTS])
        if len(trained) > 1 and all(problems == common.problems for problems in trained.values()):
            rows.append({"student": student, "variants": len(trained), "shared": len(common.problems),
                         "dropped": len(common.dropped), "own": own})
    return pl.DataFrame(rows, schema=schema)


def _common_problems_line(cot_quality: pl.DataFrame | None, sft: pl.DataFrame | None) -> list[str]:
    frame = common_problems_frame(cot_quality, sft)
    if frame.is_empty():
        return []
    def own(counts: dict[str, int]) -> str:
        return "".join(f" (`{v}`: {n:,} problems the student solved, outside the rule)" for v, n in counts.items())

    counts = "; ".join(f"`{r['student']}`: {r['shared']:,} shared, {r['dropped']:,} dropped{own(r['own'])}"
                       for r in frame.iter_rows(named=True))
    return [f"Common problems (`[sft] common_problems`): each student's trained variants train on the same problems "
            f"(dropped: kept by some variants only); {counts}.\n"]


def _quality_section(cot_quality: pl.DataFrame | None, sft: pl.DataFrame | None = None) -> list[str]:
    if cot_quality is None or cot_quality.is_empty():
        return []
    frame = quality_frame(cot_quality)
    rows = []
    for r in frame.iter_rows(named=True):
        reasons = ", ".join(f"{name} {count}" for name, count in r["dropped_by_reason"].items()) or MISSING
        similarity = MISSING if r["teacher_similarity_p50"] is None else f"{r['teacher_similarity_p50']:.2f}"
        rows.append([f"`{r['variant']}`", str(r["rows"]), str(r["kept"]), str(r["dropped"]), reasons, similarity])
    return [
        "## SFT data quality per variant\n",
        "Candidate CoTs per variant, those the quality gate kept for SFT and those it dropped, by reason (a "
        "row can have several). Similarity to teacher: the median share of a refined CoT's word 4-grams "
        "found in the teacher CoT it rewrites (1.0 = a copy), over true rewrites only.\n",
        _md_table(["variant", "candidates", "kept", "dropped", "dropped by reason", "similarity to teacher (median)"],
                  rows),
        "",
        *_common_problems_line(cot_quality, sft),
    ]


# -- LLM usage and cost --------------------------------------------------------------------------

USAGE_STAGES: tuple[str, ...] = ("teacher_cots", "student_attempts", "refined_cots", "cot_quality",
                                 "benchmark_predictions", "unattributed")


def _sft_data_stages(mode: str | None) -> tuple[tuple[str, str | None], ...]:
    """The LLM stages behind SFT data from ``mode`` (None: the teacher's CoTs alone); the last is its own."""
    if mode is None:
        return (("teacher_cots", None),)
    attempts = (("student_attempts", None),) if MODE_BY_NAME[mode].shows_error else ()
    return (("teacher_cots", None), *attempts, ("refined_cots", mode))


# The LLM stages behind each trained variant's SFT data (refined_cots: its mode's calls only); a baseline makes no
# call of its own: the stage it is made from comes last.
SFT_DATA_STAGES: dict[str, tuple[tuple[str, str | None], ...]] = {
    variant: (_sft_data_stages(mode) if variant not in BASELINE_BY_VARIANT else
              (("student_attempts", None),) if BASELINE_BY_VARIANT[variant].own_problems else (("teacher_cots", None),))
    for variant, mode in VARIANT_MODE.items()
}
Prices = dict[str, tuple[float | None, float | None]]


def prices_of(config) -> Prices:
    """Per role, (USD per million prompt tokens, per million completion tokens) of an ``OrionConfig``."""
    return {role: (cfg.price_per_mtok_in, cfg.price_per_mtok_out)
            for role in ROLES if (cfg := getattr(config.endpoints, role)) is not None}


def _usd(prices: Prices | None, role: str, prompt: int, completion: int) -> float | None:
    price_in, price_out = (prices or {}).get(role, (None, None))
    if price_in is None and price_out is None:
        return None
    return (prompt * (price_in or 0.0) + completion * (price_out or 0.0)) / 1e6


def _usage_section(usage: pl.DataFrame | None, prices: Prices | None, made: set[str] | None = None) -> list[str]:
    """The LLM usage tables; per variant, only those in ``made`` (the variants with SFT data) when given."""
    if usage is None or usage.is_empty():
        return []
    usage = usage.with_columns(
        pl.struct("role", "prompt_tokens", "completion_tokens")
        .map_elements(lambda r: _usd(prices, r["role"], r["prompt_tokens"], r["completion_tokens"]),
                      return_dtype=pl.Float64).alias("cost_usd"))
    order = {s: i for i, s in enumerate(USAGE_STAGES)}
    usage = usage.sort(pl.col("stage").replace_strict(order, default=len(order), return_dtype=pl.Int64),
                       pl.col("detail"), "role", "model", nulls_last=True)

    def tokens(value: object) -> str:
        return MISSING if value is None else f"{int(value):,}"

    rows = [[f"`{r['stage']}`" + (f" `{r['detail']}`" if r["detail"] else ""), r["role"], f"`{r['model']}`",
             f"{r['calls']:,}", f"{r['errors']:,}", tokens(r["prompt_tokens"]), tokens(r["completion_tokens"]),
             tokens(r["reasoning_tokens"]), _money(r["cost_usd"])] for r in usage.iter_rows(named=True)]
    total_cost = usage["cost_usd"].drop_nulls()
    rows.append(["**total**", "", "", f"{int(usage['calls'].sum()):,}", f"{int(usage['errors'].sum()):,}",
                 tokens(usage["prompt_tokens"].sum()), tokens(usage["completion_tokens"].sum()),
                 tokens(usage["reasoning_tokens"].sum()) if usage["reasoning_tokens"].is_not_null().any() else MISSING,
                 _money(float(total_cost.sum())) if total_cost.len() else MISSING])
    variant_rows = []
    for variant, stages in SFT_DATA_STAGES.items():
        if made is not None and variant not in made:
            continue
        mine = usage.filter(pl.any_horizontal([
            (pl.col("stage") == stage) & (pl.col("detail") == detail if detail else pl.lit(True)) for stage, detail in stages
        ]))
        own_stage, own_detail = stages[-1]
        if mine.filter((pl.col("stage") == own_stage) & (pl.col("detail") == own_detail if own_detail else pl.lit(True))).is_empty():
            continue  # the variant's own stage did not run (a mode the profile skips)
        cost = mine["cost_usd"].drop_nulls()
        variant_rows.append([f"`{variant}`", f"{int(mine['calls'].sum()):,}", tokens(mine["prompt_tokens"].sum()),
                             tokens(mine["completion_tokens"].sum()), _money(float(cost.sum())) if cost.len() else MISSING])
    parts = [
        "## LLM calls, tokens and cost\n",
        "Every call in `orion.llm_calls` (each was sent once; re-runs answer from the cache), by the stage that "
        "made it and, for reflection and evaluation, the mode or variant. Reasoning tokens are part of the "
        "completion tokens. Cost: tokens times `[endpoints.<role>] price_per_mtok_in` / `price_per_mtok_out` of the "
        "profile the report was built with (— where none is set). Query: `orion sql sql/usage_cost.sql`.\n",
        _md_table(["stage", "role", "model", "calls", "errors", "prompt tokens", "completion tokens",
                   "reasoning tokens", "cost"], rows),
        "",
    ]
    if variant_rows:
        parts += [
            "What each variant's SFT data cost to generate: the teacher CoTs, the error exposure where the variant "
            "uses the student's errors, and its own reflection mode (a prompt `orion` and `no_error` share is counted "
            "under `no_error`; judge calls are left out).\n",
            _md_table(["SFT data of", "calls", "prompt tokens", "completion tokens", "cost"], variant_rows),
            "",
        ]
    return parts
