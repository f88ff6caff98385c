"""The weights the student's server is asked for, and the name and directory they are served under.

Evaluation asks for a trained checkpoint by a name that carries its id (``orion-1a2b3c4d5e6f``,
:func:`checkpoint_name`), so an adapter left from an earlier training can never answer for a new one. What is
asked for travels as one :class:`AskedWeights`, made once from the ``student_checkpoint`` row and the base model.
A server that loads a model by path (``transformers serve``) gets a directory of that name
(:func:`served_directory`); ``lora_serving = "merged"`` gets the base merged with the adapter (:func:`merged_directory`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orion_assets.export.weights import merge_adapter

logger = logging.getLogger(__name__)
SERVED_LINKS = "served"  # $ORION_DATA_DIR/served/<student>/<name>: the paths transformers serve loads
MERGED = "merged"  # $ORION_DATA_DIR/merged/<student>/<name>: base + adapter, for lora_serving = "merged"
MARKER = "orion_checkpoint_id"  # in a served directory: the checkpoint it was made for


def checkpoint_name(variant: str, checkpoint_id: str) -> str:
    """The served name of a trained checkpoint: its variant and the first 12 characters of its id."""
    return f"{variant}-{checkpoint_id[:12]}"


@dataclass(frozen=True)
class AskedWeights:
    """What the student's server is asked to answer with: the base weights (``base_model``, a directory) and, for a
    trained checkpoint, its variant, kind (``lora_adapter`` or ``full``), id and directory. The base itself has
    variant and kind ``base`` (:meth:`of` a ``base`` row, or of None)."""

    base_model: str
    variant: str = "base"
    kind: str = "base"
    checkpoint_id: str = ""
    path: str = ""

    @classmethod
    def of(cls, checkpoint: Mapping[str, Any] | None, base_model: str) -> AskedWeights:
        """From a ``student_checkpoint`` row (None: the base weights) and the base model it was trained from."""
        if checkpoint is None:
            return cls(base_model)
        return cls(base_model, variant=checkpoint["variant"], kind=checkpoint["kind"],
                   checkpoint_id=checkpoint["checkpoint_id"], path=checkpoint["path"])

    @property
    def trained(self) -> bool:
        """A trained checkpoint (not the base weights): asked for under :attr:`name`."""
        return self.variant != "base" and self.kind != "base"

    @property
    def full(self) -> bool:
        """A full fine-tune: weights of its own rather than an adapter over the base."""
        return self.kind == "full"

    @property
    def name(self) -> str:
        return checkpoint_name(self.variant, self.checkpoint_id)


def _made_for(target: Path, asked: AskedWeights) -> bool:
    return (target / MARKER).is_file() and (target / MARKER).read_text() == asked.checkpoint_id


def _put_in_place(tmp: Path, target: Path, asked: AskedWeights) -> Path:
    (tmp / MARKER).write_text(asked.checkpoint_id)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def merged_directory(target: Path, asked: AskedWeights) -> Path:
    """``target``: the base weights merged with the checkpoint's LoRA adapter (``lora_serving = "merged"``), made
    once and atomically, with the checkpoint id it was made for beside the weights."""
    if _made_for(target, asked):
        return target
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    logger.info("merging adapter %s into %s for serving", asked.path, asked.base_model)
    merge_adapter(asked.base_model, Path(asked.path), tmp)
    return _put_in_place(tmp, target, asked)


def served_directory(target: Path, asked: AskedWeights) -> Path:
    """``target``: links to the base model's files and, over them, the checkpoint's (a LoRA adapter: its
    ``adapter_config.json``, which transformers applies on load; a full fine-tune: all of its own), so that a
    server that loads a model by path (``transformers serve``) finds config, weights and adapter in one place.
    Made once, atomically; the links name where the files are, so two checkpoints never share a directory."""
    if _made_for(target, asked):
        return target
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sources = ([] if asked.full else [Path(asked.base_model)]) + [Path(asked.path)]
    for source in sources:
        for item in source.resolve().iterdir():
            if item.name in {"build_info.json", MARKER} or item.name.startswith("."):
                continue
            (tmp / item.name).unlink(missing_ok=True)
            (tmp / item.name).symlink_to(item.resolve())
    return _put_in_place(tmp, target, asked)
