"""What an asset's table is (:class:`TableSpec`), what an asset returns (:class:`Rows`), and what it
is handed for each upstream table (:class:`Table`).

A spec is the one declaration of a table: its columns, its row id, which columns point at rows of
which parent tables (the lineage edges) and which columns a partition fixes (what a
re-materialization replaces). :func:`orion_asset` turns it into the Dagster asset; the I/O manager
(:mod:`orion_assets.io.io_manager`) reads and writes by it.

A :class:`Table` is lazy: it holds no rows and no connection. Each read opens the store for that
read only, so an asset can generate for an hour while other processes write, and reads in chunks
so its memory does not grow with the table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dagster as dg
import polars as pl

from orion_assets.io.blueprint import Blueprint, blueprint
from orion_assets.store.columns import Column, col, described, dtypes

if TYPE_CHECKING:
    from orion_assets.store import Store, Upstream

IO_MANAGER_KEY = "orion_io"
SPEC_METADATA_KEY = "orion/table"
COLUMN_SCHEMA_KEY = "dagster/column_schema"

__all__ = [
    "COLUMN_SCHEMA_KEY", "IO_MANAGER_KEY", "SPEC_METADATA_KEY", "Column", "Rows", "Table", "TableSpec", "col", "described",
    "dtypes", "lineage_links", "links_of", "orion_asset",
]


@dataclass(frozen=True)
class TableSpec:
    """One table: ``columns`` in order, the row ``id`` column (None for a summary table, whose rows no
    other table points at), ``parents`` (column -> parent table, a column may hold one id or a list of
    ids), and ``partition_by`` (the columns whose values a partition key fixes, in the partition
    dimensions' order).

    Each column is declared with what it holds beside its type, ``{"problem_id": col(pl.Utf8, "...")}``
    (:func:`col`), or given one in ``descriptions``; the spec keeps ``columns`` as name -> type and the
    descriptions apart (``descriptions``), shown in the Dagster UI (:meth:`column_schema`) and in
    ``docs/tables.md``. A bare type is accepted (a test's toy table), and a test holds every asset's
    table to describe every column (``orion_assets_tests/unit/test_column_descriptions.py``)."""

    name: str
    columns: Mapping[str, pl.DataType]
    id: str | None
    parents: Mapping[str, str] = field(default_factory=dict)
    partition_by: tuple[str, ...] = ()
    descriptions: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        declared = dict(self.columns)
        object.__setattr__(self, "columns", {c: v.dtype if isinstance(v, Column) else v for c, v in declared.items()})
        object.__setattr__(self, "descriptions", {
            **{c: v.description for c, v in declared.items() if isinstance(v, Column)}, **self.descriptions})
        keys = (*([self.id] if self.id is not None else []), *self.parents, *self.partition_by, *self.descriptions)
        missing = [c for c in keys if c not in self.columns]
        if missing:
            raise ValueError(f"table spec {self.name}: columns {missing} are not among its columns")
        if self.parents and self.id is None:
            raise ValueError(f"table spec {self.name}: a table with parent columns needs an id column (lineage edges)")

    def conform(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` with exactly the spec's columns, in order and cast to their types; a missing or
        extra column is an error that names the table and the columns."""
        missing = [c for c in self.columns if c not in frame.columns]
        extra = [c for c in frame.columns if c not in self.columns]
        if missing or extra:
            raise ValueError(f"rows for table {self.name}: missing columns {missing}, unexpected columns {extra}")
        return frame.select([pl.col(c).cast(t) for c, t in self.columns.items()])

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema=dict(self.columns))

    def to_metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id,
            "parents": dict(self.parents),
            "partition_by": list(self.partition_by),
            "columns": {c: str(t) for c, t in self.columns.items()},
        }

    @property
    def undescribed(self) -> list[str]:
        """The columns without a description."""
        return [c for c in self.columns if not self.descriptions.get(c, "").strip()]

    def column_schema(self) -> dg.TableSchema:
        """The columns as the Dagster UI shows them (``dagster/column_schema``): name, type, description."""
        return dg.TableSchema(columns=[dg.TableColumn(c, str(t), description=self.descriptions.get(c))
                                       for c, t in self.columns.items()])


def links_of(spec: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(child table, child id column, parent-id column, parent table) for each parent column of a
    spec as stored in asset metadata (:meth:`TableSpec.to_metadata`)."""
    return [(spec["name"], spec["id"], column, parent) for column, parent in spec["parents"].items()]


def lineage_links(assets: Iterable[dg.AssetsDefinition]) -> list[tuple[str, str, str, str]]:
    """The lineage edges the specs of ``assets`` declare (from their metadata, as the store gets them)."""
    links: list[tuple[str, str, str, str]] = []
    for asset in assets:
        for key in asset.keys:
            spec = asset.specs_by_key[key].metadata.get(SPEC_METADATA_KEY)
            if spec:
                links += links_of(spec)
    return links


def orion_asset(spec: TableSpec, **asset_kwargs: Any) -> Callable[[Callable[..., Any]], Blueprint]:
    """``@dg.asset`` for an asset whose rows are ``spec``'s table: its inputs are its parameters
    (upstream tables, loaded as :class:`Table` by the I/O manager), its output is :class:`Rows`. What depends
    on the profile is named, not given (``partitions``, ``ins``, ``op_tags``: :func:`blueprint`)."""
    kinds = {"duckdb", *asset_kwargs.pop("kinds", ())}
    metadata = {
        SPEC_METADATA_KEY: spec.to_metadata(),
        "dagster/table_name": f"orion.{spec.name}",
        COLUMN_SCHEMA_KEY: spec.column_schema(),
        **asset_kwargs.pop("metadata", {}),
    }
    return blueprint(dg.asset, name=spec.name, io_manager_key=IO_MANAGER_KEY, kinds=kinds, metadata=metadata,
                     **asset_kwargs)


@dataclass
class Rows:
    """What an asset returns: its rows as one frame or as an iterable of chunks (written as they
    come, so a generator keeps memory bounded), and metadata for Dagster. ``metadata`` may be a
    callable, called after the last chunk, for numbers gathered while the chunks were made.
    ``fail_after_write`` fails the step after its rows are committed (e.g. too many failed calls:
    the rows say what went wrong, and a re-run resends only those)."""

    chunks: pl.DataFrame | Iterable[pl.DataFrame]
    metadata: Mapping[str, Any] | Callable[[], Mapping[str, Any]] = field(default_factory=dict)
    # Raised once the rows are written: a step that must fail without losing what it computed.
    fail_after_write: Exception | None = None

    def iter_chunks(self) -> Iterator[pl.DataFrame]:
        if isinstance(self.chunks, pl.DataFrame):
            yield self.chunks
        else:
            yield from self.chunks

    def final_metadata(self) -> Mapping[str, Any]:
        return self.metadata() if callable(self.metadata) else self.metadata


@dataclass(frozen=True)
class Table:
    """A lazy handle on (a filtered part of) a store table; every method reads on call."""

    store: Store
    name: str
    where: Mapping[str, object] = field(default_factory=dict)
    upstream: tuple[Upstream, ...] = ()

    def filter(self, **where: object) -> Table:
        return Table(self.store, self.name, {**self.where, **where}, self.upstream)

    def frame(self, columns: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> pl.DataFrame:
        """All (filtered) rows; for tables known to be small (a model row, one benchmark), or
        for a few narrow columns of a big one."""
        return self.store.select(self.name, columns=columns, exclude=exclude, where=self.where)

    def count(self) -> int:
        return self.store.count(self.name, where=self.where)

    def first(self) -> dict[str, Any]:
        frame = self.frame()
        if frame.height == 0:
            raise LookupError(f"table {self.name} has no rows{_describe(self.where)}: materialize it first")
        return frame.row(0, named=True)

    def keys(self, column: str) -> list[Any]:
        """The distinct values of ``column``, sorted (ids only, never text)."""
        return self.store.distinct(self.name, column, where=self.where)

    def rows_for(self, column: str, values: Sequence[Any], columns: Sequence[str] | None = None) -> pl.DataFrame:
        """The rows whose ``column`` is one of ``values``, ordered by it."""
        return self.store.select(self.name, columns=columns, where=self.where, key=(column, values))

    def chunks(self, column: str, size: int, columns: Sequence[str] | None = None) -> Iterator[pl.DataFrame]:
        """The rows in groups of at most ``size`` distinct ``column`` values (a chunk of problems
        holds all their rows), in ``column`` order."""
        keys = self.keys(column)
        for start in range(0, max(len(keys), 1), size):  # an empty table still gives one (empty) chunk
            yield self.rows_for(column, keys[start : start + size], columns)

    def column_map(self, key: str, value: str, keys: Sequence[Any]) -> dict[Any, Any]:
        """``{key: value}`` for the rows whose ``key`` is in ``keys``."""
        return dict(self.rows_for(key, keys, [key, value]).iter_rows())

    def __repr__(self) -> str:
        return f"Table({self.name!r}{_describe(self.where)})"


def _describe(where: Mapping[str, object]) -> str:
    return "".join(f", {k}={v!r}" for k, v in where.items())
