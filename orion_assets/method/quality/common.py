"""[sft] ``common_problems``: the problems every trained variant of a student kept, so that the variants are
compared on the same problems (docs/quality.md, "Common problems").

Plain polars on one student's ``cot_quality`` rows (``variant``, ``problem_id``, ``kept``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import polars as pl

__all__ = ["COLUMNS", "NOT_COMMON", "CommonProblems", "common_problems"]

#: The ``cot_quality`` columns the rule reads.
COLUMNS: tuple[str, ...] = ("variant", "problem_id", "kept")

#: The drop reason of a kept row whose problem another trained variant did not keep.
NOT_COMMON = "not_common"


@dataclass(frozen=True)
class CommonProblems:
    """The problems every one of ``variants`` kept (``problems``), and the problems each of them kept."""

    variants: tuple[str, ...]
    problems: frozenset[str]
    kept: Mapping[str, frozenset[str]]

    @property
    def dropped(self) -> frozenset[str]:
        """The problems some variant kept but not every one: the rule leaves them out of all."""
        return frozenset().union(*self.kept.values()) - self.problems

    def dropped_of(self, variant: str) -> frozenset[str]:
        """The problems ``variant`` kept that the rule leaves out."""
        return self.kept.get(variant, frozenset()) - self.problems


def common_problems(rows: pl.DataFrame, variants: Iterable[str] | None = None) -> CommonProblems:
    """The problems that every variant kept (a ``kept`` row of it), over ``variants`` (default: every variant
    in ``rows``, kept or not). A variant with no kept row, or no row at all, leaves no problem in common."""
    missing = [c for c in COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"common problems: rows lack column(s) {', '.join(missing)} (has: {', '.join(rows.columns)})")
    names = tuple(sorted(set(rows["variant"].drop_nulls().to_list()) if variants is None else set(variants)))
    kept_rows = rows.filter(pl.col("kept").fill_null(False) & pl.col("variant").is_in(names))
    kept = {name: frozenset() for name in names} | {
        name: frozenset(ids) for name, ids in
        kept_rows.group_by("variant").agg(pl.col("problem_id").drop_nulls().unique()).iter_rows()
    }
    problems = frozenset.intersection(*kept.values()) if kept else frozenset()
    return CommonProblems(variants=names, problems=problems, kept=kept)
