"""GPU check: ORION's SFT path against plain TRL, hf-backend generation, and the tiny graph on CUDA.

    .venv/bin/python benchmarks/gpu_check.py --out benchmarks/out/gpu_check.json          # on a CUDA machine
    .venv/bin/python benchmarks/gpu_check.py --dry-cpu --out /tmp/gpu_check_dry.json      # the same code, tiny, CPU

Four parts (``--parts sft gen graph handover``, all by default; ``handover`` is ``gpu_handover.py``: the managed
``transformers serve`` path and the hf backend, timed, with the device memory in use at each hand-over):

* ``sft``: a random-initialized Qwen2-shaped student of about 100M parameters (hidden 768, 12 layers, MLP 3072,
  12 heads, 4 KV heads, a byte-level BPE tokenizer trained on GSM8K train text: ``build_tiny_student`` with
  bigger sizes; nothing is downloaded) is trained on the same SFT examples (GSM8K train question as prompt, its
  solution ending in ``\\boxed{}`` as completion) by

  - ``pipes``: ORION's path, what ``student_checkpoint`` runs: ``dg.materialize`` of an asset calling
    ``orion_assets.io.sft_pipes.run_sft_with_pipes`` (``PipesSubprocessClient`` ->
    ``python -m orion_assets.training.main``), ``device="cuda"``, bf16 mixed precision (ORION's default on
    CUDA: a LoRA base is loaded in bf16, a full fine-tune keeps fp32 master weights), gradient checkpointing on
    (ORION's default on CUDA);
  - ``plain``: a plain TRL ``SFTTrainer`` script in a subprocess (this file with ``--plain-worker``), the same
    model, data, LoRA/full setting, batch size, learning rate, seed, steps, bf16, gradient checkpointing and
    load dtype, TRL doing its own tokenization of the conversational prompt-completion Parquet.

  Throughput on both sides is input tokens (no padding) over ``on_train_begin`` -> ``on_train_end``; the sides
  alternate (``--repeats``), and the report gives the median tokens/s of each and their ratio, for LoRA and for
  full fine-tuning (``--sft-modes``).
* ``gen``: the hf backend (``make_endpoint`` with ``backend="hf"``, ``device="cuda"``, ``dtype="bfloat16"``) on
  the same 100M student: generated tokens/s at batch size 1 and 32 (greedy, ``--gen-max-tokens`` new tokens;
  model load outside the timing).
* ``graph``: ``orion run`` (every asset, every partition) on a profile that extends ``tiny`` with
  ``[endpoints.student] device = "cuda"`` and ``dtype = "bfloat16"`` (SFT picks CUDA by itself:
  ``TrainParams.device = "auto"``); the exit code, wall time, per-step times, and the device/bf16 each SFT run
  reported in its ``result.json``.

Without a CUDA device the script stops at once with a message (exit code 3), unless ``--dry-cpu``: then every
part runs on the CPU in float32 with a tiny model (hidden 64, 2 layers) and a few steps, so the code paths are
known to work before GPU time is spent. Results go to ``--out`` (JSON) and a summary to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_sft import _cot, _gsm8k  # noqa: E402  (the same GSM8K rows and CoTs as the SFT benchmark)
from gpu_handover import part_handover  # noqa: E402  (the managed server and the hf backend, hand-over memory)

GSM8K = REPO / "orion_assets" / "data" / "train" / "gsm8k_train.jsonl"
INSTRUCTION = "Reason step by step and put the final answer in \\boxed{}."
TOKENIZER_RECORDS = 2000
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

STUDENT_100M = {"vocab_size": 4096, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                "num_attention_heads": 12, "num_key_value_heads": 4, "max_position_embeddings": 4096}  # fmt: skip
STUDENT_DRY = {"vocab_size": 2048, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096}  # fmt: skip

GRAPH_PROFILE = """\
extends = "tiny"
description = "gpu_check: the tiny graph with the hf student on {device}."

[endpoints.student]
device = "{device}"
dtype = "{dtype}"
"""


def build_student(work: Path, sizes: dict[str, int]) -> tuple[str, str, int]:
    """(model path, config hash, parameter count) of a random Qwen2 student with a locally trained tokenizer."""
    from orion_assets.training.student import build_tiny_student

    recs = _gsm8k(TOKENIZER_RECORDS)
    built = build_tiny_student([t for r in recs for t in (r["question"], r["answer"])], work / "models", **sizes)
    from transformers import AutoConfig, AutoModelForCausalLM

    with _quiet():
        config = AutoConfig.from_pretrained(built.path)
        import torch

        with torch.device("meta"):
            params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    return str(built.path), built.config_hash, params


class _quiet:
    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc: object) -> None:
        self._w.__exit__(*exc)


def write_sft_data(work: Path, n_examples: int) -> str:
    from orion_assets.training import write_sft_parquet

    recs = _gsm8k(n_examples)
    rows = [
        {
            "sft_example_id": f"gsm8k-{i}",
            "prompt": [{"role": "user", "content": f"{r['question']}\n{INSTRUCTION}"}],
            "completion": [{"role": "assistant", "content": _cot(r["answer"])}],
        }
        for i, r in enumerate(recs)
    ]
    return str(write_sft_parquet(rows, work / "sft.parquet"))


# -- the plain TRL script (own process) ----------------------------------------------------------


def plain_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    t_wall = time.perf_counter()
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            if cfg["cuda"]:
                torch.cuda.synchronize()
            self.t0, self.n0 = time.perf_counter(), state.num_input_tokens_seen

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
            if cfg["cuda"]:
                torch.cuda.synchronize()
            self.t1, self.n1 = time.perf_counter(), state.num_input_tokens_seen

    rows = pq.read_table(cfg["dataset_path"], columns=["prompt", "completion"]).to_pylist()
    tokenizer = AutoTokenizer.from_pretrained(cfg["base_model_path"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|im_end|>"
    # As ORION loads it: a LoRA base in bf16 when training in bf16, fp32 master weights for a full fine-tune.
    dtype = torch.bfloat16 if (cfg["bf16"] and cfg["lora"]) else torch.float32
    model = AutoModelForCausalLM.from_pretrained(cfg["base_model_path"], dtype=dtype)
    peft_config = None
    if cfg["lora"]:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, bias="none",
                                 task_type="CAUSAL_LM")  # fmt: skip
    args = SFTConfig(
        output_dir=cfg["output_dir"], max_length=cfg["max_length"], completion_only_loss=True,
        per_device_train_batch_size=cfg["batch_size"], gradient_accumulation_steps=1,
        learning_rate=cfg["learning_rate"], max_steps=cfg["max_steps"], seed=0, data_seed=0,
        bf16=cfg["bf16"], fp16=False, use_cpu=not cfg["cuda"], gradient_checkpointing=cfg["gradient_checkpointing"],
        logging_steps=1, save_strategy="steps", save_steps=cfg["max_steps"], save_total_limit=2,
        include_num_input_tokens_seen="non_padding", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    timer = Timer()
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[timer])  # fmt: skip
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    trainer.save_model(str(Path(cfg["output_dir"]) / "final"))
    tokens, seconds = timer.n1 - timer.n0, timer.t1 - timer.t0
    return {"steps": trainer.state.global_step, "train_tokens": int(tokens), "train_seconds": seconds,
            "tokens_per_second": tokens / seconds, "worker_wall_seconds": time.perf_counter() - t_wall,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cfg["cuda"] else None}  # fmt: skip


def run_plain(cfg: dict[str, Any], work: Path, tag: str) -> dict[str, Any]:
    cfg = {**cfg, "output_dir": str(work / f"plain-{tag}")}
    cfg_file = work / f"plain-{tag}.json"
    cfg_file.write_text(json.dumps(cfg))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--plain-worker", str(cfg_file)], cwd=REPO, capture_output=True,
                          text=True, timeout=cfg["timeout_s"])  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"plain TRL worker failed:\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"side": "plain", "wall_seconds": time.perf_counter() - t, **out}


# -- ORION's path: dg.materialize -> run_sft_with_pipes -> sft_main ---------------------------------


def run_pipes(cfg: dict[str, Any], work: Path, tag: str, instance: Any) -> dict[str, Any]:
    import dagster as dg

    from orion_assets.io.sft_pipes import run_sft_with_pipes
    from orion_assets.training import TrainParams

    params = TrainParams(
        base_model_path=cfg["base_model_path"], dataset_path=cfg["dataset_path"], output_dir=str(work / f"pipes-{tag}"),
        lora=cfg["lora"], max_length=cfg["max_length"], max_steps=cfg["max_steps"],
        per_device_train_batch_size=cfg["batch_size"],
        learning_rate=cfg["learning_rate"], seed=0, save_steps=cfg["max_steps"], device="cuda" if cfg["cuda"] else "cpu",
        bf16=cfg["bf16"], gradient_checkpointing=cfg["gradient_checkpointing"], resume=False,
        base_model_hash=cfg["base_model_hash"],
    )  # fmt: skip
    got: dict[str, Any] = {}

    # No annotations here (this module's annotations are strings): the resource comes by key.
    @dg.asset(name="gpu_check_student_checkpoint", required_resource_keys={"pipes_subprocess_client"})
    def gpu_check_student_checkpoint(context):  # noqa: ANN001, ANN202
        outcome = run_sft_with_pipes(context, context.resources.pipes_subprocess_client, params,
                                     ["{python}", "-m", "orion_assets.training.main"])
        got.update(outcome.result)
        return dg.MaterializeResult(metadata=outcome.metadata)

    t = time.perf_counter()
    result = dg.materialize([gpu_check_student_checkpoint], instance=instance,
                            resources={"pipes_subprocess_client": dg.PipesSubprocessClient(cwd=str(REPO))},
                            raise_on_error=True)  # fmt: skip
    assert result.success
    return {"side": "pipes", "wall_seconds": time.perf_counter() - t, "steps": got["steps"],
            "train_tokens": got["train_tokens"], "train_seconds": got["train_seconds"],
            "tokens_per_second": got["train_tokens_per_second"], "device": got.get("device"), "bf16": got.get("bf16"),
            "peak_gpu_mb": got.get("peak_memory_mb")}  # fmt: skip


def part_sft(args: argparse.Namespace, work: Path, model: tuple[str, str, int], cuda: bool) -> dict[str, Any]:
    import dagster as dg

    data_path = write_sft_data(work, args.sft_steps * args.sft_batch_size)
    home = work / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    out: dict[str, Any] = {"examples": args.sft_steps * args.sft_batch_size, "steps": args.sft_steps,
                           "batch_size": args.sft_batch_size, "max_length": args.sft_max_length, "modes": {}}  # fmt: skip
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        for mode in args.sft_modes:
            cfg = {"base_model_path": model[0], "base_model_hash": model[1], "dataset_path": data_path,
                   "lora": mode == "lora", "max_length": args.sft_max_length, "max_steps": args.sft_steps,
                   "batch_size": args.sft_batch_size, "learning_rate": 1e-4 if mode == "full" else 1e-3,
                   "cuda": cuda, "bf16": cuda, "gradient_checkpointing": cuda, "timeout_s": args.part_timeout}  # fmt: skip
            runs = []
            for r in range(args.repeats):
                for side in (("pipes", "plain") if r % 2 == 0 else ("plain", "pipes")):
                    tag = f"{mode}-{r}"
                    run = run_pipes(cfg, work, tag, instance) if side == "pipes" else run_plain(cfg, work, tag)
                    runs.append(run)
                    print(f"  sft {mode:4s} {side:5s} #{r}: {run['tokens_per_second']:9.0f} tokens/s, "
                          f"{run['train_tokens']} tokens, {run['steps']} steps, wall {run['wall_seconds']:.1f} s",
                          flush=True)  # fmt: skip
            med = {s: statistics.median(x["tokens_per_second"] for x in runs if x["side"] == s) for s in ("pipes", "plain")}
            out["modes"][mode] = {
                "settings": {k: v for k, v in cfg.items() if k not in ("base_model_path", "dataset_path", "timeout_s")},
                "runs": runs,
                "pipes_median_tokens_per_second": med["pipes"],
                "plain_median_tokens_per_second": med["plain"],
                "ratio_pipes_over_plain": med["pipes"] / med["plain"],
            }
    return out


# -- hf generation -------------------------------------------------------------------------------


def part_gen(args: argparse.Namespace, work: Path, model: tuple[str, str, int], cuda: bool) -> dict[str, Any]:
    from orion_assets.llm import GenerationRequest, SamplingParams, chat, make_endpoint
    from orion_assets.profiles.schema import EndpointConfig
    from orion_assets.store import Store

    recs = _gsm8k(max(args.gen_prompts))
    params = SamplingParams(max_tokens=args.gen_max_tokens, temperature=0.0)
    rows = []
    for batch_size, n_prompts in zip(args.gen_batch_sizes, args.gen_prompts, strict=True):
        requests = [GenerationRequest(chat(("user", r["question"])), params) for r in recs[:n_prompts]]
        cfg = EndpointConfig(backend="hf", batch_size=batch_size, device="cuda" if cuda else "cpu",
                             dtype="bfloat16" if cuda else "float32")  # fmt: skip
        endpoint = make_endpoint(cfg, Store(work / f"gen-b{batch_size}.duckdb"), role="student", model_path=model[0])
        t = time.perf_counter()
        endpoint._load()  # type: ignore[attr-defined]  # time generation, not loading
        load_s = time.perf_counter() - t
        if cuda:
            import torch

            torch.cuda.synchronize()
        t = time.perf_counter()
        results = endpoint.generate(requests)
        seconds = time.perf_counter() - t
        tokens = sum(r.completion_tokens or 0 for r in results)
        errors = sum(1 for r in results if getattr(r, "error", None))
        rows.append({"batch_size": batch_size, "prompts": n_prompts, "max_new_tokens": args.gen_max_tokens,
                     "generated_tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds,
                     "load_seconds": load_s, "errors": errors})  # fmt: skip
        print(f"  gen batch {batch_size:3d}: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:,.0f} tokens/s",
              flush=True)  # fmt: skip
    return {"device": "cuda" if cuda else "cpu", "dtype": "bfloat16" if cuda else "float32", "rows": rows,
            "speedup_largest_batch": rows[-1]["tokens_per_second"] / rows[0]["tokens_per_second"]}  # fmt: skip


# -- the tiny graph ------------------------------------------------------------------------------

STEP_LINE = re.compile(r"^\[(\d+)/(\d+)\] (\S+) \.\.\. .*?(ok|FAILED)[ (]")
STEP_TIME = re.compile(r"([\d.]+)s\)")


def part_graph(args: argparse.Namespace, work: Path, cuda: bool) -> dict[str, Any]:
    device, dtype = ("cuda", "bfloat16") if cuda else ("cpu", "float32")
    root = work / "graph"
    (root / "dagster_home").mkdir(parents=True, exist_ok=True)
    (root / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    profile = root / "gpu_tiny.toml"
    profile.write_text(GRAPH_PROFILE.format(device=device, dtype=dtype), encoding="utf-8")
    env = {**os.environ, "ORION_PROFILE": str(profile), "ORION_DATA_DIR": str(root / "data"),
           "DAGSTER_HOME": str(root / "dagster_home"), "PYTHONUNBUFFERED": "1"}  # fmt: skip
    command = [sys.executable, "-m", "orion_assets.cli", "run", *(["--select", *args.graph_select] if args.graph_select else [])]
    t = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.part_timeout)
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, stdout, stderr = "timeout", exc.stdout or "", exc.stderr or ""
        stdout, stderr = (s.decode(errors="replace") if isinstance(s, bytes) else s for s in (stdout, stderr))
    wall = time.perf_counter() - t
    steps = []
    for line in stdout.splitlines():
        line = line.replace("\r\x1b[K", "")
        m = STEP_LINE.match(line)
        if m:
            tm = STEP_TIME.search(line)
            steps.append({"step": m.group(3), "status": m.group(4), "seconds": float(tm.group(1)) if tm else None})
    sft_runs = []
    for result_file in sorted((root / "data").glob("checkpoints/*/*/*/result.json")):  # <student>/<variant>/<hash>
        res = json.loads(result_file.read_text(encoding="utf-8"))
        sft_runs.append({"variant": result_file.parts[-3], "device": res.get("device"), "bf16": res.get("bf16"),
                         "steps": res.get("steps"), "tokens_per_second": res.get("train_tokens_per_second")})  # fmt: skip
    out = {"profile": profile.read_text(encoding="utf-8"), "command": " ".join(command[1:]), "exit_code": code,
           "wall_seconds": wall, "materializations": len(steps),
           "failed_steps": [s["step"] for s in steps if s["status"] != "ok"], "steps": steps, "sft_runs": sft_runs}  # fmt: skip
    if code != 0:
        out["stdout_tail"], out["stderr_tail"] = stdout[-3000:], stderr[-3000:]
    print(f"  graph: exit {code}, {len(steps)} materializations, {wall:.1f} s; SFT devices "
          f"{sorted({(r['device'], r['bf16']) for r in sft_runs}, key=str)}", flush=True)
    return out


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "gpu_check.json")
    parser.add_argument("--dry-cpu", action="store_true", help="no GPU: run every part tiny, on the CPU, in float32")
    parser.add_argument("--parts", nargs="+", choices=["sft", "gen", "graph", "handover"],
                        default=["sft", "gen", "graph", "handover"])
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed at the end)")
    parser.add_argument("--sft-modes", nargs="+", choices=["lora", "full"], default=None,
                        help="default: lora full (GPU), lora (--dry-cpu)")
    parser.add_argument("--sft-steps", type=int, default=None, help="default 200 (GPU), 3 (--dry-cpu)")
    parser.add_argument("--sft-batch-size", type=int, default=None, help="default 16 (GPU), 2 (--dry-cpu)")
    parser.add_argument("--sft-max-length", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=None, help="runs per side; default 2 (GPU), 1 (--dry-cpu)")
    parser.add_argument("--gen-batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--gen-prompts", type=int, nargs="+", default=None,
                        help="prompts per batch size; default 16 64 (GPU), 4 8 (--dry-cpu)")
    parser.add_argument("--gen-max-tokens", type=int, default=None, help="default 128 (GPU), 16 (--dry-cpu)")
    parser.add_argument("--graph-select", nargs="+", help="orion run --select these (default: the whole graph)")
    parser.add_argument("--part-timeout", type=float, default=1800, help="seconds per subprocess")
    parser.add_argument("--plain-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.plain_worker:
        print(json.dumps(plain_worker(json.loads(args.plain_worker.read_text()))), flush=True)
        return 0

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_cpu:
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False, torch "
              f"{torch.__version__}, CUDA build {torch.version.cuda}); nothing measured. Run it on a CUDA machine, or "
              "with --dry-cpu to try the same code paths tiny on the CPU.", file=sys.stderr)  # fmt: skip
        return 3
    if args.dry_cpu:
        cuda = False
    gpu = args.dry_cpu is False
    args.sft_modes = args.sft_modes or (["lora", "full"] if gpu else ["lora"])
    args.sft_steps = args.sft_steps or (200 if gpu else 3)
    args.sft_batch_size = args.sft_batch_size or (16 if gpu else 2)
    args.repeats = args.repeats or (2 if gpu else 1)
    args.gen_prompts = args.gen_prompts or ([16, 64] if gpu else [4, 8])
    args.gen_max_tokens = args.gen_max_tokens or (128 if gpu else 16)
    if len(args.gen_prompts) != len(args.gen_batch_sizes):
        parser.error("--gen-prompts needs one count per --gen-batch-sizes entry")

    import transformers
    import trl

    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "mode": "gpu" if gpu else "dry-cpu",
        "machine": {"gpu": torch.cuda.get_device_name(0) if cuda else None, "cpus": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                    "transformers": transformers.__version__, "trl": trl.__version__},  # fmt: skip
    }
    tmp = tempfile.TemporaryDirectory(prefix="orion-gpu-check-")
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        if {"sft", "gen", "handover"} & set(args.parts):
            sizes = STUDENT_100M if gpu else STUDENT_DRY
            model = build_student(work, sizes)
            report["student"] = {"sizes": sizes, "parameters": model[2], "path_hash": model[1]}
            print(f"gpu_check ({report['mode']}): student with {model[2] / 1e6:.1f}M parameters", flush=True)
        for part in args.parts:
            try:
                if part == "sft":
                    report["sft"] = part_sft(args, work, model, cuda)
                elif part == "gen":
                    report["gen"] = part_gen(args, work, model, cuda)
                elif part == "handover":
                    data = write_sft_data(work / "handover", 4 * args.sft_batch_size)
                    report["handover"] = part_handover(args, work, model, cuda, data)
                else:
                    report["graph"] = part_graph(args, work, cuda)
            except Exception as exc:  # noqa: BLE001 - one failed part must not hide the others' numbers
                report[part] = {"error": f"{type(exc).__name__}: {exc}"[-4000:]}
                print(f"  {part}: FAILED: {type(exc).__name__}: {str(exc)[-2000:]}", file=sys.stderr, flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    finally:
        tmp.cleanup()
    report["seconds"] = time.perf_counter() - started
    args.out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    print(summary(report))
    failed = [p for p in args.parts if "error" in report.get(p, {}) or
              (p == "graph" and report.get("graph", {}).get("exit_code") != 0)]  # fmt: skip
    return 1 if failed else 0


def summary(report: dict[str, Any]) -> str:
    lines = [f"gpu_check ({report['mode']}, {report['machine']['gpu'] or 'CPU'}), {report['seconds']:.0f} s"]
    sft = report.get("sft", {})
    for mode, m in sft.get("modes", {}).items():
        lines.append(f"  SFT {mode}: pipes {m['pipes_median_tokens_per_second']:,.0f} tokens/s, plain TRL "
                     f"{m['plain_median_tokens_per_second']:,.0f} tokens/s, ratio {m['ratio_pipes_over_plain']:.3f}")
    for row in report.get("gen", {}).get("rows", []):
        lines.append(f"  hf generation batch {row['batch_size']}: {row['tokens_per_second']:,.0f} tokens/s")
    graph = report.get("graph")
    if graph and "exit_code" in graph:
        lines.append(f"  tiny graph: exit {graph['exit_code']}, {graph['materializations']} materializations, "
                     f"{graph['wall_seconds']:.0f} s, SFT runs on {sorted({str(r['device']) for r in graph['sft_runs']})}")
    handover = report.get("handover")
    if handover and "memory_gib" in handover:
        lines.append(f"  handover on {handover['device']}: transformers serve {handover['server_tokens_per_second'] or 0:,.0f} "
                     f"tokens/s, SFT {handover['sft_seconds']:.0f} s, hf {handover['hf_tokens_per_second'] or 0:,.0f} "
                     f"tokens/s; memory back to baseline after {handover['memory_back_after']}")
    for part in ("sft", "gen", "graph", "handover"):
        if "error" in report.get(part, {}):
            lines.append(f"  {part}: FAILED ({report[part]['error'][:300]})")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
