"""The quality gate on candidate SFT CoTs: the per-row rules, then a Great Expectations 1.x suite per variant.

One bad row never blocks a large dataset (:mod:`.rules` drops it) while a poisoned batch still stops
training (the suite fails its variant). The rules and the expectations are specified in docs/quality.md.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import polars as pl

from orion_assets.method.quality.results import ExpectationOutcome, GateResult, VariantVerdict
from orion_assets.method.quality.rules import REQUIRED_COLUMNS, reason_counts, row_drop_reasons
from orion_assets.profiles.schema import QualityConfig

__all__ = ["EXPECTATION_NAMES", "run_gate"]

# Dataset-level expectation names, in the order they run and are reported.
EXPECTATION_NAMES: tuple[str, ...] = ("drop_rate", "min_rows", "kept_not_contaminated", "coherent_mostly")
_STATISTIC_KEYS = (
    "element_count",
    "unexpected_count",
    "unexpected_percent",
    "missing_count",
    "unexpected_percent_nonmissing",
    "observed_value",
)


# -- the GX context, once per process -------------------------------------------------------------

_LOCK = threading.Lock()
_BATCH_DEFINITION: Any = None


def _quiet_gx_logging() -> None:
    for name in ("great_expectations", "great_expectations.core", "great_expectations.datasource"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _batch_definition() -> Any:
    """The whole-dataframe batch definition of a pandas asset in a process-wide ephemeral context."""
    global _BATCH_DEFINITION
    if _BATCH_DEFINITION is None:
        import great_expectations as gx  # deferred: heavy
        from great_expectations.data_context.types.base import ProgressBarsConfig  # deferred: heavy

        _quiet_gx_logging()
        context = gx.get_context(mode="ephemeral")
        context.enable_analytics(False)
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        source = context.data_sources.add_pandas(name="orion_quality")
        asset = source.add_dataframe_asset(name="candidate_cots")
        _BATCH_DEFINITION = asset.add_batch_definition_whole_dataframe("all_rows")
    return _BATCH_DEFINITION


# -- the suite ------------------------------------------------------------------------------------


def _suite(cfg: QualityConfig) -> Any:
    import great_expectations as gx  # deferred: heavy
    import great_expectations.expectations as gxe  # deferred: heavy

    expectations: list[tuple[str, Any]] = [
        ("drop_rate", gxe.ExpectColumnMeanToBeBetween(
            column="dropped", max_value=cfg.max_drop_rate,
            description=f"at most {cfg.max_drop_rate:.0%} of the variant's candidate CoTs dropped")),
        ("min_rows", gxe.ExpectColumnSumToBeBetween(
            column="kept_n", min_value=cfg.min_rows, description=f"at least {cfg.min_rows} kept CoT(s)")),
        ("kept_not_contaminated", gxe.ExpectColumnValuesToBeInSet(
            column="kept_contaminated", value_set=[False],
            description="no kept CoT overlaps a benchmark problem")),
        ("coherent_mostly", gxe.ExpectColumnValuesToBeBetween(
            column="coherence", min_value=cfg.min_coherence, mostly=cfg.coherence_mostly,
            description=f"coherence >= {cfg.min_coherence} for at least {cfg.coherence_mostly:.0%} "
            "of the candidate CoTs with two or more steps")),
    ]
    suite = gx.ExpectationSuite(name="orion_variant_quality")
    for name, expectation in expectations:
        expectation.meta = {"orion_name": name}
        suite.add_expectation(expectation)
    return suite


# -- frame preparation ----------------------------------------------------------------------------


def _to_pandas(frame: pl.DataFrame, id_column: str) -> Any:
    kept = pl.col("kept").cast(pl.Boolean).fill_null(False)
    return frame.select(
        pl.col(id_column).cast(pl.Utf8),
        (~kept).cast(pl.Float64).alias("dropped"),
        kept.cast(pl.Int64).alias("kept_n"),
        (kept & pl.col("contaminated").cast(pl.Boolean).fill_null(True)).alias("kept_contaminated"),
        pl.col("coherence").cast(pl.Float64).fill_nan(None),
    ).to_pandas()


def _json_value(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()  # numpy scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _outcome(result: Any, id_column: str) -> ExpectationOutcome:
    config = result.expectation_config
    meta = dict(config.meta or {})
    details = dict(result.result or {})
    statistics = {key: _json_value(details[key]) for key in _STATISTIC_KEYS if key in details}
    ids: list[str] = []
    for row in details.get("unexpected_index_list") or []:
        value = row.get(id_column) if isinstance(row, dict) else row
        if value is not None:
            ids.append(str(value))
    exception = result.exception_info or {}
    if exception.get("raised_exception"):
        statistics["exception"] = str(exception.get("exception_message"))
    return ExpectationOutcome(
        name=str(meta.get("orion_name", config.type)),
        success=bool(result.success),
        statistics=statistics,
        failing_ids=list(dict.fromkeys(ids)),
        expectation_type=str(config.type),
        description=str(getattr(config, "description", None) or ""),
    )


def _detail(outcome: ExpectationOutcome, rows: pl.DataFrame, cfg: QualityConfig, by_reason: dict[str, int]) -> str:
    """What a failed expectation expected and what it saw, with counts."""
    kept = int(rows["kept"].cast(pl.Boolean).fill_null(False).sum()) if rows.height else 0
    if outcome.name == "drop_rate":
        if rows.height == 0:
            return "drop_rate: the variant has no candidate rows"
        dropped = rows.height - kept
        reasons = ", ".join(f"{name} {count}" for name, count in by_reason.items())
        return (f"drop_rate: {dropped} of {rows.height} rows dropped ({dropped / rows.height:.1%} > max_drop_rate "
                f"{cfg.max_drop_rate:.0%}; by reason: {reasons})")
    if outcome.name == "min_rows":
        return f"min_rows: {kept} row(s) kept < min_rows {cfg.min_rows}"
    if outcome.name == "kept_not_contaminated":
        return f"kept_not_contaminated: {len(outcome.failing_ids)} kept row(s) are contaminated"
    if outcome.name == "coherent_mostly":
        scored = int(rows["coherence"].cast(pl.Float64).fill_nan(None).is_not_null().sum())
        low = len(outcome.failing_ids)
        return (f"coherent_mostly: {low} of {scored} CoTs below min_coherence {cfg.min_coherence} "
                f"({low / max(scored, 1):.1%} > the {1 - cfg.coherence_mostly:.0%} coherence_mostly allows)")
    return outcome.name


def _gate_variant(rows: pl.DataFrame, variant: str, cfg: QualityConfig, id_column: str) -> VariantVerdict:
    data = _to_pandas(rows, id_column)
    result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": [id_column]}
    with _LOCK:
        batch_definition = _batch_definition()  # first: a suite needs an active context
        suite = _suite(cfg)
        batch = batch_definition.get_batch(batch_parameters={"dataframe": data})
        validation = batch.validate(suite, result_format=result_format)
    by_name = {o.name: o for o in (_outcome(r, id_column) for r in validation.results)}
    kept_mask = rows["kept"].cast(pl.Boolean).fill_null(False)
    dropped_ids = rows.filter(~kept_mask)[id_column].cast(pl.Utf8).to_list()
    by_reason = reason_counts(rows.filter(~kept_mask))
    outcomes = []
    for name in EXPECTATION_NAMES:
        outcome = by_name[name]
        if name == "drop_rate":  # GX's mean expectation names no rows: the dropped ones are behind it
            outcome = dataclasses.replace(outcome, failing_ids=dropped_ids)
        if not outcome.success:
            outcome = dataclasses.replace(outcome, detail=_detail(outcome, rows, cfg, by_reason))
        outcomes.append(outcome)
    return VariantVerdict(
        variant=variant,
        passed=bool(validation.success) and all(o.success for o in outcomes),
        outcomes=outcomes,
        rows=rows.height,
        kept=int(kept_mask.sum()),
        dropped_by_reason=by_reason,
    )


def run_gate(
    frame: pl.DataFrame,
    cfg: QualityConfig,
    id_column: str = "cot_quality_id",
    variants: Sequence[str] | None = None,
) -> GateResult:
    """Gate each variant of the candidate CoTs in ``frame``: ``variants`` first, even without rows (then they fail),
    then every other variant in the frame. A missing required column is a ``ValueError`` (a broken upstream);
    existing ``kept``/``drop_reasons`` are gated as they are, else :func:`row_drop_reasons` computes them.
    """
    missing = [c for c in (id_column, *REQUIRED_COLUMNS) if c not in frame.columns]
    if missing:
        raise ValueError(f"quality gate: frame lacks column(s) {', '.join(missing)} (has: {', '.join(frame.columns)})")
    started = time.perf_counter()
    if "kept" not in frame.columns or "drop_reasons" not in frame.columns:
        frame = row_drop_reasons(frame, cfg, id_column)
    present = sorted(v for v in frame["variant"].cast(pl.Utf8).unique().to_list() if v is not None)
    names = list(dict.fromkeys([*(variants or ()), *present]))
    verdicts = [_gate_variant(frame.filter(pl.col("variant") == name), name, cfg, id_column) for name in names]
    return GateResult(
        passed=bool(verdicts) and all(v.passed for v in verdicts),
        verdicts=verdicts,
        row_count=frame.height,
        seconds=time.perf_counter() - started,
    )
