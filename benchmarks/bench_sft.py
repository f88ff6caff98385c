"""SFT throughput: ORION's Dagster Pipes path vs a plain TRL script, same model, data and settings.

    python benchmarks/bench_sft.py [--steps 100] [--batch-size 4] [--repeats 8] [--threads 1] [--json OUT.json]

Both sides train the tiny student (random Qwen2 + BPE tokenizer built from GSM8K train text) with LoRA on the same
GSM8K-solution SFT examples (question as prompt, the solution ending in \\boxed{} as completion), same max_length,
batch size, learning rate, seed, steps, fp32 on CPU, no gradient checkpointing, logging every step:

* ``pipes``: ``dg.materialize`` of an asset that calls ``orion_assets.io.sft_pipes.run_sft_with_pipes`` (a
  ``PipesSubprocessClient`` launching ``python -m orion_assets.training.main``; the per-step log streamed
  to Dagster, a sqlite Dagster instance in a temporary DAGSTER_HOME, as under ``dagster dev``);
* ``plain``: this file run as ``--plain-worker``: a plain TRL script (``SFTTrainer`` on the conversational
  prompt-completion dataset, TRL doing its own tokenization) in a subprocess.

Throughput = input tokens (prompt + completion, no padding: ``num_input_tokens_seen`` with
``include_num_input_tokens_seen="non_padding"``) / seconds from ``on_train_begin`` to ``on_train_end`` -- the
same callback timing on both sides, so model loading, tokenization, process start-up and Dagster overhead are
excluded; the wall time of each run (process start to exit, or the whole ``materialize``) is reported too, and so
are tokens per CPU-second of the training process (and, for the Pipes side, with the Dagster process's CPU time of
the whole materialize added).  The sides alternate (pipes, plain, plain, pipes, ...) so that load from other
processes on the machine hits both alike; reported: best-of-N and median ratios, and the per-repeat paired ratios
(pipes over the plain run next to it) with their mean and standard error.

Both training processes run with ``OMP_NUM_THREADS=1`` by default (``--threads``): on a 2-core machine shared with
other work, two OpenMP threads spin-wait for each other and both throughput and CPU time swing by 2-5x between
runs; one thread is faster there and stable enough to compare.
"""

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO / "orion_assets" / "data" / "train" / "gsm8k_train.jsonl"
INSTRUCTION = "Reason step by step and put the final answer in \\boxed{}."
TOKENIZER_RECORDS = 300


def _gsm8k(n: int) -> list[dict]:
    out = []
    with GSM8K.open(encoding="utf-8") as f:
        for line in f:
            if len(out) >= n:
                break
            out.append(json.loads(line))
    return out


def _cot(answer: str) -> str:
    body, final = answer.split("####")
    return re.sub(r"<<[^>]*>>", "", body).strip() + f"\nThe final answer is \\boxed{{{final.strip()}}}."


def prepare(workdir: Path, n_examples: int) -> tuple[str, str, str]:
    """(model path, model hash, parquet path)."""
    from orion_assets.training import write_sft_parquet
    from orion_assets.training.student import build_tiny_student

    recs = _gsm8k(max(TOKENIZER_RECORDS, n_examples))
    built = build_tiny_student(
        [t for r in recs[:TOKENIZER_RECORDS] for t in (r["question"], r["answer"])], workdir / "models"
    )
    rows = [
        {
            "sft_example_id": f"gsm8k-{i}",
            "prompt": [{"role": "user", "content": f"{r['question']}\n{INSTRUCTION}"}],
            "completion": [{"role": "assistant", "content": _cot(r["answer"])}],
        }
        for i, r in enumerate(recs[:n_examples])
    ]
    data = write_sft_parquet(rows, workdir / "sft.parquet")
    return str(built.path), built.config_hash, str(data)


# ----------------------------------------------------------------------------------------------------------------
# the plain TRL script (run in its own process)


def plain_worker(cfg: dict) -> dict:
    t_wall = time.perf_counter()
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t0, self.c0, self.n0 = time.perf_counter(), time.process_time(), state.num_input_tokens_seen

        def on_train_end(self, args, state, control, **kw):
            self.t1, self.c1, self.n1 = time.perf_counter(), time.process_time(), state.num_input_tokens_seen

    rows = pq.read_table(cfg["dataset_path"], columns=["prompt", "completion"]).to_pylist()
    dataset = Dataset.from_list(rows)
    tokenizer = AutoTokenizer.from_pretrained(cfg["base_model_path"])
    model = AutoModelForCausalLM.from_pretrained(cfg["base_model_path"], dtype=torch.float32)
    args = SFTConfig(
        output_dir=cfg["output_dir"],
        max_length=cfg["max_length"],
        completion_only_loss=True,
        per_device_train_batch_size=cfg["batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=cfg["learning_rate"],
        max_steps=cfg["max_steps"],
        seed=cfg["seed"],
        data_seed=cfg["seed"],
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        activation_checkpointing=False,
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg["save_steps"],
        save_total_limit=2,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=True,
    )
    timer = Timer()
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=cfg["lora_r"],
            lora_alpha=cfg["lora_alpha"],
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            task_type="CAUSAL_LM",
        ),
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    trainer.save_model(str(Path(cfg["output_dir"]) / "final"))
    tokens, seconds = timer.n1 - timer.n0, timer.t1 - timer.t0
    return {
        "steps": trainer.state.global_step,
        "train_tokens": tokens,
        "train_seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "train_cpu_seconds": timer.c1 - timer.c0,
        "worker_wall_seconds": time.perf_counter() - t_wall,
    }


def run_plain(cfg: dict, workdir: Path, i: int) -> dict:
    cfg = {**cfg, "output_dir": str(workdir / f"plain-{i}")}
    cfg_file = workdir / f"plain-{i}.json"
    cfg_file.write_text(json.dumps(cfg))
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--plain-worker", str(cfg_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **cfg["env"]},
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"plain TRL worker failed:\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"mode": "plain", "wall_seconds": wall, "orchestrator_cpu_seconds": 0.0, **out}


# ----------------------------------------------------------------------------------------------------------------
# the ORION path: dg.materialize -> run_sft_with_pipes -> sft_main


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_pipes(cfg: dict, workdir: Path, i: int, instance) -> dict:
    import dagster as dg

    from orion_assets.io.sft_pipes import run_sft_with_pipes
    from orion_assets.training import TrainParams

    params = TrainParams(
        base_model_path=cfg["base_model_path"],
        dataset_path=cfg["dataset_path"],
        output_dir=str(workdir / f"pipes-{i}"),
        max_length=cfg["max_length"],
        max_steps=cfg["max_steps"],
        per_device_train_batch_size=cfg["batch_size"],
        learning_rate=cfg["learning_rate"],
        seed=cfg["seed"],
        save_steps=cfg["save_steps"],
        lora_r=cfg["lora_r"],
        lora_alpha=cfg["lora_alpha"],
        device="cpu",
        resume=False,
        base_model_hash=cfg["base_model_hash"],
    )
    got: dict = {}

    @dg.asset(name="bench_student_checkpoint")
    def bench_student_checkpoint(context: dg.AssetExecutionContext, pipes_subprocess_client: dg.PipesSubprocessClient):
        launcher = ["{python}", "-m", "orion_assets.training.main"]
        outcome = run_sft_with_pipes(context, pipes_subprocess_client, params, launcher, env=cfg["env"])
        got.update(outcome.result)
        return dg.MaterializeResult(metadata=outcome.metadata)

    t, c = time.perf_counter(), _cpu()
    res = dg.materialize(
        [bench_student_checkpoint],
        instance=instance,
        resources={"pipes_subprocess_client": dg.PipesSubprocessClient(cwd=str(REPO))},
        raise_on_error=True,
    )
    wall, orchestrator_cpu = time.perf_counter() - t, _cpu() - c
    assert res.success
    return {
        "mode": "pipes",
        "wall_seconds": wall,
        "steps": got["steps"],
        "train_tokens": got["train_tokens"],
        "train_seconds": got["train_seconds"],
        "tokens_per_second": got["train_tokens_per_second"],
        "train_cpu_seconds": got["train_cpu_seconds"],
        "worker_wall_seconds": got["wall_seconds"],
        "orchestrator_cpu_seconds": orchestrator_cpu,  # the Dagster process, whole materialize (start-up included)
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=8, help="runs per side")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch/OpenMP threads of both training processes (OMP_NUM_THREADS); 0 = torch's default. One thread "
        "keeps CPU time free of OpenMP spin-waiting when other processes compete for the cores",
    )
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--plain-worker", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.plain_worker:
        print(json.dumps(plain_worker(json.loads(a.plain_worker.read_text()))), flush=True)
        return 0

    import dagster as dg
    import torch

    tmp = tempfile.TemporaryDirectory(prefix="bench_sft_")
    workdir = a.workdir or Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    dagster_home = workdir / "dagster_home"
    dagster_home.mkdir(exist_ok=True)
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    model_path, model_hash, data_path = prepare(workdir, a.steps * a.batch_size)
    cfg = {
        "base_model_path": model_path,
        "base_model_hash": model_hash,
        "dataset_path": data_path,
        "max_length": a.max_length,
        "max_steps": a.steps,
        "batch_size": a.batch_size,
        "learning_rate": 1e-3,
        "seed": 0,
        "save_steps": a.steps,  # one checkpoint, at the end, on both sides
        "lora_r": 16,
        "lora_alpha": 32,
        "env": {"OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)} if a.threads > 0 else {},
    }
    print(f"tiny student {model_path}; {a.steps * a.batch_size} examples; steps={a.steps} batch={a.batch_size}")
    print(f"threads={a.threads or torch.get_num_threads()} cpus={os.cpu_count()} load={os.getloadavg()}")

    runs: list[dict] = []
    with dg.instance_for_test(temp_dir=str(dagster_home)) as instance:
        for r in range(a.repeats):
            order = ("pipes", "plain") if r % 2 == 0 else ("plain", "pipes")
            for mode in order:
                run = run_pipes(cfg, workdir, r, instance) if mode == "pipes" else run_plain(cfg, workdir, r)
                runs.append(run)
                print(
                    f"  {mode:5s} #{r}: {run['tokens_per_second']:8.1f} tok/s  train {run['train_seconds']:6.2f} s  "
                    f"cpu {run['train_cpu_seconds']:6.2f} s  tokens {run['train_tokens']}  steps {run['steps']}  "
                    f"wall {run['wall_seconds']:6.2f} s  load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )

    for x in runs:
        x["cpu_tokens_per_second"] = x["train_tokens"] / x["train_cpu_seconds"]

    def agg(fn, mode: str, key: str) -> float:
        return fn(x[key] for x in runs if x["mode"] == mode)

    def pair(r: int, mode: str) -> dict:
        return next(x for x in runs[2 * r : 2 * r + 2] if x["mode"] == mode)

    summary = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}, {a.threads or torch.get_num_threads()} threads",
        "config": cfg | {"examples": a.steps * a.batch_size, "repeats": a.repeats},
        "runs": runs,
    }
    for mode in ("pipes", "plain"):
        summary[f"{mode}_best_tokens_per_second"] = agg(max, mode, "tokens_per_second")
        summary[f"{mode}_median_tokens_per_second"] = agg(statistics.median, mode, "tokens_per_second")
        summary[f"{mode}_median_cpu_tokens_per_second"] = agg(statistics.median, mode, "cpu_tokens_per_second")
        summary[f"{mode}_median_wall_seconds"] = agg(statistics.median, mode, "wall_seconds")
    summary["ratio_best"] = summary["pipes_best_tokens_per_second"] / summary["plain_best_tokens_per_second"]
    summary["ratio_median"] = summary["pipes_median_tokens_per_second"] / summary["plain_median_tokens_per_second"]
    summary["ratio_cpu"] = (
        summary["pipes_median_cpu_tokens_per_second"] / summary["plain_median_cpu_tokens_per_second"]
    )
    # conservative: charge the Dagster process's CPU of the whole materialize (start-up included) to training
    incl = statistics.median(
        x["train_tokens"] / (x["train_cpu_seconds"] + x["orchestrator_cpu_seconds"])
        for x in runs
        if x["mode"] == "pipes"
    )
    summary["pipes_median_cpu_tokens_per_second_incl_dagster"] = incl
    summary["ratio_cpu_incl_dagster"] = incl / summary["plain_median_cpu_tokens_per_second"]
    # each repeat's pipes run against the plain run next to it (back to back, under similar load)
    summary["paired_ratios"] = [
        pair(r, "pipes")["tokens_per_second"] / pair(r, "plain")["tokens_per_second"] for r in range(a.repeats)
    ]
    pr = summary["paired_ratios"]
    summary["paired_ratio_mean"] = statistics.fmean(pr)
    summary["paired_ratio_stderr"] = statistics.stdev(pr) / len(pr) ** 0.5 if len(pr) > 1 else float("nan")
    summary["orchestrator_cpu_seconds_median"] = agg(statistics.median, "pipes", "orchestrator_cpu_seconds")
    print(
        "tokens/s (wall clock, training loop)   pipes   plain   ratio\n"
        f"  best of {a.repeats}                          {summary['pipes_best_tokens_per_second']:7.0f} "
        f"{summary['plain_best_tokens_per_second']:7.0f}   {summary['ratio_best']:.3f}\n"
        f"  median                             {summary['pipes_median_tokens_per_second']:7.0f} "
        f"{summary['plain_median_tokens_per_second']:7.0f}   {summary['ratio_median']:.3f}\n"
        f"tokens per CPU-second (median)       {summary['pipes_median_cpu_tokens_per_second']:7.0f} "
        f"{summary['plain_median_cpu_tokens_per_second']:7.0f}   {summary['ratio_cpu']:.3f}\n"
        f"  + Dagster process CPU              {incl:7.0f} "
        f"{summary['plain_median_cpu_tokens_per_second']:7.0f}   {summary['ratio_cpu_incl_dagster']:.3f}\n"
        f"paired ratios: {' '.join(f'{x:.3f}' for x in summary['paired_ratios'])}  "
        f"mean {summary['paired_ratio_mean']:.3f} +- {summary['paired_ratio_stderr']:.3f} (std. error)\n"
        f"median wall s (process start to exit / whole materialize): pipes "
        f"{summary['pipes_median_wall_seconds']:.1f}  plain {summary['plain_median_wall_seconds']:.1f}; "
        f"Dagster process CPU per materialize {summary['orchestrator_cpu_seconds_median']:.2f} s"
    )
    if a.json:
        a.json.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
