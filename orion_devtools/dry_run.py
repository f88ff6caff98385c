"""A realistic dry run: the ``paper`` profile, scaled down, against simulated endpoints.

An R1-style teacher (DeepSeek API shape: ``reasoning_content``), a vLLM-style student with a
4096-token context window that serves the trained variants under their LoRA names, and a judge,
all :mod:`orion_devtools.llm_simulator` servers on loopback. The run goes the way a real one
does: build the student, generate and refine, train, restart the student server with the new
adapters, evaluate; then retrain one variant, restart again, and evaluate it again.

    python -m orion_devtools.dry_run --out /tmp/orion-dry-run

prints each phase's ``orion run`` output and a summary (yields, fallbacks, overflows, request
counts) and writes it to ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from orion_assets.serving.served_weights import checkpoint_name
from orion_assets.vocabulary import TRAINING_VARIANTS
from orion_devtools.llm_simulator import SimConfig, Simulator

REPO = Path(__file__).resolve().parents[1]
TRAINED_VARIANTS = TRAINING_VARIANTS  # the paper profile trains every one: the method, its ablations, the baselines
STUDENT_CONTEXT = 4096
KEY_ENV = "ORION_DRY_RUN_TEACHER_KEY"

PROFILE = """\
extends = "paper"
description = "Dry run: paper settings, 40 problems, 5 per benchmark, simulated endpoints."

[data]
train_limit = 40
benchmark_limit = 5

[endpoints.teacher]
base_url = "{teacher}"
model = "deepseek-reasoner"
api_key_env = "{key_env}"
concurrency = 16
max_tokens = 4096
timeout_s = 60

[endpoints.student]
base_url = "{student}"
model = "Qwen/Qwen2.5-1.5B-Instruct"
concurrency = 32
max_tokens = 2048
context_window = {context}

[endpoints.judge]
backend = "openai"
base_url = "{judge}"
model = "judge"
max_tokens = 64
temperature = 0.0
concurrency = 32

[student_model]
name = "dry"                   # partition keys dry, dry/orion, dry/orion/0
source = "build_tiny"          # offline: the tiny student's tokenizer and weights stand in

[exposure]
n = 2
max_tokens = 1024

[reflection]
max_tokens = 2048
attempt_max_tokens = 512
min_reply_tokens = 1536             # long teacher CoTs leave some prompts less: skipped and counted

[quality]
min_tokens = 16
max_tokens = 3500
max_drop_rate = 0.5

[sft]
max_length = 4096
max_steps = {max_steps}
{seeds}
per_device_train_batch_size = 2
gradient_accumulation_steps = 1
save_steps = 1

[eval]
k = 2
k_overrides = {{ aime24 = 2, amc23 = 2 }}  # profile tables merge key by key: name each
max_tokens = 2048
max_error_rate = 0.2
"""


def write_profile(path: Path, teacher: str, student: str, judge: str, max_steps: int = 2,
                  seeds: list[int] | None = None) -> Path:
    path.write_text(PROFILE.format(teacher=teacher, student=student, judge=judge, key_env=KEY_ENV,
                                   context=STUDENT_CONTEXT, max_steps=max_steps,
                                   seeds=f"seeds = {list(seeds)}" if seeds else ""), encoding="utf-8")
    return path


class DryRun:
    """The folders, environment and commands of one dry run under ``out``."""

    def __init__(self, out: Path, echo: bool = False):
        self.out = Path(out)
        self.data_dir = self.out / "data"
        self.home = self.out / "dagster_home"
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        self.profile = self.out / "dry_run.toml"
        self.echo = echo
        self.outputs: list[str] = []

    def env(self) -> dict[str, str]:
        return {**os.environ, "ORION_PROFILE": str(self.profile), "ORION_DATA_DIR": str(self.data_dir),
                "DAGSTER_HOME": str(self.home), KEY_ENV: "sk-dry-run-not-a-secret"}

    def orion(self, *args: str) -> str:
        run = subprocess.run([sys.executable, "-m", "orion_assets.cli", *args], cwd=REPO, env=self.env(),
                             capture_output=True, text=True, timeout=1800)
        self.outputs.append(run.stdout)
        if self.echo:
            print(run.stdout, end="", flush=True)
        if run.returncode != 0:
            raise RuntimeError(f"orion {' '.join(args)} failed ({run.returncode}):\n{run.stdout[-4000:]}\n{run.stderr[-6000:]}")
        return run.stdout

    def dagster(self, asset: str, partition: str) -> None:
        run = subprocess.run(
            [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "orion_assets.definitions",
             "--select", asset, "--partition", partition],
            cwd=REPO, env=self.env(), capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        if run.returncode != 0:
            raise RuntimeError(f"dagster asset materialize {asset} {partition} failed:\n{run.stderr[-6000:]}")

    def query(self, sql: str) -> list[tuple]:
        import duckdb

        with duckdb.connect(str(self.data_dir / "orion_store.duckdb"), read_only=True) as con:
            return con.sql(f"USE orion; {sql}").fetchall()

    def checkpoints(self) -> dict[str, str]:
        """``{variant: checkpoint id}`` of the first seed."""
        return dict(self.query("SELECT variant, checkpoint_id FROM student_checkpoint WHERE variant <> 'base' "
                               "AND seed = (SELECT min(seed) FROM student_checkpoint)"))

    def every_checkpoint(self) -> list[tuple[str, str]]:
        """``(variant, checkpoint id)`` of every trained checkpoint, every seed."""
        return self.query("SELECT variant, checkpoint_id FROM student_checkpoint WHERE variant <> 'base' ORDER BY ALL")


CORRECT_RATE_BY_VARIANT = {"orion": 0.5, "teacher_sft": 0.45}


def served_adapters(checkpoints: list[tuple[str, str]]) -> dict[str, Any]:
    """The simulated vLLM's adapters for ``(variant, checkpoint id)`` pairs: each under the name evaluation asks for."""
    names = {checkpoint_name(variant, checkpoint): (variant, checkpoint) for variant, checkpoint in checkpoints}
    return {"adapters": {name: c for name, (_, c) in names.items()},
            "correct_rate_by_model": {name: CORRECT_RATE_BY_VARIANT[v] for name, (v, _) in names.items()
                                      if v in CORRECT_RATE_BY_VARIANT}}


def run(out: Path, echo: bool = False, seeds: list[int] | None = None) -> dict[str, Any]:
    """The whole dry run (each variant trained with ``seeds``, default the profile's one); returns the summary (also
    written to ``out/summary.json``)."""
    dry = DryRun(out, echo=echo)
    started = time.monotonic()
    teacher_cfg = SimConfig(persona="teacher_reasoning_content", model="deepseek-reasoner", max_model_len=None,
                            reasoning_words=1000, teacher_correct_rate=0.9, seed=1)
    judge_cfg = SimConfig(persona="judge", model="judge", max_model_len=8192, seed=2)
    with Simulator(teacher_cfg) as teacher, Simulator(judge_cfg) as judge:
        # 1. The student's weights first: the student server counts tokens with its tokenizer.
        write_profile(dry.profile, teacher.base_url, "http://127.0.0.1:9/v1", judge.base_url)
        dry.orion("run", "--select", "train_problems", "student_base_model")
        (model_path,) = dry.query("SELECT path FROM student_base_model")[0]
        student_cfg = SimConfig(
            persona="student", model="Qwen/Qwen2.5-1.5B-Instruct", max_model_len=STUDENT_CONTEXT,
            tokenizer=model_path, correct_rate=0.35, correct_rate_by_model=dict(CORRECT_RATE_BY_VARIANT),
            refine_correct_rate=0.6, loop_rate=0.2, copy_rate=0.1, unsplittable_rate=0.1, seed=3,
        )  # fmt: skip
        with Simulator(student_cfg) as student:
            write_profile(dry.profile, teacher.base_url, student.base_url, judge.base_url, seeds=seeds)
            # 2. Teacher CoTs, error exposure, reflection, the gate, SFT data and checkpoints.
            dry.orion("run", "--select", "teacher_cots", "student_attempts", "student_errors", "refined_cots",
                      "baseline_cots", "cot_quality", "sft_dataset", "student_checkpoint")
            checkpoints = dry.checkpoints()
            # 3. vLLM restarted with the adapters: --lora-modules <variant>-<checkpoint id[:12]>=<checkpoint> ...
            student.restart(**served_adapters(dry.every_checkpoint()))
            dry.orion("run", "--select", "benchmark_problems", "benchmark_predictions", "benchmark_scores", "leaderboard")
            orion_name = checkpoint_name("orion", checkpoints["orion"])
            first_eval = [r for r in student.requests() if r.get("kind") == "solve" and r.get("model") == orion_name]
            # 4. Retrain `orion` (more steps), serve the new adapter under its new name, evaluate again.
            write_profile(dry.profile, teacher.base_url, student.base_url, judge.base_url, max_steps=3, seeds=seeds)
            dry.dagster("student_checkpoint", "dry/orion/0")
            retrained = dry.checkpoints()
            student_log = student.requests()  # everything up to here, kept across restarts
            student.restart(**served_adapters(dry.every_checkpoint()))
            student.reset_log()
            dry.dagster("benchmark_predictions", "math500|dry/orion/0")
            second_eval = [r for r in student.requests() if r.get("kind") == "solve"]
            student_log += student.requests()
        teacher_log, judge_log = teacher.requests(), judge.requests()
    summary = summarize(dry, checkpoints, retrained, first_eval, second_eval, teacher_log, judge_log, student_log)
    summary["seconds"] = round(time.monotonic() - started, 1)
    (dry.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return summary


def summarize(dry: DryRun, checkpoints, retrained, first_eval, second_eval, teacher_log, judge_log, student_log) -> dict[str, Any]:
    import polars as pl

    from orion_assets.method.evaluation.report import reflection_frame
    from orion_assets.store import Store

    store = Store(dry.data_dir / "orion_store.duckdb")
    teacher, refined, sft = store.read("teacher_cots"), store.read("refined_cots"), store.read("sft_dataset")
    scores, predictions = store.read("benchmark_scores"), store.read("benchmark_predictions")
    modes = reflection_frame(teacher, refined)
    sft_texts = {
        v: sorted(json.dumps(c) for c in g.sort("problem_id")["completion"].to_list())
        for (v,), g in sft.group_by("variant")
    }
    return {
        "teacher_cots": teacher.height,
        "teacher_with_thinking": int(teacher["has_thinking"].sum()),
        "modes": modes.to_dicts(),
        "sft_rows": {v: len(t) for v, t in sft_texts.items()},
        "sft_identical_pairs": [
            (a, b) for a in sorted(sft_texts) for b in sorted(sft_texts) if a < b and sft_texts[a] == sft_texts[b]
        ],
        "checkpoints": checkpoints,
        "retrained": retrained,
        "first_eval_orion_requests": len(first_eval),
        "second_eval_requests": len(second_eval),
        "second_eval_models": sorted({r.get("model") for r in second_eval}),
        "predictions_checkpoint_orion_math500": sorted(
            set(predictions.filter((pl.col("variant") == "orion") & (pl.col("benchmark") == "math500"))["checkpoint_id"])
        ),
        "scores": scores.select([c for c in ("benchmark", "variant", "pass_at_1", "n_errors", "n_answered", "grading_rule")
                                 if c in scores.columns]).sort("benchmark", "variant").to_dicts(),
        "requests": {
            "teacher": len(teacher_log), "judge": len(judge_log), "student": len(student_log),
            "student_http_400": sum(r.get("status") == 400 for r in student_log),
            "student_over_window": sum((r.get("prompt_tokens") or 0) + (r.get("max_tokens") or 0) > STUDENT_CONTEXT
                                       for r in student_log),
            "teacher_http_400": sum(r.get("status") == 400 for r in teacher_log),
            "student_by_kind": _count(student_log, "kind"),
            "student_finish": _count(student_log, "finish_reason"),
        },
        "report": str(dry.data_dir / "reports" / "leaderboard.md"),
    }


def _count(log: list[dict[str, Any]], key: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in log:
        counts[str(entry.get(key))] = counts.get(str(entry.get(key)), 0) + 1
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=textwrap.dedent(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a folder for the run's data, profile and summary")
    parser.add_argument("--seeds", type=int, nargs="+", help="train every variant with these seeds ([sft] seeds)")
    args = parser.parse_args(argv)
    summary = run(args.out, echo=True, seeds=args.seeds)
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
