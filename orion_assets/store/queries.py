"""The SQL files shipped in ``orion_assets/sql/`` (``sql/`` at the repository root links there): each
file's text, the tables it reads and its output columns, and its rows on a store connection.

The files are the one copy of each query: ``orion sql`` and the plain ``duckdb`` client run them as
they are, and the statistics assets (:mod:`orion_assets.assets.statistics`) run them the same way. They
name no benchmark, variant or mode: those come from the rows or from the store's vocabulary views
(:mod:`orion_assets.store.vocabulary`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from orion_assets.store.base import SCHEMA
from orion_assets.store.vocabulary import VIEW_NAMES, provide_vocabulary, write_vocabulary

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"


@dataclass(frozen=True)
class Query:
    """One file of ``SQL_DIR``: its ``text``, the ``tables`` of schema ``orion`` it reads (the assets'
    tables), the ``vocabulary`` views it reads and the ``columns`` (name -> polars type) of its rows."""

    name: str
    path: Path
    text: str
    tables: frozenset[str]
    columns: dict[str, pl.DataType]
    vocabulary: frozenset[str] = frozenset()

    @property
    def summary(self) -> str:
        """What the file answers: its first comment line after ``-- <name>.sql:``."""
        first = self.text.splitlines()[0] if self.text else ""
        return first.split(":", 1)[1].strip() if ":" in first else first.lstrip("- ")

    @property
    def column_descriptions(self) -> dict[str, str]:
        """What each output column holds: the file's ``-- Columns:`` block (:func:`column_descriptions`)."""
        return column_descriptions(self.text)


def column_descriptions(text: str) -> dict[str, str]:
    """``{column: description}`` from the ``-- Columns:`` block of a file's header comment, which runs to
    the next empty comment line. An entry names one column or several (``a, b``), then its description
    after two spaces or on the lines below, indented deeper; several columns share theirs."""
    found: dict[str, str] = {}
    entries: list[tuple[list[str], list[str]]] = []
    lines = iter(text.splitlines())
    for line in lines:
        if line.strip() == "-- Columns:":
            break
    indent = None
    for line in lines:
        body = line[2:] if line.startswith("--") else None
        if body is None or not body.strip():
            break
        depth = len(body) - len(body.lstrip())
        indent = depth if indent is None else indent
        if depth > indent and entries:  # the description goes on
            entries[-1][1].append(body.strip())
            continue
        names, _, description = body.strip().partition("  ")
        entries.append(([n.strip() for n in names.split(",")], [description.strip()] if description.strip() else []))
    for names, words in entries:
        for name in names:
            found[name] = " ".join(words)
    return found


def load_queries(names: Sequence[str], tables: Mapping[str, pl.DataFrame]) -> dict[str, Query]:
    """``SQL_DIR/<name>.sql`` for each name, bound against empty ``tables`` (name -> a frame with the
    table's columns, no rows) and the vocabulary views, so that the tables each reads and its column types
    are known without a store. A query that does not bind against them is an error naming the file. One
    in-memory connection binds them all: the definitions load this in every step's process."""
    con = duckdb.connect()
    try:
        con.execute(f"CREATE SCHEMA {SCHEMA}")
        write_vocabulary(con)
        for table, frame in tables.items():
            con.register("_empty", frame.to_arrow())
            con.execute(f"CREATE TABLE {SCHEMA}.{table} AS SELECT * FROM _empty")
            con.unregister("_empty")
        return {name: _bind(con, name) for name in names}
    finally:
        con.close()


def _bind(con: duckdb.DuckDBPyConnection, name: str) -> Query:
    path = SQL_DIR / f"{name}.sql"
    text = path.read_text(encoding="utf-8")
    cursor = con.cursor()  # a file's USE or SET stays on its own cursor
    try:
        *setup, last = [s.query for s in duckdb.extract_statements(text)]
        for statement in setup:
            cursor.execute(statement)
        read = tables_read(cursor, last)
        columns = dict(cursor.sql(last).limit(0).pl().schema)
    except (duckdb.Error, ValueError) as exc:
        raise ValueError(f"{path}: the query does not run on the tables of schema {SCHEMA}: {exc}") from exc
    finally:
        cursor.close()
    return Query(name, path, text, frozenset(read - set(VIEW_NAMES)), columns, frozenset(read & set(VIEW_NAMES)))


def tables_read(con: duckdb.DuckDBPyConnection, query: str) -> set[str]:
    """The tables ``query`` names, from DuckDB's parse tree (``json_serialize_sql``) less the names of
    its CTEs. (``duckdb.get_table_names`` would do, but it fails on a ``JOIN ... USING`` of a CTE.)"""
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [query]).fetchone()[0])
    if tree.get("error"):
        raise ValueError(tree.get("error_message", "the query does not parse"))
    named: set[str] = set()
    ctes: set[str] = set()
    stack: list[object] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "BASE_TABLE" and "table_name" in node:
                named.add(node["table_name"])
            if isinstance(node.get("cte_map"), dict):
                ctes.update(entry["key"] for entry in node["cte_map"].get("map", []))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return named - ctes


def run_query(con: duckdb.DuckDBPyConnection, text: str) -> pl.DataFrame:
    """The rows of the last statement of ``text``, every statement run in order on ``con`` (a store's
    connection: the files start with ``USE orion;``), as ``orion sql`` runs them, with the vocabulary
    views the store lacks provided (:func:`~orion_assets.store.vocabulary.provide_vocabulary`)."""
    provide_vocabulary(con)
    frame = None
    for statement in duckdb.extract_statements(text):
        relation = con.sql(statement.query)
        if relation is not None:
            frame = relation.pl()
    if frame is None:
        raise ValueError("the SQL returns no rows: its last statement is no query")
    return frame
