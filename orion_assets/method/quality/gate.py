"""The data-quality gate on candidate SFT CoTs: per-row rules, then Great Expectations 1.x per variant.

Two layers, so that one bad row never blocks a large dataset while a poisoned batch still stops
training:

1. **Per-row rules** (plain polars, :func:`row_drop_reasons`; the one place they live). A row that
   breaks one is left out of the SFT data, with every reason it broke, in this order
   (:data:`DROP_REASONS`):

   * ``unverified``: ``verified`` is not True;
   * ``too_short`` / ``too_long``: ``n_tokens`` below ``min_tokens`` / above ``max_tokens``;
     ``length_unknown`` when ``n_tokens`` is null;
   * ``truncated``: the generation was cut at its token limit;
   * ``repetition_loop``: ``repeated_4gram_ratio > max_repeated_ngram_ratio`` (only when the frame
     has that column);
   * ``contaminated``: a 13-gram overlap with a benchmark problem;
   * ``incoherent``: ``coherence < min_coherence`` (null = a one-step CoT: no verdict);
   * ``duplicate``: another row of the same variant has the same ``cot_hash`` and comes first.
     Within each (variant, cot_hash) group, the first row by (breaks no other rule first, then
     ``id_column``) is the original, whatever order the rows arrive in: the kept copy is a clean
     one when there is one, and the smallest id among those.

   A null in a boolean column counts against the row (``verified`` null = unverified,
   ``truncated``/``contaminated`` null = truncated/contaminated), a null repetition ratio is a
   loop: missing evidence never keeps a row. ``drop_reasons`` (a list, empty = kept) and ``kept``
   are columns of ``cot_quality``, and ``sft_dataset`` takes only ``kept`` rows.

   Coherence is now a per-row drop. Before, the gate tolerated up to ``1 - coherence_mostly`` of
   the rows below ``min_coherence`` (GX ``mostly``) and trained on them, because failing the
   whole dataset for them was too costly; now that dropping a row is cheap, a CoT below
   ``min_coherence`` is dropped like any other bad row, and ``coherence_mostly`` bounds the
   share of incoherent candidates a variant may have (below).

2. **Dataset-level expectations, per variant** (GX, one validation per variant; the
   :class:`ExpectationOutcome` ``name`` in brackets):

   * ``drop_rate``: the share of the variant's candidate rows that are dropped is at most
     ``max_drop_rate`` (GX ``expect_column_mean_to_be_between`` on a 0/1 ``dropped`` column);
   * ``min_rows``: at least ``min_rows`` rows are kept (``expect_column_sum_to_be_between``);
   * ``kept_not_contaminated``: no kept row is contaminated (``expect_column_values_to_be_in_set``
     on ``kept & contaminated``): the guarantee that matters most, checked on what is trained on
     rather than trusted from the row rules;
   * ``coherent_mostly``: ``coherence >= min_coherence`` for at least ``coherence_mostly`` of the
     variant's candidate CoTs that have a coherence (``expect_column_values_to_be_between`` with
     ``mostly``). On the kept rows alone this could never fail (the row rule dropped every row
     under ``min_coherence``), so it is checked on all candidates: incoherent rows are dropped one
     by one, but a variant where more than ``1 - coherence_mostly`` of them are incoherent is a
     broken batch (a refinement mode producing word salad), not a few bad rows.

   A variant with no candidate row fails ``drop_rate`` (no rate) and ``min_rows``.

GX reports the failing rows itself where it can (``result_format="COMPLETE"`` with
``unexpected_index_column_names=[id_column]``); for ``drop_rate`` the flagged rows are the
dropped ones. The GX context, pandas data source, asset and batch definition are made once per
process and reused (``Batch.validate`` with the suite: nothing accumulates in the context); a
lock serializes validations.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from orion_assets.profiles.schema import QualityConfig

__all__ = [
    "DROP_REASONS",
    "ExpectationOutcome",
    "GateResult",
    "REQUIRED_COLUMNS",
    "VariantVerdict",
    "reason_counts",
    "row_drop_reasons",
    "run_gate",
    "verdict_rows",
]

REQUIRED_COLUMNS: tuple[str, ...] = (
    "variant",
    "cot_hash",
    "verified",
    "truncated",
    "n_tokens",
    "coherence",
    "contaminated",
)
OPTIONAL_COLUMNS: tuple[str, ...] = ("repeated_4gram_ratio",)
METADATA_ID_LIMIT = 50
MESSAGE_ID_LIMIT = 5

# Per-row drop reasons, in the order a row's list names them.
DROP_REASONS: tuple[str, ...] = (
    "unverified",
    "too_short",
    "too_long",
    "length_unknown",
    "truncated",
    "repetition_loop",
    "contaminated",
    "incoherent",
    "duplicate",
)
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


# -- per-row rules --------------------------------------------------------------------------------


def row_drop_reasons(frame: pl.DataFrame, cfg: QualityConfig, id_column: str = "cot_quality_id") -> pl.DataFrame:
    """``frame`` with ``drop_reasons`` (list of :data:`DROP_REASONS`, empty = kept) and ``kept``.

    Row order and every other column are unchanged; see the module docstring for the rules.
    """
    missing = [c for c in (id_column, *REQUIRED_COLUMNS) if c not in frame.columns]
    if missing:
        raise ValueError(f"quality rules: frame lacks column(s) {', '.join(missing)} (has: {', '.join(frame.columns)})")
    n_tokens = pl.col("n_tokens").cast(pl.Int64)
    coherence = pl.col("coherence").cast(pl.Float64).fill_nan(None)
    rules: list[tuple[str, pl.Expr]] = [
        ("unverified", ~pl.col("verified").cast(pl.Boolean).fill_null(False)),
        ("too_short", (n_tokens < cfg.min_tokens).fill_null(False)),
        ("too_long", (n_tokens > cfg.max_tokens).fill_null(False)),
        ("length_unknown", n_tokens.is_null()),
        ("truncated", pl.col("truncated").cast(pl.Boolean).fill_null(True)),
    ]
    if "repeated_4gram_ratio" in frame.columns:
        ratio = pl.col("repeated_4gram_ratio").cast(pl.Float64).fill_nan(None).fill_null(1.0)
        rules.append(("repetition_loop", ratio > cfg.max_repeated_ngram_ratio))
    rules += [
        ("contaminated", pl.col("contaminated").cast(pl.Boolean).fill_null(True)),
        ("incoherent", (coherence < cfg.min_coherence).fill_null(False)),
    ]
    reasons = pl.concat_list(
        [pl.when(rule).then(pl.lit(name)).otherwise(pl.lit(None, dtype=pl.Utf8)) for name, rule in rules]
    ).list.drop_nulls()
    marked = frame.with_columns(
        reasons.alias("_other_reasons"),
        pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"),
    )
    # The original of each (variant, cot_hash) group: clean rows first, then the smallest id.
    originals = (
        marked.select(
            "_row", "variant", "cot_hash", pl.col(id_column).cast(pl.Utf8).alias("_id"),
            (pl.col("_other_reasons").list.len() > 0).alias("_dirty"),
        )
        .sort(["variant", "cot_hash", "_dirty", "_id", "_row"], nulls_last=True)
        .with_columns((pl.int_range(pl.len()).over(["variant", "cot_hash"]) > 0).alias("_duplicate"))
        .select("_row", "_duplicate")
    )
    return (
        marked.join(originals, on="_row", how="left")
        .sort("_row")
        .with_columns(
            pl.when(pl.col("_duplicate"))
            .then(pl.col("_other_reasons").list.concat(pl.lit(["duplicate"], dtype=pl.List(pl.Utf8))))
            .otherwise(pl.col("_other_reasons"))
            .alias("drop_reasons")
        )
        .with_columns((pl.col("drop_reasons").list.len() == 0).alias("kept"))
        .drop("_other_reasons", "_row", "_duplicate")
    )


def reason_counts(frame: pl.DataFrame) -> dict[str, int]:
    """Dropped rows per reason (a row with two reasons counts under both), in :data:`DROP_REASONS` order."""
    if frame.height == 0:
        return {}
    exploded = frame.select(pl.col("drop_reasons").explode().drop_nulls())
    counts = dict(exploded.group_by("drop_reasons").len().iter_rows())
    order = {name: i for i, name in enumerate(DROP_REASONS)}
    return {name: int(counts[name]) for name in sorted(counts, key=lambda n: (order.get(n, len(order)), n))}


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's verdict: GX's statistics, the ids of the rows it flagged, and a line
    saying what was expected and what was seen."""

    name: str
    success: bool
    statistics: dict[str, Any]
    failing_ids: list[str]
    expectation_type: str = ""
    description: str = ""
    detail: str = ""


@dataclass(frozen=True)
class VariantVerdict:
    """The gate's verdict on one variant's candidate rows."""

    variant: str
    passed: bool
    outcomes: list[ExpectationOutcome]
    rows: int
    kept: int
    dropped_by_reason: dict[str, int]

    @property
    def dropped(self) -> int:
        return self.rows - self.kept

    @property
    def drop_rate(self) -> float | None:
        return self.dropped / self.rows if self.rows else None

    @property
    def failed(self) -> list[str]:
        """Names of the failed expectations."""
        return [o.name for o in self.outcomes if not o.success]

    @property
    def failing_ids(self) -> list[str]:
        """Ids of the rows behind the failed expectations, each once, in first-seen order."""
        seen: dict[str, None] = {}
        for outcome in self.outcomes:
            if not outcome.success:
                seen.update(dict.fromkeys(outcome.failing_ids))
        return list(seen)

    def outcome(self, name: str) -> ExpectationOutcome:
        for outcome in self.outcomes:
            if outcome.name == name:
                return outcome
        raise KeyError(f"no expectation named {name!r} (have: {', '.join(o.name for o in self.outcomes)})")

    @property
    def message(self) -> str:
        """One line: passed with its counts, or which expectations failed, with counts and a few ids."""
        counts = f"{self.kept} of {self.rows} rows kept"
        if self.passed:
            return f"variant {self.variant} passed ({counts})"
        failed = "; ".join(self.outcome(name).detail or name for name in self.failed)
        ids = self.failing_ids
        shown = ", ".join(ids[:MESSAGE_ID_LIMIT]) + (f" (+{len(ids) - MESSAGE_ID_LIMIT} more)" if len(ids) > MESSAGE_ID_LIMIT else "")
        return f"variant {self.variant} failed {', '.join(self.failed)} ({counts}): {failed}" + (
            f"; failing ids: {shown}" if ids else ""
        )

    def to_metadata(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "rows": self.rows,
            "kept": self.kept,
            "dropped": self.dropped,
            "drop_rate": None if self.drop_rate is None else round(self.drop_rate, 6),
            "dropped_by_reason": self.dropped_by_reason,
            "failed_expectations": self.failed,
            "failing_id_count": len(self.failing_ids),
            "failing_ids": self.failing_ids[:METADATA_ID_LIMIT],
            "message": self.message,
            "expectations": {
                o.name: {
                    "success": o.success,
                    "expectation_type": o.expectation_type,
                    "description": o.description,
                    "detail": o.detail,
                    "statistics": o.statistics,
                    "flagged_count": len(o.failing_ids),
                    "flagged_ids": o.failing_ids[:METADATA_ID_LIMIT],
                }
                for o in self.outcomes
            },
        }


@dataclass(frozen=True)
class GateResult:
    """Per-variant verdicts; ``passed`` when every variant passed."""

    passed: bool
    verdicts: list[VariantVerdict]
    row_count: int
    seconds: float = field(default=0.0, compare=False)

    def verdict(self, variant: str) -> VariantVerdict:
        for verdict in self.verdicts:
            if verdict.variant == variant:
                return verdict
        raise KeyError(f"no verdict for variant {variant!r} (have: {', '.join(v.variant for v in self.verdicts)})")

    @property
    def variants(self) -> list[str]:
        return [v.variant for v in self.verdicts]

    @property
    def failed_variants(self) -> list[str]:
        return [v.variant for v in self.verdicts if not v.passed]

    @property
    def failing_ids(self) -> list[str]:
        """Ids behind the failed expectations of the failed variants, each once."""
        seen: dict[str, None] = {}
        for verdict in self.verdicts:
            seen.update(dict.fromkeys(verdict.failing_ids))
        return list(seen)

    def to_metadata(self) -> dict[str, Any]:
        """JSON-able summary for Dagster metadata: overall verdict and counts, and per variant its
        verdict, drop counts by reason, message and expectations (each with up to 50 flagged ids)."""
        failing = self.failing_ids
        kept = sum(v.kept for v in self.verdicts)
        return {
            "passed": self.passed,
            "row_count": self.row_count,
            "kept": kept,
            "dropped": self.row_count - kept,
            "failed_variants": self.failed_variants,
            "failing_id_count": len(failing),
            "failing_ids": failing[:METADATA_ID_LIMIT],
            "gate_seconds": round(self.seconds, 3),
            "variants": {v.variant: v.to_metadata() for v in self.verdicts},
        }


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
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

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
    import great_expectations as gx
    import great_expectations.expectations as gxe

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
    """Gate each variant of the candidate CoTs in ``frame``.

    ``frame`` needs ``id_column`` and the columns in :data:`REQUIRED_COLUMNS` (a missing column is
    a ``ValueError`` naming it: a broken upstream, not bad data). When it has ``kept`` and
    ``drop_reasons`` (the stored ``cot_quality``) they are gated as they are, since they are what
    ``sft_dataset`` will take; otherwise :func:`row_drop_reasons` computes them. ``variants``
    are gated even when they have no row (and then fail); every other variant in the frame is
    gated too, after them.
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


def verdict_rows(result: GateResult, id_limit: int = 200) -> list[dict[str, Any]]:
    """One JSON-able row per variant for ``orion.quality_gate_results`` (ids capped at ``id_limit``)."""
    return [
        {
            "variant": v.variant,
            "passed": v.passed,
            "row_count": v.rows,
            "kept_count": v.kept,
            "dropped_count": v.dropped,
            "dropped_by_reason": json.dumps(v.dropped_by_reason),
            "failed_expectations": json.dumps(v.failed),
            "failing_ids": json.dumps(v.failing_ids[:id_limit]),
            "message": v.message,
        }
        for v in result.verdicts
    ]
