"""The vocabulary as views of schema ``orion``: ``vocabulary_benchmarks``, ``vocabulary_variants``,
``vocabulary_modes`` and ``vocabulary_grading_rules``, written from :mod:`orion_assets.vocabulary` whenever a
store is opened for writing, so that the ``sql/`` files take every name and order from them (or from the rows)
and name none themselves. Each is declared once (:data:`VOCABULARY_TABLES`), its columns described.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb

from orion_assets import vocabulary as v
from orion_assets.store.base import SCHEMA, sql_quote
from orion_assets.store.columns import StoreTable, col


@dataclass(frozen=True)
class Vocabulary:
    """The names the views hold; the defaults are :mod:`orion_assets.vocabulary`'s (a test adds its own)."""

    benchmarks: tuple[str, ...] = v.BENCHMARKS
    default_benchmarks: tuple[str, ...] = v.DEFAULT_BENCHMARKS
    variants: tuple[str, ...] = v.VARIANTS
    modes: tuple[v.Mode, ...] = v.MODE_TABLE
    baselines: tuple[str, ...] = v.BASELINES
    grading_rules: tuple[str, ...] = v.GRADING_RULES
    base_variant: str = v.BASE_VARIANT
    reference_variant: str = v.REFERENCE_VARIANT

    def kind(self, variant: str) -> str:
        """``untrained`` (the base student), ``reference`` (every delta is taken against it), ``mode``
        (trained on a mode's refinements), ``baseline`` or ``other``."""
        if variant == self.base_variant:
            return "untrained"
        if variant == self.reference_variant:
            return "reference"
        if variant in {m.variant for m in self.modes}:
            return "mode"
        return "baseline" if variant in self.baselines else "other"


VOCABULARY_BENCHMARKS = StoreTable("vocabulary_benchmarks", "a view: one row per benchmark of the vocabulary", {
    "benchmark": col("VARCHAR", "the benchmark's name (benchmark_scores.benchmark)"),
    "position": col("INTEGER", "its place in the vocabulary's order, from 1: the order the sql/ files show it in"),
    "is_default": col("BOOLEAN", "whether a profile evaluates it unless it names its own benchmarks"),
}, kind="view")
VOCABULARY_VARIANTS = StoreTable("vocabulary_variants", "a view: one row per model variant of the vocabulary", {
    "variant": col("VARCHAR", "the variant's name (benchmark_scores.variant, student_checkpoint.variant)"),
    "position": col("INTEGER", "its place in the vocabulary's order, from 1"),
    "kind": col("VARCHAR", "untrained (the base student), reference (every delta is taken against it), mode "
                           "(trained on a reflection mode's rewrites), baseline or other"),
    "mode": col("VARCHAR", "the reflection mode whose rewrites it trains on (NULL: none)"),
}, kind="view")
VOCABULARY_MODES = StoreTable("vocabulary_modes", "a view: one row per reflection mode of the vocabulary", {
    "mode": col("VARCHAR", "the mode's name (refined_cots.mode)"),
    "position": col("INTEGER", "its place in the vocabulary's order, from 1"),
    "variant": col("VARCHAR", "the variant trained on its rewrites"),
    "rewriter": col("VARCHAR", "the role that rewrites the teacher's CoT: student or teacher"),
    "shows_error": col("BOOLEAN", "whether the rewrite prompt shows the student's wrong attempt"),
}, kind="view")
VOCABULARY_GRADING_RULES = StoreTable("vocabulary_grading_rules", "a view: one row per grading rule of the vocabulary", {
    "grading_rule": col("VARCHAR", "the rule's name (benchmark_scores.grading_rule)"),
    "position": col("INTEGER", "its place in the vocabulary's order, from 1"),
}, kind="view")
VOCABULARY_TABLES: tuple[StoreTable, ...] = (VOCABULARY_BENCHMARKS, VOCABULARY_VARIANTS, VOCABULARY_MODES,
                                             VOCABULARY_GRADING_RULES)
VIEW_NAMES: tuple[str, ...] = tuple(table.name for table in VOCABULARY_TABLES)


@dataclass(frozen=True)
class View:
    """One vocabulary view: its declaration and rows."""

    table: StoreTable
    rows: Sequence[tuple] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def definition(self) -> str:
        columns = self.table.columns
        typed = ", ".join(f"CAST({c} AS {column.dtype}) AS {c}" for c, column in columns.items())
        if not self.rows:
            return f"SELECT {typed} FROM (SELECT {', '.join(f'NULL AS {c}' for c in columns)}) WHERE false"
        values = ", ".join("(" + ", ".join(_literal(x) for x in row) + ")" for row in self.rows)
        return f"SELECT {typed} FROM (VALUES {values}) AS vocabulary({', '.join(columns)})"

    @property
    def digest(self) -> str:
        """The view's comment: a hash of its definition, so that a store replaces it only when it changed."""
        return "vocabulary:" + hashlib.sha256(self.definition.encode()).hexdigest()[:16]


VOCABULARY = Vocabulary()  # what a store writes (a test may put its own here)


def views(vocabulary: Vocabulary | None = None) -> tuple[View, ...]:
    """The vocabulary views of ``vocabulary`` (default :data:`VOCABULARY`); positions start at 1."""
    vo = vocabulary or VOCABULARY
    mode_of = {m.variant: m.name for m in vo.modes}
    return (
        View(VOCABULARY_BENCHMARKS, [(b, i, b in vo.default_benchmarks) for i, b in enumerate(vo.benchmarks, 1)]),
        View(VOCABULARY_VARIANTS, [(name, i, vo.kind(name), mode_of.get(name)) for i, name in enumerate(vo.variants, 1)]),
        View(VOCABULARY_MODES, [(m.name, i, m.variant, m.rewriter, m.shows_error) for i, m in enumerate(vo.modes, 1)]),
        View(VOCABULARY_GRADING_RULES, [(r, i) for i, r in enumerate(vo.grading_rules, 1)]),
    )


def vocabulary_statements(con: duckdb.DuckDBPyConnection, vocabulary: Vocabulary | None = None) -> list[str]:
    """The statements that bring the vocabulary views of schema ``orion`` (current catalog) up to
    ``vocabulary``: none when every view is there with its digest (on DuckLake, two transactions that both
    replace a view conflict, and every process that opens a lake for writing comes here)."""
    current = dict(con.execute(
        "SELECT view_name, comment FROM duckdb_views() WHERE database_name = current_database() AND schema_name = ?",
        [SCHEMA]).fetchall())
    statements: list[str] = []
    for view in views(vocabulary):
        if current.get(view.name) != view.digest:
            statements += [f"CREATE OR REPLACE VIEW {SCHEMA}.{view.name} AS {view.definition}",
                           f"COMMENT ON VIEW {SCHEMA}.{view.name} IS '{view.digest}'"]
    return statements


def write_vocabulary(con: duckdb.DuckDBPyConnection, vocabulary: Vocabulary | None = None) -> int:
    """Create or refresh the vocabulary views in schema ``orion`` of the current catalog (default
    :data:`VOCABULARY`); returns how many statements ran (0: they were current)."""
    statements = vocabulary_statements(con, vocabulary)
    for statement in statements:
        con.execute(statement)
    return len(statements)


def provide_vocabulary(con: duckdb.DuckDBPyConnection) -> list[str]:
    """On a read connection: temporary views for the vocabulary views that schema ``orion`` lacks (a store
    last written before they existed, or a file made by hand), so that the ``sql/`` files run on it; a
    temporary view is found before the schema's. Returns the names provided."""
    present = {row[0] for row in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE database_name = current_database() AND schema_name = ?",
        [SCHEMA]).fetchall()}
    missing = [view for view in views() if view.name not in present]  # views of VOCABULARY
    for view in missing:
        con.execute(f"CREATE OR REPLACE TEMP VIEW {view.name} AS {view.definition}")
    return [view.name for view in missing]


def _literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return f"'{sql_quote(value)}'"
