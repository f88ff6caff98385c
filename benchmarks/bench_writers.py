"""Concurrent partition writers: a DuckDB file behind its lock against DuckLake with a Postgres catalog.

    python benchmarks/bench_writers.py [--writers 1 4 8] [--backends duckdb lake_pg lake_pg_s3]
        [--parts-per-writer 12] [--rows-per-part 1000] [--text-bytes 4000] [--repeats 3] [--json OUT]

**Writers.** For each backend and each writer count W, a fresh store gets one table
(``orion.bench_cots``), created by an untimed seed partition; then W writer processes (separate
OS processes, ``subprocess``), each with its own N partitions, replace them one after the other
through the store's API, as the I/O manager does: ``replace_rows(table, parquet=[file],
replace_where={"part": ...}, materialization={...}, lineage=[...])``, one transaction per partition
(delete its rows, insert the new ones, log the materialization, record the lineage links). The rows
are CoT-like (ids, a text of about ``--text-bytes`` characters of Zipf-distributed pseudo-words,
ints, a float, a bool), generated and spilled to Parquet by each writer before the start, so only
the store's work is timed. The writers attach their store, say READY, and all start on one signal.

Backends, built from a ``[store]`` section (``StoreConfig``) by ``store_for`` as the resource does:

* ``duckdb``: the DuckDB file of a data folder (``store_in``): one writer at a time, behind the
  exclusive file lock; each write opens the file, commits and closes (a checkpoint).
* ``lake_pg``: DuckLake, catalog in a private Postgres server (``initdb`` in a temporary folder,
  Postgres's own durable defaults: fsync and synchronous commit on; ``--pg-fast`` turns them off
  as the tests do), a fresh database per configuration, data in a local folder.
* ``lake_pg_s3``: the same with the Parquet files in S3, here moto's server on a loopback port (a
  Python process on the same machine: it measures the path through httpfs, not S3's speed).

Per configuration: rows/s and MB/s from the first write's start to the last commit (MB: the rows'
size in memory as Arrow, uncompressed, 10^6 bytes), each write's latency (p50/p95, retries and
backoff included), the conflict retries the DuckLake store made (``DuckLakeStore.last_attempts``
after each write; every writer of one table bumps that table's guard row, so concurrent writers of
one table conflict and retry), writes that failed after all retries, the bytes stored. After each
run the table is checked: every partition present once with all its rows, one logged
materialization each, no id twice. ``--repeats`` runs every configuration that many times (the
backends in a rotating order); the table shows the run with the median rows/s, the JSON all.

**cot_stats.sql** (``--no-sql`` to skip): ``sql/cot_stats.sql`` on the synthetic data of
``benchmarks/make_synthetic_db.py`` (1,000,000 CoT rows; built first when ``--sql-db`` does not
exist), in the DuckDB file and in a DuckLake (Postgres catalog, local data folder) holding copies of
the three tables it reads (exported to Parquet, written by ``replace_rows``). The same query text,
run as ``orion sql`` runs it (``benchmarks/bench_sql.py``'s ``run_sql_file``: ``USE orion;`` then
the query, the result fetched into polars) on one open read connection per backend; one untimed
first run each, then ``--sql-repeats`` runs alternating between the backends, median reported. The
two results are checked equal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import warnings  # noqa: E402

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from orion_assets.profiles.schema import StoreConfig  # noqa: E402
from orion_assets.store import BaseStore, store_for  # noqa: E402

warnings.filterwarnings("ignore", module="orion_assets.assets")  # dagster's BetaWarning (make_synthetic_db)

TABLE = "bench_cots"
LINEAGE = [(TABLE, "cot_id", "problem_id", "train_problems")]
BACKENDS = ("duckdb", "lake_pg", "lake_pg_s3")
KEY_ENV, SECRET_ENV = "ORION_BENCH_S3_KEY_ID", "ORION_BENCH_S3_SECRET"
VARIANTS = ["teacher_sft", "orion", "orion_no_error", "orion_no_reflection"]
DEFAULT_SQL_DB = REPO / "benchmarks" / "out" / "synthetic" / "orion_store.duckdb"


# -- the rows ------------------------------------------------------------------------------------


def vocabulary(size: int = 5000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pseudo-words (2 to 10 letters) with Zipf-like frequencies, so the text compresses about as
    much as prose does, not to nothing (repeated text) nor not at all (random bytes)."""
    rng = np.random.default_rng(12345)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    weights = 1.0 / np.arange(1, 27)
    lengths = rng.integers(2, 11, size)
    words = np.array(["".join(rng.choice(letters, n, p=weights / weights.sum())) for n in lengths], dtype=object)
    freq = 1.0 / (np.arange(size) + 10.0)
    return words, np.array([len(w) for w in words]), freq / freq.sum()


_VOCAB = vocabulary()


def make_rows(part: str, rows: int, text_bytes: int, seed: int, run_id: str = "bench") -> pl.DataFrame:
    """One partition's CoT-like rows; the text lengths are log-normal with mean ``text_bytes``."""
    words, word_len, freq = _VOCAB
    rng = np.random.default_rng(seed)
    mean_word = float((word_len + 1) @ freq)
    target = rng.lognormal(np.log(text_bytes) - 0.125, 0.5, rows)  # sigma 0.5: mean = text_bytes
    n_words = np.maximum(1, np.rint(target / mean_word)).astype(np.int64)
    idx = rng.choice(len(words), int(n_words.sum()), p=freq)
    text = " ".join(words[idx].tolist())
    offsets = np.concatenate([[0], np.cumsum(word_len[idx] + 1)])  # character offset of each word
    ends = np.cumsum(n_words)
    starts = ends - n_words
    cots = [text[offsets[s]:offsets[e] - 1] for s, e in zip(starts.tolist(), ends.tolist())]
    n_tokens = np.array([len(c) // 4 for c in cots], dtype=np.int64)
    return pl.DataFrame({
        "cot_id": [f"{part}-{i:06d}" for i in range(rows)],
        "part": [part] * rows,
        "problem_id": [f"{x:016x}" for x in rng.integers(0, 2**63, rows).tolist()],
        "variant": [VARIANTS[i % len(VARIANTS)] for i in range(rows)],
        "cot": cots,
        "n_tokens": n_tokens,
        "n_steps": n_tokens // 160 + 1,
        "coherence": rng.uniform(0.4, 0.9, rows),
        "verified": rng.uniform(size=rows) < 0.8,
        "dagster_run_id": [run_id] * rows,
    })


def materialization(part: str, run_id: str) -> dict[str, object]:
    return {"asset_key": TABLE, "partition_key": part, "dagster_run_id": run_id, "profile_name": "bench",
            "profile_hash": "bench", "code_version": "bench",
            "upstream": [{"asset_key": "train_problems", "partition_key": None, "materialization_id": "seed",
                          "dagster_run_id": "seed"}]}


def open_store(spec: dict[str, Any]) -> BaseStore:
    """The store of a configuration, as the resource builds it (``store_for`` of a ``[store]`` section)."""
    settings = StoreConfig(**spec["store"]) if spec["store"] else None
    return store_for(settings, spec["data_dir"])


# -- one writer process --------------------------------------------------------------------------


def writer(spec: dict[str, Any]) -> None:
    """Spill this writer's partitions to Parquet, attach the store, say READY, wait for the start
    signal, write them one by one; print one JSON line with each write's times and attempts."""
    from orion_assets.store.ducklake import StoreConflict

    store = open_store(spec)
    staging = Path(spec["staging"])
    files = {part: staging / f"{part}.parquet" for part in spec["parts"]}
    sizes_file = staging / "sizes.json"
    if not sizes_file.exists():  # the first backend's writer makes the rows; the others reuse them
        staging.mkdir(parents=True, exist_ok=True)
        sizes = {}
        for k, part in enumerate(spec["parts"]):
            frame = make_rows(part, spec["rows"], spec["text_bytes"], seed=spec["seed"] * 1000 + k,
                              run_id=spec["run_id"])
            sizes[part] = frame.estimated_size()
            frame.write_parquet(files[part])
        sizes_file.write_text(json.dumps(sizes))
    sizes = json.loads(sizes_file.read_text())
    with store.connect():
        pass  # attach the lake (extensions, catalog) or create the file's schema, outside the timing
    print("READY", flush=True)
    go = Path(spec["go"])
    while not go.exists():
        time.sleep(0.005)
    writes = []
    for part in spec["parts"]:
        error = None
        start = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the machine
        try:
            store.replace_rows(TABLE, parquet=[files[part]], replace_where={"part": part},
                               materialization=materialization(part, spec["run_id"]), lineage=LINEAGE)
        except StoreConflict:  # its message names the catalog; the attempts are what counts here
            error = f"StoreConflict after {getattr(store, 'last_attempts', '?')} attempts"
        end = time.monotonic()
        writes.append({"part": part, "start": start, "end": end, "ok": error is None, "error": error,
                       "attempts": getattr(store, "last_attempts", 1), "rows": spec["rows"], "bytes": sizes[part]})
    print(json.dumps({"writer": spec["writer"], "writes": writes}), flush=True)


# -- one configuration ---------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def stored_bytes(backend: str, data_dir: Path, settings: dict[str, Any] | None, services: dict[str, Any]) -> int:
    """What the table takes where its rows are: the DuckDB file (+ WAL), or the lake's Parquet files."""
    if backend == "duckdb":
        return sum(f.stat().st_size for f in data_dir.glob("orion_store.duckdb*") if f.suffix != ".lock")
    if backend == "lake_pg_s3":
        return services["s3"].bytes_under(settings["data_path"])
    return folder_bytes(data_dir / "lake_files")


def store_settings(backend: str, services: dict[str, Any], name: str,
                   retries: int) -> tuple[dict[str, Any] | None, str | None]:
    """The ``[store]`` section of a configuration (None: the DuckDB file) and its catalog database."""
    if backend == "duckdb":
        return None, None
    pg = services["pg"]
    database = pg.new_database(name)
    settings: dict[str, Any] = {"backend": "ducklake", "catalog": "postgres:" + pg.dsn(database),
                                "commit_retries": retries}
    if backend == "lake_pg":
        settings["data_path"] = "lake_files"
    else:
        s3 = services["s3"]
        settings.update(data_path=s3.new_prefix(name), s3_endpoint=s3.endpoint, s3_region=s3.region,
                        s3_url_style="path", s3_use_ssl=False, s3_key_id_env=KEY_ENV, s3_secret_env=SECRET_ENV)
    return StoreConfig(**settings).model_dump(), database


def check_table(store: BaseStore, expected: dict[str, int]) -> dict[str, Any]:
    """Every expected partition present once with all its rows and one logged materialization; a
    digest of the rows (order-free), equal across backends when they hold the same rows."""
    with store.connect(read_only=True) as con:
        counts = dict(con.execute(f"SELECT part, count(*) FROM orion.{TABLE} GROUP BY part").fetchall())
        total, distinct, digest = con.execute(
            f"SELECT count(*), count(DISTINCT cot_id), bit_xor(hash(cot_id, part, cot, n_tokens, coherence)) "
            f"FROM orion.{TABLE}").fetchone()
        logged = dict(con.execute("SELECT partition_key, count(*) FROM orion.materializations "
                                  "WHERE asset_key = ? GROUP BY partition_key", [TABLE]).fetchall())
    ok = counts == expected and logged == {part: 1 for part in expected} and total == distinct
    return {"ok": ok, "partitions": len(counts), "rows_stored": total, "ids_distinct": distinct, "digest": str(digest),
            "rows_by_partition_match": counts == expected, "materializations_match": logged == {p: 1 for p in expected}}


def run_config(backend: str, writers: int, rep: int, args: argparse.Namespace, services: dict[str, Any],
               work: Path) -> dict[str, Any]:
    name = f"{backend}_w{writers}_r{rep}"
    data_dir = work / name
    data_dir.mkdir(parents=True)
    settings, database = store_settings(backend, services, name, args.commit_retries)
    base = {"store": settings, "data_dir": str(data_dir)}
    store = open_store(base)
    run_id = f"bench-w{writers}-r{rep}"
    seed = make_rows("seed", args.rows_per_part, args.text_bytes, seed=rep, run_id=run_id)
    store.replace_rows(TABLE, seed, replace_where={"part": "seed"}, materialization=materialization("seed", run_id),
                       lineage=LINEAGE)
    go = data_dir / "go"
    procs = []
    for w in range(writers):
        spec = {**base, "writer": w, "parts": [f"w{w:02d}-p{k:04d}" for k in range(args.parts_per_writer)],
                "rows": args.rows_per_part, "text_bytes": args.text_bytes, "seed": 1000 * rep + w + 1,
                "go": str(go), "staging": str(work / f"rows_w{writers}_r{rep}" / f"w{w:02d}"), "run_id": run_id}
        err = open(data_dir / f"writer{w:02d}.stderr", "w")
        procs.append((subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], cwd=REPO,
                                       stdout=subprocess.PIPE, stderr=err, text=True), err))
    results = []
    try:
        for proc, err in procs:
            line = proc.stdout.readline()
            if line.strip() != "READY":
                raise RuntimeError(f"{name}: a writer exited ({proc.wait()}) before READY: "
                                   f"{Path(err.name).read_text()[-3000:]}")
        load = os.getloadavg()[0]
        go.touch()
        for proc, err in procs:
            out, _ = proc.communicate(timeout=args.timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"{name}: a writer failed ({proc.returncode}): "
                                   f"{Path(err.name).read_text()[-3000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc, err in procs:  # a failed configuration leaves no writer behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            err.close()
    writes = [w for r in results for w in r["writes"]]
    done = [w for w in writes if w["ok"]]
    first_start = min(w["start"] for w in writes)
    wall = max(w["end"] for w in done) - first_start if done else None
    rows = sum(w["rows"] for w in done)
    mb = sum(w["bytes"] for w in done) / 1e6
    latencies = [w["end"] - w["start"] for w in done]
    expected = {"seed": args.rows_per_part, **{w["part"]: w["rows"] for w in done}}
    check = check_table(store, expected)
    result = {
        "backend": backend, "writers": writers, "repeat": rep, "parts_per_writer": args.parts_per_writer,
        "writes": len(writes), "writes_ok": len(done), "writes_failed": len(writes) - len(done),
        "errors": sorted({w["error"] for w in writes if w["error"]}),
        "rows": rows, "mb": mb, "wall_s": wall,
        "rows_per_s": rows / wall if wall else None, "mb_per_s": mb / wall if wall else None,
        "write_p50_s": percentile(latencies, 50), "write_p95_s": percentile(latencies, 95),
        "write_max_s": max(latencies) if latencies else None,
        "conflict_retries": sum(w["attempts"] - 1 for w in writes) if backend != "duckdb" else None,
        "writes_retried": sum(w["attempts"] > 1 for w in writes) if backend != "duckdb" else None,
        "max_attempts": max(w["attempts"] for w in writes) if backend != "duckdb" else None,
        "stored_mb": stored_bytes(backend, data_dir, settings, services) / 1e6,
        "catalog_mb": (int(services["pg"].sql(database, "SELECT pg_database_size(current_database())")) / 1e6
                       if database else None),
        "check": check, "load_at_start": load,
        "write_log": [{"writer": r["writer"], "part": w["part"], "start_s": w["start"] - first_start,
                       "end_s": w["end"] - first_start, "attempts": w["attempts"], "error": w["error"]}
                      for r in results for w in r["writes"]],
    }
    if hasattr(store, "close"):
        store.close()
    if not args.keep:  # each configuration's stores are gone before the next one starts
        shutil.rmtree(data_dir, ignore_errors=True)
        if database:
            services["pg"].sql("postgres", f"DROP DATABASE {database} WITH (FORCE)")
        if backend == "lake_pg_s3":
            services["s3"].delete_under(settings["data_path"])
    return result


# -- cot_stats.sql in both backends ---------------------------------------------------------------


def bench_cot_stats(db: Path, pg: Any, work: Path, repeats: int) -> dict[str, Any]:
    from benchmarks.bench_sql import COT_STATS_COLUMNS, run_sql_file, same
    from orion_assets.store import Store

    lake_dir = work / "cot_stats_lake"
    settings = StoreConfig(backend="ducklake", catalog="postgres:" + pg.dsn(pg.new_database("cot_stats")),
                           data_path="lake_files")
    lake = store_for(settings, lake_dir)
    source = Store(db)
    export = lake_dir / "export"
    export.mkdir(parents=True)
    copied = {}
    for table in sorted(COT_STATS_COLUMNS):
        path = export / f"{table}.parquet"
        with source.connect(read_only=True) as con:
            rows = con.execute(f"SELECT count(*) FROM orion.{table}").fetchone()[0]
            con.execute(f"COPY (SELECT * FROM orion.{table}) TO '{path}' (FORMAT parquet)")
        t0 = time.monotonic()
        lake.replace_rows(table, parquet=[path], replace_where=None, materialization={"asset_key": table})
        copied[table] = {"rows": rows, "write_s": time.monotonic() - t0}
        path.unlink()
    query = REPO / "sql" / "cot_stats.sql"
    runs: dict[str, list[float]] = {"duckdb": [], "lake_pg": []}
    first: dict[str, float] = {}
    with source.connect(read_only=True) as duck, lake.connect(read_only=True) as lake_con:
        cons = {"duckdb": duck, "lake_pg": lake_con}
        outputs = {}
        for side, con in cons.items():
            t0 = time.perf_counter()
            outputs[side] = run_sql_file(con, query)
            first[side] = time.perf_counter() - t0
        same(outputs["duckdb"], outputs["lake_pg"], ["cot_table", "mode", "source"])
        for i in range(repeats):
            for side in (("duckdb", "lake_pg") if i % 2 == 0 else ("lake_pg", "duckdb")):
                t0 = time.perf_counter()
                run_sql_file(cons[side], query)
                runs[side].append(time.perf_counter() - t0)
    lake.close()
    return {
        "db": str(db), "db_mb": db.stat().st_size / 1e6, "lake_data_mb": folder_bytes(lake_dir / "lake_files") / 1e6,
        "copied": copied, "result_rows": outputs["duckdb"].height, "results_equal": True,
        "cot_quality_rows": copied.get("cot_quality", {}).get("rows"),
        **{f"{side}_first_s": first[side] for side in runs},
        **{f"{side}_s": statistics.median(times) for side, times in runs.items()},
        **{f"{side}_all_s": times for side, times in runs.items()},
    }


# -- the report ----------------------------------------------------------------------------------


def code_state() -> dict[str, Any]:
    """The commit measured, and the files of the package that differ from it (a tree being edited
    while the benchmark runs measures whatever the writers imported)."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True).stdout.rstrip("\n")

    changed = git("status", "--porcelain", "--", "orion_assets", "benchmarks").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted": [line[3:] for line in changed]}


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def writers_table(chosen: list[dict[str, Any]], runs: dict[tuple[str, int], list[dict[str, Any]]]) -> str:
    lines = ["| backend | writers | writes | rows | MB | wall s | rows/s | MB/s | write p50 s | write p95 s "
             "| conflict retries (writes retried, max attempts) | failed writes | stored MB | check | rows/s of all runs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in chosen:
        retries = ("n/a (file lock)" if r["conflict_retries"] is None
                   else f"{r['conflict_retries']} ({r['writes_retried']}, {r['max_attempts']})")
        others = ", ".join(fmt(x["rows_per_s"]) for x in runs[(r["backend"], r["writers"])])
        lines.append(
            f"| {r['backend']} | {r['writers']} | {r['writes']} | {r['rows']:,} | {r['mb']:,.0f} | {fmt(r['wall_s'], '.2f')} "
            f"| {fmt(r['rows_per_s'])} | {fmt(r['mb_per_s'], '.1f')} | {fmt(r['write_p50_s'], '.3f')} "
            f"| {fmt(r['write_p95_s'], '.3f')} | {retries} | {r['writes_failed']} | {r['stored_mb']:,.1f} "
            f"| {'ok' if r['check']['ok'] else 'FAILED'} | {others} |")
    return "\n".join(lines)


def sql_table(s: dict[str, Any]) -> str:
    lines = ["| query | backend | median s | runs s | first run s |", "|---|---|---:|---|---:|"]
    for side in ("duckdb", "lake_pg"):
        lines.append(f"| `cot_stats.sql` ({s['cot_quality_rows']:,} cot_quality rows) | {side} | {s[side + '_s']:.3f} "
                     f"| {', '.join(f'{t:.3f}' for t in s[side + '_all_s'])} | {s[side + '_first_s']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--parts-per-writer", type=int, default=12)
    parser.add_argument("--rows-per-part", type=int, default=1000)
    parser.add_argument("--text-bytes", type=int, default=4000, help="mean characters of a row's text")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--commit-retries", type=int, default=StoreConfig().commit_retries,
                        help="[store] commit_retries of the lakes (the profile's default)")
    parser.add_argument("--pg-fast", action="store_true", help="Postgres without fsync (as the tests run it)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a configuration's writers may take")
    parser.add_argument("--no-sql", action="store_true", help="skip cot_stats.sql")
    parser.add_argument("--sql-db", type=Path, default=DEFAULT_SQL_DB)
    parser.add_argument("--sql-cots", type=int, default=1_000_000, help="CoT rows when --sql-db has to be built")
    parser.add_argument("--sql-repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--keep", action="store_true", help="keep each configuration's stores (in --work)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        writer(json.loads(args.child))
        return 0

    from orion_devtools.services import moto_s3, postgres

    if not args.no_sql and not args.sql_db.exists():
        from benchmarks.make_synthetic_db import build

        if build(args.sql_db.parent, args.sql_cots) != args.sql_db.resolve():
            raise SystemExit(f"make_synthetic_db writes orion_store.duckdb; --sql-db names {args.sql_db}")
    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, {platform.system()}",
        "python": platform.python_version(), "duckdb": duckdb.__version__, "polars": pl.__version__,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "child"},
        "load_before": os.getloadavg()[0], **code_state(),
    }
    with ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-writers-")))
        work.mkdir(parents=True, exist_ok=True)
        services: dict[str, Any] = {}
        if any(b != "duckdb" for b in args.backends) or not args.no_sql:
            services["pg"] = stack.enter_context(postgres(durable=not args.pg_fast))
            info["postgres"] = services["pg"].version() + (" (fsync off)" if args.pg_fast else " (durable defaults)")
        if "lake_pg_s3" in args.backends:
            services["s3"] = stack.enter_context(moto_s3())
            os.environ[KEY_ENV], os.environ[SECRET_ENV] = services["s3"].key_id, services["s3"].secret
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        turn = 0
        for rep in range(args.repeats):
            for writers in args.writers:
                order = args.backends[turn % len(args.backends):] + args.backends[:turn % len(args.backends)]
                turn += 1
                for backend in order:
                    r = run_config(backend, writers, rep, args, services, work)
                    runs.setdefault((backend, writers), []).append(r)
                    print(f"{backend:10s} writers {writers}  {fmt(r['rows_per_s'])} rows/s  {fmt(r['mb_per_s'], '.1f')} MB/s  "
                          f"p50 {fmt(r['write_p50_s'], '.3f')} s  p95 {fmt(r['write_p95_s'], '.3f')} s  "
                          f"retries {r['conflict_retries']}  failed {r['writes_failed']}  "
                          f"check {'ok' if r['check']['ok'] else 'FAILED'}  (load {r['load_at_start']:.1f})", flush=True)
        cot_stats = None
        if not args.no_sql:
            cot_stats = bench_cot_stats(args.sql_db, services["pg"], work, args.sql_repeats)
    info["load_after"] = os.getloadavg()[0]
    chosen = []
    for backend in args.backends:
        for writers in args.writers:
            ordered = sorted(runs[(backend, writers)], key=lambda r: r["rows_per_s"] or 0)
            chosen.append(ordered[(len(ordered) - 1) // 2])
    print()
    print(writers_table(chosen, runs))
    if cot_stats:
        print()
        print(sql_table(cot_stats))
    print(json.dumps(info, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"info": info, "writers": [r for rs in runs.values() for r in rs],
                                         "median_runs": chosen, "cot_stats": cot_stats}, indent=1))
    failed = [r for rs in runs.values() for r in rs if not r["check"]["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
