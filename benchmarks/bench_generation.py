"""Generation speed on a real model: the hf backend against a plain batched ``model.generate`` script.

The same GSM8K train problems with the project's solve prompt, sampled at T = 0.7, through

* **backend**: ``HFEndpoint.generate`` with a real call cache (a DuckDB store in a temp dir, one file
  per run), so its overhead (cache lookup, chat template, sorting, batching, decoding, cache writes)
  is in the timing;
* **plain**: a plain script on the same model object: chat template, prompts sorted by length,
  batches of the same size with left padding, ``torch.manual_seed`` per batch, ``model.generate``,
  decode. It uses the backend's per-batch seeds, so both sides sample the same tokens (checked:
  "same text");
* **variants** of the plain script with what transformers offers beyond plain generate:
  ``static`` (``cache_implementation="static"``), ``compile`` (static cache + ``torch.compile``
  through ``CompileConfig``), ``eager`` (``attn_implementation="eager"`` instead of SDPA),
  ``bf16`` (a bfloat16 copy of the model), ``cb`` (continuous batching, ``model.generate_batch``).

Every arm runs once per repeat, the arms interleaved (the order reversed on odd repeats) so that
the machine's load falls on all alike; ratios are to the plain arm of the same repeat. Model
loading and one short warm-up generation are outside the timing. Generated tokens count the
completion tokens (up to and including the first end-of-turn), the same way on every arm.

    .venv/bin/python benchmarks/bench_generation.py                          # backend vs plain, batch 8 and 16
    .venv/bin/python benchmarks/bench_generation.py --threads 1 2 --max-tokens 64
    .venv/bin/python benchmarks/bench_generation.py --arms plain static eager bf16 --batch-sizes 8
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import CompileConfig, ContinuousBatchingConfig, GenerationConfig  # noqa: E402

from orion_assets.llm import GenerationRequest, SamplingParams, hf_backend  # noqa: E402
from orion_assets.llm.hf_backend import HFEndpoint, batch_seed  # noqa: E402
from orion_assets.method import prompts  # noqa: E402
from orion_assets.profiles.schema import EndpointConfig  # noqa: E402
from orion_assets.store import Store  # noqa: E402

DEFAULT_MODEL = Path("/work/cache/smollm2-135m-instruct")
TRAIN_FILE = REPO_ROOT / "orion_assets" / "data" / "train" / "gsm8k_train.jsonl"
ARMS = ("backend", "plain", "static", "compile", "eager", "bf16", "cb")


def _requests(n: int, max_tokens: int, seed: int) -> list[GenerationRequest]:
    with TRAIN_FILE.open(encoding="utf-8") as handle:
        questions = [json.loads(line)["question"] for _, line in zip(range(n), handle, strict=False)]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.7, top_p=1.0, seed=seed)
    return [GenerationRequest(prompts.messages("solve", problem=q), params) for q in questions]


class Plain:
    """The plain script: what one would write by hand around ``model.generate``."""

    def __init__(self, model: Any, tokenizer: Any, eos_ids: list[int]):
        self.model, self.tokenizer, self.eos_ids = model, tokenizer, eos_ids
        self.models: dict[str, Any] = {"plain": model}

    def model_for(self, arm: str) -> Any:
        if arm not in self.models:
            if arm == "bf16":
                self.models[arm] = copy.deepcopy(self.model).to(torch.bfloat16)
            elif arm == "eager":
                self.models[arm] = copy.deepcopy(self.model)
                self.models[arm].set_attn_implementation("eager")
            else:
                self.models[arm] = self.model
        return self.models[arm]

    def _kwargs(self, arm: str, params: SamplingParams) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens, "do_sample": True, "temperature": params.temperature,
            "top_p": params.top_p, "pad_token_id": self.tokenizer.pad_token_id, "eos_token_id": self.eos_ids,
        }  # fmt: skip
        if arm in ("static", "compile"):
            kwargs["cache_implementation"] = "static"
        if arm == "compile":
            config = CompileConfig(dynamic=False, mode="default", fullgraph=False)
            config._compile_all_devices = True  # transformers compiles on CUDA-like devices only by default
            kwargs["compile_config"] = config
        else:
            kwargs["disable_compile"] = True
        return kwargs

    def _rows(self, generated: list[list[int]]) -> list[tuple[str, int]]:
        out = []
        for row in generated:
            end = next((i for i, token in enumerate(row) if token in self.eos_ids), None)
            tokens = row if end is None else row[:end]
            out.append((self.tokenizer.decode(tokens, skip_special_tokens=True), len(row) if end is None else end + 1))
        return out

    def run(self, arm: str, requests: list[GenerationRequest], call_ids: list[str], batch_size: int) -> dict[str, tuple[str, int]]:
        """Texts and completion token counts by call id."""
        tok, model, params = self.tokenizer, self.model_for(arm), requests[0].params
        texts = [tok.apply_chat_template(list(r.messages), add_generation_prompt=True, tokenize=False) for r in requests]
        ids = tok(texts, add_special_tokens=False)["input_ids"]
        order = sorted(range(len(requests)), key=lambda i: (len(ids[i]), call_ids[i]))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        results: dict[str, tuple[str, int]] = {}
        if arm == "cb":
            return self._run_cb(model, params, ids, call_ids, batches)
        for batch in batches:
            encoded = tok([texts[i] for i in batch], add_special_tokens=False, padding=True, return_tensors="pt")
            torch.manual_seed(batch_seed(params, [call_ids[i] for i in batch]))
            with torch.inference_mode():
                generated = model.generate(**encoded, **self._kwargs(arm, params))
            rows = self._rows(generated[:, encoded["input_ids"].shape[1] :].tolist())
            results.update({call_ids[i]: row for i, row in zip(batch, rows, strict=True)})
        return results

    def _run_cb(self, model: Any, params: SamplingParams, ids: list[list[int]], call_ids: list[str],
                batches: list[list[int]]) -> dict[str, tuple[str, int]]:  # fmt: skip
        """Continuous batching: all prompts at once, at most ``batch_size`` decoding together."""
        config = GenerationConfig(
            max_new_tokens=params.max_tokens, do_sample=True, temperature=params.temperature, top_p=params.top_p,
            eos_token_id=self.eos_ids, pad_token_id=self.tokenizer.pad_token_id,
        )  # fmt: skip
        cb = ContinuousBatchingConfig(max_requests_per_batch=len(batches[0]), seed=batch_seed(params, call_ids))
        order = [i for batch in batches for i in batch]
        outputs = model.generate_batch([ids[i] for i in order], generation_config=config,
                                       continuous_batching_config=cb, warmup=False)  # fmt: skip
        results = {}
        for i, output in zip(order, outputs.values(), strict=True):
            results[call_ids[i]] = self._rows([list(output.generated_tokens)])[0]
        return results


def _timed(fn: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def bench(args: argparse.Namespace, tmp: Path) -> list[dict]:
    rows: list[dict] = []
    endpoints = {}
    # Every arm runs at the thread count of its cell: the backend's own choice for small models
    # (hf_backend.generation_threads) is switched off here, and measured by the threads cells.
    hf_backend.SMALL_MODEL_PARAMETERS = 0
    torch.set_num_threads(args.threads[0])
    for batch_size in args.batch_sizes:
        cfg = EndpointConfig(backend="hf", batch_size=batch_size, device="cpu", dtype="float32")
        endpoint = HFEndpoint(cfg, Store(tmp / f"warmup-b{batch_size}.duckdb"), role="student", model_path=str(args.model))
        endpoint.generate(_requests(2, 8, seed=-1))  # load the model, warm up (outside the timing)
        endpoint.store = Store(tmp / f"b{batch_size}.duckdb")
        endpoints[batch_size] = endpoint
    model, tokenizer, _ = endpoints[args.batch_sizes[0]]._load()
    plain = Plain(model, tokenizer, sorted(endpoints[args.batch_sizes[0]]._eos_ids(model, tokenizer)))
    for arm in args.arms:
        if arm not in ("backend", "plain"):  # build the variant's model, and compile it if asked, untimed
            for batch_size in args.batch_sizes:
                reqs = _requests(batch_size, 8, seed=-2)
                ids = [endpoints[batch_size].key_for(r) for r in reqs]
                _, seconds, _ = _timed(lambda arm=arm, reqs=reqs, ids=ids, b=batch_size: plain.run(arm, reqs, ids, b))
                print(f"  warm-up {arm} batch {batch_size}: {seconds:.1f}s", flush=True)
    for repeat in range(args.repeats):
        for batch_size in args.batch_sizes:
            for threads in args.threads:
                torch.set_num_threads(threads)
                seed = repeat * 1000 + batch_size * 10 + threads  # same seed, hence same work, for every arm
                requests = _requests(args.prompts, args.max_tokens, seed)
                endpoint = endpoints[batch_size]
                call_ids = [endpoint.key_for(r) for r in requests]
                arms = list(args.arms) if repeat % 2 == 0 else list(reversed(args.arms))
                outputs: dict[str, dict[str, tuple[str, int]]] = {}
                cell: list[dict] = []
                for arm in arms:
                    load = os.getloadavg()[0]
                    if arm == "backend":
                        endpoint.store = Store(tmp / f"r{repeat}-b{batch_size}-t{threads}.duckdb")
                        results, wall, cpu = _timed(lambda e=endpoint, r=requests: e.generate(r))
                        assert all(r.ok for r in results), [r.error for r in results if not r.ok][:1]
                        outputs[arm] = {r.call_id: (r.text or "", r.completion_tokens or 0) for r in results}
                    else:
                        outputs[arm], wall, cpu = _timed(
                            lambda a=arm, r=requests, c=call_ids, b=batch_size: plain.run(a, r, c, b)
                        )
                    tokens = sum(n for _, n in outputs[arm].values())
                    cell.append({"arm": arm, "repeat": repeat, "batch_size": batch_size, "threads": threads,
                                 "prompts": len(requests), "tokens": tokens, "seconds": wall, "cpu_seconds": cpu,
                                 "tokens_per_s": tokens / wall, "load_1m": load})  # fmt: skip
                base = next((c for c in cell if c["arm"] == "plain"), None)
                for c in cell:
                    if base is not None:
                        c["ratio_to_plain"] = c["tokens_per_s"] / base["tokens_per_s"]
                        c["same_text_as_plain"] = sum(
                            outputs[c["arm"]][k][0] == outputs["plain"][k][0] for k in outputs["plain"]
                        )
                    print(f"  r{repeat} b={batch_size:<2} t={threads} {c['arm']:<8} {c['tokens']:5d} tokens "
                          f"{c['seconds']:6.1f}s {c['tokens_per_s']:6.1f} tok/s  cpu/wall {c['cpu_seconds'] / c['seconds']:.2f}"
                          f"  ratio {c.get('ratio_to_plain', float('nan')):.3f}  same text {c.get('same_text_as_plain', '-')}"
                          f"/{c['prompts']}  load {c['load_1m']:.1f}", flush=True)  # fmt: skip
                rows += cell
    return rows


def _summary(rows: list[dict]) -> None:
    print("\n| arm | batch | threads | runs | tokens/run | tokens/s (median) | ratio to plain (median; runs) "
          "| tokens per CPU-second (median) | same text as plain | load (1 min) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    keys = sorted({(r["batch_size"], r["threads"], r["arm"]) for r in rows}, key=lambda k: (k[0], k[1], ARMS.index(k[2])))
    for batch_size, threads, arm in keys:
        runs = [r for r in rows if (r["batch_size"], r["threads"], r["arm"]) == (batch_size, threads, arm)]
        med = sorted(r["tokens_per_s"] for r in runs)[len(runs) // 2]
        ratios = [r["ratio_to_plain"] for r in runs if "ratio_to_plain" in r]
        ratio = (f"{sorted(ratios)[len(ratios) // 2]:.3f} ({', '.join(f'{x:.2f}' for x in ratios)})" if ratios else "-")
        same = ", ".join(str(r["same_text_as_plain"]) for r in runs if "same_text_as_plain" in r) or "-"
        per_cpu = sorted(r["tokens"] / r["cpu_seconds"] for r in runs)[len(runs) // 2]
        loads = ", ".join(f"{r['load_1m']:.1f}" for r in runs)
        print(f"| {arm} | {batch_size} | {threads} | {len(runs)} | {runs[0]['tokens']} | {med:.1f} | {ratio} | "
              f"{per_cpu:.1f} | {same} / {runs[0]['prompts']} | {loads} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=["backend", "plain"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if "plain" not in args.arms:
        args.arms.append("plain")
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{args.model.name}, {args.prompts} GSM8K prompts x {args.max_tokens} new tokens (T=0.7), "
          f"threads {args.threads}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-generation-") as tmp:
        rows = bench(args, Path(tmp))
    _summary(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
