"""``orion sql`` (read-only SQL on the profile's store) and ``orion report`` (the leaderboard report)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import duckdb
import polars as pl

from orion_assets.cli.common import data_dir_of, open_store, profile_of
from orion_assets.method.evaluation.report import build_report, prices_of
from orion_assets.profiles import ProfileError
from orion_assets.store import store_in
from orion_assets.store.ducklake import StoreError
from orion_assets.store.vocabulary import provide_vocabulary

READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN"}
_IDENT = r'(?:[A-Za-z_][\w$]*|"[^"]+")'
# The statements that only choose the default schema: ``USE orion``, ``SET schema``/``search_path = '...'``.
_NAMESPACE = re.compile(
    rf"USE\s+{_IDENT}(?:\s*\.\s*{_IDENT})?|SET\s+(?:SESSION\s+)?(?:schema|search_path)\s*(?:=|TO)\s*'[^';]*'",
    re.IGNORECASE,
)


def check_read_only(sql: str) -> list[str]:
    """Split ``sql`` into statements and refuse any that is not a query.

    Choosing the default schema is let through, since the files in ``sql/`` start with ``USE orion;``
    (see ``sql/README.md``); every other ``SET`` is refused: some write files (``SET profiling_output``).
    """
    statements = duckdb.extract_statements(sql)
    if not statements:
        raise ValueError("no SQL statement given")
    for statement in statements:
        kind = statement.type.name
        if kind == "SET":
            bare = re.sub(r"--[^\n]*|/\*.*?\*/", " ", statement.query, flags=re.DOTALL).strip().rstrip(";").strip()
            if _NAMESPACE.fullmatch(bare):
                continue
        if kind not in READ_ONLY_STATEMENTS:
            raise PermissionError(f"orion sql is read-only: refusing a {kind} statement: {statement.query.strip()[:80]}")
    return [s.query for s in statements]


def _is_file(text: str) -> bool:
    """Whether ``orion sql``'s argument names a file (a long query is no file name: the OS refuses it)."""
    try:
        return Path(text).is_file()
    except OSError:
        return False


def sql(args: argparse.Namespace) -> int:
    text = args.query
    if text.endswith(".sql") or _is_file(text):
        path = Path(text)
        if not path.is_file():
            print(f"orion sql: no such file {path}", file=sys.stderr)
            return 2
        text = path.read_text(encoding="utf-8")
    try:
        statements = check_read_only(text)
    except (PermissionError, ValueError, duckdb.Error) as exc:
        print(f"orion sql: {exc}", file=sys.stderr)
        return 2
    try:
        store = open_store(args, "sql")
        with store.connect(read_only=True) as con:
            provide_vocabulary(con)  # a store written before the vocabulary views: the sql/ files need them
            for statement in statements:
                relation = con.sql(statement)
                if relation is None:
                    continue
                frame = relation.pl()
                if args.format == "csv":
                    sys.stdout.write(frame.write_csv())
                elif args.format == "json":
                    sys.stdout.write(frame.write_ndjson())
                else:
                    with pl.Config(tbl_rows=args.max_rows, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200):
                        print(frame)
    except (duckdb.Error, FileNotFoundError, StoreError) as exc:
        print(f"orion sql: {exc}", file=sys.stderr)
        return 1
    return 0


def report(args: argparse.Namespace) -> int:
    data_dir = data_dir_of(args)
    out_dir = Path(args.out).expanduser().resolve() if args.out else data_dir / "reports"
    try:  # the active profile's prices turn tokens into dollars, its [store] says where the tables are
        profile = profile_of(args)
    except ProfileError:
        profile = None
    prices = prices_of(profile.config) if profile is not None else None
    try:
        # a profile that does not load: the DuckDB file in the data folder
        store = open_store(args, "report", profile) if profile is not None else store_in(data_dir)
        result = build_report(store, out_dir, prices=prices)
    except (FileNotFoundError, ValueError, duckdb.Error, StoreError) as exc:
        print(f"orion report: {exc}", file=sys.stderr)
        return 1
    print(result.markdown_path)
    return 0
