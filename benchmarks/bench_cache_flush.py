"""What one LLM-cache flush costs as ``llm_calls`` grows: the tables without a key (now) against the
same tables with the PRIMARY KEYs and the ``INSERT OR REPLACE`` writes of before, side by side.

A flush is what the cache's writer thread does about once a second during a generation step:
:func:`orion_assets.llm.cache.write_rows` of 256 rows (about 2 kB of reply and a 2 kB prompt each,
half the prompts new) through :class:`orion_assets.store.Store` (open the file under its lock, one
transaction, close). The table is filled to each size by flushes of 4,096 rows, then
``--flushes`` flushes are timed (process CPU and wall, median).

    .venv/bin/python benchmarks/bench_cache_flush.py --sizes 10000 50000 100000 200000
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orion_assets.llm.cache import (  # noqa: E402
    LLM_CALLS_DDL,
    LLM_PROMPTS_DDL,
    CallIdentity,
    ensure_table,
    make_row,
    write_rows,
)
from orion_assets.llm.types import GenerationResult, SamplingParams  # noqa: E402
from orion_assets.store import SCHEMA, Store  # noqa: E402

PARAMS = SamplingParams(max_tokens=1024, temperature=0.7, seed=0)
IDENTITY = CallIdentity("student", "openai", "http://127.0.0.1:8000/v1", "student-model")
WORDS = ["".join(random.Random(i).choices(string.ascii_lowercase, k=random.Random(i).randint(2, 9)))
         for i in range(5000)]  # fmt: skip


def _text(rng: random.Random, chars: int) -> str:
    out, size = [], 0
    while size < chars:
        word = rng.choice(WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


def rows(rng: random.Random, start: int, n: int) -> list[dict]:
    made = []
    for i in range(start, start + n):
        prompt = [{"role": "user", "content": f"Problem {i // 2}: " + _text(rng, 2000)}]  # two calls per prompt
        result = GenerationResult(f"call-{i:09d}", _text(rng, 2000), None, "stop", 500, 500, 0.5, 0, None, False)
        made.append(make_row(IDENTITY, prompt, PARAMS, i % 2, result, "bench"))
    return made


def keyed_ddl(ddl: str, key: str) -> str:
    return ddl.replace(f"{key} VARCHAR NOT NULL", f"{key} VARCHAR PRIMARY KEY", 1)


def keyed_upsert_sql(table: str, source: str, key: str, columns, *, replace: bool) -> list[str]:
    """The statements the store wrote into keyed tables before (``INSERT OR REPLACE``/``IGNORE``)."""
    cols = ", ".join(columns)
    verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
    return [f"{verb} INTO {SCHEMA}.{table} ({cols}) SELECT {cols} FROM {source}"]


def measure(path: Path, keyed: bool, sizes: list[int], flushes: int, batch: int) -> list[dict]:
    store = Store(path)
    if keyed:  # the tables and writes as before (ensure_table would rebuild the tables: not called)
        store.upsert_sql = keyed_upsert_sql  # type: ignore[method-assign]
        with store.connect() as con:
            con.execute(keyed_ddl(LLM_PROMPTS_DDL, "prompt_hash"))
            con.execute(keyed_ddl(LLM_CALLS_DDL, "call_id"))
    else:
        ensure_table(store)
    rng, filled, out = random.Random(7), 0, []
    for size in sizes:
        while filled < size:
            n = min(4096, size - filled)
            write_rows(store, rows(rng, filled, n), create=False)
            filled += n
        cpu, wall = [], []
        for _ in range(flushes):
            batch_rows = rows(rng, filled, batch)
            c0, w0 = time.process_time(), time.perf_counter()
            write_rows(store, batch_rows, create=False)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
            filled += batch
        out.append({"rows_before": size, "flush_cpu_s": round(statistics.median(cpu), 4),
                    "flush_wall_s": round(statistics.median(wall), 4),
                    "file_mb": round(path.stat().st_size / 2**20, 1)})
        print(f"bench_cache_flush: {'keyed' if keyed else 'no key'} {size:,} rows: "
              f"{out[-1]['flush_cpu_s']} s CPU, {out[-1]['flush_wall_s']} s wall per flush", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000, 100000, 200000])
    parser.add_argument("--flushes", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "bench_cache_flush.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="orion-bench-flush-") as tmp:
        report = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "batch": args.batch, "flushes": args.flushes,
                  "no_key": measure(Path(tmp) / "no_key" / "orion_store.duckdb", False, args.sizes, args.flushes, args.batch),
                  "keyed": measure(Path(tmp) / "keyed" / "orion_store.duckdb", True, args.sizes, args.flushes, args.batch)}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print("| rows in llm_calls | flush CPU s, no key | flush CPU s, keyed | wall s, no key | wall s, keyed | file MB, no key / keyed |")
    print("|---:|---:|---:|---:|---:|---:|")
    for plain, keyed in zip(report["no_key"], report["keyed"], strict=True):
        print(f"| {plain['rows_before']:,} | {plain['flush_cpu_s']} | {keyed['flush_cpu_s']} | {plain['flush_wall_s']} | "
              f"{keyed['flush_wall_s']} | {plain['file_mb']} / {keyed['file_mb']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
