"""The hf backend (local transformers generation) on the tiny student, and the openai backend
against a real OpenAI-compatible server (``transformers serve``) on the same model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from orion_assets.llm import GenerationRequest, SamplingParams, chat, make_endpoint
from orion_assets.llm.hf_backend import HFEndpoint, generation_threads
from orion_assets.profiles.schema import EndpointConfig
from orion_assets.store import Store
from orion_assets.training.student import BuiltModel, build_tiny_student
from orion_assets_tests.conftest import gsm8k_train_rows


def _train_rows(n: int = 300) -> list[dict]:
    return gsm8k_train_rows(n)


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory: pytest.TempPathFactory) -> BuiltModel:
    rows = _train_rows()
    texts = [r["question"] for r in rows] + [r["answer"] for r in rows]
    return build_tiny_student(texts, tmp_path_factory.mktemp("tiny_student"))


@pytest.fixture(scope="module")
def varied_model(tiny_student: BuiltModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny student with its weights redrawn at a larger scale.

    A freshly initialised model's greedy output repeats one token whatever the prompt, which would
    make "batched equals one at a time" true for any padding bug. Larger weights give each prompt
    its own continuation, with clear margins between the top logits.
    """
    import torch
    from transformers import AutoModelForCausalLM

    target = tmp_path_factory.mktemp("varied") / "model"
    shutil.copytree(tiny_student.path, target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 3.0 / param.shape[-1] ** 0.5)
    model.save_pretrained(target)
    return target


def _cfg(batch_size: int) -> EndpointConfig:
    return EndpointConfig(backend="hf", batch_size=batch_size, device="cpu", dtype="float32")


def _requests(params: SamplingParams, n_samples: int = 1) -> list[GenerationRequest]:
    rows = _train_rows(6)
    return [
        GenerationRequest(chat(("system", "Solve {it}."), ("user", row["question"][: 30 + 25 * i])), params, j)
        for i, row in enumerate(rows)
        for j in range(n_samples)
    ]


def test_batched_greedy_equals_one_at_a_time(varied_model: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    params = SamplingParams(max_tokens=12, temperature=0.0)
    requests = _requests(params)
    batched_ep = make_endpoint(_cfg(4), Store(tmp_path / "batched.duckdb"), role="student", model_path=str(varied_model))
    single_ep = make_endpoint(_cfg(1), Store(tmp_path / "single.duckdb"), role="student", model_path=str(varied_model))
    batched = batched_ep.generate(requests)
    single = single_ep.generate(requests)
    assert [r.call_id for r in batched] == [r.call_id for r in single]
    assert len({r.text for r in batched}) == len(requests)  # every prompt its own continuation
    for b, s in zip(batched, single, strict=True):
        assert (b.text, b.finish_reason, b.prompt_tokens, b.completion_tokens) == (
            s.text, s.finish_reason, s.prompt_tokens, s.completion_tokens,
        )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(varied_model)
    for request, result in zip(requests, batched, strict=True):
        prompt = tokenizer.apply_chat_template(list(request.messages), add_generation_prompt=True, tokenize=False)
        assert result.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert result.finish_reason in ("stop", "length") and result.completion_tokens <= params.max_tokens
        assert (result.finish_reason == "length") == (result.completion_tokens == params.max_tokens)


def test_finish_reason_stop_at_eos_and_length_at_max_tokens(varied_model: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    request = _requests(SamplingParams(max_tokens=10, temperature=0.0))[2]
    tokenizer = AutoTokenizer.from_pretrained(varied_model)
    model = AutoModelForCausalLM.from_pretrained(varied_model, dtype=torch.float32)
    prompt = tokenizer.apply_chat_template(list(request.messages), add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=10, do_sample=False)[0, ids["input_ids"].shape[1] :].tolist()
    # Make the greedy path's first new token (from position 2 on) an end-of-sequence token.
    stop_at = next(i for i in range(2, len(out)) if out[i] not in out[:i])
    stopping = varied_model.parent / "stopping"
    shutil.copytree(varied_model, stopping)
    gen_config = json.loads((stopping / "generation_config.json").read_text())
    gen_config["eos_token_id"] = [gen_config["eos_token_id"], out[stop_at]]
    (stopping / "generation_config.json").write_text(json.dumps(gen_config))

    result = make_endpoint(_cfg(2), Store(tmp_path / "s.duckdb"), role="student", model_path=str(stopping)).generate(
        [request]
    )[0]
    assert result.finish_reason == "stop" and result.completion_tokens == stop_at + 1
    assert result.text == tokenizer.decode(out[:stop_at], skip_special_tokens=True)
    plain = make_endpoint(_cfg(2), Store(tmp_path / "p.duckdb"), role="student", model_path=str(varied_model))
    assert plain.identity.model != make_endpoint(_cfg(2), Store(tmp_path / "p.duckdb"), role="student",
                                                 model_path=str(stopping)).identity.model  # fmt: skip
    long = plain.generate([request])[0]
    assert long.finish_reason == "length" and long.completion_tokens == 10


def test_sampling_is_seeded_per_batch_and_a_cached_run_loads_no_model(tiny_student: BuiltModel, tmp_path: Path) -> None:
    params = SamplingParams(max_tokens=8, temperature=1.0, top_p=0.95, seed=3)
    requests = _requests(params, n_samples=2)[:6]
    path = str(tiny_student.path)
    first = make_endpoint(_cfg(4), Store(tmp_path / "a.duckdb"), role="student", model_path=path).generate(requests)
    again = make_endpoint(_cfg(4), Store(tmp_path / "b.duckdb"), role="student", model_path=path).generate(requests)
    assert [r.text for r in first] == [r.text for r in again]  # same calls, same batches, same seeds
    assert first[0].text != first[1].text  # two samples of one prompt differ
    assert all(r.ok and not r.cached and r.completion_tokens for r in first)

    cached_ep = make_endpoint(_cfg(4), Store(tmp_path / "a.duckdb"), role="student", model_path=path)
    assert isinstance(cached_ep, HFEndpoint)
    cached = cached_ep.generate(requests)
    assert all(r.cached for r in cached) and [r.text for r in cached] == [r.text for r in first]
    assert cached_ep._model is None  # nothing to generate: the model was never loaded


def test_small_models_generate_on_one_cpu_thread(tiny_student: BuiltModel, tmp_path: Path, monkeypatch) -> None:
    """SmolLM2-135M (134.5 M parameters) is small: one thread on the CPU (two threads measured several
    times slower on the busy dev VM, benchmarks/README.md); a 1.5 B model and any GPU keep torch's threads."""
    import torch

    assert generation_threads("cpu", 134_515_008, 2) == 1
    assert generation_threads("cpu", 1_543_714_304, 2) == 2
    assert generation_threads("cuda", 134_515_008, 2) == 2

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen: list[int] = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real(n))[1])
    endpoint = make_endpoint(_cfg(2), Store(tmp_path / "t.duckdb"), role="student", model_path=str(tiny_student.path))
    try:
        assert all(r.ok for r in endpoint.generate(_requests(SamplingParams(max_tokens=4, temperature=0.0))[:2]))
        assert seen == [1, 2] and torch.get_num_threads() == 2  # one thread while generating, then back
    finally:
        real(before)


@pytest.fixture(scope="module")
def served(tiny_student: BuiltModel) -> Iterator[object]:
    from orion_devtools.serve import served_model

    with served_model(tiny_student.path) as running:
        yield running


@pytest.mark.slow  # starts a real transformers serve: about 20 s
def test_openai_backend_against_transformers_serve(served, tmp_path: Path) -> None:
    cfg = EndpointConfig(
        backend="openai", base_url=served.base_url, model=served.model, api_key_env="ORION_STUDENT_API_KEY",
        concurrency=4, timeout_s=120, max_retries=2,
    )  # fmt: skip
    store = Store(tmp_path / "orion_store.duckdb")
    requests = _requests(SamplingParams(max_tokens=8, temperature=0.8, seed=0), n_samples=2)[:6]
    results = make_endpoint(cfg, store, role="student").generate(requests, run_id="served")
    for result in results:
        assert result.ok and result.error is None and result.retries == 0, result
        assert result.prompt_tokens and result.completion_tokens and result.completion_tokens <= 8
        assert result.finish_reason in ("stop", "length")
    again = make_endpoint(cfg, store, role="student")
    assert all(r.cached for r in again.generate(requests)) and again.last_stats["sent"] == 0


def test_release_models_frees_a_loaded_model_and_a_later_call_loads_it_again(tiny_student: BuiltModel,
                                                                             tmp_path: Path) -> None:
    """Before SFT takes the accelerator the hf backend lets go of its model (serving.handover.release_accelerator)."""
    import gc
    import weakref

    from orion_assets.llm.hf_backend import release_models

    release_models()  # whatever an earlier test of this worker's process left loaded: the count below is ours
    params = SamplingParams(max_tokens=4, temperature=0.0)
    endpoint = make_endpoint(_cfg(4), Store(tmp_path / "a.duckdb"), role="student", model_path=str(tiny_student.path))
    first = endpoint.generate(_requests(params)[:2])
    model = weakref.ref(endpoint._model)
    assert model() is not None
    assert release_models() == 1
    gc.collect()
    assert model() is None and endpoint._model is None  # nothing holds the weights any more
    assert release_models() == 0
    again = make_endpoint(_cfg(4), Store(tmp_path / "b.duckdb"), role="student", model_path=str(tiny_student.path))
    assert [r.text for r in again.generate(_requests(params)[:2])] == [r.text for r in first]
    endpoint.generate(_requests(params)[2:3])  # the released endpoint loads its model again
    assert endpoint._model is not None
