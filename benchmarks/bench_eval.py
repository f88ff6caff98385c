"""Evaluation throughput of the hf backend: MATH500 problems per minute on the tiny student.

The same generation `benchmark_predictions` does (solve prompt, k=1, the tiny profile's
sampling settings), through ``make_endpoint`` with a fresh call cache per measurement, at batch
sizes 1, 8 and 32; grading included, model load excluded (reported apart).

    .venv/bin/python benchmarks/bench_eval.py [--problems 64] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from orion_assets.llm import GenerationRequest, SamplingParams, make_endpoint  # noqa: E402
from orion_assets.method import problems as problem_data  # noqa: E402
from orion_assets.method import prompts  # noqa: E402
from orion_assets.method.grading import grade_batch  # noqa: E402
from orion_assets.profiles import load_profile  # noqa: E402
from orion_assets.store import Store  # noqa: E402
from orion_assets.training.student import build_tiny_student  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,8,32")
    args = parser.parse_args()

    profile = load_profile("tiny").config
    pool = problem_data.load_train_source(profile.data.train_sources[0])[0]
    texts = pool["problem"].to_list()[:2000] + pool["solution"].to_list()[:2000]
    work = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    model = build_tiny_student(texts, work / "models", **profile.student_model.tiny.model_dump())
    math500 = problem_data.load_benchmark("math500")[0].head(args.problems)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=profile.eval.temperature, top_p=profile.eval.top_p, seed=0)
    requests = [GenerationRequest(prompts.messages("solve", problem=p), params) for p in math500["problem"]]
    golds = math500["gold_answer"].to_list()

    rows = []
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        cfg = profile.endpoints.student.model_copy(update={"batch_size": batch_size})
        store = Store(work / f"cache-{batch_size}.duckdb")
        endpoint = make_endpoint(cfg, store, role="student", model_path=str(model.path))
        t0 = time.perf_counter()
        endpoint.generate(requests[:1])  # load the model (and warm up) outside the timing
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = endpoint.generate(requests[1:])
        verdicts = grade_batch([(r.text or "", g) for r, g in zip(results, golds[1:], strict=True)], benchmark="math500")
        seconds = time.perf_counter() - t0
        tokens = sum(r.completion_tokens or 0 for r in results)
        rows.append({"batch_size": batch_size, "problems": len(results), "seconds": round(seconds, 2),
                     "problems_per_minute": round(60 * len(results) / seconds, 1),
                     "tokens_per_second": round(tokens / seconds, 1), "load_s": round(load_s, 2),
                     "graded_correct": sum(v.correct for v in verdicts)})
    base = rows[0]["problems_per_minute"]
    for row in rows:
        row["speedup_vs_batch_1"] = round(row["problems_per_minute"] / base, 2)
    print(json.dumps({"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": f"{os.cpu_count()} cores, {platform.machine()}",
                      "max_tokens": args.max_tokens, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
