"""The student base model: :func:`build_tiny_student` (a tiny random Qwen2 and a BPE tokenizer trained on the
training texts, offline, content-addressed) or :func:`resolve_pretrained` (a real checkpoint, not copied).

What the tiny student's directory holds, and why: docs/student-models.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from orion_assets.ids import sha256_json

__all__ = [
    "BuiltModel",
    "CHAT_TEMPLATE",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "BOS_TOKEN",
    "RAW_RESPONSE_TEMPLATE",
    "build_tiny_student",
    "resolve_pretrained",
    "count_parameters",
    "resolve_eos_token",
    "read_build_info",
    "publish_build",
]

#: Bump when the build recipe changes in a way that changes the produced files (invalidates the cache).
TINY_BUILD_VERSION = 1

PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"  # start of a ChatML turn (not prepended automatically)
EOS_TOKEN = "<|im_end|>"  # end of turn
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN]

# Qwen2's pre-tokenizer split: contractions, letter runs, *single* digits, punctuation runs, newlines, spaces.
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

#: Qwen-style ChatML template. Multi-part contents keep their text parts. Assistant turns are wrapped in
#: ``{% generation %}`` (content + ``<|im_end|>``) so assistant-token masks can be computed.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}"
    "{%- set content = message['content'] %}"
    "{%- elif message['content'] is none %}"
    "{%- set content = '' %}"
    "{%- else %}"
    "{%- set content = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}"
    "{%- endif %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}"
    "{{- content + '<|im_end|>' }}"
    "{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

#: ``transformers serve`` response template that returns the raw text (no ``<think>``/tool-call parsing).
RAW_RESPONSE_TEMPLATE: dict[str, Any] = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "content": {
            "close_pattern": r"\s*(?:<\|im_end\|>|<\|endoftext\|>)",
            "content": "text",
        }
    },
}


@dataclass(frozen=True)
class BuiltModel:
    """A student base model on disk.

    Attributes:
        path: directory loadable by ``AutoModelForCausalLM`` / ``AutoTokenizer`` (for a Hub id: its local
            snapshot directory).
        config_hash: hash of the build config (for the tiny student also of the tokenizer training texts); for a
            pretrained model, of its ``config.json`` bytes and the revision.
        parameters: number of (unique) parameters.
        vocab_size: ``config.vocab_size`` (embedding rows).
        eos_token: the end-of-turn token, e.g. ``"<|im_end|>"``.
        source: ``"build_tiny"`` or ``"pretrained"``.
    """

    path: Path
    config_hash: str
    parameters: int
    vocab_size: int
    eos_token: str
    source: str

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def resolve_eos_token(tokenizer, eos_token: str | None = None) -> str:
    """The end-of-turn token a chat model stops at (and SFT teaches): ``eos_token`` when given (it must be in the
    vocabulary); ``<|im_end|>`` for ChatML tokenizers (also base models whose eos is ``<|endoftext|>``: the token
    is in the vocabulary and in the chat template, or there is no template); else the tokenizer's eos."""
    vocab = tokenizer.get_vocab()
    if eos_token is not None:
        if eos_token not in vocab:
            raise ValueError(f"eos_token {eos_token!r} is not in the tokenizer's vocabulary")
        return eos_token
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    if EOS_TOKEN in vocab and (EOS_TOKEN in template or not template):
        return EOS_TOKEN
    if tokenizer.eos_token is None:
        raise ValueError("the tokenizer has no eos token and no <|im_end|>; set the end-of-turn token explicitly")
    return str(tokenizer.eos_token)


def _texts_digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def count_parameters(model) -> int:
    """Unique parameters of a torch module (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


# --------------------------------------------------------------------------------------------------------------
# tiny student


def _train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE trained on ``texts``; deterministic for a given multiset of texts."""
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False, fuse_unk=False))
    # Exactly Qwen2's pipeline (NFC + regex split + byte level): `AutoTokenizer` maps model_type "qwen2" to
    # `Qwen2Tokenizer`, which rebuilds this pipeline around the saved vocab/merges whatever tokenizer.json says,
    # so training with the same pipeline keeps `tokenizers` and `transformers` tokenizations identical.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:  # corpus too small to learn vocab_size tokens: keep len(tokenizer) == vocab_size
        tok.add_special_tokens(
            [AddedToken(f"<|reserved_{i}|>", special=True, normalized=False) for i in range(missing)]
        )
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    assert tok.get_vocab_size() == vocab_size, (tok.get_vocab_size(), vocab_size)
    return tok


def read_build_info(path: Path) -> BuiltModel | None:
    info_file = path / "build_info.json"
    if not info_file.is_file():
        return None
    info = json.loads(info_file.read_text())
    return BuiltModel(
        path=path,
        config_hash=info["config_hash"],
        parameters=int(info["parameters"]),
        vocab_size=int(info["vocab_size"]),
        eos_token=info["eos_token"],
        source=info["source"],
    )


def build_tiny_student(
    texts: Iterable[str],
    out_root: Path,
    *,
    vocab_size: int = 2048,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 4096,
    seed: int = 0,
) -> BuiltModel:
    """Build (or reuse) a tiny random-initialised Qwen2 student with a locally trained byte-level BPE tokenizer.

    Deterministic: the same ``texts`` (same order) and arguments give a byte-identical ``tokenizer.json`` and
    identical weights.  The result lives in ``out_root / f"tiny-qwen2-{config_hash}"``; if that directory
    already holds a complete build it is returned as is (no rebuild).  ``texts`` is consumed once.
    """
    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("build_tiny_student needs at least one training text for the tokenizer")
    min_vocab = 256 + len(SPECIAL_TOKENS)
    if vocab_size < min_vocab:
        raise ValueError(f"vocab_size must be >= {min_vocab} (256 byte symbols + special tokens), got {vocab_size}")
    if hidden_size % num_attention_heads or num_attention_heads % num_key_value_heads:
        raise ValueError("hidden_size must divide by num_attention_heads, which must divide by num_key_value_heads")

    build_config = {
        "recipe": "tiny-qwen2",
        "recipe_version": TINY_BUILD_VERSION,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "max_position_embeddings": max_position_embeddings,
        "seed": seed,
        "templates_sha256": sha256_json({"chat": CHAT_TEMPLATE, "response": RAW_RESPONSE_TEMPLATE}),
    }
    texts_sha256 = _texts_digest(texts)
    config_hash = sha256_json({"build": build_config, "tokenizer_texts_sha256": texts_sha256})[:16]

    out_root = Path(out_root)
    final = out_root / f"tiny-qwen2-{config_hash}"
    cached = read_build_info(final)
    if cached is not None:
        return cached

    return publish_build(final, lambda tmp: _build_tiny_into(tmp, texts, build_config, config_hash, texts_sha256))


def publish_build(final: Path, build: Callable[[Path], object]) -> BuiltModel:
    """Run ``build`` into a temporary directory beside ``final`` and rename it into place, so a killed build never
    leaves a half-written model behind; an incomplete leftover is replaced, and a concurrent identical build that
    finished first wins (theirs is as good as ours). The result is read back from ``final/build_info.json``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        build(tmp)
        if final.exists():  # incomplete leftover (no build_info.json) or a concurrent build that just finished
            if read_build_info(final) is not None:
                shutil.rmtree(tmp, ignore_errors=True)
                return read_build_info(final)  # type: ignore[return-value]
            stale = final.parent / f".{final.name}.stale-{uuid.uuid4().hex[:8]}"
            os.replace(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if read_build_info(final) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    built = read_build_info(final)
    assert built is not None, final
    return built


def _build_tiny_into(
    target: Path, texts: list[str], build_config: dict[str, Any], config_hash: str, texts_sha256: str
) -> BuiltModel:
    import torch  # deferred: heavy
    import transformers
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    vocab_size = build_config["vocab_size"]
    tok = _train_tokenizer(texts, vocab_size)
    pad_id, bos_id, eos_id = (tok.token_to_id(t) for t in SPECIAL_TOKENS)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        bos_token=None,
        additional_special_tokens=None,
        model_max_length=build_config["max_position_embeddings"],
        padding_side="right",
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
        response_template=RAW_RESPONSE_TEMPLATE,
    )

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=build_config["hidden_size"],
        intermediate_size=build_config["intermediate_size"],
        num_hidden_layers=build_config["num_hidden_layers"],
        num_attention_heads=build_config["num_attention_heads"],
        num_key_value_heads=build_config["num_key_value_heads"],
        max_position_embeddings=build_config["max_position_embeddings"],
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(build_config["seed"])
        model = Qwen2ForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
    )
    parameters = count_parameters(model)

    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)

    built = BuiltModel(
        path=target,
        config_hash=config_hash,
        parameters=parameters,
        vocab_size=vocab_size,
        eos_token=EOS_TOKEN,
        source="build_tiny",
    )
    record = built.to_json()
    del record["path"]  # built in a temporary directory, then renamed: the path is wherever this file is read
    info = {
        **record,
        "build_config": build_config,
        "tokenizer_texts_sha256": texts_sha256,
        "tokenizer_texts": len(texts),
        "special_token_ids": {PAD_TOKEN: pad_id, BOS_TOKEN: bos_id, EOS_TOKEN: eos_id},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (target / "build_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return built


# --------------------------------------------------------------------------------------------------------------
# pretrained


def resolve_pretrained(name_or_path: str, revision: str | None = None) -> BuiltModel:
    """Describe an existing checkpoint (local directory, or a Hub id in real use) as a :class:`BuiltModel`.

    Loads its config and tokenizer (to check they load and to find the end-of-turn token), counts parameters on
    the ``meta`` device (no weights are read or copied), and hashes the ``config.json`` bytes + ``revision``.
    For a Hub id the snapshot is fetched into the Hugging Face cache (configs, tokenizer files and weights) and
    ``path`` is the snapshot directory; with ``HF_HUB_OFFLINE=1`` only an already cached snapshot works.
    """
    import torch  # deferred: heavy
    from huggingface_hub import snapshot_download
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    local = Path(name_or_path).expanduser()
    if local.is_dir():
        path = local.resolve()
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{path} has no config.json")
    else:
        path = Path(
            snapshot_download(
                name_or_path,
                revision=revision,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"],
            )
        )
        config_file = path / "config.json"

    config_bytes = config_file.read_bytes()
    config_hash = hashlib.sha256(config_bytes + b"\0" + (revision or "").encode("utf-8")).hexdigest()[:16]

    config = AutoConfig.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    parameters = count_parameters(model)
    del model

    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab_size = int(text_config.vocab_size)
    return BuiltModel(
        path=path,
        config_hash=config_hash,
        parameters=parameters,
        vocab_size=vocab_size,
        eos_token=resolve_eos_token(tokenizer),
        source="pretrained",
    )
