"""SFT data per variant, and the student checkpoint trained on it (TRL, in its own process)."""

import json

import dagster as dg
import polars as pl

from orion_assets import prompts
from orion_assets.assets.quality import latest_gate_verdict
from orion_assets.gate import reason_counts
from orion_assets.partitions import variant_partitions
from orion_assets.reflection import skipped_variants
from orion_assets.resources import OrionResource
from orion_assets.store import content_id, register_lineage
from orion_assets.text_stats import percentiles
from orion_assets.training import TrainParams, config_hash, run_sft_with_pipes

register_lineage("sft_dataset", "sft_example_id", "cot_quality_id", "cot_quality")
register_lineage("student_checkpoint", "checkpoint_id", "base_model_id", "student_base_model")
register_lineage("student_checkpoint", "checkpoint_id", "sft_example_ids", "sft_dataset")


@dg.asset(
    group_name="training",
    partitions_def=variant_partitions,
    deps=[dg.AssetDep("cot_quality"), dg.AssetDep("train_problems")],
    kinds={"duckdb", "parquet"},
    code_version="2",
)
def sft_dataset(context: dg.AssetExecutionContext, orion: OrionResource) -> dg.MaterializeResult:
    """Chat prompt/completion examples of one variant: its ``cot_quality`` rows that broke no
    per-row rule (``kept``), once the quality gate passed for this variant.

    Also written as Parquet (``$ORION_DATA_DIR/sft/<variant>.parquet``) for external trainers.
    """
    variant = context.partition_key
    if variant == "base":
        # The untrained student: its partition exists so that the variants line up end to end.
        return orion.publish(context, _sft_frame([]), replace_where={"variant": "base"},
                             metadata={"variant": "base", "examples": 0})
    _refuse_skipped_variant(orion, variant)
    passed, why = latest_gate_verdict(orion, variant)
    if not passed:
        raise dg.Failure(f"refusing to build SFT data for {variant}: {why}")
    cfg = orion.active.config
    candidates, cots_up = orion.read("cot_quality", {"variant": variant})
    if "kept" not in candidates.columns:
        raise dg.Failure("cot_quality has no 'kept' column (written by an older version): re-materialize cot_quality")
    cots = candidates.filter(pl.col("kept"))
    dropped = candidates.filter(~pl.col("kept"))
    train, train_up = orion.read("train_problems")
    problem_text = dict(train.select("problem_id", "problem").iter_rows())
    overrides = cfg.prompts.model_dump()
    rows = []
    for cot in cots.sort("cot_quality_id").iter_rows(named=True):
        prompt = list(prompts.messages("solve", overrides, problem=problem_text[cot["problem_id"]]))
        completion = [{"role": "assistant", "content": cot["cot"]}]
        rows.append(
            {
                "sft_example_id": content_id("sft", variant, prompt, completion),
                "variant": variant,
                "cot_quality_id": cot["cot_quality_id"],
                "problem_id": cot["problem_id"],
                "teacher_cot_id": cot["teacher_cot_id"],
                "refined_cot_id": cot["refined_cot_id"],
                "source": cot["source"],
                "prompt": prompt,
                "completion": completion,
                "n_tokens": cot["n_tokens"],
            }
        )
    frame = _sft_frame(rows)
    if frame.height == 0:
        raise dg.Failure(f"no SFT examples for variant {variant}: nothing to train on")
    parquet = orion.data_path / "sft" / f"{variant}.parquet"
    parquet.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(parquet)
    return orion.publish(
        context,
        frame,
        replace_where={"variant": variant},
        reads=[cots_up, train_up],
        metadata={
            "variant": variant,
            "parquet": dg.MetadataValue.path(str(parquet)),
            "examples": frame.height,
            "candidates": candidates.height,
            "dropped_by_quality": dropped.height,
            "dropped_by_reason": reason_counts(dropped),
            "by_source": dict(frame.group_by("source").len().iter_rows()),
            "n_tokens_percentiles": percentiles(frame["n_tokens"]),
        },
    )


@dg.asset(
    group_name="training",
    partitions_def=variant_partitions,
    deps=[dg.AssetDep("sft_dataset"), dg.AssetDep("student_base_model")],
    kinds={"transformers", "duckdb"},
    code_version="1",
)
def student_checkpoint(
    context: dg.AssetExecutionContext, orion: OrionResource, pipes_subprocess_client: dg.PipesSubprocessClient
) -> dg.MaterializeResult:
    """The student fine-tuned on one variant's SFT data, by TRL in its own process (Dagster Pipes),
    so the launcher can be ``python -m`` here or ``accelerate launch`` on a GPU node. The ``base``
    partition is the untrained student, so that every variant is evaluated the same way."""
    variant = context.partition_key
    if variant == "base":
        return _base_checkpoint(context, orion)
    _refuse_skipped_variant(orion, variant)
    passed, why = latest_gate_verdict(orion, variant)
    if not passed:
        raise dg.Failure(f"refusing to train {variant}: {why}")
    cfg = orion.active.config
    examples, sft_up = orion.read("sft_dataset", {"variant": variant}, partition_key=variant)
    base, base_up = orion.read("student_base_model")
    model = base.row(0, named=True)
    dataset_path = orion.data_path / "sft" / f"{variant}.parquet"
    probe = TrainParams.from_sft_config(
        cfg.sft, base_model_path=model["path"], dataset_path=dataset_path, output_dir="-", base_model_hash=model["model_id"]
    )
    # Same base, data and settings -> same directory, so a killed run resumes from its checkpoint.
    data_hash = content_id(sorted(examples["sft_example_id"].to_list()))
    run_hash = content_id(config_hash(probe), data_hash)
    output_dir = orion.data_path / "checkpoints" / variant / run_hash
    params = TrainParams.from_sft_config(
        cfg.sft, base_model_path=model["path"], dataset_path=dataset_path, output_dir=output_dir,
        base_model_hash=model["model_id"],
    )
    outcome = run_sft_with_pipes(context, pipes_subprocess_client, params, cfg.sft.launcher)
    result = outcome.result
    row = checkpoint_row(
        checkpoint_id=content_id("checkpoint", variant, run_hash),
        variant=variant,
        base_model_id=model["model_id"],
        sft_examples=examples.height,
        sft_example_ids=sorted(examples["sft_example_id"].to_list()),
        sft_data_hash=data_hash,
        config_hash=result["config_hash"],
        path=result["final_path"],
        kind=result["final_kind"],
        steps=result["steps"],
        train_loss=result["train_loss"],
        final_loss=result["final_loss"],
        tokens_seen=result["tokens_seen"],
        train_tokens_per_second=result["train_tokens_per_second"],
        truncated_examples=result["truncated_examples"],
        resumed_from_step=result["resumed_from_step"],
        params=json.dumps(params.to_json()),
    )
    return orion.publish(
        context,
        row,
        replace_where={"variant": variant},
        reads=[sft_up, base_up],
        metadata={**outcome.metadata, "checkpoint_path": dg.MetadataValue.path(result["final_path"])},
    )


def _base_checkpoint(context: dg.AssetExecutionContext, orion: OrionResource) -> dg.MaterializeResult:
    base, base_up = orion.read("student_base_model")
    model = base.row(0, named=True)
    row = checkpoint_row(
        checkpoint_id=content_id("checkpoint", "base", model["model_id"]), variant="base",
        base_model_id=model["model_id"], sft_examples=0, sft_example_ids=[], path=model["path"], kind="base", steps=0,
        config_hash=model["config_hash"],
    )
    return orion.publish(context, row, replace_where={"variant": "base"}, reads=[base_up],
                         metadata={"checkpoint_path": dg.MetadataValue.path(model["path"]), "kind": "base"})


CHECKPOINT_SCHEMA = {
    "checkpoint_id": pl.Utf8, "variant": pl.Utf8, "base_model_id": pl.Utf8, "sft_examples": pl.Int64,
    "sft_example_ids": pl.List(pl.Utf8), "sft_data_hash": pl.Utf8, "config_hash": pl.Utf8, "path": pl.Utf8,
    "kind": pl.Utf8, "steps": pl.Int64, "train_loss": pl.Float64, "final_loss": pl.Float64, "tokens_seen": pl.Int64,
    "train_tokens_per_second": pl.Float64, "truncated_examples": pl.Int64, "resumed_from_step": pl.Int64,
    "params": pl.Utf8,
}


def checkpoint_row(**values: object) -> pl.DataFrame:
    """One ``student_checkpoint`` row; columns a variant has no value for (``base``) are null."""
    return pl.DataFrame([values], schema=CHECKPOINT_SCHEMA)


MESSAGES = pl.List(pl.Struct({"role": pl.Utf8, "content": pl.Utf8}))
SFT_SCHEMA = {
    "sft_example_id": pl.Utf8, "variant": pl.Utf8, "cot_quality_id": pl.Utf8, "problem_id": pl.Utf8,
    "teacher_cot_id": pl.Utf8, "refined_cot_id": pl.Utf8, "source": pl.Utf8,
    "prompt": MESSAGES, "completion": MESSAGES, "n_tokens": pl.Int64,
}


def _sft_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SFT_SCHEMA)


def _refuse_skipped_variant(orion: OrionResource, variant: str) -> None:
    """A variant this profile cannot make honestly (e.g. orion_no_reflection with a replay teacher)
    is refused with the reason, never trained as a duplicate under its name."""
    why = skipped_variants(orion.active.config).get(variant)
    if why is not None:
        raise dg.Failure(f"refusing {variant} in profile {orion.active.name}: {why}")
