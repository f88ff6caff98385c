"""The world size on resume ([sft] on_world_size_change): each checkpoint records the world size and batch it was
trained with; a resume under another effective batch size is refused, or rescales gradient_accumulation_steps.
Real TRL training of the tiny student on CPU (world size 1); another world size is written into the checkpoint's
record, as a run under ``accelerate launch --num_processes 2`` would have left it."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
import re
import shutil
from pathlib import Path

import pytest

from orion_assets.training import RESULT_FILE, TrainParams, config_hash, read_train_log, train, write_sft_parquet
from orion_assets.training.student import BuiltModel, build_tiny_student
from orion_assets.training.world import (
    LAUNCH_STATE_KEY,
    BatchShape,
    checkpoint_batch_shape,
    resume_accumulation,
)
from orion_assets_tests.conftest import gsm8k_train_rows

CKPT = Path("checkpoint-2")


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory) -> BuiltModel:
    texts = [t for r in gsm8k_train_rows(200) for t in (r["question"], r["answer"])]
    return build_tiny_student(texts, tmp_path_factory.mktemp("world_student"))


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    rows = []
    for i, r in enumerate(gsm8k_train_rows(16)):
        body, final = r["answer"].split("####")
        cot = f"{re.sub(r'<<[^>]*>>', '', body).strip()}\nThe final answer is \\boxed{{{final.strip()}}}."
        rows.append({"sft_example_id": f"gsm8k-{i}", "prompt": [{"role": "user", "content": r["question"]}],
                     "completion": [{"role": "assistant", "content": cot}]})
    return write_sft_parquet(rows, tmp_path_factory.mktemp("world_data") / "sft.parquet")


def _params(student: BuiltModel, data: Path, out: Path, **kw) -> TrainParams:
    return TrainParams(
        base_model_path=str(student.path), dataset_path=str(data), output_dir=str(out), max_length=512,
        max_steps=4, per_device_train_batch_size=2, gradient_accumulation_steps=1, save_steps=2,
        save_total_limit=None, learning_rate=1e-3, base_model_hash=student.config_hash, **kw,
    )


def _cut_back_to_step_2(out: Path) -> None:
    """As if the run had been killed after its checkpoint at step 2."""
    shutil.rmtree(out / "checkpoint-4")
    shutil.rmtree(out / "final")
    (out / RESULT_FILE).unlink()


def _edit_record(checkpoint: Path, edit) -> None:
    path = checkpoint / "trainer_state.json"
    state = json.loads(path.read_text())
    edit(state["stateful_callbacks"])
    path.write_text(json.dumps(state))


def test_resume_accumulation_keeps_the_effective_batch_or_refuses_naming_both():
    ckpt = Path("/runs/x/checkpoint-2")
    one, two = BatchShape(1, 2, 4), BatchShape(2, 2, 4)
    assert resume_accumulation(None, two, "refuse", ckpt) == 4  # a checkpoint from before the record: as before
    assert resume_accumulation(one, BatchShape(1, 2, 4), "refuse", ckpt) == 4
    assert resume_accumulation(BatchShape(2, 2, 2), BatchShape(1, 2, 4), "refuse", ckpt) == 4  # same batch: 8
    with pytest.raises(ValueError) as refused:
        resume_accumulation(one, two, "refuse", ckpt)
    message = str(refused.value)
    assert "/runs/x/checkpoint-2 was trained at world size 1" in message
    assert "effective batch size 8" in message and "this run has world size 2" in message
    assert "effective batch size 16" in message and 'on_world_size_change = "refuse"' in message
    assert resume_accumulation(one, two, "rescale", ckpt) == 2  # 2 x 2 x 2 = 8
    assert resume_accumulation(two, BatchShape(8, 2, 4), "rescale", ckpt) == 1  # 16 = 2 x 1 x 8
    with pytest.raises(ValueError, match=r"cannot keep it: 8 is not a multiple of .* world size = 6"):
        resume_accumulation(one, BatchShape(3, 2, 4), "rescale", ckpt)


def test_the_policy_is_a_profile_key_outside_the_config_hash(write_profile, tiny_student, sft_data, tmp_path):
    from orion_assets.profiles import ProfileError, load_profile

    assert load_profile("tiny").config.sft.on_world_size_change == "refuse"
    path = write_profile('[sft]\non_world_size_change = "rescale"\n')
    assert load_profile(str(path)).config.sft.on_world_size_change == "rescale"
    with pytest.raises(ProfileError, match=r"unknown value 'ignore' for 'sft.on_world_size_change' \(expected 'refuse' or 'rescale'\)"):
        load_profile(str(write_profile('[sft]\non_world_size_change = "ignore"\n', name="bad.toml")))
    # switching the policy keeps the run's directory (and its checkpoints)
    assert config_hash(_params(tiny_student, sft_data, tmp_path)) == config_hash(
        _params(tiny_student, sft_data, tmp_path, on_world_size_change="rescale")
    )


def test_a_resume_under_another_world_size_is_refused_or_rescaled(tmp_path, tiny_student, sft_data):
    out = tmp_path / "run"
    first = train(_params(tiny_student, sft_data, out))
    assert (first.world_size, first.gradient_accumulation_steps, first.effective_batch_size) == (1, 1, 2)
    assert first.resumed_world_size is None
    assert {(e["world_size"], e["effective_batch_size"]) for e in read_train_log(out)} == {(1, 2)}
    assert checkpoint_batch_shape(out / CKPT) == checkpoint_batch_shape(out / "checkpoint-4") == BatchShape(1, 2, 1)
    saved_result = json.loads((out / RESULT_FILE).read_text())
    assert saved_result["world_size"] == 1 and saved_result["effective_batch_size"] == 2

    # the same world size resumes as before
    _cut_back_to_step_2(out)
    same = train(_params(tiny_student, sft_data, out))
    assert (same.resumed_from_step, same.steps, same.resumed_world_size) == (2, 4, 1)
    assert same.trained_examples == 4 * 2

    # a checkpoint saved at world size 2 (its record says so) is refused, naming both world sizes and batches
    _cut_back_to_step_2(out)
    _edit_record(out / CKPT, lambda cbs: cbs[LAUNCH_STATE_KEY]["args"].update(world_size=2))
    with pytest.raises(ValueError) as refused:
        train(_params(tiny_student, sft_data, out))
    message = str(refused.value)
    assert "checkpoint-2 was trained at world size 2" in message and "effective batch size 4" in message
    assert "this run has world size 1" in message and "effective batch size 2" in message
    assert not (out / "checkpoint-4").exists()  # nothing trained

    # "rescale": gradient_accumulation_steps 2 keeps the checkpoint's 4 examples per optimizer step
    rescaled = train(_params(tiny_student, sft_data, out, on_world_size_change="rescale"))
    assert (rescaled.resumed_from_step, rescaled.steps, rescaled.resumed_world_size) == (2, 4, 2)
    assert (rescaled.world_size, rescaled.gradient_accumulation_steps, rescaled.effective_batch_size) == (1, 2, 4)
    assert rescaled.trained_examples == 2 * 2 + 2 * 4  # the two steps after the resume took 4 examples each
    assert checkpoint_batch_shape(out / "checkpoint-4") == BatchShape(1, 2, 2)
    assert [e["effective_batch_size"] for e in read_train_log(out)] == [2, 2, 4, 4]

    # a checkpoint saved before the record existed resumes as before, and its successors carry the record
    _cut_back_to_step_2(out)
    _edit_record(out / CKPT, lambda cbs: cbs.pop(LAUNCH_STATE_KEY))
    assert checkpoint_batch_shape(out / CKPT) is None
    old = train(_params(tiny_student, sft_data, out))
    assert (old.steps, old.resumed_world_size, old.effective_batch_size) == (4, None, 2)
    assert checkpoint_batch_shape(out / "checkpoint-4") == BatchShape(1, 2, 1)
