"""SQL over CoT statistics: ``sql/cot_stats.sql`` and ``sql/lineage.sql`` in DuckDB vs the same work in polars.

    python benchmarks/bench_sql.py [--db benchmarks/out/synthetic/orion_store.duckdb] [--repeats 3] [--json OUT]

The data is the synthetic file of ``benchmarks/make_synthetic_db.py`` (1,000,000 CoT rows; built
first when ``--db`` does not exist).

* **DuckDB**: the ``.sql`` file as it is, run the way ``orion sql`` runs it (the file attached
  read-only under the alias ``orion_db``, statement by statement, the result fetched into polars),
  on one open connection. The data stays in the DuckDB file (its buffer cache is warm after the
  first run, which is reported apart as "first run").
* **polars**: the same aggregation (joins, groups, linearly interpolated quantiles, as DuckDB's
  ``quantile_cont``) and the same walk (the edges built from the tables as the
  ``orion.lineage_edges`` view does, from the links that the assets register, then a
  breadth-first walk: a semi-join of the edges with the rows reached last, minus the rows seen,
  until nothing new), as lazy queries over frames in memory. Loading the columns they need from the
  DuckDB file into polars (through Arrow) is timed apart and not counted.

Each timed number is the median of ``--repeats`` runs after one untimed warm-up, DuckDB and
polars alternating so that other load on the machine hits both alike; the results of the two are
checked to be equal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import warnings  # noqa: E402

import duckdb  # noqa: E402
import polars as pl  # noqa: E402

warnings.filterwarnings("ignore", module="orion_assets.assets")  # dagster's BetaWarning on import

DEFAULT_DB = REPO / "benchmarks" / "out" / "synthetic" / "orion_store.duckdb"


# -- DuckDB: the files as orion sql runs them --------------------------------------------------


def run_sql_file(con: duckdb.DuckDBPyConnection, path: Path) -> pl.DataFrame:
    from orion_assets.cli.sql import check_read_only
    from orion_assets.store.vocabulary import provide_vocabulary

    provide_vocabulary(con)  # as orion sql: a file built before the vocabulary views gets them for the read
    frame = None
    for statement in check_read_only(path.read_text(encoding="utf-8")):
        relation = con.sql(statement)
        if relation is not None:
            frame = relation.pl()
    return frame


# -- polars: the same work ---------------------------------------------------------------------


def lineage_links() -> list[tuple[str, str, str, str]]:
    """The parent-id columns the assets' table specs declare."""
    from orion_assets.definitions import build_definitions
    from orion_assets.io.tables import lineage_links as declared
    from orion_assets.profiles import load_profile

    return declared(build_definitions(load_profile()).assets or ())


def load_frames(con: duckdb.DuckDBPyConnection, columns: dict[str, set[str]]) -> dict[str, pl.DataFrame]:
    present = {
        (t, c)
        for t, c in con.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_catalog = current_database() AND table_schema = 'orion'"
        ).fetchall()
    }
    frames = {}
    for table, cols in columns.items():
        cols = sorted(c for c in cols if (table, c) in present)
        if cols:
            frames[table] = pl.from_arrow(con.sql(f"SELECT {', '.join(cols)} FROM orion.{table}").arrow())
    return frames


COT_STATS_COLUMNS = {
    "teacher_cots": {"teacher_cot_id", "n_tokens"},
    "refined_cots": {"refined_cot_id", "mode", "source", "n_tokens"},
    "cot_quality": {"cot_table", "teacher_cot_id", "refined_cot_id", "n_steps"},
}


def polars_cot_stats(f: dict[str, pl.DataFrame]) -> pl.DataFrame:
    quality = f["cot_quality"].lazy()
    steps_teacher = (quality.filter(pl.col("cot_table") == "teacher_cots").group_by("teacher_cot_id")
                     .agg(pl.col("n_steps").max(), pl.lit(True).alias("has_quality")))
    steps_refined = (quality.filter(pl.col("cot_table") == "refined_cots").group_by("refined_cot_id")
                     .agg(pl.col("n_steps").max(), pl.lit(True).alias("has_quality")))
    teacher = f["teacher_cots"].lazy().join(steps_teacher, on="teacher_cot_id", how="left").select(
        pl.lit("teacher_cots").alias("cot_table"), pl.lit(None, pl.Utf8).alias("mode"), pl.lit("teacher").alias("source"),
        "n_tokens", "n_steps", pl.col("has_quality").fill_null(False))
    refined = f["refined_cots"].lazy().join(steps_refined, on="refined_cot_id", how="left").select(
        pl.lit("refined_cots").alias("cot_table"), "mode", "source",
        "n_tokens", "n_steps", pl.col("has_quality").fill_null(False))
    q = lambda col, p: pl.col(col).quantile(p, interpolation="linear").alias(f"{col.split('_')[1]}_p{int(p * 100)}")  # noqa: E731
    return (
        pl.concat([teacher, refined])
        .group_by("cot_table", "mode", "source")
        .agg(
            pl.len().alias("cots"),
            q("n_tokens", 0.1), q("n_tokens", 0.5), q("n_tokens", 0.9),
            pl.col("n_tokens").max().alias("tokens_max"), pl.col("n_tokens").mean().alias("tokens_mean"),
            pl.col("has_quality").sum().alias("with_steps"),
            q("n_steps", 0.1), q("n_steps", 0.5), q("n_steps", 0.9), pl.col("n_steps").max().alias("steps_max"),
        )
        .collect()
    )


def lineage_columns(links) -> dict[str, set[str]]:
    columns: dict[str, set[str]] = {"benchmark_scores": {"score_id", "benchmark", "variant"},
                                    "student_errors": {"error_id", "attempt_id"}}
    for child, child_id, parent_column, _ in links:
        columns.setdefault(child, set()).update([child_id, parent_column])
    return columns


def polars_lineage(f: dict[str, pl.DataFrame], links, variant: str = "orion") -> pl.DataFrame:
    parts = []
    for child, child_id, parent_column, parent in links:
        frame = f.get(child)
        if frame is None or child_id not in frame.columns or parent_column not in frame.columns:
            continue
        lf = frame.lazy().select(pl.col(child_id).cast(pl.Utf8).alias("child_id"), pl.col(parent_column).alias("parent_id"))
        if isinstance(frame.schema[parent_column], pl.List):
            lf = lf.explode("parent_id")
        parts.append(lf.filter(pl.col("parent_id").is_not_null()).select(
            pl.lit(child).alias("child_table"), "child_id", pl.lit(parent).alias("parent_table"),
            pl.col("parent_id").cast(pl.Utf8)))
    edges = pl.concat(parts).collect()
    start = (f["benchmark_scores"].lazy().filter(pl.col("variant") == variant)
             .sort("benchmark", "variant", "score_id").head(1).collect())
    seen = frontier = start.select(pl.lit("benchmark_scores").alias("table_name"), pl.col("score_id").alias("id"))
    while frontier.height:
        frontier = (
            edges.lazy()
            .join(frontier.lazy(), left_on=["child_table", "child_id"], right_on=["table_name", "id"], how="semi")
            .select(pl.col("parent_table").alias("table_name"), pl.col("parent_id").alias("id"))
            .unique()
            .join(seen.lazy(), on=["table_name", "id"], how="anti")
            .collect()
        )
        seen = pl.concat([seen, frontier])
    attempts = seen.filter(pl.col("table_name") == "student_attempts")["id"]
    errors = (f["student_errors"].lazy().filter(pl.col("attempt_id").is_in(attempts.implode()))
              .select(pl.lit("student_errors").alias("table_name"), pl.col("error_id").alias("id")))
    return (
        pl.concat([seen.lazy(), errors])
        .group_by("table_name").agg(pl.len().cast(pl.Int64).alias("ids"))
        .with_columns(pl.lit(start["score_id"][0]).alias("score_id"))
        .collect()
    )


# -- the comparison ----------------------------------------------------------------------------


def same(duck: pl.DataFrame, polars: pl.DataFrame, keys: list[str]) -> None:
    cols = [c for c in polars.columns if c in duck.columns]
    a = duck.select(cols).sort(keys, nulls_last=True)
    b = polars.select(cols).sort(keys, nulls_last=True)
    from polars.testing import assert_frame_equal

    assert_frame_equal(a, b, check_dtypes=False)


def loadavg() -> float:
    return os.getloadavg()[0]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=DEFAULT_DB)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not args.db.exists():
        from benchmarks.make_synthetic_db import build

        build(args.db.parent, 1_000_000)
    from orion_assets.store import Store

    links = lineage_links()
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, {platform.system()}",
        "python": platform.python_version(), "duckdb": duckdb.__version__, "polars": pl.__version__,
        "polars_threads": pl.thread_pool_size(), "db": str(args.db), "db_mib": round(args.db.stat().st_size / 2**20),
        "load_before": loadavg(),
    }
    results = {}
    with Store(args.db).connect(read_only=True) as con:
        info["duckdb_threads"] = con.execute("SELECT current_setting('threads')").fetchone()[0]
        info["cot_quality_rows"] = con.execute("SELECT count(*) FROM orion.cot_quality").fetchone()[0]
        info["lineage_edges"] = con.execute("SELECT count(*) FROM orion.lineage_edges").fetchone()[0]
        for name, columns, polars_fn, keys in [
            ("cot_stats", COT_STATS_COLUMNS, polars_cot_stats, ["cot_table", "mode", "source"]),
            ("lineage", lineage_columns(links), lambda f: polars_lineage(f, links), ["table_name"]),
        ]:
            path = REPO / "sql" / f"{name}.sql"
            first, duck_out = timed(lambda: run_sql_file(con, path))
            load_s, frames = timed(lambda: load_frames(con, columns))
            rows_loaded = sum(f.height for f in frames.values())
            _, pol_out = timed(lambda: polars_fn(frames))  # warm-up
            same(duck_out, pol_out, keys)
            duck_times, pol_times = [], []
            for i in range(args.repeats):
                order = [("duck", duck_times), ("polars", pol_times)]
                for side, times in order if i % 2 == 0 else order[::-1]:
                    fn = (lambda: run_sql_file(con, path)) if side == "duck" else (lambda: polars_fn(frames))
                    elapsed, _ = timed(fn)
                    times.append(elapsed)
            results[name] = {
                "duckdb_first_s": first,
                "duckdb_s": statistics.median(duck_times), "duckdb_all_s": duck_times,
                "polars_s": statistics.median(pol_times), "polars_all_s": pol_times,
                "polars_load_s": load_s, "polars_rows_loaded": rows_loaded,
                "result_rows": duck_out.height,
                "reached": int(duck_out["ids"].sum()) if name == "lineage" else None,
            }
            frames = None  # free the loaded columns before the next query
            r = results[name]
            print(f"{name:10s} duckdb {r['duckdb_s']:.3f}s (first {first:.3f}s, runs {', '.join(f'{t:.3f}' for t in duck_times)})  "
                  f"polars {r['polars_s']:.3f}s (runs {', '.join(f'{t:.3f}' for t in pol_times)}; load {load_s:.2f}s, "
                  f"{rows_loaded:,} rows)  polars/duckdb {r['polars_s'] / r['duckdb_s']:.2f}x", flush=True)
    info["load_after"] = loadavg()
    print(json.dumps(info, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"info": info, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
