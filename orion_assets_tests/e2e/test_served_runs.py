"""`orion run` through a student server the pipeline starts and stops itself ([endpoints.student] serve):
the real `transformers serve` on the CPU, and the vLLM path with the LLM simulator started in vLLM's place."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import psutil
import pytest

from orion_assets_tests.conftest import REPO, SMALL, orion_run, profile_env

pytestmark = pytest.mark.slow

# The shared small profile, the student's table left to each test and one benchmark.
BASE = ('extends = "tiny"\n'
        + SMALL.replace("[endpoints.student]\nmax_tokens = 24\n", "").replace("[data]\n", '[data]\nbenchmarks = ["gsm8k"]\n')
        + "[student_model.tiny]\nvocab_size = 512\n[eval]\nmax_tokens = 24\n")
SIMULATED_VLLM = BASE + """
[endpoints.student]
backend = "openai"
concurrency = 4
max_tokens = 24
serve = "vllm"
sleep_mode = true
serve_command = ["{python}", "-m", "orion_devtools.llm_simulator", "{model}", "--port", "{port}",
                 "--enable-sleep-mode", "--print-log"]
"""
TRANSFORMERS = BASE + """
[endpoints.student]
backend = "openai"
concurrency = 2
max_tokens = 24
device = "cpu"
serve = "transformers"
"""


def _server_processes(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if marker in " ".join(process.info["cmdline"] or []):
                found.append(process)
    return found


def _ports(data_dir: Path, kind: str) -> list[int]:
    return sorted(int(p.stem.rsplit("-", 1)[1]) for p in (data_dir / "logs").glob(f"serve-tiny-{kind}-*.log"))


def _entries(data_dir: Path) -> list[dict]:
    """The simulator's request log: the JSON lines it printed into its log file."""
    lines = [line for p in (data_dir / "logs").glob("serve-tiny-vllm-*.log") for line in p.read_text().splitlines()]
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_orion_run_with_a_managed_vllm_loads_adapters_by_checkpoint_id_and_sleeps_through_sft(tmp_path) -> None:
    env, data_dir = profile_env(tmp_path, SIMULATED_VLLM)
    run = orion_run(env, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (port,) = _ports(data_dir, "vllm")  # one server for exposure, reflection and evaluation
    entries = _entries(data_dir)
    runtime = [(e["path"], e["status"]) for e in entries if e.get("kind") == "runtime"]
    # SFT took the accelerator once: one sleep before the first training, one wake for evaluation
    assert [p for p, _ in runtime if p in ("/sleep", "/wake_up")] == ["/sleep", "/wake_up"], runtime
    con = duckdb.connect(str(data_dir / "orion_store.duckdb"), read_only=True)
    checkpoints = dict(con.execute("SELECT variant || '-' || left(checkpoint_id, 12), path FROM orion.student_checkpoint "
                                   "WHERE variant <> 'base'").fetchall())
    loaded = [json.loads(e["body"]) for e in entries if e.get("path") == "/v1/load_lora_adapter"]
    assert {b["lora_name"]: b["lora_path"] for b in loaded} == checkpoints and len(checkpoints) == 3
    assert all(status == 200 for _, status in runtime)
    asked = {m for (m,) in con.execute("SELECT DISTINCT model FROM orion.llm_calls c JOIN orion.benchmark_predictions p "
                                       "ON p.llm_call_id = c.call_id WHERE p.variant <> 'base'").fetchall()}
    assert asked == set(checkpoints)
    held = [e for e in entries if e.get("held_while_sleeping")]
    assert not held  # nothing was sent while the server slept
    log = next((data_dir / "logs").glob("orion-run-*.log")).read_text()
    assert log.count("starting the vllm server") == 1 and "putting the vllm server" in log
    assert not _server_processes(f"--port {port}"), "the server outlived the run"


def test_orion_run_with_a_managed_transformers_serve_from_problems_to_leaderboard(tmp_path) -> None:
    env, data_dir = profile_env(tmp_path, TRANSFORMERS)
    run = orion_run(env, timeout=2400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    log = next((data_dir / "logs").glob("orion-run-*.log")).read_text()
    # one start for exposure and reflection; stopped for SFT; one start for evaluation
    assert log.count("starting the transformers server") == 2, log.count("starting the transformers server")
    assert re.search(r"before SFT: student servers \{'tiny/transformers/[^']+': 'stopped'\}", log)
    con = duckdb.connect(str(data_dir / "orion_store.duckdb"), read_only=True)
    checkpoints = dict(con.execute("SELECT variant || '-' || left(checkpoint_id, 12), checkpoint_id "
                                   "FROM orion.student_checkpoint WHERE variant <> 'base'").fetchall())
    served = data_dir / "served" / "tiny"
    assert {p.name for p in served.iterdir() if not p.name.startswith(".")} == set(checkpoints)
    for name, checkpoint_id in checkpoints.items():
        assert (served / name / "orion_checkpoint_id").read_text() == checkpoint_id
        assert (served / name / "adapter_config.json").is_file() and (served / name / "config.json").is_file()
    asked = {m for (m,) in con.execute("SELECT DISTINCT model FROM orion.llm_calls c JOIN orion.benchmark_predictions p "
                                       "ON p.llm_call_id = c.call_id WHERE p.variant <> 'base'").fetchall()}
    assert {Path(m).name for m in asked} == set(checkpoints)
    assert con.execute("SELECT count(*) FROM orion.leaderboard").fetchone()[0] == 4
    for port in _ports(data_dir, "transformers"):
        assert not _server_processes(f"--port {port}"), "a server outlived the run"


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_run_leaves_no_server_behind(tmp_path, how) -> None:
    (tmp_path / "sim.json").write_text(json.dumps({"latency_s": 0.5}))  # exposure takes a few seconds
    env, data_dir = profile_env(tmp_path, SIMULATED_VLLM.replace('"--print-log"]',
                                                          f'"--print-log", "--config", "{tmp_path / "sim.json"}"]'))
    run = subprocess.Popen([sys.executable, "-m", "orion_assets.cli", "run"], cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (_ports(data_dir, "vllm") and _entries(data_dir)):
        assert run.poll() is None, "the run ended before the server answered"
        time.sleep(0.5)
    (port,) = _ports(data_dir, "vllm")
    assert _server_processes(f"--port {port}")  # the server answers exposure
    os.kill(run.pid, how)
    run.wait(timeout=120)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _server_processes(f"--port {port}"):
        time.sleep(0.2)
    assert not _server_processes(f"--port {port}"), f"the server outlived a {how.name} of the run"


def _kill_server_when_answering(data_dir: Path, answered: int) -> threading.Thread:
    """SIGKILL the simulated vLLM's process group once it has answered ``answered`` requests (the OOM killer's way)."""
    def kill() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if len(_entries(data_dir)) >= answered:
                (port,) = _ports(data_dir, "vllm")
                (process,) = _server_processes(f"--port {port}")
                os.killpg(process.pid, signal.SIGKILL)
                return

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("restarts", [1, 0])
def test_a_server_killed_mid_exposure_is_restarted_or_fails_the_step_with_its_log(tmp_path, restarts) -> None:
    (tmp_path / "sim.json").write_text(json.dumps({"latency_s": 0.2}))
    env, data_dir = profile_env(tmp_path, SIMULATED_VLLM.replace('"--print-log"]', f'"--print-log", "--config", '
                                                                 f'"{tmp_path / "sim.json"}"]\nserve_restarts = {restarts}'))
    killer = _kill_server_when_answering(data_dir, answered=3)
    run = subprocess.run([sys.executable, "-m", "orion_assets.cli", "run", "--select", "benchmark_problems",
                          "train_problems", "student_base_model", "student_attempts"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=900)
    killer.join(timeout=5)
    died = re.compile(r"the vllm server on port \d+ died \(exit code -9\)")
    if restarts:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert died.search(run.stdout) and "starting it again (restart 1 of 1)" in run.stdout, run.stdout
        con = duckdb.connect(str(data_dir / "orion_store.duckdb"), read_only=True)
        total, distinct, errors = con.execute("SELECT count(*), count(DISTINCT call_id), count(*) FILTER "
                                              "(status <> 'ok') FROM orion.llm_calls").fetchone()
        assert total == distinct and errors == 0  # every call answered once
    else:
        assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
        assert died.search(run.stderr) and "restarted 0 time(s)" in run.stderr, run.stderr
        assert re.search(r"\n    (PORT \d+|\{)", run.stderr), run.stderr  # the server's own log lines under it
    assert not [p for port in _ports(data_dir, "vllm") for p in _server_processes(f"--port {port}")]
