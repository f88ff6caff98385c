"""vLLM's runtime-LoRA and sleep endpoints over real HTTP: the simulator answers them with vLLM's
bodies, statuses and error texts, and orion_assets.serving.vllm_client drives them and reports refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orion_assets.method import prompts
from orion_assets.serving import vllm_client
from orion_assets.serving.vllm_client import ServedModel, ServerError
from orion_assets_tests.conftest import REPO_ROOT, gsm8k_train_rows
from orion_devtools.llm_simulator import SimConfig, Simulator

BASE = "Qwen/Qwen2.5-1.5B-Instruct"
PROBLEMS = [r["question"].strip() for r in gsm8k_train_rows(12)]


@pytest.fixture(scope="module")
def vllm() -> Iterator[Simulator]:
    cfg = SimConfig(persona="student", model=BASE, adapters={"teacher_sft": "rev-1"},
                    runtime_lora_updating=True, sleep_mode=True)  # fmt: skip
    with Simulator(cfg, port=0) as sim:
        yield sim


def _adapter(root: Path, name: str) -> Path:
    """A directory that vLLM takes for a PEFT LoRA adapter (it reads adapter_config.json first)."""
    path = root / name
    path.mkdir(parents=True)
    config = {"peft_type": "LORA", "base_model_name_or_path": BASE, "r": 8, "lora_alpha": 16,
              "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}  # fmt: skip
    (path / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


def _chat(sim: Simulator, model: str, problem: str = PROBLEMS[0]) -> tuple[int, dict[str, Any]]:
    body = {"model": model, "messages": list(prompts.messages("solve", problem=problem)), "max_tokens": 64, "seed": 0}
    req = urllib.request.Request(f"{sim.base_url}/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _raw(sim: Simulator, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, str, bytes]:
    """(status, content-type, body) of one call, as the wire has it."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{sim.url}{path}", data=data if method == "POST" else None, method=method,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    if method == "POST" and data is None:
        req.data = b""
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers.get("content-type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type", ""), exc.read()


def test_a_loaded_adapter_is_listed_with_its_path_and_answers_under_its_name(vllm: Simulator, tmp_path: Path) -> None:
    ckpt = _adapter(tmp_path, "ckpt-100")
    assert _chat(vllm, "orion")[0] == 404  # not served yet
    status, content_type, body = _raw(vllm, "POST", "/v1/load_lora_adapter", {"lora_name": "orion", "lora_path": str(ckpt)})
    assert (status, content_type, body) == (200, "", b"Success: LoRA adapter 'orion' added successfully.")
    try:
        models = vllm_client.list_models(vllm.base_url)
        assert models == [ServedModel(BASE, BASE, None), ServedModel("teacher_sft", "rev-1", BASE),
                          ServedModel("orion", str(ckpt), BASE)]  # fmt: skip
        status, reply = _chat(vllm, "orion")
        assert status == 200 and reply["model"] == "orion" and reply["choices"][0]["message"]["content"]
        assert vllm.requests()[-1]["model"] == "orion"
    finally:
        vllm_client.unload_adapter(vllm.base_url, "orion")


def test_the_client_loads_and_unloads_and_an_unloaded_adapter_is_vllms_404(vllm: Simulator, tmp_path: Path) -> None:
    ckpt = _adapter(tmp_path, "ckpt-200")
    assert vllm_client.load_adapter(vllm.base_url, "orion", str(ckpt)) == "Success: LoRA adapter 'orion' added successfully."
    assert _chat(vllm, "orion")[0] == 200
    assert vllm_client.unload_adapter(vllm.url, "orion") == "Success: LoRA adapter 'orion' removed successfully."
    assert [m.id for m in vllm_client.list_models(vllm.base_url)] == [BASE, "teacher_sft"]
    status, body = _chat(vllm, "orion")
    assert (status, body) == (404, {"error": {"message": f"The model `orion` does not exist. Valid aliases: {BASE}.",
                                              "type": "NotFoundError",
                                              "param": "model", "code": 404}})  # fmt: skip


def test_the_checkpoint_path_decides_the_replies_like_a_revision(vllm: Simulator, tmp_path: Path) -> None:
    """The same adapter name loaded from another checkpoint answers as another model would."""
    first, second = _adapter(tmp_path, "ckpt-1"), _adapter(tmp_path, "ckpt-2")

    def replies(path: Path) -> list[str]:
        vllm_client.load_adapter(vllm.base_url, "orion", str(path))
        try:
            return [_chat(vllm, "orion", p)[1]["choices"][0]["message"]["content"] for p in PROBLEMS[:6]]
        finally:
            vllm_client.unload_adapter(vllm.base_url, "orion")

    one = replies(first)
    assert replies(first) == one  # the same checkpoint again: the same answers
    assert replies(second) != one


def test_duplicates_unknown_paths_and_unknown_names_are_refused_with_vllms_messages(
    vllm: Simulator, tmp_path: Path
) -> None:
    ckpt = _adapter(tmp_path, "ckpt-300")
    vllm_client.load_adapter(vllm.base_url, "orion", str(ckpt))
    try:
        with pytest.raises(ServerError) as duplicate:
            vllm_client.load_adapter(vllm.base_url, "orion", str(ckpt))
        assert duplicate.value.status == 400
        assert duplicate.value.message == ("The lora adapter 'orion' has already been loaded. If you want to load "
                                           "the adapter in place, set 'load_inplace' to True.")  # fmt: skip
        with pytest.raises(ServerError, match="already been loaded"):  # a --lora-modules adapter counts too
            vllm_client.load_adapter(vllm.base_url, "teacher_sft", str(ckpt))
    finally:
        vllm_client.unload_adapter(vllm.base_url, "orion")

    missing, not_adapter = tmp_path / "nowhere", tmp_path / "plain-dir"
    not_adapter.mkdir()
    for path in (missing, not_adapter):
        status, _, body = _raw(vllm, "POST", "/v1/load_lora_adapter", {"lora_name": "orion", "lora_path": str(path)})
        assert (status, json.loads(body)) == (404, {"error": {
            "message": "Loading lora orion failed: No adapter found for <path>", "type": "NotFoundError",
            "param": None, "code": 404}})  # fmt: skip
    status, _, body = _raw(vllm, "POST", "/v1/load_lora_adapter", {"lora_name": "orion"})
    assert status == 400 and json.loads(body)["error"]["message"] == "Both 'lora_name' and 'lora_path' must be provided."
    assert json.loads(body)["error"]["type"] == "InvalidUserInput"

    with pytest.raises(ServerError) as unknown:
        vllm_client.unload_adapter(vllm.base_url, "orion")
    assert (unknown.value.status, unknown.value.message) == (404, "The lora adapter 'orion' cannot be found.")
    assert [m.id for m in vllm_client.list_models(vllm.base_url)] == [BASE, "teacher_sft"]


def test_sleep_holds_requests_until_wake_up(vllm: Simulator) -> None:
    assert vllm_client.is_sleeping(vllm.base_url) is False
    assert _raw(vllm, "POST", "/sleep?level=1") == (200, "", b"")
    assert vllm_client.is_sleeping(vllm.base_url) is True
    vllm_client.sleep(vllm.base_url, level=1)  # sleeping again is harmless
    answered: list[tuple[int, dict[str, Any]]] = []
    worker = threading.Thread(target=lambda: answered.append(_chat(vllm, "teacher_sft")))
    worker.start()
    time.sleep(0.5)
    assert worker.is_alive() and answered == []  # accepted, not answered: the scheduler is paused
    try:
        vllm_client.wake_up(vllm.base_url)
        worker.join(timeout=30)
    finally:
        vllm_client.wake_up(vllm.base_url)
    assert answered[0][0] == 200 and answered[0][1]["model"] == "teacher_sft"
    assert vllm_client.is_sleeping(vllm.base_url) is False
    chats = lambda: [r for r in vllm.requests() if r.get("kind") != "runtime"]  # noqa: E731 - the log's chat entries
    assert chats()[-1].get("held_while_sleeping") is True
    assert _chat(vllm, BASE)[0] == 200 and "held_while_sleeping" not in chats()[-1]
    runtime = [r["path"] for r in vllm.requests() if r.get("kind") == "runtime"]
    assert runtime[-3:] == ["/wake_up", "/wake_up", "/is_sleeping"]  # the runtime routes are logged too
    with pytest.raises(ValueError, match="sleep level"):
        vllm_client.sleep(vllm.base_url, level=3)


def test_without_the_switches_the_routes_are_fastapis_404_and_the_client_says_what_is_missing(tmp_path: Path) -> None:
    """Started as the pipeline would start vLLM: the script, vLLM's environment variables and flag.
    Dev mode with --enable-sleep-mode and no VLLM_ALLOW_RUNTIME_LORA_UPDATING: sleep yes, LoRA no."""
    config = tmp_path / "sim.json"
    config.write_text(json.dumps({"persona": "student", "model": BASE}), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "VLLM_SERVER_DEV_MODE")}
    for flags, extra in (([], {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}),
                         (["--enable-sleep-mode"], {"VLLM_SERVER_DEV_MODE": "1"})):  # fmt: skip
        proc = subprocess.Popen([sys.executable, "-m", "orion_devtools.llm_simulator", "--config", str(config),
                                 "--port", "0", *flags], cwd=REPO_ROOT, env={**env, **extra}, stdout=subprocess.PIPE,
                                text=True)  # fmt: skip
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("PORT "), line
            url = f"http://127.0.0.1:{int(line.split()[1])}/v1"
            if "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in extra:  # LoRA updating on, sleep off (no dev mode)
                with pytest.raises(ServerError, match="No adapter found for"):
                    vllm_client.load_adapter(url, "orion", str(tmp_path / "nowhere"))
                with pytest.raises(ServerError) as refused:
                    vllm_client.sleep(url)
                assert refused.value.status == 404
                assert "--enable-sleep-mode and VLLM_SERVER_DEV_MODE=1" in str(refused.value)
                with pytest.raises(ServerError, match="VLLM_SERVER_DEV_MODE"):
                    vllm_client.is_sleeping(url)
            else:  # sleep on, LoRA updating off: vLLM never registers the LoRA routes
                assert vllm_client.is_sleeping(url) is False
                with pytest.raises(ServerError) as refused:
                    vllm_client.load_adapter(url, "orion", str(_adapter(tmp_path, "ckpt")))
                assert (refused.value.status, refused.value.message) == (
                    404, "Not Found (no such route: the server must run with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1)")
                with pytest.raises(ServerError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
                    vllm_client.unload_adapter(url, "orion")
        finally:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def test_a_server_that_does_not_answer_is_a_server_error_without_status() -> None:
    with pytest.raises(ServerError) as down:
        vllm_client.list_models("http://127.0.0.1:9/v1", timeout_s=5)
    assert down.value.status is None and "no answer" in str(down.value) and "127.0.0.1:9/v1/models" in str(down.value)
