"""Which server answers for which checkpoint (orion_assets/serving/), and what `orion check` says of a
server the run will start."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from orion_assets.cli.check import run_preflight
from orion_assets.cli.preflight.endpoints import _check_window
from orion_assets.cli.preflight.plan import Stage
from orion_assets.cli.preflight.report import Section
from orion_assets.profiles import ProfileError, load_profile
from orion_assets.profiles.schema import EndpointConfig
from orion_assets.serving import vllm_host
from orion_assets.serving.handover import served_endpoint
from orion_assets.serving.served_weights import (
    MARKER,
    AskedWeights,
    checkpoint_name,
    merged_directory,
    served_directory,
)

SERVED_VLLM = """
[endpoints.student]
backend = "openai"
serve = "vllm"
serve_args = ["--tensor-parallel-size", "2"]
"""


def _adapter(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "x", "r": 8}))
    (root / "adapter_model.safetensors").write_bytes(b"adapter")
    (root / "tokenizer_config.json").write_text("{}")
    return root


def test_a_served_directory_holds_the_base_weights_under_the_adapter_and_a_full_model_alone(
        tiny_student_model, tmp_path) -> None:
    base = tiny_student_model.path
    adapter = _adapter(tmp_path / "ckpt" / "final")
    lora = AskedWeights(str(base), variant="orion", kind="lora_adapter", checkpoint_id="c" * 16, path=str(adapter))
    made = served_directory(tmp_path / "served" / "orion-cccc", lora)
    assert (made / "config.json").resolve() == (base / "config.json").resolve()  # the base's config and weights
    assert (made / "model.safetensors").resolve() == (base / "model.safetensors").resolve()
    assert (made / "adapter_config.json").resolve() == (adapter / "adapter_config.json").resolve()
    assert (made / "tokenizer_config.json").resolve() == (adapter / "tokenizer_config.json").resolve()  # over the base's
    assert not (made / "build_info.json").exists()
    assert (made / MARKER).read_text() == "c" * 16
    assert served_directory(made, lora) == made  # made once
    full = AskedWeights("/nowhere", variant="orion", kind="full", checkpoint_id="f" * 16, path=str(base))
    alone = served_directory(tmp_path / "served" / "orion-ffff", full)
    assert not (alone / "adapter_config.json").exists() and (alone / "model.safetensors").is_symlink()


def test_a_merged_directory_answers_as_the_base_under_its_adapter_and_is_made_once(tiny_student_model, tmp_path) -> None:
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = tiny_student_model.path
    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules="all-linear"))
    for name, weight in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(weight, std=0.5)  # a fresh adapter's B is zero: it would change nothing
    peft_model.save_pretrained(tmp_path / "ckpt")
    lora = AskedWeights(str(base), variant="orion", kind="lora_adapter", checkpoint_id="d" * 16,
                        path=str(tmp_path / "ckpt"))

    made = merged_directory(tmp_path / "merged" / "orion-dddd", lora)
    assert (made / MARKER).read_text() == "d" * 16 and not (made / "adapter_config.json").exists()
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(made)(ids).logits
        applied = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(tmp_path / "ckpt"))(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(base)(ids).logits
    assert torch.allclose(merged, applied, atol=1e-4) and not torch.allclose(merged, plain, atol=1e-2)
    stamp = (made / "model.safetensors").stat().st_mtime_ns
    assert merged_directory(made, lora) == made
    assert (made / "model.safetensors").stat().st_mtime_ns == stamp  # made once


def test_a_variant_served_elsewhere_is_asked_there(write_profile) -> None:
    profile = load_profile(str(write_profile("""
        [endpoints.student]
        backend = "openai"
        base_url = "http://127.0.0.1:8000/v1"
        model = "base"
        [endpoints.student.variants.orion]
        base_url = "http://127.0.0.1:8001/v1"
        model = "orion-full"
        """)))
    checkpoint = {"variant": "orion", "kind": "full", "checkpoint_id": "a" * 16, "path": "/ckpt"}
    cfg, model = served_endpoint(profile.config, "tiny", AskedWeights.of(checkpoint, "/base"), Path("/data"))
    assert (cfg.base_url, model) == ("http://127.0.0.1:8001/v1", "orion-full")
    assert checkpoint_name("orion", "0123456789abcdef") == "orion-0123456789ab"


def test_what_is_asked_for_is_made_once_from_the_checkpoint_row() -> None:
    """A trained checkpoint is asked for by its name; the base weights (no row, or a ``base`` row) are not."""
    lora = AskedWeights.of({"variant": "orion", "kind": "lora_adapter", "checkpoint_id": "0123456789abcdef",
                            "path": "/ckpt", "seed": 0}, "/base")
    assert (lora.trained, lora.full, lora.name, lora.path, lora.base_model) == (
        True, False, "orion-0123456789ab", "/ckpt", "/base")
    assert AskedWeights.of({"variant": "teacher_sft", "kind": "full", "checkpoint_id": "f" * 16, "path": "/f"},
                           "/base").full
    assert not AskedWeights.of(None, "/base").trained
    assert not AskedWeights.of({"variant": "base", "kind": "base", "checkpoint_id": "b" * 16, "path": "/base"},
                               "/base").trained


@pytest.mark.parametrize(("body", "error"), [
    ('[endpoints.student]\nbackend = "hf"\nserve = "vllm"\n', 'serve = "vllm" needs backend = "openai"'),
    ('[endpoints.teacher]\nserve = "transformers"\n', "[endpoints.teacher] serve and variants only apply"),
    ('[endpoints.student]\nbackend = "openai"\n[endpoints.student.variants.orionx]\nbase_url = "http://x"\n',
     "[endpoints.student.variants.orionx] needs a variant"),
])
def test_a_server_setting_where_it_cannot_apply_is_refused(write_profile, body, error) -> None:
    with pytest.raises(ProfileError, match=error.replace("[", r"\[").replace("]", r"\]")):
        load_profile(str(write_profile(body)))


def test_orion_check_of_a_managed_vllm_on_this_cpu_host_names_its_python_and_the_cpu_flags(
        write_profile, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(vllm_host.PYTHON_VAR, sys.executable)  # this environment has no vLLM
    profile = load_profile(str(write_profile(SERVED_VLLM)))
    report = run_preflight(profile, tmp_path / "data", selection=["student_attempts"])
    text = report.render()
    assert "student: a vllm server the run starts, sleeps or stops, and stops at the end" in text
    assert any(f"{sys.executable} (${vllm_host.PYTHON_VAR}) has no vLLM" in p for p in report.problems), report.problems
    (command,) = [line for line in text.splitlines() if line.strip().startswith("ok    tiny: ")]
    parts = [f"{sys.executable} -m vllm.entrypoints.openai.api_server --model <the student_base_model path>",
             "--enable-lora", "--max-lora-rank 16", "--kv-cache-memory-bytes 2147483648", "--no-enable-chunked-prefill",
             "--max-num-batched-tokens 8192", "--tensor-parallel-size 2", "VLLM_ALLOW_RUNTIME_LORA_UPDATING=1"]
    parts += ["VLLM_CPU_NUM_OF_RESERVED_CPU=0"] if (os.cpu_count() or 1) <= vllm_host.FEW_CORES else []
    parts += [] if vllm_host.cpu_has_native_bf16() else ["--dtype float32"]
    for part in parts:
        assert part in command, (part, command)
    for absent in ("--enable-sleep-mode", "--gpu-memory-utilization", "VLLM_SERVER_DEV_MODE"):
        assert absent not in command, (absent, command)
    assert "no sleep mode" in text and "at most 3 time(s)" in text


def test_sleep_mode_on_a_cpu_host_is_refused_by_orion_check(write_profile, tmp_path) -> None:
    profile = load_profile(str(write_profile(SERVED_VLLM + "sleep_mode = true\n")))
    report = run_preflight(profile, tmp_path / "data", selection=["student_attempts"])
    assert any("vLLM has no sleep mode on a CPU host" in p for p in report.problems), report.problems


def test_on_a_gpu_host_vllm_keeps_the_memory_share_and_sleeps() -> None:
    flags = vllm_host.host_flags(on_cpu=False, sleep_mode=None, gpu_memory_utilization=0.85, kv_cache_gib=None,
                                 max_model_len=None, batched_tokens=8192)
    assert flags.args == ("--gpu-memory-utilization", "0.85", "--enable-sleep-mode") and flags.sleep_mode
    assert not flags.env
    awake = vllm_host.host_flags(on_cpu=False, sleep_mode=False, gpu_memory_utilization=0.5, kv_cache_gib=None,
                                 max_model_len=4096, batched_tokens=8192)
    assert awake.args == ("--gpu-memory-utilization", "0.5", "--max-model-len", "4096") and not awake.sleep_mode
    cpu = vllm_host.host_flags(on_cpu=True, sleep_mode=None, gpu_memory_utilization=0.85, kv_cache_gib=0.5,
                               max_model_len=2048, batched_tokens=8192)
    assert cpu.args[:5] == ("--kv-cache-memory-bytes", str(2**29), "--no-enable-chunked-prefill",
                            "--max-num-batched-tokens", "2048")


def test_orion_check_refuses_max_tokens_over_the_window_and_warns_when_only_the_prompt_tips_it_over() -> None:
    """vLLM 0.32 refuses max_tokens > max_model_len (400) and cuts a reply whose prompt leaves less room (recorded:
    orion_devtools/vllm_runtime.py)."""
    cfg = EndpointConfig(backend="openai", base_url="http://127.0.0.1:1/v1", model="m")
    for max_tokens, level in ((8192, "problem"), (4000, "warn"), (3000, "ok")):
        section = Section("student")
        stage = Stage("benchmark_predictions", "student", 8, "", max_tokens, 300, budgeted=False)
        _check_window(section, "student", cfg, 4096, [stage])
        assert [f.level for f in section.findings] == [level], (max_tokens, section.findings)
