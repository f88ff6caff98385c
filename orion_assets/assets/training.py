"""The student: its base weights, the SFT data per variant, and the checkpoint trained on it (TRL, in its own process)."""

import json
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow.parquet as pq

from orion_assets.assets.quality import COT_QUALITY
from orion_assets.ids import content_id
from orion_assets.io.metadata import percentiles, tracking_metadata
from orion_assets.io.resource import OrionResource
from orion_assets.io.sft_pipes import run_sft_with_pipes
from orion_assets.io.tables import Rows, Table, TableSpec, col, orion_asset
from orion_assets.method import problems, sft_data
from orion_assets.method.evaluation.report import loss_curve_png, png_markdown
from orion_assets.method.partition_keys import SEPARATOR, parse_model_key
from orion_assets.method.quality import common
from orion_assets.method.quality.verdicts import latest_gate_verdict
from orion_assets.method.variants import skipped_variants
from orion_assets.profiles.k8s import sft_op_tags
from orion_assets.profiles.schema import OrionConfig
from orion_assets.serving.handover import release_accelerator
from orion_assets.store.columns import Column
from orion_assets.training import TrainParams, gguf, student
from orion_assets.training.chat_template import with_chat_template
from orion_assets.training.checkpoints import RUN_COLUMNS, TRAINED_COLUMNS, ResultColumn, result_columns
from orion_assets.training.config import plan_run
from orion_assets.training.tracking import CheckpointIdentity, open_checkpoint_run
from orion_assets.training.trainer import TrainResult
from orion_assets.vocabulary import BASE_VARIANT, OWN_PROBLEMS_VARIANTS

STUDENT_BASE_MODEL = TableSpec(
    "student_base_model",
    {
        "model_id": col(pl.Utf8, "the base model's id: its config_hash"),
        "student": col(pl.Utf8, "the student's name in the profile (the partition)"),
        "path": col(pl.Utf8, "the model's directory (a Hub model's local snapshot)"),
        "config_hash": col(pl.Utf8, "a hash of what built it (the tiny build and its tokenizer texts, the GGUF file, or a "
                                    "pretrained model's config.json and revision)"),
        "parameters": col(pl.Int64, "its number of (unique) parameters"),
        "vocab_size": col(pl.Int64, "its vocabulary size (embedding rows)"),
        "eos_token": col(pl.Utf8, "the end-of-turn token it stops at and SFT teaches, e.g. <|im_end|>"),
        "source": col(pl.Utf8, "how it was made: build_tiny, gguf (converted) or pretrained"),
    },
    id="model_id",
    partition_by=("student",),
)


@orion_asset(STUDENT_BASE_MODEL, group_name="training", partitions="student", kinds={"transformers"},
             code_version="3")
def student_base_model(context: dg.AssetExecutionContext, orion: OrionResource) -> Rows:
    """One student before any SFT: built tiny and random (tiny profile), converted from a GGUF file, or
    resolved from the Hub/disk."""
    cfg = orion.config_for(context.partition_key)
    spec = cfg.student_model
    if spec.source == "build_tiny":
        # The tokenizer learns the whole training pool's text (problems and worked solutions).
        texts: list[str] = []
        for source in cfg.data.train_sources:
            frame, _ = problems.load_train_source(source)
            texts += frame["problem"].to_list() + frame["solution"].drop_nulls().to_list()
        built = student.build_tiny_student(texts, orion.data_path / "models", **spec.tiny.model_dump())
    elif spec.source == "gguf":
        located = gguf.locate_gguf(package=spec.gguf_package, file=spec.gguf_file, path=spec.gguf_path)
        built = gguf.convert_gguf(located, orion.data_path / "models")
    else:
        built = student.resolve_pretrained(spec.name_or_path, spec.revision)
    if spec.chat_template is not None:
        built = with_chat_template(built, spec.chat_template, orion.data_path / "models")
    context.log.info(f"student base model {built.path} ({built.parameters:,} parameters)")
    info = json.loads((built.path / "build_info.json").read_text()) if (built.path / "build_info.json").is_file() else {}
    provenance = {key: info[key] for key in ("package", "package_version", "gguf_file", "gguf_sha256") if info.get(key)}
    row = pl.DataFrame([{"model_id": built.config_hash, "student": spec.name, **built.to_json()}],
                       schema=STUDENT_BASE_MODEL.columns)
    return Rows(
        row,
        metadata={
            "path": dg.MetadataValue.path(str(built.path)),
            "parameters": built.parameters,
            "vocab_size": built.vocab_size,
            "eos_token": built.eos_token,
            "config_hash": built.config_hash,
            **provenance,
        },
    )


MESSAGES = pl.List(pl.Struct({"role": pl.Utf8, "content": pl.Utf8}))
SFT_DATASET = TableSpec(
    "sft_dataset",
    {
        "sft_example_id": col(pl.Utf8, "the example's id: a content hash of student, variant, prompt and completion"),
        "student": col(pl.Utf8, "the student trained on it (the partition's first part)"),
        "variant": col(pl.Utf8, "the training variant (the partition's second part)"),
        "cot_quality_id": col(pl.Utf8, "the kept cot_quality row it was made from"),
        "problem_id": col(pl.Utf8, "the training problem"),
        "teacher_cot_id": col(pl.Utf8, "the teacher CoT behind it (NULL for rft)"),
        "refined_cot_id": col(pl.Utf8, "the refined_cots row whose CoT it is (refined variants only)"),
        "baseline_cot_id": col(pl.Utf8, "the baseline_cots row whose CoT it is (baselines only)"),
        "source": col(pl.Utf8, "where the CoT comes from (cot_quality.source)"),
        "prompt": col(MESSAGES, "the chat prompt: the solve template's messages with the problem"),
        "completion": col(MESSAGES, "one assistant message: the CoT (the loss is taken over it alone)"),
        "n_tokens": col(pl.Int64, "the CoT's length in the student's tokens (cot_quality.n_tokens)"),
    },
    id="sft_example_id",
    parents={"cot_quality_id": "cot_quality"},
    partition_by=("student", "variant"),
)
#: A TrainResult field's type -> its student_checkpoint column's (:func:`result_spec`).
RESULT_TYPES: dict[type, type[pl.DataType]] = {str: pl.Utf8, int: pl.Int64, float: pl.Float64, bool: pl.Boolean}


def result_spec(columns: Mapping[str, ResultColumn]) -> dict[str, Column]:
    """``columns`` as the table declares them, each with its description and the type of the ``TrainResult``
    field it takes (``X | None``: a nullable X; a list field: a list of structs of its ``points``' fields)."""
    hints = typing.get_type_hints(TrainResult)

    def dtype(column: ResultColumn) -> pl.DataType | type[pl.DataType]:
        annotation = hints[column.field]
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # X | None: a nullable X
            (annotation,) = (t for t in typing.get_args(annotation) if t is not type(None))
        if annotation in RESULT_TYPES:
            return RESULT_TYPES[annotation]
        if typing.get_origin(annotation) is list and column.points is not None:
            return pl.List(pl.Struct({k: RESULT_TYPES[t] for k, t in column.points.items()}))
        raise TypeError(f"TrainResult.{column.field}: no student_checkpoint type for {hints[column.field]}")

    return {name: col(dtype(column), column.description) for name, column in columns.items()}


STUDENT_CHECKPOINT = TableSpec(
    "student_checkpoint",
    {
        "checkpoint_id": col(pl.Utf8, "the checkpoint's id: a content hash of student, variant and the run's hash "
                                      "(its settings and data); base: of the base model"),
        "student": col(pl.Utf8, "the student trained"),
        "variant": col(pl.Utf8, "the variant it was trained on (base: untrained)"),
        "seed": col(pl.Int64, "the SFT seed"),
        "base_model_id": col(pl.Utf8, "the student_base_model it started from"),
        "sft_examples": col(pl.Int64, "how many sft_dataset examples the variant has (0 for base)"),
        "sft_example_ids": col(pl.List(pl.Utf8), "their ids, sorted"),
        "sft_data_hash": col(pl.Utf8, "a content hash of those ids (NULL for base)"),
        # read off the run's result (training/checkpoints.py), each of the type of its TrainResult field
        **result_spec(RUN_COLUMNS),
        "params": col(pl.Utf8, "JSON: the training parameters the run was launched with"),
        **result_spec(TRAINED_COLUMNS),
    },
    id="checkpoint_id",
    parents={"base_model_id": "student_base_model", "sft_example_ids": "sft_dataset"},
    partition_by=("student", "variant", "seed"),
)


def sft_step_tags(config: OrionConfig) -> dict:
    """The SFT step's op tags: its pod on Kubernetes, from the profile's ``[sft.k8s]``."""
    return sft_op_tags(config.sft.k8s)


@orion_asset(SFT_DATASET, group_name="training", partitions="sft", kinds={"parquet"},
             ins={"cot_quality": "student_to_sft", "refined_cots": "student_to_sft", "baseline_cots": "student_to_sft"},
             code_version="6")
def sft_dataset(
    context: dg.AssetExecutionContext,
    orion: OrionResource,
    cot_quality: Table,
    train_problems: Table,
    teacher_cots: Table,
    refined_cots: Table,
    baseline_cots: Table,
) -> Rows:
    """Chat prompt/completion examples of one student's variant: its ``cot_quality`` rows that broke no
    per-row rule (``kept``), once the quality gate passed for this variant; with [sft] ``common_problems``,
    only those of the problems every trained variant of the student kept (a fair comparison).

    Also written as Parquet (``$ORION_DATA_DIR/sft/<student>/<variant>.parquet``, chunk by chunk) for the
    trainer and external ones.
    """
    student, variant = context.partition_key.split(SEPARATOR)
    parquet = sft_parquet(orion, student, variant)
    if variant == BASE_VARIANT:
        # The untrained student: its partition exists so that the variants line up end to end.
        return Rows(SFT_DATASET.empty(), metadata={"student": student, "variant": variant, "examples": 0})
    _refuse_unless_gated(orion, cot_quality, student, variant, "build SFT data for")
    cfg = orion.config_for(student)
    shared = _common_problems(orion, cot_quality) if cfg.sft.common_problems else None
    tables = {"teacher_cots": teacher_cots, "refined_cots": refined_cots, "baseline_cots": baseline_cots}
    stats = sft_data.SftStats()
    records = sft_data.sft_records(
        cot_quality.filter(variant=variant).chunks("problem_id", cfg.data.chunk_size,
                                                   columns=list(sft_data.CANDIDATE_COLUMNS)),
        student=student, variant=variant, overrides=cfg.prompts.model_dump(),
        problems_of=lambda ids: train_problems.column_map("problem_id", "problem", ids),
        texts_of=lambda cots: _cot_texts(cots, tables), stats=stats,
        common=shared.problems if shared is not None and variant not in OWN_PROBLEMS_VARIANTS else None)
    frames = (pl.DataFrame(chunk, schema=SFT_DATASET.columns) for chunk in records)
    written = _written_to(parquet, frames, lambda: stats.nothing_to_train_on(student, variant, shared))
    return Rows(written, lambda: {
        "student": student, "variant": variant, "parquet": dg.MetadataValue.path(str(parquet)),
        **stats.metadata(variant, shared), "n_tokens_percentiles": percentiles(pl.Series(stats.tokens, dtype=pl.Int64))})


def _written_to(parquet: Path, frames: Iterable[pl.DataFrame], nothing: Callable[[], str]) -> Iterator[pl.DataFrame]:
    """``frames`` passed on, each also written to ``parquet`` (in place once all are, so a trainer never reads half
    a file); none with a row fails with ``nothing()``, and no file is left."""
    parquet.parent.mkdir(parents=True, exist_ok=True)
    partial, rows = parquet.with_suffix(".parquet.partial"), 0
    with pq.ParquetWriter(partial, SFT_DATASET.empty().to_arrow().schema) as writer:
        for frame in frames:
            rows += frame.height
            writer.write_table(frame.to_arrow())
            yield frame
    if rows == 0:
        partial.unlink()
        raise dg.Failure(nothing())
    partial.replace(parquet)


@orion_asset(STUDENT_CHECKPOINT, group_name="training", partitions="model", kinds={"transformers"},
             ins={"sft_dataset": "sft_to_model", "student_base_model": "student_to_model",
                  "cot_quality": "student_to_model"},
             code_version="4", op_tags=sft_step_tags)
def student_checkpoint(
    context: dg.AssetExecutionContext,
    orion: OrionResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
    sft_dataset: Table,
    student_base_model: Table,
    cot_quality: Table,
) -> dg.Output:
    """One student fine-tuned on one variant's SFT data with one seed, by TRL in its own process (Dagster Pipes:
    ``python -m`` here, ``accelerate launch`` on a GPU node); ``base`` is the untrained student."""
    student, variant, seed = parse_model_key(context.partition_key)
    model = student_base_model.first()
    if variant == BASE_VARIANT:
        checkpoint_id = content_id("checkpoint", student, BASE_VARIANT, model["model_id"])
        tracked = open_checkpoint_run(orion.tracker, CheckpointIdentity.of(
            orion.active, student, variant, seed, checkpoint_id, model["config_hash"]), context.run.run_id)
        return dg.Output(_base_checkpoint(model, student, seed, checkpoint_id, tracking_metadata(tracked)))
    _refuse_unless_gated(orion, cot_quality, student, variant, "train")
    cfg = orion.config_for(student)
    sft = cfg.sft.model_copy(update={"seed": seed})
    example_ids = sorted(sft_dataset.keys("sft_example_id"))
    dataset_path = sft_parquet(orion, student, variant)
    run = plan_run(sft, base_model_path=model["path"], base_model_hash=model["model_id"], dataset_path=dataset_path,
                   example_ids=example_ids, checkpoints_dir=orion.data_path / "checkpoints", student=student,
                   variant=variant)
    # The checkpoint's tracker run ([tracking]): the SFT process logs its curves into it (TRL's report_to).
    tracked = open_checkpoint_run(orion.tracker, CheckpointIdentity.of(
        orion.active, student, variant, seed, run.checkpoint_id, run.config_hash), context.run.run_id)
    params = TrainParams.from_sft_config(
        sft, base_model_path=model["path"], dataset_path=dataset_path, output_dir=run.output_dir,
        base_model_hash=model["model_id"], report_to=tracked.report_to if tracked else [],
    )
    # The accelerator goes to SFT: managed servers sleep or stop, local models and the CUDA cache are freed.
    if released := release_accelerator():
        context.log.info(f"before SFT: student servers {released}")
    outcome = run_sft_with_pipes(context, pipes_subprocess_client, params, cfg.sft.launcher,
                                 env=tracked.env if tracked else None)
    row = checkpoint_row(
        checkpoint_id=run.checkpoint_id, student=student, variant=variant, seed=seed, base_model_id=model["model_id"],
        sft_examples=len(example_ids), sft_example_ids=example_ids, sft_data_hash=run.data_hash,
        params=json.dumps(params.to_json()), **result_columns(outcome.result),
    )
    metadata = _checkpoint_metadata(context.partition_key, outcome, tracked)
    # Wrapped in an Output: once Pipes reported events, Dagster takes the return value as one more yielded event.
    return dg.Output(Rows(row, metadata=metadata))


def _checkpoint_metadata(key: str, outcome, tracked) -> dict:
    """What a trained checkpoint's materialization shows: the SFT process's report, where the weights are, its
    tracker run, and its loss curve as a plot."""
    result = outcome.result
    metadata = {**outcome.metadata, "checkpoint_path": dg.MetadataValue.path(result["final_path"]),
                **tracking_metadata(tracked)}
    if result.get("loss_curve"):
        plot = loss_curve_png(result["loss_curve"], f"{key}: training loss per step")
        metadata["loss_curve_plot"] = dg.MetadataValue.md(png_markdown(plot, "loss curve"))
    return metadata


def _base_checkpoint(model: dict, student: str, seed: int, checkpoint_id: str, metadata: dict) -> Rows:
    row = checkpoint_row(
        checkpoint_id=checkpoint_id, student=student,
        variant=BASE_VARIANT, seed=seed,
        base_model_id=model["model_id"], sft_examples=0, sft_example_ids=[], path=model["path"], kind="base", steps=0,
        config_hash=model["config_hash"],
    )
    return Rows(row, metadata={"checkpoint_path": dg.MetadataValue.path(model["path"]), "kind": "base", **metadata})


def checkpoint_row(**values: object) -> pl.DataFrame:
    """One ``student_checkpoint`` row; columns a variant has no value for (``base``) are null."""
    return pl.DataFrame([values], schema=STUDENT_CHECKPOINT.columns)


def _common_problems(orion: OrionResource, cot_quality: Table) -> common.CommonProblems:
    """[sft] ``common_problems``: the problems every variant in the student's ``cot_quality`` kept, the variants
    this profile leaves out aside, and those that train on their own problems (``rft``: docs/baselines.md)."""
    rows = cot_quality.frame(columns=list(common.COLUMNS))
    aside = {*skipped_variants(orion.active.config), BASE_VARIANT, *OWN_PROBLEMS_VARIANTS}
    ran = [v for v in rows["variant"].drop_nulls().unique().to_list() if v not in aside]
    return common.common_problems(rows, ran)


def _cot_texts(cots: pl.DataFrame, tables: dict[str, Table]) -> dict[str, str]:
    """``{cot_quality_id: CoT text}``, each read from the table that holds it (``cot_table``: a key of ``tables``)."""
    texts: dict[str, str] = {}
    for table, handle in tables.items():
        id_column = {parent: column for column, parent in COT_QUALITY.parents.items()}[table]
        rows = cots.filter(pl.col("cot_table") == table)
        if rows.height == 0:
            continue
        by_id = handle.column_map(id_column, "cot", rows[id_column].unique().to_list())
        texts.update((qid, by_id[cid]) for qid, cid in rows.select("cot_quality_id", id_column).iter_rows())
    return texts


def sft_parquet(orion: OrionResource, student: str, variant: str):
    """Where one student's variant's SFT examples are written for the trainer (and external ones)."""
    return orion.data_path / "sft" / student / f"{variant}.parquet"


def _refuse_unless_gated(orion: OrionResource, cot_quality: Table, student: str, variant: str, action: str) -> None:
    """Refuse ``action`` for a variant this profile cannot make honestly (e.g. orion_no_reflection with a
    replay teacher: it would duplicate teacher_sft under its name), or whose latest quality-gate verdict
    on the ``cot_quality`` it read failed, with the reason."""
    why = skipped_variants(orion.active.config).get(variant)
    if why is not None:
        raise dg.Failure(f"refusing {variant} in profile {orion.active.name}: {why}")
    (checked,) = cot_quality.upstream
    passed, why = latest_gate_verdict(orion.store, checked, variant)
    if not passed:
        raise dg.Failure(f"refusing to {action} {student}/{variant}: {why}")
