"""A managed student server that dies mid-step (an engine crash, the OOM killer): its watchdog starts it again on
its port, the calls in flight wait for it and are sent again, and when it may not be restarted any more the step
fails with the server's last log lines. The server is the LLM simulator in its own process, killed for real."""

from __future__ import annotations

import json
import logging
import os
import signal
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
from orion_assets.profiles.schema import EndpointConfig
from orion_assets.progress import TERMINAL
from orion_assets.serving import managed_server, vllm_client
from orion_assets.store import Store

MODEL = "student-base"


@pytest.fixture(autouse=True)
def _no_server_left() -> Iterator[None]:
    yield
    managed_server.stop_all()


def _managed(tmp_path: Path, restarts: int) -> managed_server.ManagedServer:
    (tmp_path / "sim.json").write_text(json.dumps({"latency_s": 0.25}))
    port = managed_server.free_port()
    command = (sys.executable, "-m", "orion_devtools.llm_simulator", MODEL, "--port", str(port), "--config",
               str(tmp_path / "sim.json"), "--print-log")
    plan = managed_server.ServerPlan(kind="vllm", model=MODEL, port=port, command=command, log_path=tmp_path / "serve.log",
                                     timeout_s=120, max_restarts=restarts, env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"})
    return managed_server.server_for(f"test/{port}", lambda: plan)


def _endpoint(running: managed_server.ManagedServer, store: Store) -> OpenAIEndpoint:
    cfg = EndpointConfig(backend="openai", base_url=running.plan.base_url, model=MODEL, concurrency=4, max_retries=2,
                         max_tokens=32, timeout_s=60)
    return OpenAIEndpoint(cfg, store, role="student", backoff_base_s=0.05, backoff_max_s=0.2)


def _requests(n: int) -> list[GenerationRequest]:
    params = SamplingParams(max_tokens=32, temperature=0.7, top_p=1.0, seed=0)
    return [GenerationRequest(({"role": "user", "content": f"What is {i} + {i}?"},), params, sample_index=0)
            for i in range(n)]


def _kill_when_answered(running: managed_server.ManagedServer, answered: int) -> threading.Thread:
    """SIGKILL the server's whole process group (as the OOM killer ends vLLM's engine) once it has answered
    ``answered`` calls (its request log, one JSON line each), so that the kill falls mid-batch."""
    def kill() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and running.plan.log_path.read_text().count("\n{") < answered:
            time.sleep(0.02)
        os.killpg(running.process.pid, signal.SIGKILL)

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


def _rows(store_file: Path) -> tuple[int, int, int]:
    with duckdb.connect(str(store_file), read_only=True) as con:
        return con.execute("SELECT count(*), count(DISTINCT call_id), count(*) FILTER (status = 'ok') "
                           "FROM orion.llm_calls").fetchone()


def test_a_killed_server_is_started_again_and_every_call_is_answered_once(tmp_path, caplog) -> None:
    running = _managed(tmp_path, restarts=2)
    first_pid = running.process.pid
    store = Store(tmp_path / "orion_store.duckdb")
    endpoint = _endpoint(running, store)
    assert endpoint.identity.base_url == "managed:vllm"  # the port is not part of the cache key
    adapter = tmp_path / "ckpt"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    running.load_adapter("orion-0123456789ab", str(adapter))
    killer = _kill_when_answered(running, answered=4)
    with caplog.at_level(logging.WARNING, logger="orion_assets"):
        results = endpoint.generate(_requests(40))
    killer.join()
    assert [r.error for r in results if r.error] == []
    assert running.restarts == 1 and running.process.pid != first_pid and running.running
    assert running.plan.log_path.read_text().count("== ") == 2  # two starts in one log, on the same port
    # the adapter loaded at run time is served again by the new process
    assert vllm_client.ServedModel("orion-0123456789ab", str(adapter), MODEL) in vllm_client.list_models(running.plan.base_url)
    said = [r for r in caplog.records if getattr(r, TERMINAL, False)]
    assert len(said) == 1 and "died (exit code -9): starting it again (restart 1 of 2)" in said[0].getMessage()
    assert _rows(tmp_path / "orion_store.duckdb") == (40, 40, 40)  # nothing lost, nothing twice
    again = _endpoint(running, store).generate(_requests(40))  # everything from the cache
    assert all(r.cached for r in again)


def test_a_server_that_may_not_be_restarted_fails_the_step_with_its_log_and_keeps_the_answered_calls(tmp_path) -> None:
    running = _managed(tmp_path, restarts=0)
    pid = running.process.pid
    store = Store(tmp_path / "orion_store.duckdb")
    killer = _kill_when_answered(running, answered=4)
    with pytest.raises(managed_server.ServerDiedError) as failed:
        _endpoint(running, store).generate(_requests(40))
    killer.join()
    message = str(failed.value)
    assert "died (exit code -9) and was restarted 0 time(s)" in message and "serve_restarts" in message
    assert str(running.plan.log_path) in message and "== " in message.splitlines()[-1] + message  # the log's tail
    total, distinct, ok = _rows(tmp_path / "orion_store.duckdb")
    assert ok >= 4 and total == distinct  # what was answered stays; the rest is error rows, sent again next time
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not running.running


def test_a_server_killed_between_steps_is_waited_for_by_the_next_step(tmp_path) -> None:
    """The engine dies after one step's calls were all answered (the real vLLM, killed between two variants'
    evaluations): the next step asks for the server and gets it answering again, not a refused connection."""
    running = _managed(tmp_path, restarts=2)
    plan = running.plan
    os.killpg(running.process.pid, signal.SIGKILL)
    again = managed_server.server_for(f"test/{plan.port}", lambda: plan)
    assert again is running
    assert [m.id for m in vllm_client.list_models(plan.base_url)] == [MODEL]
    assert running.restarts == 1 and running.starts == 2  # started again once, by its watchdog
