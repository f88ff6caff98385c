"""A table's columns declared once: each column's type beside a short description of what it holds.

An asset's table declares them in its :class:`~orion_assets.io.tables.TableSpec` (``col(pl.Utf8, "...")``),
which shows them in the Dagster UI; the store's own tables (the call cache, the materialization log, the
lineage, the quality gate's verdicts) declare them as a :class:`StoreTable`, whose DDL is made from them.
``docs/tables.md`` lists them all (``python -m orion_devtools.tables_doc`` writes it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Column", "StoreTable", "col", "described", "dtypes"]


@dataclass(frozen=True)
class Column:
    """One column: its ``dtype`` (a polars type, or a SQL type for a table made by DDL) and what it holds."""

    dtype: Any
    description: str

    def __post_init__(self) -> None:
        if not self.description.strip():
            raise ValueError(f"a column of type {self.dtype} needs a description")


def col(dtype: Any, description: str) -> Column:
    """A column of ``dtype``, described (an empty description is an error)."""
    return Column(dtype, description)


def dtypes(columns: Mapping[str, Column]) -> dict[str, Any]:
    """``{name: dtype}`` of described columns, the mapping polars and the store read."""
    return {name: column.dtype for name, column in columns.items()}


def described(types: Mapping[str, Any], descriptions: Mapping[str, str], *, table: str) -> dict[str, Column]:
    """``types`` (a schema declared elsewhere, name -> type) with a description for each column: a column
    without one, or a description of no column, is an error naming ``table``."""
    missing = [c for c in types if c not in descriptions]
    extra = [c for c in descriptions if c not in types]
    if missing or extra:
        raise ValueError(f"table {table}: columns {missing} have no description; descriptions {extra} name no column")
    return {name: Column(dtype, descriptions[name]) for name, dtype in types.items()}


@dataclass(frozen=True)
class StoreTable:
    """One of the store's own tables (or views), which no asset makes: its name in schema ``orion``, what
    a row is, its columns (their SQL types, or polars types for a table created from a frame) and what
    writes it."""

    name: str
    summary: str
    columns: Mapping[str, Column]
    kind: str = "table"

    def ddl(self, schema: str) -> str:
        """``CREATE TABLE IF NOT EXISTS <schema>.<name> (...)`` of the columns, for a table of SQL types."""
        body = ",\n".join(f"    {name} {column.dtype}" for name, column in self.columns.items())
        return f"\nCREATE TABLE IF NOT EXISTS {schema}.{self.name} (\n{body}\n)"
