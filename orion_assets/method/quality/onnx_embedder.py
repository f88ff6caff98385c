"""MiniLM as an int8 ONNX Runtime model on the CPU: the default coherence embedder (docs/quality.md).

The sentence-transformers model directory (``[quality] embedding_model``) is exported once to ONNX
with torch, its weights quantized to int8 with ONNX Runtime's dynamic quantization, and the result
cached under ``$ORION_EMBEDDER_CACHE`` (default ``~/.cache/orion_assets/embedders``) with a
``PROVENANCE.json``: the source files' hashes, the library versions and the hash of the model
built. Inference is the same computation as the sentence-transformers pipeline (tokenize and
truncate at ``max_seq_length``, the transformer, mean pooling over real tokens, normalize), about
4x less CPU than torch's float32 on MiniLM, at coherence within a few hundredths of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from orion_assets.ids import file_sha256

__all__ = ["OnnxEmbedder", "build_int8_model", "cache_root", "int8_model"]

FORMAT = "minilm-onnx-int8-v1"  # bump when the export or the quantization changes
_OPSET = 17
MAX_BATCH_TOKENS = 4096
_BUILD_LOCK = threading.Lock()


def cache_root() -> Path:
    return Path(os.environ.get("ORION_EMBEDDER_CACHE", "~/.cache/orion_assets/embedders")).expanduser()


def _source_files(source: Path) -> dict[str, str]:
    names = ["config.json", "tokenizer.json", "sentence_bert_config.json", "1_Pooling/config.json"]
    names.append("model.safetensors" if (source / "model.safetensors").is_file() else "pytorch_model.bin")
    return {name: file_sha256(source / name) for name in names if (source / name).is_file()}


def build_int8_model(source: Path, out: Path) -> dict:
    """Export the transformer of the sentence-transformers directory ``source`` to ONNX, quantize it
    to int8 into ``out/model.onnx``, copy the tokenizer and settings; return the provenance."""
    import torch  # deferred: heavy, and only for building
    from onnxruntime.quantization import QuantType, quantize_dynamic  # deferred: imports onnx, only for building
    from transformers import AutoModel, AutoTokenizer  # deferred: heavy

    if not (source / "1_Pooling" / "config.json").is_file():
        raise ValueError(f"{source}: not a sentence-transformers directory with mean pooling (no 1_Pooling)")
    pooling = json.loads((source / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
    if not pooling.get("pooling_mode_mean_tokens") or any(
        pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
    ):
        raise ValueError(f"{source}: the onnx-int8 backend does mean pooling only, the model pools {pooling}")
    settings = json.loads((source / "sentence_bert_config.json").read_text(encoding="utf-8"))

    class LastHiddenState(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    model = LastHiddenState(AutoModel.from_pretrained(str(source), local_files_only=True).eval())
    example = AutoTokenizer.from_pretrained(str(source), local_files_only=True)(
        ["an example", "a longer example sentence"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model_fp32.onnx"
        # The tracer's warnings (a mask length taken as constant, advanced indexing) are about graph
        # shapes this model never varies; the exported model gives torch's embeddings (docs/quality.md).
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, tuple(example[n] for n in names), str(fp32), input_names=names,
                              output_names=["last_hidden_state"], opset_version=_OPSET, dynamo=False,
                              dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]})
        quantize_dynamic(str(fp32), str(out / "model.onnx"), weight_type=QuantType.QInt8)
    shutil.copyfile(source / "tokenizer.json", out / "tokenizer.json")
    (out / "settings.json").write_text(json.dumps({"max_seq_length": settings["max_seq_length"]}) + "\n")
    provenance = {
        "format": FORMAT,
        "what": "the transformer of a sentence-transformers model, ONNX opset 17, weights int8 (dynamic quantization)",
        "source": {"path": str(source), "sha256": _source_files(source)},
        "versions": {n: metadata.version(n) for n in ("torch", "transformers", "onnx", "onnxruntime", "tokenizers")},
        "sha256": {n: file_sha256(out / n) for n in ("model.onnx", "tokenizer.json", "settings.json")},
    }
    (out / "PROVENANCE.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    return provenance


def int8_model(source: Path, cache: Path | None = None) -> Path:
    """The cached int8 model of ``source``, built on first use. The cache key is the source's file
    hashes, so a changed model is rebuilt; a build is written aside and renamed into place."""
    source = Path(source)
    files = _source_files(source)
    key = hashlib.sha256(json.dumps([FORMAT, files], sort_keys=True).encode()).hexdigest()[:16]
    target = (cache or cache_root()) / f"{source.name}-{FORMAT}-{key}"
    with _BUILD_LOCK:
        if not (target / "PROVENANCE.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
            try:
                build_int8_model(source, staging)
                try:
                    staging.rename(target)
                except OSError:  # another process put it there first
                    if not (target / "PROVENANCE.json").is_file():
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return target


class OnnxEmbedder:
    """:class:`~orion_assets.method.quality.embedding.Embedder` over an int8 model of :func:`int8_model`:
    steps sorted by length, batches padded to their longest, mean pooling over real tokens, L2-normalized."""

    def __init__(self, model_dir: Path, threads: int = 0) -> None:
        self.model_dir = Path(model_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default (the physical cores)
        options.inter_op_num_threads = 1
        # No busy-waiting between ops: on a shared machine spinning threads burn CPU for nothing.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.max_seq_length = json.loads((model_dir / "settings.json").read_text())["max_seq_length"]
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_seq_length)
        self.dimension = int(self.session.get_outputs()[0].shape[-1])

    def encode(self, sentences: list[str], batch_size: int = 64, **_: Any) -> np.ndarray:
        ids = [e.ids for e in self.tokenizer.encode_batch(list(sentences))]
        out = np.zeros((len(ids), self.dimension), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # stable: equal lengths keep input order
        start = 0
        while start < len(order):
            width = len(ids[order[start]])  # the longest left: batches are padded to it
            # At most batch_size steps and MAX_BATCH_TOKENS padded tokens: long steps go in smaller
            # batches, which bounds ONNX Runtime's buffers (attention is batch x tokens^2).
            rows = order[start : start + max(1, min(batch_size, MAX_BATCH_TOKENS // max(width, 1)))]
            start += len(rows)
            input_ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                input_ids[r, : len(ids[i])] = ids[i]
                mask[r, : len(ids[i])] = 1
            (hidden,) = self.session.run(None, {"input_ids": input_ids, "attention_mask": mask,
                                                "token_type_ids": np.zeros_like(input_ids)})
            pooled = (hidden * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
            out[rows] = pooled
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)
