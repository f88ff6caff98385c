"""The dataset formats an export writes, from the rows :func:`orion_assets.export.read.sft_rows` gives:

* ``hf``: a ``datasets.DatasetDict`` per student (one split per variant), saved with ``save_to_disk``;
* ``llamafactory``: a JSON file per (student, variant) in LLaMA-Factory's sharegpt format (OpenAI-style
  ``role``/``content`` messages) and the ``dataset_info.json`` that registers them;
* ``jsonl``: OpenAI's chat fine-tuning format, one ``{"messages": [...]}`` per line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow as pa

FORMATS: tuple[str, ...] = ("hf", "llamafactory", "jsonl")
ExportFormat = Literal[FORMATS]  # type: ignore[valid-type]
LLAMAFACTORY_INFO = "dataset_info.json"
# LLaMA-Factory's sharegpt entry for OpenAI-style messages (its data/README.md, "OpenAI Format").
LLAMAFACTORY_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                     "system_tag": "system"}


def _messages(frame: pl.DataFrame) -> list[list[dict[str, str]]]:
    return [[{"role": m["role"], "content": m["content"]} for m in messages] for messages in frame["messages"]]


def _small(kind: pa.DataType) -> pa.DataType:
    """``kind`` with Arrow's 64-bit-offset types (polars' strings and lists) as ``string`` and ``list``, which
    every ``datasets`` version prints as features (4.0, LLaMA-Factory's pin, does not print the large ones)."""
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return pa.string()
    if pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        return pa.binary()
    if pa.types.is_large_list(kind) or pa.types.is_list(kind) or pa.types.is_list_view(kind):
        return pa.list_(kind.value_field.with_type(_small(kind.value_type)))
    if pa.types.is_struct(kind):
        return pa.struct([field.with_type(_small(field.type)) for field in kind])
    return kind


def write_hf(splits: dict[str, pl.DataFrame], folder: Path) -> Path:
    """One student's variants as a ``DatasetDict`` saved to ``folder`` (``datasets.load_from_disk`` reads it),
    its columns cast to the small Arrow types (:func:`_small`)."""
    from datasets import Dataset, DatasetDict, Features  # deferred: heavy

    def dataset(frame: pl.DataFrame) -> Dataset:
        schema = pa.schema([field.with_type(_small(field.type)) for field in frame.to_arrow().schema])
        return Dataset.from_polars(frame, features=Features.from_arrow_schema(schema))

    DatasetDict({variant: dataset(frame) for variant, frame in splits.items()}).save_to_disk(str(folder))
    return folder


def llamafactory_name(student: str, variant: str) -> str:
    return f"orion_{student}_{variant}"


def write_llamafactory(frames: dict[tuple[str, str], pl.DataFrame], out: Path) -> dict[tuple[str, str], Path]:
    """``<student>/<variant>.json`` per pair and ``dataset_info.json`` in ``out`` (LLaMA-Factory's ``dataset_dir``)."""
    info: dict[str, dict] = {}
    files: dict[tuple[str, str], Path] = {}
    for (student, variant), frame in frames.items():
        path = out / student / f"{variant}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        records = [{"messages": messages, "sft_example_id": sid, "problem_id": pid, "answer": answer}
                   for messages, sid, pid, answer in zip(_messages(frame), frame["sft_example_id"], frame["problem_id"],
                                                         frame["answer"], strict=True)]
        path.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        info[llamafactory_name(student, variant)] = {
            "file_name": path.relative_to(out).as_posix(),
            "file_sha1": hashlib.sha1(path.read_bytes()).hexdigest(),
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": dict(LLAMAFACTORY_TAGS),
        }
        files[(student, variant)] = path
    (out / LLAMAFACTORY_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return files


def write_jsonl(frame: pl.DataFrame, path: Path) -> Path:
    """OpenAI chat fine-tuning lines: ``{"messages": [{"role", "content"}, ...]}``, nothing else on a line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for messages in _messages(frame):
            handle.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return path
