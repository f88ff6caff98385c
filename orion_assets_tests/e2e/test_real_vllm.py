"""The real vLLM (its CPU build, in the environment `orion install-vllm` makes) as the managed student server on
SmolLM2-135M-Instruct: the seeded-request crash and the flags that avoid it, a whole `orion run` whose engine is
killed mid-evaluation, and no server process left after the run is killed."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import psutil
import pytest

from orion_assets.llm import GenerationRequest, SamplingParams
from orion_assets.llm.openai_backend import OpenAIEndpoint
from orion_assets.method import prompts
from orion_assets.profiles.schema import EndpointConfig
from orion_assets.serving import managed_server, vllm_client, vllm_host
from orion_assets.serving.served_weights import checkpoint_name
from orion_assets.store import Store
from orion_assets_tests.conftest import REPO, gsm8k_train_rows, orion_run, profile_env

pytestmark = [pytest.mark.slow, pytest.mark.serial]

# The default profile (arithmetic: SmolLM2 served by the managed vLLM) made small: the same model, backends and
# task, 8 problems a side and 3 SFT steps, so that a whole run with a restart fits in minutes.
SERVED_SMALL = """
extends = "arithmetic"
[data]
train_limit = 8
benchmark_limit = 8
[endpoints.student]
lora_serving = "runtime"  # the adapters loaded into the running server by checkpoint name (the default runs merge)
[sft]
max_steps = 3
save_steps = 3
per_device_train_batch_size = 4
[quality]
max_drop_rate = 1.0       # 8 problems: the gate is not under test here, every variant is evaluated
coherence_mostly = 0.01
"""


@pytest.fixture(scope="module")
def vllm_python() -> str:
    found = vllm_host.find_vllm()
    assert found is not None and found.version, "no vLLM: run `orion install-vllm` (the README's test command does)"
    return found.python


def _group(pgid: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def _start(model: str, tmp_path: Path, python: str, host_args: tuple[str, ...], env: dict[str, str],
           restarts: int = 0) -> managed_server.ManagedServer:
    port = managed_server.free_port()
    command = managed_server.default_command("vllm", model, port, device="cpu", lora_rank=16, vllm_python=python,
                                             host_args=host_args)
    plan = managed_server.ServerPlan(kind="vllm", model=model, port=port, command=tuple(command),
                                     log_path=tmp_path / f"vllm-{port}.log", timeout_s=600,
                                     env=managed_server.server_env("vllm", sleep_mode=False, host_env=env), max_restarts=restarts)
    return managed_server.server_for(f"test/{port}", lambda: plan)


def _seeded(n: int) -> list[GenerationRequest]:
    params = SamplingParams(max_tokens=24, temperature=0.7, top_p=1.0, seed=0)
    return [GenerationRequest(prompts.messages("solve", problem=row["question"]), params, sample_index=i)
            for i, row in enumerate(gsm8k_train_rows(n))]


def test_64_seeded_requests_at_once_crash_vllm_with_chunked_prefill_and_run_clean_with_the_cpu_flags(
        smol_model, vllm_python, tmp_path) -> None:
    model = str(smol_model.path)
    flags = vllm_host.host_flags(on_cpu=True, sleep_mode=None, gpu_memory_utilization=0.85, kv_cache_gib=1.0,
                                 max_model_len=2048, batched_tokens=8192)
    assert "--no-enable-chunked-prefill" in flags.args
    try:
        # Without the fix: chunked prefill on, and a step budget smaller than the 64 prompts together.
        unfixed = tuple(a for a in flags.args if a != "--no-enable-chunked-prefill")
        unfixed = (*unfixed[: unfixed.index("--max-num-batched-tokens")], *unfixed[unfixed.index("--max-num-batched-tokens") + 2:],
                   "--max-num-batched-tokens", "512")  # fmt: skip
        crashing = _start(model, tmp_path, vllm_python, unfixed, flags.env)
        pgid = crashing.process.pid
        cfg = EndpointConfig(backend="openai", base_url=crashing.plan.base_url, model=model, concurrency=64,
                             max_retries=1, timeout_s=300)
        with pytest.raises(managed_server.ServerDiedError):
            OpenAIEndpoint(cfg, Store(tmp_path / "crash.duckdb"), role="student").generate(_seeded(64))
        assert "CPU Generator does not use offset" in crashing.plan.log_path.read_text()
        assert not _group(pgid), "the dead engine left processes behind"

        fixed = _start(model, tmp_path, vllm_python, flags.args, flags.env)
        cfg = cfg.model_copy(update={"base_url": fixed.plan.base_url})
        results = OpenAIEndpoint(cfg, Store(tmp_path / "fixed.duckdb"), role="student").generate(_seeded(64))
        assert [r.error for r in results if r.error] == [] and fixed.restarts == 0
        assert all(r.text for r in results)
    finally:
        managed_server.stop_all()


def _watch_and_kill_engine(data_dir: Path, seen: dict) -> None:
    """During the run: once the evaluation server has loaded an adapter and answered two more chat requests,
    record its model list and SIGKILL its engine process (the OOM killer's way), once."""
    deadline = time.monotonic() + 2400
    while time.monotonic() < deadline:
        time.sleep(0.5)
        for log in (data_dir / "logs").glob("serve-*-vllm-*.log"):
            text = log.read_text(errors="replace")
            loaded = text.rfind("POST /v1/load_lora_adapter HTTP/1.1\" 200")
            if loaded < 0 or text.count("POST /v1/chat/completions", loaded) < 2:
                continue
            port = int(log.stem.rsplit("-", 1)[1])
            seen["models"] = [m.__dict__ for m in vllm_client.list_models(f"http://127.0.0.1:{port}/v1")]
            api = next(p for p in psutil.process_iter(["cmdline"]) if f"--port {port}" in " ".join(p.info["cmdline"] or []))
            engines = [c for c in api.children(recursive=True) if "EngineCore" in " ".join(c.cmdline()) + c.name()]
            seen["killed"] = [c.pid for c in engines]
            seen["pgid"] = api.pid
            for engine in engines:
                engine.kill()
            return


def test_orion_run_through_the_real_vllm_survives_its_engine_killed_mid_evaluation(tmp_path, vllm_python) -> None:
    env, data_dir = profile_env(tmp_path, SERVED_SMALL, "served_small.toml")
    seen: dict = {}
    watcher = threading.Thread(target=_watch_and_kill_engine, args=(data_dir, seen), daemon=True)
    watcher.start()
    run = orion_run(env)
    watcher.join(timeout=5)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert seen.get("killed"), f"the engine was never killed mid-evaluation: {seen}"
    assert re.search(r"the vllm server on port \d+ died \(exit code -?\d+\): starting it again \(restart 1 of 3\)",
                     run.stdout), run.stdout[-3000:]
    assert "again into the vllm server" in next((data_dir / "logs").glob("orion-run-*.log")).read_text()

    con = duckdb.connect(str(data_dir / "orion_store.duckdb"), read_only=True)
    base_model = con.execute("SELECT path FROM orion.student_base_model").fetchone()[0]
    checkpoints = {checkpoint_name(v, c): p for v, c, p in con.execute(
        "SELECT variant, checkpoint_id, path FROM orion.student_checkpoint WHERE variant <> 'base'").fetchall()}
    # the adapters the server held when it was killed: named by checkpoint id, root the checkpoint, parent the base
    adapters = {m["id"]: m for m in seen["models"] if m["parent"] is not None}
    assert adapters and set(adapters) <= set(checkpoints), (adapters, checkpoints)
    for name, card in adapters.items():
        assert (Path(card["root"]).resolve(), card["parent"]) == (Path(checkpoints[name]).resolve(), base_model)

    rows = con.execute("SELECT variant, count(*), count(DISTINCT prediction_id), count(DISTINCT problem_id), "
                       "count(*) FILTER (error IS NOT NULL) FROM orion.benchmark_predictions GROUP BY 1").fetchall()
    assert {v for v, *_ in rows} == {"base", "teacher_sft", "orion", "orion_no_error"}, rows
    # nothing lost, nothing twice
    assert all(n == distinct and problems == 8 and errors == 0 for _, n, distinct, problems, errors in rows), rows
    calls = con.execute("SELECT count(*), count(DISTINCT call_id) FROM orion.llm_calls").fetchone()
    assert calls[0] == calls[1]
    texts = dict(con.execute("SELECT variant, list(text ORDER BY problem_id) FROM orion.benchmark_predictions "
                             "GROUP BY 1").fetchall())
    assert texts["teacher_sft"] != texts["base"]  # the trained adapter answers, not the base under its name
    assert con.execute("SELECT count(*) FROM orion.leaderboard").fetchone()[0] == 4
    assert not _group(seen["pgid"]), "a vLLM process outlived the run"


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_run_leaves_no_vllm_process_behind(tmp_path, vllm_python, how) -> None:
    env, data_dir = profile_env(tmp_path, SERVED_SMALL, "served_small.toml")
    run = subprocess.Popen([sys.executable, "-m", "orion_assets.cli", "run"], cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, group = time.monotonic() + 900, []
    while time.monotonic() < deadline and not group:
        assert run.poll() is None, "the run ended before its server answered"
        time.sleep(0.5)
        for log in (data_dir / "logs").glob("serve-*-vllm-*.log") if (data_dir / "logs").is_dir() else []:
            if "POST /v1/chat/completions" in log.read_text(errors="replace"):
                port = int(log.stem.rsplit("-", 1)[1])
                api = [p for p in psutil.process_iter(["cmdline"]) if f"--port {port}" in " ".join(p.info["cmdline"] or [])]
                group = _group(api[0].pid) if api else []
    assert len(group) >= 2, group  # the API server and its engine, answering exposure
    os.kill(run.pid, how)
    run.wait(timeout=120)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in group):
        time.sleep(0.5)
    left = [p.pid for p in group if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"vLLM processes {left} outlived a {how.name} of the run"


@pytest.fixture(autouse=True)
def _no_server_left() -> Iterator[None]:
    yield
    managed_server.stop_all()

