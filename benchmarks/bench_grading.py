"""Grading throughput: a plain loop of ``grade()`` vs ``grade_batch()``.

Workloads (real files from ``shared/data``):

* ``own-gold``: every MATH500 / AIME24 solution and GSM8K-test answer text
  graded against its own gold answer (1,849 pairs; the typical "teacher
  trace is right" case).
* ``shifted-gold``: the same outputs graded against the *next* row's gold
  answer of the same dataset (1,849 pairs; the "model answer is wrong" case,
  which sends every non-numeric pair to the math_verify worker processes).

Before each timed run the worker pool is restarted and warmed, so neither
mode profits from the other's caches.

Verdicts instead of timings (one ``grade_batch()`` per workload, plus
``gsm-hard-forms``: every GSM-Hard gold written as an answer might write it):
``--save-verdicts FILE`` writes ``[correct, reason, extracted, method]`` per
pair; ``--compare FILE`` grades again and lists every pair whose
``(correct, reason)`` differs from FILE, to check a grading change.

Usage::

    .venv/bin/python benchmarks/bench_grading.py [--repeats 3] [--write-readme]
    .venv/bin/python benchmarks/bench_grading.py --save-verdicts /tmp/before.json
    .venv/bin/python benchmarks/bench_grading.py --compare /tmp/before.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orion_assets.method.grading import grade, grade_batch, shutdown_pool  # noqa: E402

SECTION = "## Grading throughput"


def data_dir() -> Path:
    here = ROOT.parent / "shared" / "data"
    if (here / "math500.jsonl").exists():
        return here
    return Path(os.environ["ORION_SHARED_DATA"])


def _jsonl(name: str) -> list[dict]:
    with open(data_dir() / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_workloads() -> dict[str, tuple[list[tuple[str, str]], list[str]]]:
    per_ds: dict[str, tuple[list[str], list[str]]] = {
        "math500": ([], []), "aime24": ([], []), "gsm8k": ([], []),
    }
    for r in _jsonl("math500.jsonl"):
        per_ds["math500"][0].append(r["solution"])
        per_ds["math500"][1].append(r["answer"])
    for r in _jsonl("aime24.jsonl"):
        per_ds["aime24"][0].append(r["solution"])
        per_ds["aime24"][1].append(r["answer"])
    for r in _jsonl("gsm8k_test.jsonl"):
        per_ds["gsm8k"][0].append(r["answer"])
        per_ds["gsm8k"][1].append(r["answer"].rsplit("####", 1)[1].strip())
    own, shifted, benches = [], [], []
    for name, (outs, golds) in per_ds.items():
        n = len(outs)
        own += list(zip(outs, golds))
        shifted += [(outs[i], golds[(i + 1) % n]) for i in range(n)]
        benches += [name] * n
    sft = _jsonl("train/math_sft_r1_cs336.jsonl")
    r1 = [(r["response"], r["ground_truth"]) for r in sft]
    return {
        "own-gold": (own, benches),
        "shifted-gold": (shifted, benches),
        "r1-sft": (r1, [None] * len(r1)),
    }


def gsm_hard_forms() -> tuple[list[tuple[str, float]], list[str]]:
    """Each GSM-Hard gold as an answer: ``repr``, ``round(t, 2)``, ``round(t)``,
    cut (not rounded) to 2 decimals, and rounded to 5 significant digits
    (5 x 1,319 pairs, benchmark gsm_hard)."""
    pairs = []
    for r in _jsonl("gsm_hard.jsonl"):
        t = r["target"]
        sig5 = float(f"{t:.5g}")
        for ans in (repr(t), repr(round(t, 2)), str(round(t)), f"{int(t * 100) / 100:.2f}",
                    f"{sig5:.0f}" if abs(sig5) >= 1e4 else repr(sig5)):
            pairs.append((f"The answer is $\\boxed{{{ans}}}$.", t))
    return pairs, ["gsm_hard"] * len(pairs)


def grade_verdicts(workers: int) -> dict[str, tuple[list, list[list]]]:
    """Per workload: (pairs, [[correct, reason, extracted, method], ...])."""
    out = {}
    workloads = {**load_workloads(), "gsm-hard-forms": gsm_hard_forms()}
    for name, (pairs, benches) in workloads.items():
        vs = grade_batch(pairs, benches, workers=workers)
        out[name] = (pairs, [[v.correct, v.reason, v.extracted, v.method] for v in vs])
    return out


def compare_verdicts(before_path: str, workers: int, show: int = 20) -> None:
    with open(before_path, encoding="utf-8") as fh:
        before = json.load(fh)
    for name, (pairs, after) in grade_verdicts(workers).items():
        old = before.get(name)
        if old is None or len(old) != len(after):
            print(f"{name}: not comparable ({'missing' if old is None else len(old)} before, "
                  f"{len(after)} now)")
            continue
        changed = [(i, b, a) for i, (b, a) in enumerate(zip(old, after)) if b[:2] != a[:2]]
        moved = sum(b[2:] != a[2:] for b, a in zip(old, after)) - sum(
            b[2:] != a[2:] for _, b, a in changed)
        print(f"{name}: {len(after):,} pairs, correct {sum(b[0] for b in old):,} -> "
              f"{sum(a[0] for a in after):,}; {len(changed)} verdicts changed; "
              f"{moved} more pairs extract another answer with the same verdict")
        for (b, a), n in Counter((tuple(b[:2]), tuple(a[:2])) for _, b, a in changed).most_common():
            print(f"  {n:5d}  {b[0]!s:5} {b[1]:<20} -> {a[0]!s:5} {a[1]}")
        for i, b, a in changed[:show]:
            print(f"    #{i} gold={pairs[i][1]!r}: extracted {b[2]!r} ({b[1]}) -> {a[2]!r} ({a[1]})")


def _warm_pool(workers: int) -> float:
    """Restart the pool and push a few items through every worker."""
    shutdown_pool()
    t0 = time.perf_counter()
    warm = [(r"\boxed{2\sqrt{2}}", r"\sqrt{8}"), (r"\boxed{(1,2)}", r"[1,2]"),
            (r"\boxed{x^2+1}", r"1+x^2")] * (2 * workers)
    grade_batch(warm, workers=workers)
    return time.perf_counter() - t0


def time_loop(pairs, benches, workers):
    _warm_pool(workers)
    t0 = time.perf_counter()
    out = [grade(o, g, b) for (o, g), b in zip(pairs, benches)]
    return time.perf_counter() - t0, out


def time_batch(pairs, benches, workers):
    _warm_pool(workers)
    t0 = time.perf_counter()
    out = grade_batch(pairs, benches, workers=workers)
    return time.perf_counter() - t0, out


def _path(v) -> str:
    return "worker" if v.reason.endswith("math_verify") or v.reason == "timeout" \
        or v.reason.startswith("error:Worker") else "in-process"


def _spin(n: int) -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i * i
    return time.perf_counter() - t0


def parallel_capacity(workers: int, n: int = 5_000_000) -> float:
    """How many CPU-bound processes this machine really runs at once:
    ``workers * t(1 alone) / t(workers at once)`` (ideal: ``workers``)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        pool.map(_spin, [1000] * workers)  # start-up
        alone = min(pool.map(_spin, [n]))
        together = max(pool.map(_spin, [n] * workers))
    return workers * alone / together


def cold_start_latency() -> float:
    shutdown_pool()
    t0 = time.perf_counter()
    grade(r"\boxed{2\sqrt{2}}", r"\sqrt{8}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="default: os.cpu_count()")
    ap.add_argument("--write-readme", action="store_true",
                    help=f"write the table into benchmarks/README.md under '{SECTION}'")
    ap.add_argument("--save-verdicts", metavar="JSON",
                    help="no timing: write every pair's verdict to JSON")
    ap.add_argument("--compare", metavar="JSON",
                    help="no timing: list the pairs whose verdict differs from a --save-verdicts file")
    args = ap.parse_args()
    workers = args.workers or os.cpu_count() or 1
    if args.save_verdicts or args.compare:
        if args.compare:
            compare_verdicts(args.compare, workers)
        if args.save_verdicts:
            verdicts = {name: v for name, (_, v) in grade_verdicts(workers).items()}
            with open(args.save_verdicts, "w", encoding="utf-8") as fh:
                json.dump(verdicts, fh)
            print(f"wrote {args.save_verdicts}")
        shutdown_pool()
        return

    load_before = os.getloadavg()[0]
    capacity = parallel_capacity(workers)
    cold = cold_start_latency()
    rows = []
    for name, (pairs, benches) in load_workloads().items():
        times: dict[str, list[float]] = {"loop": [], "batch1": [], "batchN": []}
        for _ in range(args.repeats):
            t, loop_out = time_loop(pairs, benches, workers)
            times["loop"].append(t)
            t, b1_out = time_batch(pairs, benches, 1)
            times["batch1"].append(t)
            t, batch_out = time_batch(pairs, benches, workers)
            times["batchN"].append(t)
        assert loop_out == batch_out == b1_out, "grade_batch disagrees with grade()"
        paths = Counter(_path(v) for v in batch_out)
        undecided = {(v.extracted, g) for v, (_, g) in zip(batch_out, pairs) if _path(v) == "worker"}
        n = len(pairs)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({
            "workload": name, "pairs": n, "correct": sum(v.correct for v in batch_out),
            "in_process": paths["in-process"], "worker": paths["worker"],
            "worker_unique": len(undecided), **med,
        })
    shutdown_pool()

    header = ("| workload | pairs | judged correct | in-process fast path | to math_verify (unique) "
              f"| loop of grade() | grade_batch(workers=1) | grade_batch(workers={workers}) "
              "| speed-up (best batch / loop) |")
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    lines = [header, sep]

    def cell(sec: float, n: int) -> str:
        return f"{n / sec:,.0f} pairs/s ({sec:.2f} s)"

    for r in rows:
        n = r["pairs"]
        best = min(r["batch1"], r["batchN"])
        lines.append(
            f"| {r['workload']} | {n:,} | {r['correct']:,} | {r['in_process']:,} "
            f"| {r['worker']:,} ({r['worker_unique']:,}) "
            f"| {cell(r['loop'], n)} | {cell(r['batch1'], n)} | {cell(r['batchN'], n)} "
            f"| {r['loop'] / best:.2f}x |"
        )
    table = "\n".join(lines)
    load = f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    load += f"; effective CPU parallelism {capacity:.2f} of {workers} (pure-Python spin test)"
    print(table)
    print(load)
    print(f"\ncold start (fork server + first worker + first item): {cold:.2f} s; "
          f"workers={workers}; median of {args.repeats} runs")

    if args.write_readme:
        _write_readme(table, cold, workers, args.repeats, load)


def _write_readme(table: str, cold: float, workers: int, repeats: int, load: str) -> None:
    readme = ROOT / "benchmarks" / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.exists() else "# Benchmarks\n"
    cpu = platform.processor() or platform.machine()
    nice = "nice -n " + str(os.nice(0)) + " " if os.nice(0) else ""
    body = f"""{SECTION}

`orion_assets.method.grading` on real pairs from `shared/data`:

* `own-gold`: every MATH500 / AIME24 solution and GSM8K-test answer text graded
  against its own gold answer (500 + 30 + 1,319 = 1,849 pairs);
* `shifted-gold`: the same texts graded against the *next* row's gold (wrong
  answers; the non-numeric ones need the math_verify worker processes);
* `r1-sft`: the 1,767 DeepSeek-R1 responses of `train/math_sft_r1_cs336.jsonl`
  (about 14 per problem) against their ground truth.

"in-process fast path" counts pairs settled by regex/`Fraction` normalisation in
the calling process; "to math_verify" counts pairs that went to the worker
processes (in brackets: distinct (gold, answer) pairs, which is what
`grade_batch()` actually sends). The pool is restarted and warmed before every
timed run; each number is the median of {repeats} runs.

Command: `{nice}.venv/bin/python benchmarks/bench_grading.py --repeats {repeats} --write-readme`
Measured: {dt.date.today().isoformat()} on the project's shared dev VM, {os.cpu_count()} vCPUs ({cpu}), niceness {os.nice(0)},
Python {platform.python_version()}, {workers} math_verify worker processes (`forkserver`);
{load}.

{table}

Cold start of the pool (fork server + first worker + first item): {cold:.2f} s.

How to read it: a fast-path pair costs tens of microseconds in either mode, so
`own-gold` times the same single-threaded regex work twice (differences are
noise). Only the math_verify share can get faster in `grade_batch()`, in two
ways: several worker processes verify at once, and each distinct (gold, answer)
pair is verified once. The first pays off only as far as the machine really
runs processes in parallel; this shared VM measured 0.9 to 1.6 effective cores
of its 2 vCPUs over the runs made while writing this (two concurrent sympy
workers each ran 2 to 2.7x slower per item), so here `grade_batch()` stays
within about 0.8x to 1.2x of the loop from run to run, that is, no clear gain.
The second saves little against a loop either: the loop reuses one warm worker,
whose parse caches already make repeated answers cheap (`r1-sft`). The batch gain should
grow with the number of real cores (not measured: no multi-core machine here).
"""
    pattern = re.compile(r"^## Grading throughput\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: body + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    readme.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    print(f"wrote {readme}")


if __name__ == "__main__":
    main()
