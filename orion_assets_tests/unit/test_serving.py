"""Which server answers for which checkpoint (orion_assets/io/serving.py), and what `orion check` says of a
server the run will start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orion_assets.cli.check import run_preflight
from orion_assets.io import serving
from orion_assets.profiles import ProfileError, load_profile

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
    lora = {"checkpoint_id": "c" * 16, "kind": "lora_adapter", "path": str(adapter)}
    made = serving.served_directory(tmp_path / "served" / "orion-cccc", lora, str(base))
    assert (made / "config.json").resolve() == (base / "config.json").resolve()  # the base's config and weights
    assert (made / "model.safetensors").resolve() == (base / "model.safetensors").resolve()
    assert (made / "adapter_config.json").resolve() == (adapter / "adapter_config.json").resolve()
    assert (made / "tokenizer_config.json").resolve() == (adapter / "tokenizer_config.json").resolve()  # over the base's
    assert not (made / "build_info.json").exists()
    assert (made / serving.MARKER).read_text() == "c" * 16
    assert serving.served_directory(made, lora, str(base)) == made  # made once
    full = {"checkpoint_id": "f" * 16, "kind": "full", "path": str(base)}
    alone = serving.served_directory(tmp_path / "served" / "orion-ffff", full, "/nowhere")
    assert not (alone / "adapter_config.json").exists() and (alone / "model.safetensors").is_symlink()


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
    cfg, model = serving.served_endpoint(profile.config, "tiny", base_model="/base", data_path=Path("/data"),
                                         checkpoint=checkpoint)
    assert (cfg.base_url, model) == ("http://127.0.0.1:8001/v1", "orion-full")
    assert serving.checkpoint_name("orion", "0123456789abcdef") == "orion-0123456789ab"


@pytest.mark.parametrize(("body", "error"), [
    ('[endpoints.student]\nbackend = "hf"\nserve = "vllm"\n', 'serve = "vllm" needs backend = "openai"'),
    ('[endpoints.teacher]\nserve = "transformers"\n', "[endpoints.teacher] serve and variants only apply"),
    ('[endpoints.student]\nbackend = "openai"\n[endpoints.student.variants.orionx]\nbase_url = "http://x"\n',
     "[endpoints.student.variants.orionx] needs a variant"),
])
def test_a_server_setting_where_it_cannot_apply_is_refused(write_profile, body, error) -> None:
    with pytest.raises(ProfileError, match=error.replace("[", r"\[").replace("]", r"\]")):
        load_profile(str(write_profile(body)))


def test_orion_check_of_a_managed_vllm_names_what_this_host_lacks_and_the_command(write_profile, tmp_path) -> None:
    profile = load_profile(str(write_profile(SERVED_VLLM)))
    report = run_preflight(profile, tmp_path / "data", selection=["student_attempts"])
    text = report.render()
    assert "student: a vllm server the run starts, sleeps or stops, and stops at the end" in text
    assert any("vllm is not installed" in p for p in report.problems)  # this CPU host has neither
    assert any("vLLM needs a CUDA GPU" in p for p in report.problems)
    (command,) = [line for line in text.splitlines() if line.strip().startswith("ok    tiny: vllm serve")]
    for part in ("<the student_base_model path>", "--enable-lora", "--max-lora-rank 16",
                 "--gpu-memory-utilization 0.85", "--enable-sleep-mode", "--tensor-parallel-size 2"):
        assert part in command, (part, command)
