"""One declaration per record: the ``student_checkpoint`` columns a run's result fills are read off ``TrainResult``
(and its ``result.json``) by ``RESULT_COLUMNS``, whose fields and types agree with the table spec."""

from __future__ import annotations

import dataclasses
import functools
import typing

import polars as pl

from orion_assets.assets.training import STUDENT_CHECKPOINT, checkpoint_row
from orion_assets.ids import content_id
from orion_assets.profiles.sft import SFTSettings
from orion_assets.training.checkpoints import RESULT_COLUMNS, result_columns
from orion_assets.training.config import plan_run
from orion_assets.training.trainer import TrainResult

SCALAR = {str: pl.Utf8, int: pl.Int64, float: pl.Float64, bool: pl.Boolean}


def test_every_result_column_names_a_train_result_field_of_its_type():
    fields = {f.name: f for f in dataclasses.fields(TrainResult)}
    hints = typing.get_type_hints(TrainResult)
    for column, name in RESULT_COLUMNS.items():
        assert name in fields, f"{column}: TrainResult has no field {name}"
        assert column in STUDENT_CHECKPOINT.columns, f"student_checkpoint has no column {column}"
        kinds = [t for t in typing.get_args(hints[name]) or (hints[name],) if t is not type(None)]
        if kinds[0] in SCALAR:
            assert STUDENT_CHECKPOINT.columns[column] == SCALAR[kinds[0]], column


def test_a_checkpoint_row_is_read_off_a_result():
    result = TrainResult(
        final_path="/ckpt/final", final_kind="lora_adapter", steps=3, train_loss=1.5, final_loss=1.2, tokens_seen=99,
        train_tokens=90, train_seconds=1.0, train_tokens_per_second=90.0, train_cpu_seconds=2.0, wall_seconds=3.0,
        examples=4, truncated_examples=0, max_example_tokens=30, mean_example_tokens=22.5, max_length=64,
        resumed_from_step=0, peak_memory_mb=1.0, config_hash="h", device="cpu", bf16=False, log_path="/log",
        completion_tokens=50, trained_examples=12, epochs=3.0,
        loss_curve=[{"step": 1, "epoch": 1.0, "loss": 1.5, "learning_rate": 1e-3, "grad_norm": 1.0, "tokens_seen": 33,
                     "mean_token_accuracy": 0.5}],
    )  # fmt: skip
    row = checkpoint_row(checkpoint_id="c", student="s", variant="orion", seed=0, **result_columns(result.to_json()))
    got = row.row(0, named=True)
    assert (got["path"], got["kind"], got["steps"], got["completion_tokens"]) == ("/ckpt/final", "lora_adapter", 3, 50)
    assert got["loss_curve"][0]["tokens_seen"] == 33 and got["config_hash"] == "h"
    # a result.json written before a field existed leaves its column null
    assert checkpoint_row(**result_columns({"final_path": "/p"})).row(0, named=True)["epochs"] is None


def test_a_planned_run_lands_where_the_same_base_data_and_settings_landed(tmp_path):
    plan = functools.partial(plan_run, base_model_path="b", base_model_hash="h", dataset_path=tmp_path / "d.parquet",
                             checkpoints_dir=tmp_path, student="s", variant="orion")
    run = plan(SFTSettings(), example_ids=["e2", "e1"])
    assert run == plan(SFTSettings(), example_ids=["e1", "e2"])  # the examples' order does not matter
    assert run.output_dir == tmp_path / "s" / "orion" / run.run_hash
    assert run.checkpoint_id == content_id("checkpoint", "s", "orion", content_id(run.config_hash, run.data_hash))
    assert plan(SFTSettings(learning_rate=1e-3), example_ids=["e1", "e2"]).checkpoint_id != run.checkpoint_id
    assert plan(SFTSettings(), example_ids=["e1"]).output_dir != run.output_dir
