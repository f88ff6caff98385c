"""Checkpoints out of the data folder: a LoRA adapter copied with its tokenizer, a full fine-tune as is, and
the base weights merged with an adapter (PEFT ``merge_and_unload``) saved as safetensors."""

from __future__ import annotations

import shutil
from pathlib import Path

from orion_assets.export.read import ExportError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# What a checkpoint directory holds besides weights: the tokenizer, chat template and generation settings.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json", "generation_config.json")


SHARED_MODE = 0o644


def readable_by_all(folder: Path) -> None:
    """Every ``.safetensors`` under ``folder`` made 0644, like the export's other files: transformers saves
    them 0600, and ``copy2`` keeps a checkpoint's mode."""
    for path in folder.rglob("*.safetensors"):
        path.chmod(SHARED_MODE)


def copy_adapter(checkpoint: Path, target: Path) -> list[Path]:
    """The adapter's config and weights and the tokenizer files of ``checkpoint`` copied into ``target``."""
    missing = [name for name in ADAPTER_FILES if not (checkpoint / name).is_file()]
    if missing:
        raise ExportError(f"LoRA checkpoint {checkpoint} lacks {', '.join(missing)}: retrain it (orion run)")
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in (*ADAPTER_FILES, *TOKENIZER_FILES):
        if (checkpoint / name).is_file():
            copied.append(Path(shutil.copy2(checkpoint / name, target / name)))
    return copied


def copy_full(checkpoint: Path, target: Path) -> list[Path]:
    """A full fine-tune's directory copied as is (top-level files: weights, config, tokenizer)."""
    if not (checkpoint / "config.json").is_file():
        raise ExportError(f"full checkpoint {checkpoint} has no config.json: retrain it (orion run)")
    target.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(p, target / p.name)) for p in sorted(checkpoint.iterdir()) if p.is_file()]


def load_base(path: str | Path):
    """The base model for merging: a safetensors directory, or a ``.gguf`` file (de-quantized by transformers)
    made saveable again (:func:`saveable`)."""
    import torch  # deferred: heavy
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if path.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        return saveable(model)
    if not path.is_dir():
        raise ExportError(f"base model {path} (student_base_model.path) does not exist: rematerialize student_base_model")
    return AutoModelForCausalLM.from_pretrained(str(path), dtype="auto")


def saveable(model):
    """``model`` with a GGUF quantization config cleared: transformers de-quantizes GGUF weights on load, yet its
    GGUF quantizer refuses ``save_pretrained`` while it is attached (``orion_assets.training.gguf`` does the same
    for the students it converts). Any other quantization is refused: merging into it would lose precision."""
    quantizer = getattr(model, "hf_quantizer", None)
    config = getattr(model.config, "quantization_config", None)
    if quantizer is None and config is None:
        return model
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if method is None and config is not None:
        method = config.get("quant_method") if isinstance(config, dict) else getattr(config, "quant_method", None)
    if str(getattr(method, "value", method)).lower() != "gguf":
        raise ExportError(f"the base model is quantized ({method}): merge into unquantized base weights instead")
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def merge_adapter(base_path: str | Path, adapter: Path, target: Path) -> Path:
    """``base_path`` merged with the LoRA ``adapter`` (PEFT ``merge_and_unload``), saved as safetensors with the
    adapter's tokenizer into ``target``."""
    from peft import PeftModel  # deferred: heavy
    from transformers import AutoTokenizer

    base = load_base(base_path)
    merged = saveable(PeftModel.from_pretrained(base, str(adapter)).merge_and_unload())
    target.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(target), safe_serialization=True)
    tokenizer_source = adapter if (adapter / "tokenizer_config.json").is_file() else Path(base_path)
    AutoTokenizer.from_pretrained(str(tokenizer_source)).save_pretrained(str(target))
    return target
