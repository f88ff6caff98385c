"""Throughput of the LLM endpoints.

1. openai backend: requests/second through ``make_endpoint(...).generate`` against the local
   fixed-latency server (``orion_devtools.fault_server``, every reply after L seconds), at
   several concurrencies, as a fraction of the limit concurrency / L. The cache path is as it is
   (lookup, then rows written in batches while the calls run). For comparison: the bare
   ``AsyncOpenAI`` client with the same concurrency and no cache, and a fully cached re-run.
2. hf backend on the tiny student: generated tokens/second, batched vs one prompt at a time.

    .venv/bin/python benchmarks/bench_endpoints.py            # everything
    .venv/bin/python benchmarks/bench_endpoints.py --skip-hf  # only the openai backend
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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

from orion_assets.llm import GenerationRequest, SamplingParams, chat, make_endpoint  # noqa: E402
from orion_assets.llm.openai_backend import USE_AIOHTTP  # noqa: E402
from orion_assets.profiles.schema import EndpointConfig  # noqa: E402
from orion_assets.store import Store  # noqa: E402
from orion_devtools.fault_server import FaultServer  # noqa: E402

TRAIN_FILE = REPO_ROOT / "orion_assets" / "data" / "train" / "gsm8k_train.jsonl"


def _requests(n: int, tag: str) -> list[GenerationRequest]:
    params = SamplingParams(max_tokens=256, temperature=0.7, seed=0)
    return [GenerationRequest(chat(("user", f"{tag} problem {i}: what is {{x}}?")), params) for i in range(n)]


async def _raw_client(base_url: str, requests: list[GenerationRequest], concurrency: int) -> None:
    import openai

    extra = {"http_client": openai.DefaultAioHttpClient()} if USE_AIOHTTP else {}
    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=60, **extra)
    gate = asyncio.Semaphore(concurrency)

    async def one(request: GenerationRequest) -> None:
        async with gate:
            await client.chat.completions.create(
                model="bench", messages=list(request.messages), max_tokens=request.params.max_tokens,
                temperature=request.params.temperature, seed=request.params.seed,
            )  # fmt: skip

    try:
        await asyncio.gather(*(one(r) for r in requests))
    finally:
        await client.close()


def bench_openai(latency: float, concurrencies: list[int], waves: int, tmp: Path) -> list[dict]:
    rows = []
    with FaultServer(latency=latency) as server:
        for concurrency in concurrencies:
            n = max(30, concurrency * waves)
            limit = concurrency / latency
            cfg = EndpointConfig(
                backend="openai", base_url=server.base_url, model="bench", api_key_env=None,
                concurrency=concurrency, timeout_s=60, max_retries=0,
            )  # fmt: skip
            store = Store(tmp / f"openai-c{concurrency}.duckdb")
            endpoint = make_endpoint(cfg, store, role="teacher")
            endpoint.generate(_requests(min(concurrency, 32), f"warmup{concurrency}"))  # imports, first file
            requests = _requests(n, f"c{concurrency}")
            server.reset()
            started, cpu = time.perf_counter(), time.process_time()
            results = endpoint.generate(requests, run_id="bench")
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            assert all(r.ok for r in results) and server.stats()["total"] == n

            started = time.perf_counter()
            again = endpoint.generate(requests, run_id="bench")
            cached_elapsed = time.perf_counter() - started
            assert all(r.cached for r in again) and server.stats()["total"] == n  # nothing sent again

            asyncio.run(_raw_client(server.base_url, _requests(min(concurrency, 32), f"rawwarm{concurrency}"), concurrency))
            raw_requests = _requests(n, f"raw{concurrency}")
            started, raw_cpu = time.perf_counter(), time.process_time()
            asyncio.run(_raw_client(server.base_url, raw_requests, concurrency))
            raw_elapsed, raw_cpu = time.perf_counter() - started, time.process_time() - raw_cpu
            row = {
                "concurrency": concurrency,
                "requests": n,
                "limit_rps": limit,
                "endpoint_rps": n / elapsed,
                "endpoint_fraction": n / elapsed / limit,
                "raw_client_rps": n / raw_elapsed,
                "raw_client_fraction": n / raw_elapsed / limit,
                "cached_rerun_calls_per_s": n / cached_elapsed,
                "endpoint_cpu_ms_per_request": cpu / n * 1000,
                "raw_client_cpu_ms_per_request": raw_cpu / n * 1000,
                "load_average_1m": os.getloadavg()[0],
            }
            rows.append(row)
            print(
                f"  c={concurrency:<4} n={n:<5} limit {limit:7.0f}/s  endpoint {row['endpoint_rps']:7.1f}/s "
                f"({row['endpoint_fraction']:.2f})  raw client {row['raw_client_rps']:7.1f}/s "
                f"({row['raw_client_fraction']:.2f})  cached re-run {row['cached_rerun_calls_per_s']:8.0f} calls/s  "
                f"CPU/request {row['endpoint_cpu_ms_per_request']:.2f} ms vs {row['raw_client_cpu_ms_per_request']:.2f} ms  "
                f"load {row['load_average_1m']:.1f}",
                flush=True,
            )
    return rows


def bench_hf(batch_sizes: list[int], n_prompts: int, max_tokens: int, tmp: Path) -> list[dict]:
    from orion_assets.training.student import build_tiny_student

    with TRAIN_FILE.open(encoding="utf-8") as handle:
        train = [json.loads(line) for line in itertools.islice(handle, 300)]
    built = build_tiny_student([r["question"] for r in train] + [r["answer"] for r in train], tmp / "models")
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    requests = [GenerationRequest(chat(("user", r["question"])), params) for r in train[:n_prompts]]
    rows = []
    for batch_size in batch_sizes:
        cfg = EndpointConfig(backend="hf", batch_size=batch_size, device="cpu", dtype="float32")
        endpoint = make_endpoint(cfg, Store(tmp / f"hf-b{batch_size}.duckdb"), role="student", model_path=str(built.path))
        endpoint._load()  # type: ignore[attr-defined]  # time generation, not loading
        started = time.perf_counter()
        results = endpoint.generate(requests)
        elapsed = time.perf_counter() - started
        tokens = sum(r.completion_tokens or 0 for r in results)
        rows.append({"batch_size": batch_size, "prompts": n_prompts, "tokens": tokens,
                     "seconds": elapsed, "tokens_per_s": tokens / elapsed})  # fmt: skip
        print(f"  batch_size={batch_size:<3} {tokens} tokens in {elapsed:6.2f}s: {tokens / elapsed:8.1f} tokens/s",
              flush=True)  # fmt: skip
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / base
    return rows


def _print_openai_table(results: dict) -> None:
    print("\n| concurrency | requests | limit c/L (req/s) | endpoint req/s | fraction | CPU ms/request "
          "| bare client req/s | fraction | CPU ms/request | cached re-run calls/s | load avg |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["openai"]:  # type: ignore[union-attr]
        print(f"| {r['concurrency']} | {r['requests']} | {r['limit_rps']:.0f} | {r['endpoint_rps']:.1f} | "
              f"{r['endpoint_fraction']:.2f} | {r['endpoint_cpu_ms_per_request']:.2f} | {r['raw_client_rps']:.1f} | "
              f"{r['raw_client_fraction']:.2f} | {r['raw_client_cpu_ms_per_request']:.2f} | "
              f"{r['cached_rerun_calls_per_s']:.0f} | {r['load_average_1m']:.1f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--waves", type=int, default=40, help="requests = concurrency x waves (at least 30)")
    parser.add_argument("--hf-batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--hf-prompts", type=int, default=64)
    parser.add_argument("--hf-max-tokens", type=int, default=64)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--skip-openai", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, python {platform.python_version()}")  # fmt: skip
    results: dict[str, object] = {"date": datetime.now(UTC).isoformat(), "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-endpoints-") as tmp:
        if not args.skip_openai:
            transport = "aiohttp" if USE_AIOHTTP else "httpx"
            print(f"openai backend, fixed-latency server L = {args.latency * 1000:.0f} ms, {transport} transport")
            results["transport"] = transport
            results["openai"] = bench_openai(args.latency, args.concurrency, args.waves, Path(tmp))
        if not args.skip_hf:
            print(f"hf backend, tiny student, {args.hf_prompts} prompts x {args.hf_max_tokens} new tokens (greedy)")
            results["hf"] = bench_hf(args.hf_batch_sizes, args.hf_prompts, args.hf_max_tokens, Path(tmp))

    if "openai" in results:
        _print_openai_table(results)
    if "hf" in results:
        print("\n| batch size | generated tokens | seconds | tokens/s | vs one at a time |")
        print("|---:|---:|---:|---:|---:|")
        for r in results["hf"]:  # type: ignore[union-attr]
            print(f"| {r['batch_size']} | {r['tokens']} | {r['seconds']:.2f} | {r['tokens_per_s']:.1f} | {r['speedup']:.1f}x |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
