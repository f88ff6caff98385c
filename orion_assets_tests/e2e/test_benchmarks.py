"""The benchmark scripts run: bench_scale at a tiny size (slow), gpu_check's refusal without CUDA, bench_writers
at a tiny size (every backend, Postgres and moto started by the script)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


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
    # each step's CPU from `orion run`'s lines, and that of the LLM-calling steps per call
    assert all(s["cpu_s"] is not None for s in size["steps"]) and size["call_steps_cpu_ms_per_call"] > 0
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


@pytest.mark.slow  # runs the benchmark end to end on every backend: about 30 s
def test_bench_writers_writes_every_partition_once_in_every_backend(tmp_path: Path) -> None:
    from orion_devtools.services import postgres_bin

    if postgres_bin() is None:
        pytest.skip("Postgres is not installed (apt-get install postgresql; .ci/run does)")
    out = tmp_path / "writers.json"
    run = subprocess.run(
        [sys.executable, "benchmarks/bench_writers.py", "--writers", "2", "--parts-per-writer", "2",
         "--rows-per-part", "30", "--text-bytes", "500", "--repeats", "1", "--pg-fast",
         "--sql-db", str(tmp_path / "synthetic" / "orion_store.duckdb"), "--sql-cots", "400", "--sql-repeats", "1",
         "--work", str(tmp_path / "work"), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    runs = {(r["backend"], r["writers"]): r for r in report["writers"]}
    assert set(runs) == {("duckdb", 2), ("lake_pg", 2), ("lake_pg_s3", 2)}
    for (backend, writers), r in runs.items():
        # every partition (plus the seed) present once, all its rows, one logged materialization, no id twice
        assert r["writes"] == r["writes_ok"] == writers * 2 and r["writes_failed"] == 0, (backend, r["errors"])
        assert r["check"]["ok"] and r["check"]["partitions"] == writers * 2 + 1, (backend, r["check"])
        assert r["rows"] == writers * 2 * 30 and r["check"]["rows_stored"] == (writers * 2 + 1) * 30
        assert r["rows_per_s"] > 0 and r["mb"] > 0 and r["stored_mb"] > 0
        assert (r["conflict_retries"] is None) == (backend == "duckdb")
    assert len({r["check"]["digest"] for r in runs.values()}) == 1  # the same rows stored in every backend
    stats = report["cot_stats"]
    assert stats["results_equal"] and stats["result_rows"] > 0 and stats["cot_quality_rows"] == 400
    assert stats["duckdb_s"] > 0 and stats["lake_pg_s"] > 0
    assert "| backend | writers |" in run.stdout and "`cot_stats.sql`" in run.stdout
