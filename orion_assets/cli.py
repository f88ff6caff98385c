"""The ``orion`` command: run the whole graph, query the DuckDB file."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb

from orion_assets.profiles.schema import BENCHMARKS

BENCHMARK_NAMES = frozenset(BENCHMARKS)
READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN"}


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or os.environ.get("ORION_DATA_DIR", "data")).expanduser().resolve()


# -- orion run -----------------------------------------------------------------------------------


def _instance():
    import dagster as dg

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path("dagster_home").resolve())))
    home.mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.get()


def _partition_keys(partitions_def, benchmarks: set[str], skipped_variants: set[str] = frozenset()) -> list[str | None]:
    """Every partition key, leaving out benchmarks that the profile does not evaluate and
    variants it cannot train honestly."""
    if partitions_def is None:
        return [None]
    keys = []
    for key in partitions_def.get_partition_keys():
        values = set(getattr(key, "keys_by_dimension", {"_": key}).values())
        if any(v in BENCHMARK_NAMES and v not in benchmarks for v in values):
            continue
        if values & skipped_variants:
            continue
        keys.append(key)
    return keys


def run(args: argparse.Namespace) -> int:
    if args.profile:
        os.environ["ORION_PROFILE"] = args.profile
    if args.data_dir:
        os.environ["ORION_DATA_DIR"] = str(_data_dir(args))
    import dagster as dg
    from transformers.utils import logging as hf_logging

    from orion_assets.definitions import defs
    from orion_assets.profiles import load_profile
    from orion_assets.reflection import skipped_variants

    hf_logging.disable_progress_bar()

    profile = load_profile()
    instance = _instance()
    graph = defs.resolve_asset_graph()
    keys = [k for k in graph.toposorted_asset_keys if graph.get(k).is_materializable]
    if args.select:
        wanted = set(args.select)
        unknown = wanted - {k.to_user_string() for k in keys}
        if unknown:
            print(f"orion run: unknown asset(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        keys = [k for k in keys if k.to_user_string() in wanted]
    skipped = skipped_variants(profile.config)
    steps = [
        (key, pk)
        for key in keys
        for pk in _partition_keys(graph.get(key).partitions_def, set(profile.config.data.benchmarks), set(skipped))
    ]
    print(
        f"orion run: profile {profile.name} ({profile.hash}), data {_data_dir(args)}, "
        f"DAGSTER_HOME {os.environ['DAGSTER_HOME']}: {len(steps)} materializations",
        flush=True,
    )
    for variant, why in skipped.items():
        print(f"orion run: leaving out variant {variant}: {why}", flush=True)
    assets = [*(defs.assets or []), *(defs.asset_checks or [])]
    started = time.monotonic()
    for number, (key, pk) in enumerate(steps, start=1):
        label = key.to_user_string() + (f"[{pk}]" if pk is not None else "")
        print(f"[{number}/{len(steps)}] {label} ...", end=" ", flush=True)
        t0 = time.monotonic()
        result = dg.materialize(
            assets,
            selection=[key],
            partition_key=str(pk) if pk is not None else None,
            instance=instance,
            resources=defs.resources,
            raise_on_error=False,
            tags={"orion/launched_by": "orion run"},
            # The progress line is the console output; the full event log is in the instance.
            run_config={"loggers": {"console": {"config": {"log_level": args.log_level}}}},
        )
        elapsed = time.monotonic() - t0
        if not result.success:
            print(f"FAILED after {elapsed:.1f}s (run {result.run_id})", flush=True)
            for event in result.all_events:
                if event.is_step_failure and event.step_failure_data.error is not None:
                    print(event.step_failure_data.error.to_string(), file=sys.stderr)
            return 1
        rows = [
            m.metadata.get("dagster/row_count")
            for m in result.asset_materializations_for_node(key.path[-1])
        ]
        row_text = f"{rows[0].value} rows, " if rows and rows[0] is not None else ""
        print(f"ok ({row_text}{elapsed:.1f}s)", flush=True)
    print(f"orion run: {len(steps)} materializations in {time.monotonic() - started:.1f}s", flush=True)
    return 0


# -- orion sql -----------------------------------------------------------------------------------


def check_read_only(sql: str) -> list[str]:
    """Split ``sql`` into statements and refuse any that is not a query.

    Besides queries, only statements that choose the default schema are let through (``USE
    orion``, ``SET schema``/``search_path = '...'``): the files in ``sql/`` start with ``USE
    orion;`` so that they also run in a plain DuckDB client (see ``sql/README.md``). Every other
    ``SET`` is refused: some write files (``SET profiling_output``, ``SET log_query_path``).
    """
    import re

    ident = r'(?:[A-Za-z_][\w$]*|"[^"]+")'
    namespace = re.compile(
        rf"USE\s+{ident}(?:\s*\.\s*{ident})?|SET\s+(?:SESSION\s+)?(?:schema|search_path)\s*(?:=|TO)\s*'[^';]*'",
        re.IGNORECASE,
    )
    statements = duckdb.extract_statements(sql)
    if not statements:
        raise ValueError("no SQL statement given")
    for statement in statements:
        kind = statement.type.name
        if kind == "SET":
            bare = re.sub(r"--[^\n]*|/\*.*?\*/", " ", statement.query, flags=re.DOTALL).strip().rstrip(";").strip()
            if namespace.fullmatch(bare):
                continue
        if kind not in READ_ONLY_STATEMENTS:
            raise PermissionError(f"orion sql is read-only: refusing a {kind} statement: {statement.query.strip()[:80]}")
    return [s.query for s in statements]


def sql(args: argparse.Namespace) -> int:
    from orion_assets.store import Store

    text = args.query
    if text.endswith(".sql") or Path(text).is_file():
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
    store = Store(_data_dir(args) / "orion.duckdb")
    try:
        with store.connect(read_only=True) as con:
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
                    import polars as pl

                    with pl.Config(tbl_rows=args.max_rows, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200):
                        print(frame)
    except (duckdb.Error, FileNotFoundError) as exc:
        print(f"orion sql: {exc}", file=sys.stderr)
        return 1
    return 0


# -- orion report --------------------------------------------------------------------------------


def report(args: argparse.Namespace) -> int:
    from orion_assets.report import build_report
    from orion_assets.store import Store

    data_dir = _data_dir(args)
    out_dir = Path(args.out).expanduser().resolve() if args.out else data_dir / "reports"
    try:
        result = build_report(Store(data_dir / "orion.duckdb"), out_dir)
    except (FileNotFoundError, ValueError, duckdb.Error) as exc:
        print(f"orion report: {exc}", file=sys.stderr)
        return 1
    print(result.markdown_path)
    return 0


# -- entry point ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orion", description=__doc__)
    parser.add_argument("--data-dir", help="the data folder (default $ORION_DATA_DIR or data/)")
    commands = parser.add_subparsers(dest="command", required=True)

    run_parser = commands.add_parser("run", help="materialize every asset and partition of the active profile")
    run_parser.add_argument("--profile", help="profile name or path (default $ORION_PROFILE or tiny)")
    run_parser.add_argument("--select", nargs="+", help="only these asset keys (default: all)")
    run_parser.add_argument("--log-level", default="WARNING", help="Dagster console log level (default WARNING)")
    run_parser.set_defaults(handler=run)

    sql_parser = commands.add_parser("sql", help="run read-only SQL (a query or a .sql file) on the DuckDB file")
    sql_parser.add_argument("query", help="a SQL query or the path of a .sql file")
    sql_parser.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sql_parser.add_argument("--max-rows", type=int, default=50)
    sql_parser.set_defaults(handler=sql)

    report_parser = commands.add_parser("report", help="write the leaderboard report (Markdown and plots)")
    report_parser.add_argument("--out", help="the report folder (default <data dir>/reports)")
    report_parser.set_defaults(handler=report)

    args = parser.parse_args(argv)
    return args.handler(args)

if __name__ == "__main__":
    raise SystemExit(main())
