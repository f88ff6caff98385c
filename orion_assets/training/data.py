"""The SFT data: the Parquet file of chat examples, and its tokenization into an Arrow cache.

Tokenization decides the loss mask (the completion and its one end-of-turn token) and which examples are too
long to train on whole (dropped, never cut); see docs/sft.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

TOKENIZE_BATCH = 256  # rows tokenized (and held in memory) at a time
_TOKENIZE_VERSION = 1  # bump when tokenization changes: a new cache


@dataclass(frozen=True)
class SFTDataStats:
    """What tokenizing the SFT file found: its rows, and those too long to train on whole."""

    examples: int  # rows in the data file
    dropped_too_long: int  # prompt + completion + end of turn longer than max_length: left out, never cut
    max_example_tokens: int  # over all rows, the dropped ones included
    mean_example_tokens: float
    completion_tokens: int  # total completion tokens of the kept examples
    max_length: int
    dropped_ids: tuple[str, ...] = ()  # sft_example_id of the dropped examples (first 100)
    completion_lengths: tuple[int, ...] = field(default=(), repr=False)  # per kept example, in dataset order

    @property
    def kept_examples(self) -> int:
        return self.examples - self.dropped_too_long


def write_sft_parquet(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write SFT examples (``prompt``, ``completion`` message lists, ``sft_example_id``) to Parquet."""
    msg = pa.struct([("role", pa.string()), ("content", pa.string())])
    schema = pa.schema([("sft_example_id", pa.string()), ("prompt", pa.list_(msg)), ("completion", pa.list_(msg))])
    rows = list(rows)
    table = pa.Table.from_pylist(
        [
            {
                "sft_example_id": str(r["sft_example_id"]),
                "prompt": [{"role": m["role"], "content": m["content"]} for m in r["prompt"]],
                "completion": [{"role": m["role"], "content": m["content"]} for m in r["completion"]],
            }
            for r in rows
        ],
        schema=schema,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path



def _chat_ids(tokenizer, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
    # The same call TRL makes for conversational data (trl.data_utils._tokenize).
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    ids = out["input_ids"]
    if ids and isinstance(ids[0], list):  # some tokenizers return a batch of one
        ids = ids[0]
    return list(ids)


_warned_prefix = False


def tokenize_example(
    tokenizer, prompt: list[dict[str, Any]], completion: list[dict[str, Any]], eos_token_id: int
) -> tuple[list[int], list[int]]:
    """``(input_ids, completion_mask)`` of one conversational prompt-completion example.

    The prompt is the chat template applied to ``prompt`` with the generation prompt; the sequence is the
    template applied to ``prompt + completion``; the completion starts where the two token lists diverge (as in
    TRL).  The completion ends with exactly one ``eos_token_id``: tokens the template renders after the last one
    (ChatML's ``\\n``) are dropped, and it is appended when the template does not close the turn.
    """
    global _warned_prefix
    prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
    full_ids = _chat_ids(tokenizer, prompt + completion)
    n = 0
    for a, b in zip(prompt_ids, full_ids, strict=False):
        if a != b:
            break
        n += 1
    if n < len(prompt_ids) and not _warned_prefix:
        _warned_prefix = True
        logger.warning(
            "the tokenized prompt is not a prefix of the tokenized prompt+completion; the completion starts where "
            "they diverge (%r)",
            tokenizer.decode(prompt_ids[n:]),
        )
    completion_ids = full_ids[n:]
    last_eos = max((i for i, t in enumerate(completion_ids) if t == eos_token_id), default=-1)
    if last_eos >= 0:
        completion_ids = completion_ids[: last_eos + 1]
    else:
        completion_ids = completion_ids + [eos_token_id]
    input_ids = full_ids[:n] + completion_ids
    return input_ids, [0] * n + [1] * len(completion_ids)


def _messages(value: Any, where: str, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: prompt and completion must be non-empty lists of messages ({what} is not)")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def tokenize_dataset(
    tokenizer,
    dataset_path: str | os.PathLike,
    eos_token_id: int,
    max_length: int,
    *,
    cache_dir: str | os.PathLike,
    fingerprint: str,
) -> tuple[Any, SFTDataStats]:
    """Tokenize the SFT Parquet file (:func:`tokenize_example` per row) into a ``datasets.Dataset`` of
    ``input_ids``, ``completion_mask`` and ``sft_example_id``, leaving out, and counting, the examples longer than
    ``max_length`` (kept whole or not at all).

    Streams ``TOKENIZE_BATCH`` rows at a time into an Arrow cache under ``cache_dir``, so memory stays bounded by a
    batch; a rerun with the same ``fingerprint`` (it must change with whatever changes the tokens) reads the cache.
    """
    import datasets  # deferred: heavy

    path = Path(dataset_path)
    names = pq.read_schema(path).names
    missing = {"prompt", "completion"} - set(names)
    if missing:
        raise ValueError(f"{path}: SFT data needs columns 'prompt' and 'completion' (missing {sorted(missing)})")
    columns = [c for c in ("sft_example_id", "prompt", "completion") if c in names]
    raw = datasets.Dataset.from_parquet(str(path), columns=columns, cache_dir=str(cache_dir))
    if len(raw) == 0:
        raise ValueError(f"{path}: no SFT examples")

    def encode(batch: Mapping[str, list], indices: list[int]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in ("input_ids", "completion_mask", "sft_example_id", "n_tokens")}
        out["n_completion"] = []
        example_ids = batch["sft_example_id"] if "sft_example_id" in batch else [None] * len(indices)
        for i, prompt, completion, example_id in zip(
            indices, batch["prompt"], batch["completion"], example_ids, strict=True
        ):
            where = f"{path}: row {i}"
            prompt, completion = _messages(prompt, where, "prompt"), _messages(completion, where, "completion")
            if any(m["role"] != "assistant" for m in completion):
                raise ValueError(f"{where}: completion messages must have role 'assistant'")
            seq, mask = tokenize_example(tokenizer, prompt, completion, eos_token_id)
            out["input_ids"].append(seq)
            out["completion_mask"].append(mask)
            out["sft_example_id"].append(str(example_id or i))
            out["n_tokens"].append(len(seq))
            out["n_completion"].append(sum(mask))
        return out

    tokenized = raw.map(
        encode,
        batched=True,
        batch_size=TOKENIZE_BATCH,
        with_indices=True,
        remove_columns=raw.column_names,
        new_fingerprint=f"{fingerprint}-tokens-v{_TOKENIZE_VERSION}",
        desc="Tokenizing SFT examples",
    )
    table = tokenized.data
    n_tokens = table.column("n_tokens")
    too_long = pc.greater(n_tokens, max_length)
    dropped = int(pc.sum(pc.cast(too_long, "int64")).as_py() or 0)
    stats = SFTDataStats(
        examples=len(tokenized),
        dropped_too_long=dropped,
        max_example_tokens=int(pc.max(n_tokens).as_py()),
        mean_example_tokens=float(pc.mean(n_tokens).as_py()),
        completion_tokens=int(pc.sum(pc.filter(table.column("n_completion"), pc.invert(too_long))).as_py() or 0),
        max_length=max_length,
        dropped_ids=tuple(pc.filter(table.column("sft_example_id"), too_long).slice(0, 100).to_pylist()),
        completion_lengths=tuple(pc.filter(table.column("n_completion"), pc.invert(too_long)).to_pylist()),
    )
    if dropped:
        tokenized = tokenized.filter(
            lambda n: [x <= max_length for x in n],
            input_columns="n_tokens",
            batched=True,
            batch_size=TOKENIZE_BATCH,
            new_fingerprint=f"{fingerprint}-fits-{max_length}-v{_TOKENIZE_VERSION}",
            desc="Leaving out SFT examples longer than max_length",
        )
    return tokenized.remove_columns(["n_tokens", "n_completion"]), stats

