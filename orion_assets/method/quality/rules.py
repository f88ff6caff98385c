"""The gate's per-row rules: why a candidate SFT CoT is left out (``drop_reasons``) and whether it is ``kept``.

Plain polars, the one place the rules live; they are listed in docs/quality.md.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import polars as pl

from orion_assets.profiles.schema import QualityConfig

__all__ = ["DROP_REASONS", "REQUIRED_COLUMNS", "reason_counts", "rewrite_context_phrase", "row_drop_reasons"]

REQUIRED_COLUMNS: tuple[str, ...] = (
    "variant",
    "cot_hash",
    "verified",
    "truncated",
    "n_tokens",
    "coherence",
    "contaminated",
)
OPTIONAL_COLUMNS: tuple[str, ...] = ("repeated_4gram_ratio", "cot")  # checked only when the frame has them

# Per-row drop reasons, in the order a row's list names them.
DROP_REASONS: tuple[str, ...] = (
    "unverified",
    "too_short",
    "too_long",
    "length_unknown",
    "truncated",
    "repetition_loop",
    "rewrite_context",
    "contaminated",
    "incoherent",
    "duplicate",
)


@functools.lru_cache(maxsize=8)
def _rewrite_context_regex(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile(r"\b(?:" + "|".join(f"(?:{p})" for p in patterns) + r")\b", re.IGNORECASE)


def rewrite_context_phrase(text: str | None, patterns: Sequence[str]) -> str | None:
    """The first phrase of ``text`` that refers to what only a rewrite prompt showed (one of
    ``patterns``, ``[quality] rewrite_context_patterns``), or None. Curly apostrophes count as straight."""
    regex = _rewrite_context_regex(tuple(patterns))
    if regex is None or not text:
        return None
    match = regex.search(text.replace("\u2019", "'"))
    return match.group(0) if match else None


def row_drop_reasons(frame: pl.DataFrame, cfg: QualityConfig, id_column: str = "cot_quality_id") -> pl.DataFrame:
    """``frame`` with ``drop_reasons`` (list of :data:`DROP_REASONS`, empty = kept) and ``kept``.

    Row order and every other column are unchanged; the rules are in docs/quality.md.
    """
    missing = [c for c in (id_column, *REQUIRED_COLUMNS) if c not in frame.columns]
    if missing:
        raise ValueError(f"quality rules: frame lacks column(s) {', '.join(missing)} (has: {', '.join(frame.columns)})")
    n_tokens = pl.col("n_tokens").cast(pl.Int64)
    coherence = pl.col("coherence").cast(pl.Float64).fill_nan(None)
    rules: list[tuple[str, pl.Expr | pl.Series]] = [
        ("unverified", ~pl.col("verified").cast(pl.Boolean).fill_null(False)),
        ("too_short", (n_tokens < cfg.min_tokens).fill_null(False)),
        ("too_long", (n_tokens > cfg.max_tokens).fill_null(False)),
        ("length_unknown", n_tokens.is_null()),
        ("truncated", pl.col("truncated").cast(pl.Boolean).fill_null(True)),
    ]
    if "repeated_4gram_ratio" in frame.columns:
        ratio = pl.col("repeated_4gram_ratio").cast(pl.Float64).fill_nan(None).fill_null(1.0)
        rules.append(("repetition_loop", ratio > cfg.max_repeated_ngram_ratio))
    patterns = cfg.rewrite_context_patterns
    if "cot" in frame.columns and patterns:  # an empty list turns the rule off
        leaks = [text is None or rewrite_context_phrase(text, patterns) is not None for text in frame["cot"].to_list()]
        rules.append(("rewrite_context", pl.Series(leaks, dtype=pl.Boolean)))
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
