"""teacher_cots over HTTP: a real `transformers serve`, then kill-and-resume and secrets."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from orion_assets.io.io_manager import resources_for
from orion_assets.io.resource import OrionResource
from orion_assets.store import Store
from orion_assets.training.student import build_tiny_student
from orion_assets_tests.conftest import gsm8k_train_rows
from orion_assets_tests.graph import student_base_model, teacher_cots, train_problems
from orion_devtools.fault_server import FaultServer
from orion_devtools.serve import served_model

REPO = Path(__file__).resolve().parents[2]
SENTINEL = "sk-orion-sentinel-4f9c2b7a1e"
ASSETS = [train_problems, student_base_model, teacher_cots]


@pytest.fixture(scope="module")
def served_teacher(tmp_path_factory):
    texts = [text for row in gsm8k_train_rows(300) for text in (row["question"], row["answer"])]
    model = build_tiny_student(texts, tmp_path_factory.mktemp("teacher_model"), vocab_size=512)
    with served_model(model.path) as served:
        yield served


def _teacher_profile(write_profile, base_url: str, model: str, limit: int, **extra: str) -> Path:
    lines = "\n".join(f"{k} = {v}" for k, v in extra.items())
    return write_profile(
        f"""
        [data]
        train_limit = {limit}
        [student_model.tiny]
        vocab_size = 512
        [endpoints.teacher]
        backend = "openai"
        base_url = "{base_url}"
        model = "{model}"
        api_key_env = "ORION_TEST_TEACHER_KEY"
        max_tokens = 16
        temperature = 0.0
        max_retries = 2
        timeout_s = 60
        {lines}
        """
    )


@pytest.mark.slow  # a real transformers serve and two dagster subprocesses: about 27 s
def test_teacher_cots_through_transformers_serve_with_zero_requests_on_rerun_and_no_leaked_key(
    orion_env, write_profile, served_teacher, monkeypatch, capfd
):
    monkeypatch.setenv("ORION_TEST_TEACHER_KEY", SENTINEL)
    profile = _teacher_profile(write_profile, served_teacher.base_url, served_teacher.model, limit=3)
    resources = resources_for(OrionResource(profile=str(profile), data_dir=str(orion_env["data_dir"])))
    instance = dg.DagsterInstance.get()  # the persistent one in the test's DAGSTER_HOME
    assert dg.materialize(ASSETS, resources=resources, instance=instance, selection=["train_problems"]).success
    assert dg.materialize(ASSETS, resources=resources, instance=instance, selection=["student_base_model"],
                          partition_key="tiny").success
    first = dg.materialize(ASSETS, resources=resources, instance=instance, selection=["teacher_cots"])
    assert first.success
    (mat,) = first.asset_materializations_for_node("teacher_cots")
    assert mat.metadata["calls"].value == 3 and mat.metadata["cached_calls"].value == 0
    assert mat.metadata["total_prompt_tokens"].value > 0
    # a random tiny teacher rarely verifies: its CoTs are counted as rejected, not kept
    rejected = mat.metadata["rejected"].value
    assert sum(rejected.values()) + mat.metadata["dagster/row_count"].value == 3
    store = Store(orion_env["data_dir"] / "orion_store.duckdb")
    calls = store.read("llm_calls")
    assert calls.height == 3 and set(calls["backend"]) == {"openai"} and set(calls["status"]) == {"ok"}
    assert set(calls["finish_reason"]) <= {"stop", "length"} and (calls["completion_tokens"] > 0).all()

    again = dg.materialize(ASSETS, resources=resources, instance=instance, selection=["teacher_cots"])
    (mat,) = again.asset_materializations_for_node("teacher_cots")
    assert mat.metadata["cached_calls"].value == 3  # nothing was sent
    assert store.read("llm_calls").height == 3

    # The key is nowhere: DuckDB file, Dagster's instance, captured logs, event metadata.
    out, err = capfd.readouterr()
    assert SENTINEL not in out + err
    for folder in (orion_env["data_dir"], orion_env["dagster_home"]):
        for path in folder.rglob("*"):
            if path.is_file():
                assert SENTINEL.encode() not in path.read_bytes(), path
    for key in ("train_problems", "student_base_model", "teacher_cots"):
        for record in instance.fetch_materializations(dg.AssetKey(key), limit=10).records:
            assert SENTINEL not in repr(record)


@pytest.mark.slow
def test_killed_teacher_run_keeps_finished_calls_and_resume_sends_only_the_rest(orion_env, write_profile):
    problems = 24
    with FaultServer(latency=0.25) as server:
        profile = _teacher_profile(write_profile, server.base_url, "slow-teacher", limit=problems, concurrency=2)
        env = {**os.environ, "ORION_PROFILE": str(profile), "ORION_TEST_TEACHER_KEY": SENTINEL}
        resources = resources_for(OrionResource(profile=str(profile), data_dir=str(orion_env["data_dir"])))
        assert dg.materialize(ASSETS, resources=resources, selection=["train_problems"]).success
        assert dg.materialize(ASSETS, resources=resources, selection=["student_base_model"], partition_key="tiny").success
        command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "orion_assets.definitions",
                   "--select", "teacher_cots"]
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and server.stats()["answered"] < problems // 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        time.sleep(1.5)  # past the cache's flush interval
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kept = Store(orion_env["data_dir"] / "orion_store.duckdb").read("llm_calls")
        assert 0 < kept.height < problems
        before = server.stats()["total"]
        resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stdout[-3000:]
        sent = server.stats()["total"] - before
        assert sent == problems - kept.height  # only the calls that were not finished
        calls = Store(orion_env["data_dir"] / "orion_store.duckdb").read("llm_calls")
        assert calls.height == problems and calls["call_id"].n_unique() == problems
