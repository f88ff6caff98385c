"""The benchmark scripts run: bench_scale at a tiny size (slow), gpu_check's refusal without CUDA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_scale_runs_the_chain_at_50_problems_and_reports_every_field(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    run = subprocess.run(
        [sys.executable, "benchmarks/bench_scale.py", "--sizes", "50", "--sim-seconds", "1", "--sim-threads", "2",
         "--reasoning-words", "200", "--work", str(tmp_path / "work"), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {c["persona"] for c in report["simulator_alone"]} == {"student", "teacher_reasoning_content"}
    assert all(c["calls"] > 0 and c["errors"] == 0 for c in report["simulator_alone"])
    (size,) = report["sizes"]
    assert size["problems"] == 50 and size["exit_code"] == 0
    for key in ("wall_s_per_1k", "peak_rss_mb", "pipeline_cpu_ms_per_call", "duckdb_mb_per_1k", "sim_cpu_ms_per_call"):
        assert size[key], key
    assert size["llm_calls_served"]["teacher"] >= 50 and size["llm_calls_served"]["student"] >= 200
    assert [s["step"] for s in size["steps"]][-1].startswith("sft_dataset[")
    twice = size["text_twice"]
    assert twice["teacher_cots"] > 0 and twice["copies_by_column"]["teacher_cots.cot"] == twice["cots_with_a_unique_paragraph"]
    assert set(report["targets"]) >= {"time_per_1k_flat", "peak_rss", "cpu_per_call", "text_twice"}
    assert "| problems |" in run.stdout


def test_gpu_check_without_cuda_stops_with_a_message(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    run = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path / "gpu.json")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 3
    assert "no CUDA device" in run.stderr and "--dry-cpu" in run.stderr
    assert not (tmp_path / "gpu.json").exists()
