"""One declaration per record: the ``student_checkpoint`` columns a run's result fills are declared once, in
``RESULT_COLUMNS``: the checkpoint row is read off ``TrainResult`` (and its ``result.json``) by it, and the table
spec takes each column's type (its ``TrainResult`` field's) and description from it."""

from __future__ import annotations

import dataclasses
import functools
import typing

import polars as pl
import pytest

from orion_assets.assets.training import STUDENT_CHECKPOINT, checkpoint_row, result_spec
from orion_assets.ids import content_id
from orion_assets.profiles.sft import SFTSettings
from orion_assets.training.checkpoints import (
    RESULT_COLUMNS,
    RUN_COLUMNS,
    TRAINED_COLUMNS,
    ResultColumn,
    result_columns,
)
from orion_assets.training.config import plan_run
from orion_assets.training.trainer import TrainResult

SCALAR = {str: pl.Utf8, int: pl.Int64, float: pl.Float64, bool: pl.Boolean}
CURVE_POINT = pl.Struct({"step": pl.Int64, "epoch": pl.Float64, "loss": pl.Float64, "learning_rate": pl.Float64,
                         "grad_norm": pl.Float64, "tokens_seen": pl.Int64, "mean_token_accuracy": pl.Float64})


def test_every_result_column_names_a_train_result_field_and_the_spec_takes_its_type_and_description():
    """RESULT_COLUMNS is the one declaration: each column names a TrainResult field (what result.json holds), and
    the table spec declares the column with that field's type and the declared description, in the table's order
    (params, which no result holds, between the two groups)."""
    fields = {f.name for f in dataclasses.fields(TrainResult)}
    hints = typing.get_type_hints(TrainResult)
    assert RESULT_COLUMNS == {**RUN_COLUMNS, **TRAINED_COLUMNS}
    names = list(STUDENT_CHECKPOINT.columns)
    at = names.index("params")
    assert names[at - len(RUN_COLUMNS):at] == list(RUN_COLUMNS)
    assert names[at + 1:at + 1 + len(TRAINED_COLUMNS)] == list(TRAINED_COLUMNS)
    for column, declared in RESULT_COLUMNS.items():
        assert declared.field in fields, f"{column}: TrainResult has no field {declared.field}"
        assert STUDENT_CHECKPOINT.descriptions[column] == declared.description, column
        kinds = [t for t in typing.get_args(hints[declared.field]) or (hints[declared.field],) if t is not type(None)]
        expected = SCALAR.get(kinds[0], pl.List(CURVE_POINT))
        assert STUDENT_CHECKPOINT.columns[column] == expected, column
    assert STUDENT_CHECKPOINT.columns["loss_curve"] == pl.List(CURVE_POINT)
    # a field of no column type is refused, not declared as something else
    with pytest.raises(TypeError, match="TrainResult.loss_curve"):
        result_spec({"loss_curve": ResultColumn("loss_curve", "points of no declared fields")})


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
