"""The gate's verdicts as objects: one expectation's outcome, one variant's verdict, the whole result.

Each gives a one-line message and JSON-able Dagster metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ExpectationOutcome", "GateResult", "VariantVerdict"]

METADATA_ID_LIMIT = 50
MESSAGE_ID_LIMIT = 5


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
