"""Supervised fine-tuning of the student on prompt/completion chat data (DESIGN.md section 2 step 6).

Plain typed functions; the process entry point is :mod:`orion_assets.training.main` and the Dagster side is
:mod:`orion_assets.training.pipes`.

Input: a Parquet file in TRL's *conversational prompt-completion* format -- columns ``prompt`` (a list of
``{role, content}`` messages, the user turn with the problem), ``completion`` (a list with one assistant message,
the CoT ending in ``\\boxed{}``) and ``sft_example_id``.

What :func:`train` guarantees (each point is a TRL default we do *not* rely on):

* **Loss on the completion only.**  We tokenize each example ourselves, exactly the way TRL tokenizes a
  conversational prompt-completion example (``apply_chat_template(prompt, add_generation_prompt=True)`` for the
  prompt, ``apply_chat_template(prompt + completion)`` for the whole sequence, the completion starting where the
  two diverge), and hand TRL ``input_ids`` + ``completion_mask`` with ``completion_only_loss=True``.  TRL turns the
  mask into ``labels`` (-100 on the prompt).  Tokenization streams (:func:`tokenize_dataset`): the Parquet file
  goes through ``datasets`` in batches into an Arrow cache in ``output_dir/data_cache``, never a Python list of
  the whole data set; a resume reuses the cache.
* **The end-of-turn token is learned.**  The completion tokens end with exactly one end-of-turn token
  (``<|im_end|>`` for ChatML, else the tokenizer's eos; override with ``TrainParams.eos_token``) and nothing after
  it: ChatML templates render ``<|im_end|>\\n`` after an assistant turn, and TRL would train the model on that
  trailing ``\\n`` too; a template that does not close the assistant turn would leave the model never learning to
  stop (TRL only appends an eos for *non*-conversational data), so we append the end-of-turn token then.
* **No truncation: too long is dropped.**  A truncated example loses the end of its completion -- the final
  answer and the end-of-turn token -- so the model would learn to ramble without answering or stopping.  An
  example whose prompt + completion (with its end-of-turn token) exceeds ``TrainParams.max_length`` is left out,
  counted with the very token ids that would be trained on (``dropped_too_long``, in the result and so in the
  materialization metadata; a warning names how many).  TRL's own ``SFTConfig.max_length`` (default 1024) would
  truncate silently; we pass ``max_length=None``, so TRL never cuts (every example already fits).
* **LoRA by default** (PEFT, Qwen2-style ``q/k/v/o/gate/up/down_proj``), full fine-tuning with ``lora=False``.
* **Configured once**: the [sft] settings are declared in :class:`orion_assets.profiles.schema.SFTSettings`
  (:class:`TrainParams` extends it) and become ``trl.SFTConfig`` in :func:`sft_trainer_config`; any other
  ``trl.SFTConfig`` / ``TrainingArguments`` field goes through [sft.training_args] as is (checked against the
  installed TRL at profile load, and part of :func:`config_hash`).
* **bf16 only where it belongs**: TRL defaults ``bf16=True`` even on CPU; here ``bf16=None`` means "on CUDA with
  bf16 support".  Gradient (activation) checkpointing, on by default in TRL, is ``None`` = "on CUDA only".
* **Resumable**: checkpoints every ``save_steps`` in ``output_dir/checkpoint-N``; with ``resume=True`` a rerun
  continues from the latest *complete* checkpoint (one whose ``trainer_state.json`` parses; a checkpoint cut short
  by a kill is removed).  The run's parameters are kept in ``output_dir/train_params.json``; resuming checkpoints
  of a run with another :func:`config_hash` is refused.  A rerun of a finished run trains nothing (the
  Trainer, resumed at ``max_steps``, would run one step past it) and rewrites ``final`` from the last checkpoint.
* **A per-step log**: every optimizer step appends one JSON line to ``output_dir/train_log.jsonl`` (step, epoch,
  loss, learning_rate, grad_norm, num_tokens = input tokens seen so far, including those before a resume,
  mean_token_accuracy, entropy, elapsed_s, tokens_per_second) and is passed to ``on_log``.
* **Final model** (LoRA adapter or full weights) + tokenizer in ``output_dir/final`` (written to a temporary
  directory and renamed, so a kill never leaves half a model there), loadable with
  ``peft.AutoPeftModelForCausalLM`` / ``transformers.AutoModelForCausalLM`` (see :func:`load_trained_model`);
  ``output_dir/result.json`` holds the :class:`TrainResult`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, field_validator

from orion_assets.devices import resolve_device
from orion_assets.ids import model_fingerprint, sha256_json
from orion_assets.profiles.schema import (
    DEFAULT_LORA_TARGET_MODULES,
    SFT_RESERVED_ARGS,
    SFTSettings,
    trl_sft_config_fields,
)
from orion_assets.training.student import resolve_eos_token

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LORA_TARGET_MODULES",
    "FINAL_DIR",
    "PARAMS_FILE",
    "RESULT_FILE",
    "TRAIN_LOG_FILE",
    "PreparedSFT",
    "SFTDataStats",
    "TrainParams",
    "TrainResult",
    "build_trainer",
    "config_hash",
    "find_resume_checkpoint",
    "launch_command",
    "load_trained_model",
    "read_train_log",
    "resolve_eos_token",
    "sft_trainer_config",
    "tokenize_example",
    "tokenize_dataset",
    "train",
    "write_sft_parquet",
]

TRAIN_LOG_FILE = "train_log.jsonl"
RESULT_FILE = "result.json"
PARAMS_FILE = "train_params.json"
DATA_CACHE_DIR = "data_cache"  # the tokenized examples (Arrow), reused on resume
FINAL_DIR = "final"
FINAL_INFO_FILE = "orion_sft.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TOKENIZE_BATCH = 256  # rows tokenized (and held in memory) at a time
_TOKENIZE_VERSION = 1  # bump when tokenization changes: a new cache

#: Fields that do not change the trained weights (bookkeeping, where things are written, how often they are saved).
#: ``base_model_path`` and ``dataset_path`` are replaced by fingerprints of what they point at.
_HASH_EXCLUDED = frozenset(
    {
        "base_model_path",
        "dataset_path",
        "output_dir",
        "resume",
        "save_steps",
        "save_total_limit",
        "logging_steps",
        "gradient_checkpointing",
        "base_model_hash",
    }
)


# ----------------------------------------------------------------------------------------------------------------
# parameters and result


class TrainParams(SFTSettings):
    """Everything one SFT run needs: the profile's [sft] settings (:class:`~orion_assets.profiles.schema.SFTSettings`,
    declared there once, with their defaults; ``launcher`` stays with the asset) plus where things are and run
    options.  JSON-serializable (:meth:`to_json` / :meth:`from_json`); validated like the profile (unknown keys,
    and [sft.training_args] keys that are no ``trl.SFTConfig`` field, are refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_model_path: str
    dataset_path: str
    output_dir: str
    resume: bool = True  # continue from the latest complete checkpoint in output_dir
    base_model_hash: str | None = None  # e.g. BuiltModel.config_hash; None: fingerprint the files

    @field_validator("base_model_path", "dataset_path", "output_dir", mode="before")
    @classmethod
    def _path_str(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> TrainParams:
        if isinstance(data, str):
            data = json.loads(data)
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"unknown TrainParams keys: {unknown}")
        return cls.model_validate(dict(data))

    @classmethod
    def from_sft_config(
        cls,
        sft: Any,
        *,
        base_model_path: str | os.PathLike,
        dataset_path: str | os.PathLike,
        output_dir: str | os.PathLike,
        **overrides: Any,
    ) -> TrainParams:
        """Build from a profile's ``SFTConfig`` (pydantic model or mapping); ``launcher`` is left out."""
        values = sft.model_dump() if hasattr(sft, "model_dump") else dict(sft)
        values.pop("launcher", None)
        values.update(overrides)
        return cls(base_model_path=base_model_path, dataset_path=dataset_path, output_dir=output_dir, **values)


@dataclass
class TrainResult:
    """What one :func:`train` call produced (also ``output_dir/result.json``).

    ``steps`` is the global optimizer step reached (including steps before a resume); ``train_loss`` the mean
    loss over the steps run in *this* call, ``final_loss`` the last logged step loss; ``tokens_seen`` the input
    tokens (prompt + completion, no padding) over the whole run, ``train_tokens`` those of this call, and
    ``train_tokens_per_second`` = ``train_tokens / train_seconds`` where ``train_seconds`` spans the training loop
    only (model loading, tokenization and the final save are excluded; ``wall_seconds`` includes them);
    ``train_cpu_seconds`` is the process's CPU time (all threads) over the same window.
    ``peak_memory_mb``: peak CUDA memory allocated on CUDA, else the process's peak resident set size.
    """

    final_path: str
    final_kind: str  # "lora_adapter" | "full"
    steps: int
    train_loss: float | None
    final_loss: float | None
    tokens_seen: int
    train_tokens: int
    train_seconds: float
    train_tokens_per_second: float
    train_cpu_seconds: float
    wall_seconds: float
    examples: int
    truncated_examples: int  # always 0: nothing is cut (kept for the checkpoint table and older readers)
    max_example_tokens: int
    mean_example_tokens: float
    max_length: int
    resumed_from_step: int
    peak_memory_mb: float
    config_hash: str
    device: str
    bf16: bool
    log_path: str
    dropped_too_long: int = 0  # examples longer than max_length, left out (``examples`` counts them)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> TrainResult:
        if isinstance(data, str):
            data = json.loads(data)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class SFTDataStats:
    examples: int  # rows in the data file
    dropped_too_long: int  # prompt + completion + end of turn longer than max_length: left out, never cut
    max_example_tokens: int  # over all rows, the dropped ones included
    mean_example_tokens: float
    completion_tokens: int  # total completion tokens of the kept examples
    max_length: int
    dropped_ids: tuple[str, ...] = ()  # sft_example_id of the dropped examples (first 100)

    @property
    def kept_examples(self) -> int:
        return self.examples - self.dropped_too_long


# ----------------------------------------------------------------------------------------------------------------
# small helpers


def launch_command(launcher: Sequence[str], python: str | None = None) -> list[str]:
    """Expand ``{python}`` (default ``sys.executable``) in the profile's launcher command.

    ``["{python}", "-m", "orion_assets.training.main"]`` -> ``["/path/python", "-m", ...]``;
    ``["accelerate", "launch", "-m", "orion_assets.training.main"]`` is returned as is.
    """
    if not launcher:
        raise ValueError("empty SFT launcher command")
    py = python or sys.executable
    return [str(part).replace("{python}", py) for part in launcher]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def config_hash(params: TrainParams) -> str:
    """A hash of what determines the trained weights (16 hex chars).

    Included: every hyperparameter (LoRA settings, max_length, epochs/max_steps, learning rate, batch size,
    gradient accumulation, seed, eos token, target modules, device and bf16 as given -- they change numerics --
    and every [sft.training_args] key passed through to ``trl.SFTConfig``), the
    *content* of the dataset file (sha256 of its bytes) and the base model (``base_model_hash`` when given, e.g.
    ``BuiltModel.config_hash``, else :func:`orion_assets.training.student.model_fingerprint` of its directory).
    Excluded: the paths themselves, ``output_dir``, ``resume``, ``save_steps``, ``save_total_limit``,
    ``logging_steps`` and ``gradient_checkpointing`` (they change where and how often things are written, or the
    memory/speed trade-off, not the result).
    """
    values = {k: v for k, v in params.to_json().items() if k not in _HASH_EXCLUDED}
    dataset = Path(params.dataset_path)
    values["dataset_sha256"] = _file_sha256(dataset) if dataset.is_file() else f"missing:{dataset}"
    values["base_model"] = params.base_model_hash or model_fingerprint(params.base_model_path)
    values["lora_target_modules"] = sorted(values["lora_target_modules"])
    if not values["training_args"]:  # the hash of a run without pass-through keys is what it was before them
        values.pop("training_args")
    if not params.lora:  # LoRA settings do not matter for full fine-tuning
        for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"):
            values.pop(k)
    return sha256_json(values)[:16]


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _resolve_bf16(bf16: bool | None, device: str, fp16: bool = False) -> bool:
    import torch

    if bf16 is not None:
        return bool(bf16)
    return device.startswith("cuda") and not fp16 and torch.cuda.is_bf16_supported()


def write_sft_parquet(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write SFT examples (``prompt``, ``completion`` message lists, ``sft_example_id``) to Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

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


# ----------------------------------------------------------------------------------------------------------------
# tokenization: the loss mask and the examples too long to train on whole


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
    ``max_length``.

    Streams: the file is read into Arrow (``Dataset.from_parquet``) and tokenized ``TOKENIZE_BATCH`` rows at a time
    (``map(batched=True)``), each batch written to an Arrow cache file under ``cache_dir``; the statistics are
    computed on the Arrow columns.  Memory stays bounded by a batch, not the data set, and a resumed run with the
    same ``fingerprint`` (which must change with whatever changes the tokens) reads the cache instead of
    tokenizing again.  An example is kept whole or not at all: cutting it would lose the end of the completion
    (the answer and the end-of-turn token), the part the model most needs to learn.
    """
    import datasets
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

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


# ----------------------------------------------------------------------------------------------------------------
# checkpoints and logs


def _checkpoint_complete(path: Path) -> bool:
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state


def find_resume_checkpoint(output_dir: str | os.PathLike, remove_incomplete: bool = False) -> Path | None:
    """The latest complete ``checkpoint-N`` in ``output_dir`` (``trainer_state.json`` is written last by the
    Trainer, so a checkpoint without a parseable one was cut short); optionally remove the incomplete ones."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    found: list[tuple[int, Path]] = []
    for p in root.iterdir():
        m = _CHECKPOINT_RE.match(p.name)
        if not m or not p.is_dir():
            continue
        if _checkpoint_complete(p):
            found.append((int(m.group(1)), p))
        elif remove_incomplete:
            logger.warning("removing incomplete checkpoint %s", p)
            shutil.rmtree(p, ignore_errors=True)
    return max(found)[1] if found else None


def _finished_checkpoint_state(path: Path | None) -> dict[str, Any] | None:
    """The checkpoint's trainer state when it is at the run's last step (``global_step >= max_steps``)."""
    if path is None:
        return None
    state = json.loads((path / "trainer_state.json").read_text())
    max_steps = int(state.get("max_steps") or 0)
    return state if max_steps > 0 and int(state["global_step"]) >= max_steps else None


def _checkpoint_step(path: Path) -> int:
    m = _CHECKPOINT_RE.match(path.name)
    return int(m.group(1)) if m else 0


def read_train_log(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(output_dir) / TRAIN_LOG_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except ValueError:  # a line cut by a kill
            continue
    return out


def _rewrite_train_log(output_dir: Path, keep_until_step: int) -> None:
    """On resume: keep the log entries up to the checkpoint's step (later ones are re-run)."""
    entries = [e for e in read_train_log(output_dir) if int(e.get("step", 0)) <= keep_until_step]
    tmp = output_dir / (TRAIN_LOG_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
    os.replace(tmp, output_dir / TRAIN_LOG_FILE)


def _last_logged_loss(output_dir: Path) -> float | None:
    losses = [e["loss"] for e in read_train_log(output_dir) if e.get("loss") is not None]
    return losses[-1] if losses else None


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _make_log_callback(output_dir: Path, on_log: Callable[[dict], None] | None):
    from transformers import TrainerCallback

    class _StepLog(TrainerCallback):
        """One entry per logging step -> train_log.jsonl and ``on_log``; times the training loop."""

        def __init__(self) -> None:
            self.t_begin: float | None = None
            self.t_end: float | None = None
            self.cpu_begin = 0.0
            self.cpu_end = 0.0
            self.tokens_begin = 0
            self.tokens_end = 0
            self.summary: dict[str, Any] = {}
            self.last_loss: float | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.t_begin = time.perf_counter()
            self.cpu_begin = time.process_time()
            self.tokens_begin = int(state.num_input_tokens_seen or 0)

        def on_train_end(self, args, state, control, **kwargs):
            self.t_end = time.perf_counter()
            self.cpu_end = time.process_time()
            self.tokens_end = int(state.num_input_tokens_seen or 0)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            if "loss" not in logs:  # the end-of-training summary (train_runtime, train_loss, ...)
                self.summary = dict(logs)
                return
            elapsed = time.perf_counter() - (self.t_begin or time.perf_counter())
            tokens = int(state.num_input_tokens_seen or 0)
            entry = {
                "step": int(state.global_step),
                "epoch": _finite(state.epoch),
                "loss": _finite(logs.get("loss")),
                "learning_rate": _finite(logs.get("learning_rate")),
                "grad_norm": _finite(logs.get("grad_norm")),
                "num_tokens": tokens,
                "mean_token_accuracy": _finite(logs.get("mean_token_accuracy")),
                "entropy": _finite(logs.get("entropy")),
                "elapsed_s": round(elapsed, 4),
                "tokens_per_second": round((tokens - self.tokens_begin) / elapsed, 2) if elapsed > 0 else None,
            }
            self.last_loss = entry["loss"]
            with (output_dir / TRAIN_LOG_FILE).open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
            if on_log is not None:
                on_log(dict(entry))

    return _StepLog()


# ----------------------------------------------------------------------------------------------------------------
# the trainer


#: ``trl.SFTConfig`` values the project prefers to TRL's; [sft.training_args] may override them.
_TRAINER_DEFAULTS: dict[str, Any] = {
    "report_to": "none",
    "disable_tqdm": True,
    "dataloader_num_workers": 0,
    "shuffle_dataset": False,
    "fp16": False,
}


def sft_trainer_config(
    params: TrainParams, output_dir: str | os.PathLike, *, device: str, bf16: bool, eos_token: str
) -> dict[str, Any]:
    """The keyword arguments of ``trl.SFTConfig`` for a run: the project's defaults (:data:`_TRAINER_DEFAULTS`,
    ``data_seed`` = ``seed``), then the [sft] settings (``params.trainer_args()``: the mapped [sft] keys and
    [sft.training_args] as given), then what the SFT code decides itself
    (:data:`~orion_assets.profiles.schema.SFT_RESERVED_ARGS`, which the settings cannot hold)."""
    on_cuda = device.startswith("cuda")
    grad_ckpt = on_cuda if params.gradient_checkpointing is None else bool(params.gradient_checkpointing)
    fixed: dict[str, Any] = {
        "output_dir": str(output_dir),
        # data: we tokenized and left out what exceeds params.max_length; TRL builds labels from completion_mask.
        # None: TRL never truncates (its default 1024 would cut silently; any value could cut the answer).
        "max_length": None,
        "completion_only_loss": True,
        "assistant_only_loss": False,
        "packing": False,
        "eos_token": eos_token,
        "bf16": bf16,  # TRL defaults to True even on CPU
        "use_cpu": not on_cuda,
        "gradient_checkpointing": grad_ckpt,
        "logging_strategy": "steps",
        "save_strategy": "steps",
        "include_num_input_tokens_seen": "non_padding",  # kept in trainer_state.json, so it survives a resume
    }
    if "activation_checkpointing" in trl_sft_config_fields():  # transformers 5: the new name of the same switch
        fixed["activation_checkpointing"] = grad_ckpt
    assert set(fixed) <= set(SFT_RESERVED_ARGS), sorted(set(fixed) - set(SFT_RESERVED_ARGS))
    return {**_TRAINER_DEFAULTS, "data_seed": params.seed, **params.trainer_args(), **fixed}


@dataclass
class PreparedSFT:
    """A ready :class:`trl.SFTTrainer` and what was decided building it."""

    trainer: Any
    stats: SFTDataStats
    params: TrainParams
    config_hash: str
    device: str
    bf16: bool
    eos_token: str
    resume_checkpoint: Path | None
    callback: Any


def build_trainer(params: TrainParams, on_log: Callable[[dict], None] | None = None) -> PreparedSFT:
    """Load tokenizer, data and model and build the ``SFTTrainer`` (no training). :func:`train` uses it; tests use
    it to inspect the collated batches."""
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output_dir = Path(params.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    base = Path(params.base_model_path)
    base_ref = str(base.resolve()) if base.exists() else params.base_model_path
    device = resolve_device(params.device)
    bf16 = _resolve_bf16(params.bf16, device, bool(params.training_args.get("fp16")))
    chash = config_hash(params)

    # -- resume bookkeeping (rank 0 writes)
    resume_ckpt = find_resume_checkpoint(output_dir, remove_incomplete=_rank() == 0) if params.resume else None
    params_file = output_dir / PARAMS_FILE
    if resume_ckpt is not None and params_file.is_file():
        previous = json.loads(params_file.read_text()).get("config_hash")
        if previous and previous != chash:
            raise ValueError(
                f"{output_dir} holds checkpoints of another SFT configuration (config hash {previous}, this run "
                f"{chash}); use another output_dir or resume=False"
            )
    if _rank() == 0:
        if resume_ckpt is None:  # a fresh start: clear what an earlier run left
            for p in output_dir.iterdir():
                if _CHECKPOINT_RE.match(p.name) and p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
            (output_dir / TRAIN_LOG_FILE).unlink(missing_ok=True)
            (output_dir / RESULT_FILE).unlink(missing_ok=True)
            shutil.rmtree(output_dir / DATA_CACHE_DIR, ignore_errors=True)
        else:
            _rewrite_train_log(output_dir, _checkpoint_step(resume_ckpt))
        params_file.write_text(json.dumps({"config_hash": chash, "params": params.to_json()}, indent=2) + "\n")

    # -- tokenizer and data
    tokenizer = AutoTokenizer.from_pretrained(base_ref)
    eos_token = resolve_eos_token(tokenizer, params.eos_token)
    eos_id = tokenizer.convert_tokens_to_ids(eos_token)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = eos_token  # padding is masked out of the loss (-100) and the attention
    args = trl.SFTConfig(**sft_trainer_config(params, output_dir, device=device, bf16=bf16, eos_token=eos_token))
    with args.main_process_first(desc="SFT tokenization"):  # rank 0 writes the Arrow cache, the others read it
        train_dataset, stats = tokenize_dataset(
            tokenizer,
            params.dataset_path,
            eos_id,
            params.max_length,
            cache_dir=output_dir / DATA_CACHE_DIR,
            fingerprint=chash,
        )
    if stats.dropped_too_long:
        logger.warning(
            "%d of %d SFT examples are longer than max_length=%d tokens (longest %d) and are dropped, not "
            "truncated (first ids: %s)",
            stats.dropped_too_long,
            stats.examples,
            params.max_length,
            stats.max_example_tokens,
            ", ".join(stats.dropped_ids[:5]),
        )
    if len(train_dataset) == 0:
        raise ValueError(
            f"all {stats.examples} SFT examples in {params.dataset_path} are longer than max_length="
            f"{params.max_length} tokens: nothing to train on (raise [sft] max_length or lower [quality] max_tokens)"
        )

    # -- model
    load_dtype = torch.bfloat16 if (bf16 and params.lora) else torch.float32  # full FT keeps fp32 master weights
    model = AutoModelForCausalLM.from_pretrained(base_ref, dtype=load_dtype)

    peft_config = None
    if params.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=params.lora_r,
            lora_alpha=params.lora_alpha,
            lora_dropout=params.lora_dropout,
            target_modules=list(params.lora_target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )

    callback = _make_log_callback(output_dir, on_log)
    trainer = trl.SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[callback],
    )
    # With disable_tqdm the Trainer prints every log dict to stdout; our callback logs instead.
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return PreparedSFT(
        trainer=trainer,
        stats=stats,
        params=params,
        config_hash=chash,
        device=device,
        bf16=bf16,
        eos_token=eos_token,
        resume_checkpoint=resume_ckpt,
        callback=callback,
    )


def _peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def train(params: TrainParams, on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """Run (or resume) one SFT run; see the module docstring for what it guarantees."""
    import torch

    wall0 = time.perf_counter()
    if params.device != "cpu" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    prepared = build_trainer(params, on_log=on_log)
    trainer, stats, cb = prepared.trainer, prepared.stats, prepared.callback
    output_dir = Path(params.output_dir).resolve()
    resume = prepared.resume_checkpoint
    resumed_from_step = _checkpoint_step(resume) if resume is not None else 0
    if resume is not None:
        logger.info("resuming SFT from %s (step %d)", resume, resumed_from_step)

    finished = _finished_checkpoint_state(resume)
    if finished is not None:
        # Trainer.train() resumed at the last step still runs one more step (it checks max_steps only after a
        # step), so a rerun of a finished run would train past max_steps: load the checkpoint instead.
        from transformers import TrainerState

        logger.info("%s is at the last step (%d): nothing left to train", resume, finished["global_step"])
        trainer._load_from_checkpoint(str(resume))
        trainer.state = TrainerState.load_from_json(str(resume / "trainer_state.json"))
        training_loss = None
    else:
        out = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
        training_loss = out.training_loss

    # final model: written beside, then renamed (all ranks call save_model; the Trainer writes on the main one)
    final = output_dir / FINAL_DIR
    tmp = output_dir / f".{FINAL_DIR}.tmp"
    if trainer.is_world_process_zero() and tmp.exists():
        shutil.rmtree(tmp)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    final_kind = "lora_adapter" if params.lora else "full"
    if trainer.is_world_process_zero():
        info = {
            "kind": final_kind,
            "config_hash": prepared.config_hash,
            "base_model_path": str(Path(params.base_model_path).resolve()),
            "eos_token": prepared.eos_token,
            "steps": int(trainer.state.global_step),
        }
        (tmp / FINAL_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    trainer.accelerator.wait_for_everyone()

    train_seconds = (cb.t_end - cb.t_begin) if (cb.t_begin is not None and cb.t_end is not None) else 0.0
    train_tokens = cb.tokens_end - cb.tokens_begin
    result = TrainResult(
        final_path=str(final),
        final_kind=final_kind,
        steps=int(trainer.state.global_step),
        train_loss=_finite(training_loss),
        final_loss=cb.last_loss if cb.last_loss is not None else _last_logged_loss(output_dir),
        tokens_seen=int(trainer.state.num_input_tokens_seen or 0),
        train_tokens=int(train_tokens),
        train_seconds=round(train_seconds, 4),
        train_tokens_per_second=round(train_tokens / train_seconds, 2) if train_seconds > 0 else 0.0,
        train_cpu_seconds=round(cb.cpu_end - cb.cpu_begin, 4),
        wall_seconds=round(time.perf_counter() - wall0, 4),
        examples=stats.examples,
        truncated_examples=0,
        dropped_too_long=stats.dropped_too_long,
        max_example_tokens=stats.max_example_tokens,
        mean_example_tokens=round(stats.mean_example_tokens, 2),
        max_length=params.max_length,
        resumed_from_step=resumed_from_step,
        peak_memory_mb=round(_peak_memory_mb(prepared.device), 1),
        config_hash=prepared.config_hash,
        device=prepared.device,
        bf16=prepared.bf16,
        log_path=str(output_dir / TRAIN_LOG_FILE),
    )
    if trainer.is_world_process_zero():
        tmp_result = output_dir / (RESULT_FILE + ".tmp")
        tmp_result.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        os.replace(tmp_result, output_dir / RESULT_FILE)
    return result


# ----------------------------------------------------------------------------------------------------------------
# loading the result


def load_trained_model(path: str | os.PathLike, device: str = "cpu", merge: bool = False):
    """``(model, tokenizer)`` from ``output_dir/final`` (or any checkpoint): a LoRA adapter is loaded with
    ``peft.AutoPeftModelForCausalLM`` (merged into the base weights with ``merge=True``), full weights with
    ``AutoModelForCausalLM``.  Eval mode, on ``device``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(path))
        if merge:
            model = model.merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path))
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model.to(device)
    model.eval()
    return model, tokenizer
