"""The SFT run itself: build TRL's ``SFTTrainer`` from :class:`TrainParams`, train or resume, save the final model.

What a run guarantees (loss on the completion only, nothing truncated, resumable, a per-step log) is in
docs/sft.md.  The heavy libraries are imported inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orion_assets.devices import resolve_device
from orion_assets.profiles.sft import SFT_RESERVED_ARGS, SFT_TRAINER_FIELDS, trl_sft_config_fields
from orion_assets.training.budget import (
    counting_trainer_class,
    make_budget_counter,
    steps_per_epoch,
    token_budget_max_steps,
)
from orion_assets.training.checkpoints import (
    checkpoint_dirs,
    checkpoint_step,
    find_resume_checkpoint,
    finished_checkpoint_state,
    finite,
    last_logged_loss,
    loss_curve,
    make_log_callback,
    rewrite_train_log,
)
from orion_assets.training.config import (
    DATA_CACHE_DIR,
    FINAL_DIR,
    FINAL_INFO_FILE,
    PARAMS_FILE,
    RESULT_FILE,
    TRAIN_LOG_FILE,
    TrainParams,
    config_hash,
)
from orion_assets.training.data import SFTDataStats, tokenize_dataset
from orion_assets.training.student import resolve_eos_token
from orion_assets.training.world import (
    BatchShape,
    batch_shape_of,
    checkpoint_batch_shape,
    make_launch_state,
    resume_accumulation,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What one :func:`train` call produced (also ``output_dir/result.json``); docs/sft.md defines each field.

    ``steps`` and ``tokens_seen`` count the whole run (steps before a resume too); ``train_*`` this call's
    training loop only.
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
    truncated_examples: int  # always 0: nothing is cut (a column of the checkpoint table)
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
    budget: str = "epochs"  # [sft] budget: what the run's length was set by
    budget_tokens: int | None = None
    schedule_steps: int = 0  # the Trainer's max_steps: the LR schedule's horizon
    completion_tokens: int = 0  # completion (loss) tokens trained on, whole run
    trained_examples: int = 0  # examples trained on, whole run (an example trained twice counts twice)
    epochs: float = 0.0  # passes over the kept examples
    world_size: int = 1  # processes this call trained with (docs/sft.md, "World size")
    gradient_accumulation_steps: int = 1  # as this call trained (rescaled on resume under "rescale")
    effective_batch_size: int = 0  # per_device_train_batch_size x gradient_accumulation_steps x world_size
    resumed_world_size: int | None = None  # the world size of the checkpoint resumed from (None: fresh, unknown)
    loss_curve: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # every logged step, whole run

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> TrainResult:
        if isinstance(data, str):
            data = json.loads(data)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _resolve_bf16(bf16: bool | None, device: str, fp16: bool = False) -> bool:
    import torch  # deferred: heavy

    if bf16 is not None:
        return bool(bf16)
    return device.startswith("cuda") and not fp16 and torch.cuda.is_bf16_supported()


#: ``trl.SFTConfig`` values the project prefers to TRL's; [sft.training_args] may override them.
_TRAINER_DEFAULTS: dict[str, Any] = {
    "disable_tqdm": True,
    "dataloader_num_workers": 0,
    "shuffle_dataset": False,
    "fp16": False,
}


def sft_trainer_config(
    params: TrainParams, output_dir: str | os.PathLike, *, device: str, bf16: bool, eos_token: str
) -> dict[str, Any]:
    """The keyword arguments of ``trl.SFTConfig`` for a run: the project's defaults (:data:`_TRAINER_DEFAULTS`,
    ``data_seed`` = ``seed``), then the [sft] settings (``params.trainer_args()``: TRL's fields among the [sft]
    keys and [sft.training_args], as given), then what the SFT code decides itself
    (:data:`~orion_assets.profiles.sft.SFT_RESERVED_ARGS`, which the settings cannot hold)."""
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
        "report_to": list(params.report_to) or "none",  # [tracking]; the tracker's env comes with the process's
    }
    fields = trl_sft_config_fields()
    assert set(SFT_TRAINER_FIELDS) <= fields, sorted(set(SFT_TRAINER_FIELDS) - fields)
    if "activation_checkpointing" in fields:  # transformers 5: the new name of the same switch
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
    budget_counter: Any  # completion tokens and examples trained on (budget.make_budget_counter)
    batch_shape: BatchShape  # world size and batch this run trains with (saved in each checkpoint)
    resumed_batch_shape: BatchShape | None  # the one the resumed checkpoint was trained with


def build_trainer(params: TrainParams, on_log: Callable[[dict], None] | None = None) -> PreparedSFT:
    """Load tokenizer, data and model and build the ``SFTTrainer`` (no training). :func:`train` uses it; tests use
    it to inspect the collated batches."""
    import torch  # deferred: heavy
    import trl
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback

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
            for p in checkpoint_dirs(output_dir):
                shutil.rmtree(p, ignore_errors=True)
            (output_dir / TRAIN_LOG_FILE).unlink(missing_ok=True)
            (output_dir / RESULT_FILE).unlink(missing_ok=True)
            shutil.rmtree(output_dir / DATA_CACHE_DIR, ignore_errors=True)
        else:
            rewrite_train_log(output_dir, checkpoint_step(resume_ckpt))
        params_file.write_text(json.dumps({"config_hash": chash, "params": params.to_json()}, indent=2) + "\n")

    # -- tokenizer and data
    tokenizer = AutoTokenizer.from_pretrained(base_ref)
    eos_token = resolve_eos_token(tokenizer, params.eos_token)
    eos_id = tokenizer.convert_tokens_to_ids(eos_token)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = eos_token  # padding is masked out of the loss (-100) and the attention
    config = sft_trainer_config(params, output_dir, device=device, bf16=bf16, eos_token=eos_token)
    args = trl.SFTConfig(**config)
    # -- world size: a resume keeps its checkpoint's effective batch size, or is refused (world.py)
    shape = batch_shape_of(args)
    resumed_shape = checkpoint_batch_shape(resume_ckpt) if resume_ckpt is not None else None
    if resumed_shape is not None and finished_checkpoint_state(resume_ckpt) is None:  # a finished run trains nothing
        accumulation = resume_accumulation(resumed_shape, shape, params.on_world_size_change, resume_ckpt)
        if accumulation != shape.gradient_accumulation_steps:
            config = {**config, "gradient_accumulation_steps": accumulation}
            args = trl.SFTConfig(**config)
            logger.warning("resuming %s at %s: gradient_accumulation_steps rescaled from %d to %d to keep "
                           "the checkpoint's effective batch size", resume_ckpt, resumed_shape.describe(),
                           shape.gradient_accumulation_steps, accumulation)
            shape = batch_shape_of(args)
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

    if params.budget == "tokens":  # max_steps: enough steps for the budget in any order; the counter stops it
        epoch_steps = steps_per_epoch(
            len(train_dataset), args.per_device_train_batch_size, args.gradient_accumulation_steps,
            args.world_size, args.dataloader_drop_last,
        )
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        horizon = token_budget_max_steps(stats.completion_lengths, params.budget_tokens, per_step, epoch_steps)
        args = trl.SFTConfig(**{**config, "max_steps": horizon})

    # -- model
    load_dtype = torch.bfloat16 if (bf16 and params.lora) else torch.float32  # full FT keeps fp32 master weights
    model = AutoModelForCausalLM.from_pretrained(base_ref, dtype=load_dtype)

    peft_config = None
    if params.lora:
        peft_config = LoraConfig(
            r=params.lora_r,
            lora_alpha=params.lora_alpha,
            lora_dropout=params.lora_dropout,
            target_modules=list(params.lora_target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )

    counter = make_budget_counter(params.budget_tokens if params.budget == "tokens" else None)
    callback = make_log_callback(output_dir, on_log, counter)
    trainer = counting_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[callback, counter, make_launch_state(shape)],
    )
    trainer.budget_counter = counter
    # With disable_tqdm the Trainer prints every log dict to stdout; our callback logs instead.
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
        budget_counter=counter,
        batch_shape=shape,
        resumed_batch_shape=resumed_shape,
    )


def _peak_memory_mb(device: str) -> float:
    import torch  # deferred: heavy

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def train(params: TrainParams, on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """Run (or resume) one SFT run; docs/sft.md says what it guarantees."""
    import torch  # deferred: heavy
    from transformers import TrainerState

    wall0 = time.perf_counter()
    if params.device != "cpu" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    prepared = build_trainer(params, on_log=on_log)
    trainer, stats, cb = prepared.trainer, prepared.stats, prepared.callback
    output_dir = Path(params.output_dir).resolve()
    resume = prepared.resume_checkpoint
    resumed_from_step = checkpoint_step(resume) if resume is not None else 0
    if resume is not None:
        logger.info("resuming SFT from %s (step %d)", resume, resumed_from_step)
        prepared.budget_counter.restore(resume)

    finished = finished_checkpoint_state(resume)
    if finished is not None:
        # Trainer.train() resumed at the last step still runs one more step (it checks max_steps only after a
        # step), so a rerun of a finished run would train past max_steps: load the checkpoint instead.
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
        train_loss=finite(training_loss),
        final_loss=cb.last_loss if cb.last_loss is not None else last_logged_loss(output_dir),
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
        budget=params.budget,
        budget_tokens=params.budget_tokens,
        schedule_steps=int(trainer.state.max_steps),
        completion_tokens=prepared.budget_counter.completion_tokens,
        trained_examples=prepared.budget_counter.trained_examples,
        epochs=round(float(trainer.state.epoch or 0.0), 4),
        world_size=prepared.batch_shape.world_size,
        gradient_accumulation_steps=prepared.batch_shape.gradient_accumulation_steps,
        effective_batch_size=prepared.batch_shape.effective_batch_size,
        resumed_world_size=prepared.resumed_batch_shape.world_size if prepared.resumed_batch_shape else None,
        loss_curve=loss_curve(trainer.state.log_history),
    )
    if params.budget == "tokens" and not prepared.budget_counter.budget_reached:
        logger.warning(
            "the run ended at step %d with %d completion tokens, short of [sft] budget_tokens = %d",
            result.steps, result.completion_tokens, params.budget_tokens,
        )
    if trainer.is_world_process_zero():
        tmp_result = output_dir / (RESULT_FILE + ".tmp")
        tmp_result.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        os.replace(tmp_result, output_dir / RESULT_FILE)
    return result


def load_trained_model(path: str | os.PathLike, device: str = "cpu", merge: bool = False):
    """``(model, tokenizer)`` from ``output_dir/final`` (or any checkpoint): a LoRA adapter is loaded with
    ``peft.AutoPeftModelForCausalLM`` (merged into the base weights with ``merge=True``), full weights with
    ``AutoModelForCausalLM``.  Eval mode, on ``device``."""
    from peft import AutoPeftModelForCausalLM  # deferred: heavy
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if (path / "adapter_config.json").is_file():
        model = AutoPeftModelForCausalLM.from_pretrained(str(path))
        if merge:
            model = model.merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path))
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model.to(device)
    model.eval()
    return model, tokenizer
