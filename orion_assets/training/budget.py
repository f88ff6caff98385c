"""Matched SFT budgets ([sft] budget): what a run counts as it trains, and where a token budget stops it.

Every run counts the completion (loss) tokens and the examples of each optimizer step; a ``tokens`` run stops at
the first step that brings the count to [sft] ``budget_tokens``.  docs/sft.md ("Budgets") has the rules.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: The counter's name in a checkpoint's ``trainer_state.json`` (``stateful_callbacks``), read back on resume.
BUDGET_STATE_KEY = "SFTBudgetCounter"


def steps_per_epoch(examples: int, batch_size: int, accumulation: int, world_size: int, drop_last: bool) -> int:
    """Optimizer steps in one pass over ``examples`` (as ``transformers.Trainer`` counts them; each rank gets
    ``ceil(examples / world_size)``)."""
    per_rank = math.ceil(examples / world_size)
    batches = per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)
    return max(math.ceil(batches / accumulation), 1)


def token_budget_max_steps(
    completion_tokens: Sequence[int], budget_tokens: int, examples_per_step: int, epoch_steps: int
) -> int:
    """The most optimizer steps a run can need to train on ``budget_tokens`` completion tokens, whatever order
    the sampler draws the examples in: every step takes ``examples_per_step`` distinct examples of the epoch, at
    worst the shortest ones.  The Trainer's ``max_steps`` under budget = "tokens" (the budget stops it first)."""
    if budget_tokens <= 0:
        raise ValueError(f"budget_tokens must be > 0, got {budget_tokens}")
    lengths = np.sort(np.asarray(completion_tokens, dtype=np.int64))
    if lengths.size == 0 or lengths[0] <= 0:
        raise ValueError("a token budget needs examples that each have completion tokens")
    cumulative = np.cumsum(lengths)
    per_epoch = int(cumulative[min(lengths.size, epoch_steps * examples_per_step) - 1])  # the fewest in an epoch
    full_epochs = (budget_tokens - 1) // per_epoch
    rest = budget_tokens - full_epochs * per_epoch  # 0 < rest <= per_epoch
    examples = int(np.searchsorted(cumulative, rest, side="left")) + 1
    return full_epochs * epoch_steps + math.ceil(examples / examples_per_step)


def make_budget_counter(budget_tokens: int | None):
    """A ``TrainerCallback`` holding the run's counts (saved in each checkpoint's trainer state) that stops
    training, and saves a checkpoint, at the step where ``completion_tokens`` reaches ``budget_tokens``."""
    from transformers import TrainerCallback  # deferred: heavy
    from transformers.trainer_callback import ExportableState

    class SFTBudgetCounter(TrainerCallback, ExportableState):
        def __init__(self, budget_tokens: int | None = None) -> None:
            self.budget_tokens = budget_tokens
            self.completion_tokens = 0
            self.trained_examples = 0
            self.budget_reached = False

        def add(self, completion_tokens: int, examples: int) -> None:
            self.completion_tokens += completion_tokens
            self.trained_examples += examples

        def state(self) -> dict[str, Any]:
            return {
                "args": {"budget_tokens": self.budget_tokens},
                "attributes": {
                    "completion_tokens": self.completion_tokens,
                    "trained_examples": self.trained_examples,
                    "budget_reached": self.budget_reached,
                },
            }

        def restore(self, checkpoint: Path) -> None:
            """The counts a resumed run starts from: those saved with ``checkpoint``."""
            saved = checkpoint_budget_state(checkpoint)
            for key in ("completion_tokens", "trained_examples", "budget_reached"):
                if key in saved:
                    setattr(self, key, saved[key])

        def on_step_end(self, args, state, control, **kwargs):
            if self.budget_tokens is not None and self.completion_tokens >= self.budget_tokens:
                self.budget_reached = True
                control.should_training_stop = True
                control.should_save = True  # the run's last checkpoint is the step that reached the budget
            return control

    return SFTBudgetCounter(budget_tokens)


def checkpoint_budget_state(checkpoint: Path) -> dict[str, Any]:
    """The counter's attributes saved in ``checkpoint/trainer_state.json`` ({} for a checkpoint without them)."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    saved = (state.get("stateful_callbacks") or {}).get(BUDGET_STATE_KEY) or {}
    if isinstance(saved, list):
        saved = saved[-1] if saved else {}
    return dict(saved.get("attributes") or {})


def counting_trainer_class():
    """``trl.SFTTrainer`` that adds each optimizer step's completion tokens (``labels[..., 1:] != -100``, the
    tokens the loss is taken over) and examples, summed over all ranks, to its ``budget_counter``."""
    import torch  # deferred: heavy
    import trl

    class CountingSFTTrainer(trl.SFTTrainer):
        budget_counter: Any = None

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
            if self.budget_counter is not None and batch_samples:
                tokens = sum(int(b["labels"][..., 1:].ne(-100).sum()) for b in batch_samples)
                examples = sum(int(b["labels"].shape[0]) for b in batch_samples)
                counts = torch.tensor([tokens, examples], device=device)
                if self.args.world_size > 1:  # every rank must stop at the same step
                    counts = self.accelerator.reduce(counts, reduction="sum")
                self.budget_counter.add(int(counts[0]), int(counts[1]))
            return batch_samples, num_items

    return CountingSFTTrainer
