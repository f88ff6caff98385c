"""The data-quality gate on candidate SFT CoTs, with Great Expectations 1.x.

One row per candidate CoT goes in (a polars frame); GX validates it in an ephemeral data
context against an expectation suite built from :class:`QualityConfig`, and the result comes
back as plain dataclasses that the blocking Dagster asset checks turn into metadata.

Expectations, one :class:`ExpectationOutcome` each (``name``):

* ``has_rows``: at least one row (an empty frame leaves nothing to train on);
* ``verified``: ``verified`` is True on every row;
* ``length_within_bounds``: ``min_tokens <= n_tokens <= max_tokens`` on every row;
* ``not_truncated``: ``truncated`` is False on every row;
* ``coherent``: ``coherence >= min_coherence`` on at least ``coherence_mostly`` of the rows
  that have a coherence (null = a one-step CoT, counted neither way);
* ``unique_within_variant``: no two rows share (``variant``, ``cot_hash``); GX reports every
  row of a duplicated group, the first copy included;
* ``not_contaminated``: ``contaminated`` is False on every row;
* ``no_repetition_loops``: ``repeated_4gram_ratio <= max_repeated_ngram_ratio`` on every row;
  only when the frame has that column.

A null in a boolean column counts against the row (``verified`` null = not verified,
``truncated``/``contaminated`` null = truncated/contaminated) and a null ``n_tokens`` is out of
bounds: missing evidence never passes the gate.

GX reports the failing rows itself (``result_format="COMPLETE"`` with
``unexpected_index_column_names=[id_column]``). An outcome lists the rows GX flagged even
when it succeeds (the tolerated low-coherence rows under ``mostly``); the gate's
``failing_ids`` are the rows flagged by the expectations that failed.

The GX context, pandas data source, asset and batch definition are made once per process and
reused (``Batch.validate`` with the suite: no suite or result is stored in the context, so a
long-lived process does not accumulate them); a lock serializes validations.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from orion_assets.profiles.schema import QualityConfig

__all__ = ["ExpectationOutcome", "GateResult", "REQUIRED_COLUMNS", "run_gate"]

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

# Expectation names in the order they run and are reported.
EXPECTATION_NAMES: tuple[str, ...] = (
    "has_rows",
    "verified",
    "length_within_bounds",
    "not_truncated",
    "coherent",
    "unique_within_variant",
    "not_contaminated",
    "no_repetition_loops",
)
_STATISTIC_KEYS = (
    "element_count",
    "unexpected_count",
    "unexpected_percent",
    "missing_count",
    "unexpected_percent_nonmissing",
    "observed_value",
)


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's verdict: GX's statistics and the ids of the rows GX flagged."""

    name: str
    success: bool
    statistics: dict[str, Any]
    failing_ids: list[str]
    expectation_type: str = ""
    description: str = ""


@dataclass(frozen=True)
class GateResult:
    passed: bool
    outcomes: list[ExpectationOutcome]
    row_count: int
    seconds: float = field(default=0.0, compare=False)

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
    def failed(self) -> list[str]:
        """Names of the failed expectations."""
        return [o.name for o in self.outcomes if not o.success]

    def to_metadata(self) -> dict[str, Any]:
        """JSON-able summary for Dagster metadata: per expectation its verdict, GX statistics
        and up to 50 flagged ids; overall the verdict, row count and up to 50 failing ids."""
        failing = self.failing_ids
        return {
            "passed": self.passed,
            "row_count": self.row_count,
            "failed_expectations": self.failed,
            "failing_id_count": len(failing),
            "failing_ids": failing[:METADATA_ID_LIMIT],
            "gate_seconds": round(self.seconds, 3),
            "expectations": {
                o.name: {
                    "success": o.success,
                    "expectation_type": o.expectation_type,
                    "description": o.description,
                    "statistics": o.statistics,
                    "flagged_count": len(o.failing_ids),
                    "flagged_ids": o.failing_ids[:METADATA_ID_LIMIT],
                }
                for o in self.outcomes
            },
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


def _suite(cfg: QualityConfig, with_repetition: bool) -> Any:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectations: list[tuple[str, Any]] = [
        ("has_rows", gxe.ExpectTableRowCountToBeBetween(
            min_value=1, description="at least one candidate CoT (nothing to train on otherwise)")),
        ("verified", gxe.ExpectColumnValuesToBeInSet(
            column="verified", value_set=[True], description="the CoT's final answer is verified")),
        ("length_within_bounds", gxe.ExpectColumnValuesToBeBetween(
            column="n_tokens", min_value=cfg.min_tokens, max_value=cfg.max_tokens,
            description=f"{cfg.min_tokens} <= n_tokens <= {cfg.max_tokens}")),
        ("not_truncated", gxe.ExpectColumnValuesToBeInSet(
            column="truncated", value_set=[False], description="generation was not cut at max_tokens")),
        ("coherent", gxe.ExpectColumnValuesToBeBetween(
            column="coherence", min_value=cfg.min_coherence, mostly=cfg.coherence_mostly,
            description=f"coherence >= {cfg.min_coherence} for at least {cfg.coherence_mostly:.0%} "
            "of the CoTs with two or more steps")),
        ("unique_within_variant", gxe.ExpectCompoundColumnsToBeUnique(
            column_list=["variant", "cot_hash"], description="no duplicate CoT within a variant")),
        ("not_contaminated", gxe.ExpectColumnValuesToBeInSet(
            column="contaminated", value_set=[False],
            description="no n-gram overlap with a benchmark problem")),
    ]
    if with_repetition:
        expectations.append(("no_repetition_loops", gxe.ExpectColumnValuesToBeBetween(
            column="repeated_4gram_ratio", min_value=0.0, max_value=cfg.max_repeated_ngram_ratio,
            description=f"repeated 4-gram ratio <= {cfg.max_repeated_ngram_ratio}")))
    suite = gx.ExpectationSuite(name="orion_cot_quality")
    for name, expectation in expectations:
        expectation.meta = {"orion_name": name}
        suite.add_expectation(expectation)
    return suite


# -- frame preparation ----------------------------------------------------------------------------


def _to_pandas(frame: pl.DataFrame, id_column: str, with_repetition: bool) -> Any:
    columns = [id_column, *REQUIRED_COLUMNS] + (["repeated_4gram_ratio"] if with_repetition else [])
    columns = list(dict.fromkeys(columns))
    prepared = frame.select(columns).with_columns(
        pl.col(id_column).cast(pl.Utf8),
        pl.col("variant").cast(pl.Utf8),
        pl.col("cot_hash").cast(pl.Utf8),
        pl.col("verified").cast(pl.Boolean).fill_null(False),
        pl.col("truncated").cast(pl.Boolean).fill_null(True),
        pl.col("contaminated").cast(pl.Boolean).fill_null(True),
        # A missing length is out of bounds; -1 is below any min_tokens (which is >= 0).
        pl.col("n_tokens").cast(pl.Int64).fill_null(-1),
        pl.col("coherence").cast(pl.Float64).fill_nan(None),
    )
    if with_repetition:
        prepared = prepared.with_columns(pl.col("repeated_4gram_ratio").cast(pl.Float64).fill_nan(None).fill_null(1.0))
    return prepared.to_pandas()


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


def run_gate(frame: pl.DataFrame, cfg: QualityConfig, id_column: str = "cot_quality_id") -> GateResult:
    """Validate the candidate CoTs in ``frame`` against the quality suite of ``cfg``.

    ``frame`` needs ``id_column`` and the columns in :data:`REQUIRED_COLUMNS`; a missing
    column is a ``ValueError`` naming it (a broken upstream, not bad data).
    """
    missing = [c for c in (id_column, *REQUIRED_COLUMNS) if c not in frame.columns]
    if missing:
        raise ValueError(f"quality gate: frame lacks column(s) {', '.join(missing)} (has: {', '.join(frame.columns)})")
    started = time.perf_counter()
    with_repetition = "repeated_4gram_ratio" in frame.columns
    data = _to_pandas(frame, id_column, with_repetition)
    result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": [id_column]}
    with _LOCK:
        batch_definition = _batch_definition()  # first: a suite needs an active context
        suite = _suite(cfg, with_repetition)
        batch = batch_definition.get_batch(batch_parameters={"dataframe": data})
        validation = batch.validate(suite, result_format=result_format)
    by_name = {o.name: o for o in (_outcome(r, id_column) for r in validation.results)}
    order = {name: i for i, name in enumerate(EXPECTATION_NAMES)}
    outcomes = sorted(by_name.values(), key=lambda o: order.get(o.name, len(order)))
    return GateResult(
        passed=bool(validation.success) and all(o.success for o in outcomes),
        outcomes=outcomes,
        row_count=frame.height,
        seconds=time.perf_counter() - started,
    )
