"""Tests for orion_assets.training.student (tiny student build, pretrained resolution, loading) and serving it.

Real components only: real GSM8K training texts, the real `tokenizers` trainer, real transformers models and a
real `transformers serve` subprocess queried with the `openai` client.  Nothing touches the network.
"""

from __future__ import annotations

import os

# Never reach the Hugging Face Hub from tests (set before transformers is imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_UPDATE_CHECK", "1")

import hashlib
import json
from pathlib import Path

import pytest
import torch

from orion_assets.devices import resolve_device
from orion_assets.ids import model_fingerprint
from orion_assets.training.student import (
    EOS_TOKEN,
    PAD_TOKEN,
    BuiltModel,
    build_tiny_student,
    resolve_eos_token,
    resolve_pretrained,
)
from orion_assets_tests.conftest import gsm8k_train_rows

REPO = Path(__file__).resolve().parents[2]
N_RECORDS = 200  # -> 400 texts (question + answer)

TINY = dict(
    vocab_size=2048,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)
ROUNDTRIP = "\\boxed{\\frac{1}{2}} {question} ü 1,000"


def _gsm8k_texts(n_records: int = N_RECORDS, offset: int = 0) -> list[str]:
    texts = [t for rec in gsm8k_train_rows(n_records, offset) for t in (rec["question"], rec["answer"])]
    assert len(texts) == 2 * n_records
    return texts


def _expected_parameters(v, h, i, layers, heads, kv_heads) -> int:
    head_dim = h // heads
    kv = kv_heads * head_dim
    attn = (h * h + h) + 2 * (h * kv + kv) + h * h  # q (bias), k, v (bias), o (no bias)
    mlp = 3 * h * i
    norms = 2 * h
    return v * h + layers * (attn + mlp + norms) + h  # tied lm_head, final norm


def _load_for_generation(path: Path):
    """``(model, tokenizer)`` for batched generation: fp32, eval mode, tokenizer padded on the left."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), tokenizer


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _weights_sha(path: Path) -> str:
    from safetensors.torch import load_file

    tensors = load_file(str(path / "model.safetensors"))
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return _gsm8k_texts()


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("students")


@pytest.fixture(scope="module")
def tiny(texts, tiny_root) -> BuiltModel:
    return build_tiny_student(texts, tiny_root, **TINY)


@pytest.fixture(scope="module")
def loaded(tiny):
    return _load_for_generation(tiny.path)


# ----------------------------------------------------------------------------------------------------------------
# build


def test_build_record_and_files(tiny, tiny_root):
    assert tiny.source == "build_tiny"
    assert tiny.eos_token == "<|im_end|>"
    assert tiny.vocab_size == TINY["vocab_size"]
    assert tiny.path == tiny_root / f"tiny-qwen2-{tiny.config_hash}"
    assert tiny.config_hash in tiny.path.name
    for name in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "build_info.json",
    ]:
        assert (tiny.path / name).is_file(), name
    info = json.loads((tiny.path / "build_info.json").read_text())
    assert info["config_hash"] == tiny.config_hash
    assert info["parameters"] == tiny.parameters
    assert info["tokenizer_texts"] == 2 * N_RECORDS
    # atomic write: nothing but the finished directory is left in out_root
    assert [p.name for p in tiny_root.iterdir()] == [tiny.path.name]


def test_parameter_count_as_configured(tiny, loaded):
    model, _ = loaded
    expected = _expected_parameters(
        TINY["vocab_size"],
        TINY["hidden_size"],
        TINY["intermediate_size"],
        TINY["num_hidden_layers"],
        TINY["num_attention_heads"],
        TINY["num_key_value_heads"],
    )
    assert tiny.parameters == expected == model.num_parameters()


def test_build_is_deterministic(texts, tiny, tmp_path):
    other = build_tiny_student(texts, tmp_path / "elsewhere", **TINY)
    assert other.path != tiny.path
    assert other.config_hash == tiny.config_hash
    assert other.parameters == tiny.parameters
    assert (other.path / "tokenizer.json").read_bytes() == (tiny.path / "tokenizer.json").read_bytes()
    assert _weights_sha(other.path) == _weights_sha(tiny.path)
    assert _file_sha(other.path / "model.safetensors") == _file_sha(tiny.path / "model.safetensors")
    for name in ["config.json", "generation_config.json", "tokenizer_config.json"]:
        assert (other.path / name).read_bytes() == (tiny.path / name).read_bytes(), name


def test_same_out_root_is_a_cache_hit(texts, tiny, tiny_root):
    weights = tiny.path / "model.safetensors"
    before = (weights.stat().st_ino, weights.stat().st_mtime_ns)
    again = build_tiny_student(iter(texts), tiny_root, **TINY)  # any iterable works
    assert again == tiny
    assert (weights.stat().st_ino, weights.stat().st_mtime_ns) == before  # not rebuilt, not rewritten
    assert [p.name for p in tiny_root.iterdir()] == [tiny.path.name]


def test_hash_depends_on_texts_and_config(texts, tiny, tmp_path):
    other_texts = build_tiny_student(_gsm8k_texts(50, offset=N_RECORDS), tmp_path, **TINY)
    assert other_texts.config_hash != tiny.config_hash
    assert (other_texts.path / "tokenizer.json").read_bytes() != (tiny.path / "tokenizer.json").read_bytes()

    other_seed = build_tiny_student(texts, tmp_path, **{**TINY, "seed": 1})
    assert other_seed.config_hash != tiny.config_hash
    assert (other_seed.path / "tokenizer.json").read_bytes() == (tiny.path / "tokenizer.json").read_bytes()
    assert _weights_sha(other_seed.path) != _weights_sha(tiny.path)


def test_incomplete_directory_is_rebuilt(texts, tiny, tmp_path):
    # What a build killed before the atomic rename could never leave, but a hand-made/partial copy could.
    broken = tmp_path / tiny.path.name
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    rebuilt = build_tiny_student(texts, tmp_path, **TINY)
    assert rebuilt.path == broken
    assert (rebuilt.path / "build_info.json").is_file()
    assert _weights_sha(rebuilt.path) == _weights_sha(tiny.path)
    assert [p.name for p in tmp_path.iterdir()] == [broken.name]


def test_tiny_corpus_fills_vocab_with_reserved_tokens(tmp_path):
    built = build_tiny_student(
        ["1 + 1 = 2", "x^2"], tmp_path, **{**TINY, "vocab_size": 512, "max_position_embeddings": 256}
    )
    model, tok = _load_for_generation(built.path)
    assert len(tok) == 512 == model.config.vocab_size == built.vocab_size
    assert tok.convert_ids_to_tokens(511).startswith("<|reserved_")
    assert tok.decode(tok.encode("Zebra ∑ 42", add_special_tokens=False)) == "Zebra ∑ 42"


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        build_tiny_student([], tmp_path)
    with pytest.raises(ValueError):
        build_tiny_student(["a"], tmp_path, vocab_size=100)
    with pytest.raises(ValueError):
        build_tiny_student(["a"], tmp_path, hidden_size=64, num_attention_heads=3)


# ----------------------------------------------------------------------------------------------------------------
# loading, tokenizer, chat template, generation


def test_loads_with_auto_classes(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny.path)
    tok = AutoTokenizer.from_pretrained(tiny.path)
    assert isinstance(model, Qwen2ForCausalLM)
    cfg = model.config
    assert cfg.model_type == "qwen2"
    for key, value in TINY.items():
        assert getattr(cfg, key) == value, key
    assert model.get_input_embeddings().weight.shape == (TINY["vocab_size"], TINY["hidden_size"])
    assert len(tok) == TINY["vocab_size"]
    assert model.dtype == torch.float32


def test_special_tokens_and_generation_config(tiny, loaded):
    model, tok = loaded
    im_end = tok.convert_tokens_to_ids(EOS_TOKEN)
    pad = tok.convert_tokens_to_ids(PAD_TOKEN)
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    assert (pad, im_start, im_end) == (0, 1, 2)
    assert tok.eos_token == EOS_TOKEN and tok.eos_token_id == im_end
    assert tok.pad_token == PAD_TOKEN and tok.pad_token_id == pad
    assert model.generation_config.eos_token_id == im_end
    assert model.generation_config.pad_token_id == pad
    assert model.config.eos_token_id == im_end
    gen = json.loads((tiny.path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == im_end and gen["pad_token_id"] == pad
    # special tokens are single tokens, never split by BPE
    assert tok.encode("<|im_start|>user<|im_end|>", add_special_tokens=False)[0] == im_start
    assert tok.encode("x<|im_end|>", add_special_tokens=False)[-1] == im_end


@pytest.mark.parametrize(
    "text",
    [
        ROUNDTRIP,
        "$\\sqrt{x^2+1} \\le \\dfrac{3}{4}$ and \\(a_{n+1}\\)",
        "Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72",
        "  tabs\tand\n\nnewlines  ",
        "日本語 – “quotes” — ∑∫≠ 🙂 Ωmega",
        "3.14159 + 2,718,281 = -0.5e10",
    ],
)
def test_tokenizer_round_trips_math_text(tiny, loaded, text):
    import tokenizers

    _, tok = loaded
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    # transformers (Qwen2Tokenizer) and the raw tokenizers file agree
    raw = tokenizers.Tokenizer.from_file(str(tiny.path / "tokenizer.json"))
    assert raw.encode(text, add_special_tokens=False).ids == ids
    assert raw.decode(ids) == text


def test_digits_are_single_tokens(loaded):
    _, tok = loaded
    assert tok.tokenize("12345") == ["1", "2", "3", "4", "5"]


def test_chat_template(loaded):
    _, tok = loaded
    messages = [
        {"role": "system", "content": "Reason step by step."},
        {"role": "user", "content": "What is 1/2 + 1/2?"},
    ]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nReason step by step.<|im_end|>\n"
        "<|im_start|>user\nWhat is 1/2 + 1/2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    no_gen = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert no_gen.endswith("<|im_end|>\n") and not no_gen.endswith("assistant\n")

    # assistant turns are marked for assistant-only loss (TRL `assistant_only_loss=True`)
    full = messages + [{"role": "assistant", "content": "\\boxed{1}"}]
    enc = tok.apply_chat_template(full, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    assistant_ids = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(assistant_ids, skip_special_tokens=False) == "\\boxed{1}<|im_end|>"


def test_chat_template_is_trl_training_compatible(loaded):
    from trl.chat_template_utils import (
        has_generation_markers,
        is_chat_template_prefix_preserving,
        is_chat_template_stop_token_trained,
    )

    _, tok = loaded
    assert has_generation_markers(tok.chat_template)
    assert is_chat_template_prefix_preserving(tok)
    assert is_chat_template_stop_token_trained(tok)  # <|im_end|> is inside the assistant loss mask


def test_generate_from_chat_prompt(loaded):
    model, tok = loaded
    messages = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples?"}]
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    prompt_len = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new = out[0, prompt_len:].tolist()
    assert 0 < len(new) <= 8
    if tok.eos_token_id not in new:
        assert len(new) == 8  # stopped by max_new_tokens
    assert isinstance(tok.decode(new, skip_special_tokens=True), str)

    # greedy decoding is reproducible; sampling (generation_config.do_sample=True) is seedable
    with torch.no_grad():
        again = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        torch.manual_seed(0)
        s1 = model.generate(**inputs, max_new_tokens=8)
        torch.manual_seed(0)
        s2 = model.generate(**inputs, max_new_tokens=8)
    assert torch.equal(out, again)
    assert torch.equal(s1, s2)


def test_batched_generation_left_padding(loaded):
    model, tok = loaded
    assert tok.padding_side == "left"
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in ["1+1?", "What is the sum of the first ten positive integers?"]
    ]
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] <= batch["input_ids"].shape[1] + 4


# ----------------------------------------------------------------------------------------------------------------
# pretrained resolution (a local checkpoint; the Hub is only for real use)


def test_resolve_pretrained_local_dir(tiny):
    ref = resolve_pretrained(str(tiny.path))
    assert ref.source == "pretrained"
    assert ref.path == tiny.path.resolve()
    assert ref.parameters == tiny.parameters
    assert ref.vocab_size == tiny.vocab_size
    assert ref.eos_token == "<|im_end|>"
    assert resolve_pretrained(str(tiny.path)).config_hash == ref.config_hash
    assert resolve_pretrained(str(tiny.path), revision="abc").config_hash != ref.config_hash
    expected = hashlib.sha256((tiny.path / "config.json").read_bytes() + b"\0").hexdigest()[:16]
    assert ref.config_hash == expected


def test_resolve_pretrained_missing_model_fails_offline(tmp_path):
    with pytest.raises(Exception):
        resolve_pretrained(str(tmp_path / "no-such-model"))


# ----------------------------------------------------------------------------------------------------------------
# the shared helpers (the SFT trainer, the hf backend and the quality metrics import these)


def test_helpers_have_one_implementation():
    from orion_assets.llm import hf_backend
    from orion_assets.method.quality import embedding
    from orion_assets.training import config, data, trainer

    assert config.model_fingerprint is hf_backend.model_fingerprint is model_fingerprint
    assert trainer.resolve_device is hf_backend.resolve_device is embedding._resolve_device is resolve_device
    assert trainer.resolve_eos_token is resolve_eos_token
    import orion_assets.training.student

    assert not hasattr(orion_assets.training.student, "load_for_generation")  # unused: tests load with the Auto classes
    for module in (config, data, trainer, hf_backend, embedding):
        for gone in ("_model_fingerprint", "_sha256_json", "_FINGERPRINT_CHUNK", "_end_of_turn_token"):
            assert not hasattr(module, gone), (module.__name__, gone)


def test_model_fingerprint_sees_new_weights_of_the_same_size(tiny, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny.path, copy)
    assert model_fingerprint(copy) == model_fingerprint(tiny.path)  # content, not the path
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes: a retrained checkpoint written over the old one
    weights.write_bytes(bytes(data))
    assert model_fingerprint(copy) != model_fingerprint(tiny.path)
    (copy / "checkpoint-1").mkdir()  # folders written later (checkpoints) are not what from_pretrained reads
    (copy / "checkpoint-1" / "x.bin").write_bytes(b"x")
    before = model_fingerprint(copy)
    assert model_fingerprint(copy) == before
    assert model_fingerprint("Qwen/Qwen2.5-1.5B") != model_fingerprint("Qwen/Qwen2.5-0.5B")  # a Hub id: its name


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="'cuda:1' requested but CUDA is not available"):
            resolve_device("cuda:1")


def test_resolve_eos_token(loaded):
    _, tok = loaded
    assert resolve_eos_token(tok) == EOS_TOKEN
    assert resolve_eos_token(tok, PAD_TOKEN) == PAD_TOKEN
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        resolve_eos_token(tok, "<|nope|>")
    template = tok.chat_template
    try:
        tok.chat_template = None  # a base model without a chat template still stops at <|im_end|>
        assert resolve_eos_token(tok) == EOS_TOKEN
        tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # not ChatML: the eos
        tok.eos_token = PAD_TOKEN
        assert resolve_eos_token(tok) == PAD_TOKEN
    finally:
        tok.chat_template, tok.eos_token = template, EOS_TOKEN


# ----------------------------------------------------------------------------------------------------------------
# serving with `transformers serve` + the openai client


@pytest.mark.slow  # starts a real transformers serve: about 20 s
def test_serve_chat_completion(tiny):
    from openai import BadRequestError, OpenAI

    from orion_devtools.serve import serve_model

    model_name = str(tiny.path.resolve())
    messages = [{"role": "user", "content": "Natalia sold 48 clips in April and half as many in May. Total?"}]
    _, tok = _load_for_generation(tiny.path)
    prompt_tokens = len(tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])

    with serve_model(tiny.path, timeout_s=180) as base_url:
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        client = OpenAI(base_url=base_url, api_key="x", timeout=60, max_retries=0)

        assert [m.id for m in client.models.list().data] == [model_name]

        r = client.chat.completions.create(model=model_name, messages=messages, max_tokens=16)
        choice = r.choices[0]
        assert isinstance(choice.message.content, str) and choice.message.content
        assert choice.finish_reason == "length"
        assert r.usage.completion_tokens == 16
        assert r.usage.prompt_tokens == prompt_tokens
        assert r.usage.total_tokens == prompt_tokens + 16

        # forcing <|im_end|> first: generation stops at the eos -> finish_reason "stop", empty content.
        # (logit_bias values must be floats: the server passes them to `sequence_bias`, which rejects ints -> 500)
        r = client.chat.completions.create(
            model=model_name, messages=messages, max_tokens=16, logit_bias={str(tok.eos_token_id): 100.0}
        )
        assert r.choices[0].finish_reason == "stop"
        assert r.choices[0].message.content == ""
        assert r.usage.completion_tokens == 1

        # seed + temperature are honoured; temperature=0 is greedy
        def sample(**kw):
            return client.chat.completions.create(model=model_name, messages=messages, max_tokens=12, **kw)

        a, b, c = (sample(seed=s, temperature=1.0).choices[0].message.content for s in (7, 7, 8))
        assert a == b and a != c
        g1, g2 = (sample(temperature=0, seed=s).choices[0].message.content for s in (1, 2))
        assert g1 == g2

        # n is accepted but ignored: one choice
        assert len(sample(n=2).choices) == 1

        # the server is pinned to its model
        with pytest.raises(BadRequestError):
            client.chat.completions.create(model="some/other-model", messages=messages, max_tokens=4)


@pytest.mark.slow  # starts a real transformers serve: about 10 s
def test_serve_startup_failure_raises_with_server_output(tmp_path):
    from orion_devtools.serve import ServeStartupError, serve_model

    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "no_such_architecture"}))
    with pytest.raises(ServeStartupError) as excinfo:
        with serve_model(bad, timeout_s=120):
            pytest.fail("server should not get healthy")
    message = str(excinfo.value)
    assert "exited with code" in message
    assert "--- output tail ---" in message
    assert "Traceback" in message.split("--- output tail ---")[1]  # the server's own error, from its output


ARROWS = ("{% for m in messages %}<<{{ m['role'] }}>> {{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<<assistant>> {% endif %}")


def test_a_students_own_chat_template_links_the_weights_and_changes_only_the_template(tiny, tmp_path):
    from transformers import AutoTokenizer

    from orion_assets.training.chat_template import with_chat_template

    chat = [{"role": "user", "content": "What is 2 + 3?"}]
    own = with_chat_template(tiny, ARROWS, tmp_path / "models")
    assert own.path != tiny.path and own.config_hash != tiny.config_hash  # its checkpoints and calls are its own
    assert (own.path / "model.safetensors").resolve() == (tiny.path / "model.safetensors").resolve()
    rendered = AutoTokenizer.from_pretrained(own.path).apply_chat_template(chat, tokenize=False,
                                                                          add_generation_prompt=True)
    assert rendered == "<<user>> What is 2 + 3?<|im_end|>\n<<assistant>> "
    original = AutoTokenizer.from_pretrained(tiny.path).apply_chat_template(chat, tokenize=False,
                                                                           add_generation_prompt=True)
    assert "<<user>>" not in original  # the base directory is untouched
    assert with_chat_template(tiny, ARROWS, tmp_path / "models") == own  # made once
    template_file = tmp_path / "arrows.jinja"
    template_file.write_text(ARROWS)
    assert with_chat_template(tiny, str(template_file), tmp_path / "models") == own
    with pytest.raises(ValueError, match="chat_template does not render"):
        with_chat_template(tiny, "{% for m in messages %}{{ m['content'] }", tmp_path / "models")
