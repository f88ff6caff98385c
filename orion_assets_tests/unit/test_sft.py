"""SFT (orion_assets.training): real TRL training of the tiny student on real GSM8K solutions, no mocks.

* in process: LoRA and full fine-tuning for a few steps, the per-step log, the saved model loading and generating;
* the loss mask, read off the trainer's own collated batches: prompt masked, completion tokens + the final
  ``<|im_end|>`` trained, nothing after it;
* max_length: an example longer than it is dropped (counted with the trained token ids), never cut, so every
  trained example ends with its answer and ``<|im_end|>``; no silent 1024-token cap (TRL's max_length is None);
* a SIGKILLed ``sft_main`` process resumed from its last checkpoint;
* the Dagster Pipes path: a real ``dg.materialize`` of an asset calling ``run_sft_with_pipes``.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import base64
import json
import math
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import torch

from orion_assets.training import (
    RESULT_FILE,
    TRAIN_LOG_FILE,
    TrainParams,
    TrainResult,
    build_trainer,
    config_hash,
    find_resume_checkpoint,
    launch_command,
    load_trained_model,
    read_train_log,
    tokenize_dataset,
    tokenize_example,
    train,
    write_sft_parquet,
)
from orion_assets.training.checkpoints import loss_curve
from orion_assets.training.student import EOS_TOKEN, BuiltModel, build_tiny_student
from orion_assets_tests.conftest import gsm8k_train_rows

REPO = Path(__file__).resolve().parents[2]
INSTRUCTION = "Reason step by step and put the final answer in \\boxed{}."
N_TOKENIZER_RECORDS = 300
N_EXAMPLES = 24


def _gsm8k_records(n: int, offset: int = 0) -> list[dict]:
    return gsm8k_train_rows(n, offset)


def _solution_cot(answer: str) -> str:
    """A GSM8K solution as a CoT ending in \\boxed{}: calculator annotations removed, '#### x' -> \\boxed{x}."""
    body, final = answer.split("####")
    body = re.sub(r"<<[^>]*>>", "", body).strip()
    return f"{body}\nThe final answer is \\boxed{{{final.strip()}}}."


def _example(i: int, question: str, cot: str) -> dict:
    return {
        "sft_example_id": f"gsm8k-{i}",
        "prompt": [{"role": "user", "content": f"{question}\n{INSTRUCTION}"}],
        "completion": [{"role": "assistant", "content": cot}],
    }


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory) -> BuiltModel:
    recs = _gsm8k_records(N_TOKENIZER_RECORDS)
    texts = [t for r in recs for t in (r["question"], r["answer"])]
    return build_tiny_student(texts, tmp_path_factory.mktemp("sft_students"))


@pytest.fixture(scope="session")
def sft_rows() -> list[dict]:
    return [_example(i, r["question"], _solution_cot(r["answer"])) for i, r in enumerate(_gsm8k_records(N_EXAMPLES))]


@pytest.fixture(scope="session")
def sft_parquet(tmp_path_factory, sft_rows) -> Path:
    return write_sft_parquet(sft_rows, tmp_path_factory.mktemp("sft_data") / "sft.parquet")


def _params(tiny_student: BuiltModel, data: Path, out: Path, **kw) -> TrainParams:
    base = dict(
        base_model_path=str(tiny_student.path),
        dataset_path=str(data),
        output_dir=str(out),
        max_length=512,
        max_steps=3,
        per_device_train_batch_size=2,
        save_steps=2,
        learning_rate=1e-3,
        base_model_hash=tiny_student.config_hash,
    )
    base.update(kw)
    return TrainParams(**base)


def _generate(model, tokenizer, question: str) -> torch.Tensor:
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{question}\n{INSTRUCTION}"}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    return out


def _log_history(checkpoint: Path) -> list[dict]:
    return json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]


def _check_log(log: list[dict], steps: int) -> None:
    assert [e["step"] for e in log] == list(range(1, steps + 1))
    for e in log:
        for key in ("loss", "learning_rate", "num_tokens", "epoch", "grad_norm", "elapsed_s"):
            assert e[key] is not None, (key, e)
        assert math.isfinite(e["loss"]) and e["loss"] > 0
    tokens = [e["num_tokens"] for e in log]
    assert all(b > a for a, b in zip(tokens, tokens[1:], strict=False)), tokens


# ----------------------------------------------------------------------------------------------------------------
# small pure functions


def test_launch_command_and_params_roundtrip(tmp_path):
    assert launch_command(["{python}", "-m", "orion_assets.training.main"]) == [
        sys.executable,
        "-m",
        "orion_assets.training.main",
    ]
    assert launch_command(["{python}", "-m", "x"], python="/opt/py") == ["/opt/py", "-m", "x"]
    acc = ["accelerate", "launch", "--num_processes", "2", "-m", "orion_assets.training.main"]
    assert launch_command(acc) == acc

    from orion_assets.profiles.sft import SFTSection

    p = TrainParams.from_sft_config(SFTSection(), base_model_path="b", dataset_path="d", output_dir="o")
    assert p.max_length == SFTSection().max_length and p.lora is True
    from orion_assets.profiles import load_profile

    tiny = load_profile("tiny").config.sft
    q = TrainParams.from_sft_config(tiny, base_model_path="b", dataset_path="d", output_dir="o", device="cpu")
    assert (q.max_length, q.max_steps, q.learning_rate) == (tiny.max_length, tiny.max_steps, tiny.learning_rate)
    assert q.device == "cpu"
    assert TrainParams.from_json(json.dumps(p.to_json())) == p
    with pytest.raises(ValueError, match="unknown"):
        TrainParams.from_json({**p.to_json(), "bogus": 1})
    # TrainParams holds the [sft] settings themselves: a pass-through key TRL does not know, or one the SFT code
    # sets itself, is refused here too
    with pytest.raises(ValueError, match="sft.training_args.warmup_ratio"):
        TrainParams(**{**p.to_json(), "training_args": {"warmup_ratio": 0.1}})
    with pytest.raises(ValueError, match="sft.training_args.max_length"):
        TrainParams(**{**p.to_json(), "training_args": {"max_length": 1024}})


def test_config_hash_tracks_what_changes_the_weights(tmp_path, tiny_student, sft_rows):
    data = write_sft_parquet(sft_rows, tmp_path / "a.parquet")
    p = _params(tiny_student, data, tmp_path / "out")
    h = config_hash(p)
    # bookkeeping does not change the hash
    for kw in ({"output_dir": str(tmp_path / "elsewhere")}, {"resume": False}, {"save_steps": 7}):
        assert config_hash(TrainParams(**{**p.to_json(), **kw})) == h, kw
    copy = write_sft_parquet(sft_rows, tmp_path / "copy.parquet")  # same content, other path
    assert config_hash(TrainParams(**{**p.to_json(), "dataset_path": str(copy)})) == h
    # what changes the weights does
    for kw in ({"learning_rate": 5e-4}, {"max_length": 256}, {"lora": False}, {"seed": 1}):
        assert config_hash(TrainParams(**{**p.to_json(), **kw})) != h, kw
    other = write_sft_parquet(sft_rows[:-1], tmp_path / "b.parquet")
    assert config_hash(TrainParams(**{**p.to_json(), "dataset_path": str(other)})) != h
    # every [sft.training_args] key and value (passed to trl.SFTConfig as is) is part of the hash
    passed = [{}, {"weight_decay": 0.1}, {"weight_decay": 0.2}, {"lr_scheduler_type": "cosine"}, {"optim": "sgd"}]
    hashes = [config_hash(TrainParams(**{**p.to_json(), "training_args": ta})) for ta in passed]
    assert hashes[0] == h and len(set(hashes)) == len(passed), hashes


# ----------------------------------------------------------------------------------------------------------------
# the loss mask and max_length, read off the trainer's own data


def test_labels_cover_exactly_the_completion_and_its_end_of_turn(tmp_path, tiny_student, sft_parquet, sft_rows):
    prepared = build_trainer(_params(tiny_student, sft_parquet, tmp_path / "out"))
    trainer, tok = prepared.trainer, prepared.trainer.processing_class
    assert trainer.args.max_length is None and trainer.args.completion_only_loss is True  # TRL never truncates
    assert prepared.eos_token == EOS_TOKEN
    eos_id = tok.convert_tokens_to_ids(EOS_TOKEN)

    n = 4
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(n)])
    for i in range(n):
        ids, labels, attn = batch["input_ids"][i], batch["labels"][i], batch["attention_mask"][i]
        prompt_text = tok.apply_chat_template(sft_rows[i]["prompt"], add_generation_prompt=True, tokenize=False)
        prompt_len = len(tok(prompt_text, add_special_tokens=False)["input_ids"])
        completion = tok(sft_rows[i]["completion"][0]["content"] + EOS_TOKEN, add_special_tokens=False)["input_ids"]
        length = int(attn.sum())
        assert length == prompt_len + len(completion)
        # the prompt is masked, the completion (with its <|im_end|>) is trained, padding is masked
        assert (labels[:prompt_len] == -100).all()
        assert labels[prompt_len:length].tolist() == completion == ids[prompt_len:length].tolist()
        assert (labels[length:] == -100).all()
        assert labels[length - 1].item() == eos_id  # the model learns to stop ...
        assert ids[length - 1].item() == eos_id  # ... and nothing after the end of turn (no ChatML "\n")
        assert tok.decode(labels[prompt_len:length].tolist()) == sft_rows[i]["completion"][0]["content"] + EOS_TOKEN


def _n_tokens(tok, row) -> int:
    """Tokens of an example, independently of the trainer (ChatML text, minus the "\n" after the end of turn)."""
    text = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    assert text.endswith(EOS_TOKEN + "\n")
    return len(tok(text[:-1], add_special_tokens=False)["input_ids"])


def test_too_long_examples_are_dropped_not_cut_and_there_is_no_silent_1024_cap(tmp_path, tiny_student, sft_rows):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_student.path)
    lengths = [_n_tokens(tok, r) for r in sft_rows]
    max_length = sorted(lengths)[len(lengths) // 2]  # about half the examples are longer
    too_long = [r["sft_example_id"] for r, n in zip(sft_rows, lengths, strict=True) if n > max_length]
    assert 0 < len(too_long) < len(lengths)
    data = write_sft_parquet(sft_rows, tmp_path / "data.parquet")
    prepared = build_trainer(_params(tiny_student, data, tmp_path / "out", max_length=max_length))
    assert prepared.stats.dropped_too_long == len(too_long) and list(prepared.stats.dropped_ids) == too_long
    assert prepared.stats.examples == len(sft_rows) and prepared.stats.max_example_tokens == max(lengths)
    trained = prepared.trainer.train_dataset
    assert len(trained) == len(sft_rows) - len(too_long)
    # the examples that fit are trained whole, at their full length; none is a cut version of a long one
    fits = {r["sft_example_id"]: n for r, n in zip(sft_rows, lengths, strict=True) if n <= max_length}
    assert sorted(len(r["input_ids"]) for r in trained) == sorted(fits.values())
    assert prepared.trainer.args.max_length is None

    # one long CoT (> 1024 tokens) with max_length=2048: kept whole (TRL's default would cut it at 1024)
    parts: list[str] = []
    for r in sft_rows:  # concatenate solutions until the example passes 1024 tokens
        parts.append(r["completion"][0]["content"])
        long_cot = [{"role": "assistant", "content": "\n".join(parts)}]
        long_row = {**sft_rows[0], "sft_example_id": "long", "completion": long_cot}
        n_long = _n_tokens(tok, long_row)
        if n_long > 1100:
            break
    assert 1024 < n_long < 2048, n_long
    data = write_sft_parquet([long_row, *sft_rows[:3]], tmp_path / "long.parquet")
    prepared = build_trainer(_params(tiny_student, data, tmp_path / "out_long", max_length=2048))
    assert prepared.stats.dropped_too_long == 0
    assert len(prepared.trainer.train_dataset[0]["input_ids"]) == n_long
    # ... and with max_length just under its length it is dropped, never cut to fit
    prepared = build_trainer(_params(tiny_student, data, tmp_path / "out_short", max_length=n_long - 1))
    assert prepared.stats.dropped_too_long == 1 and prepared.stats.dropped_ids == ("long",)
    assert n_long not in {len(r["input_ids"]) for r in prepared.trainer.train_dataset}
    assert max(len(r["input_ids"]) for r in prepared.trainer.train_dataset) < n_long - 1


def test_every_trained_example_ends_with_its_answer_and_end_of_turn(tmp_path, tiny_student, sft_rows):
    """With max_length below some examples' length, the labels of every example that is trained still end with
    the completion's last tokens: the boxed answer and <|im_end|> (a truncation would cut exactly those)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_student.path)
    eos_id = tok.convert_tokens_to_ids(EOS_TOKEN)
    lengths = [_n_tokens(tok, r) for r in sft_rows]
    max_length = sorted(lengths)[len(lengths) // 3]
    data = write_sft_parquet(sft_rows, tmp_path / "data.parquet")
    prepared = build_trainer(_params(tiny_student, data, tmp_path / "out", max_length=max_length))
    trainer = prepared.trainer
    by_id = {r["sft_example_id"]: r for r in sft_rows}
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    for i, example_id in enumerate(trainer.train_dataset["sft_example_id"]):
        content = by_id[example_id]["completion"][0]["content"]
        answer = content[content.rindex("\\boxed{"):]  # "\boxed{18}."
        labels = [t for t in batch["labels"][i].tolist() if t != -100]
        assert labels[-1] == eos_id, example_id
        assert tok.decode(labels).endswith(answer + EOS_TOKEN), (example_id, tok.decode(labels[-12:]))
        assert int(batch["attention_mask"][i].sum()) <= max_length
    # the rest were dropped: some examples are trained, not all
    assert 0 < len(trainer.train_dataset) == len(sft_rows) - prepared.stats.dropped_too_long < len(sft_rows)


def test_tokenization_streams_into_an_arrow_cache_with_the_same_token_ids(tmp_path, tiny_student, sft_rows):
    """The examples are tokenized batch by batch into Arrow files under output_dir (not a list of every example in
    memory), and the trained token ids are exactly those of tokenizing each row on its own, as before."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_student.path)
    eos_id = tok.convert_tokens_to_ids(EOS_TOKEN)
    expected = [(r["sft_example_id"], *tokenize_example(tok, r["prompt"], r["completion"], eos_id)) for r in sft_rows]
    max_length = sorted(len(ids) for _, ids, _ in expected)[len(expected) // 2]
    data = write_sft_parquet(sft_rows, tmp_path / "data.parquet")
    kept = [(i, ids, mask) for i, ids, mask in expected if len(ids) <= max_length]
    ds, stats = tokenize_dataset(tok, data, eos_id, max_length, cache_dir=tmp_path / "cache", fingerprint="t")
    assert ds.cache_files and all(Path(f["filename"]).is_relative_to(tmp_path / "cache") for f in ds.cache_files)
    assert [(r["sft_example_id"], r["input_ids"], r["completion_mask"]) for r in ds] == kept
    assert stats.dropped_ids == tuple(i for i, ids, _ in expected if len(ids) > max_length)
    assert stats.completion_tokens == sum(sum(mask) for _, _, mask in kept)
    assert stats.mean_example_tokens == pytest.approx(sum(len(ids) for _, ids, _ in expected) / len(expected))

    # the trainer trains from such a cache in the run's directory (TRL turns completion_mask into labels)
    out = tmp_path / "out"
    trained = build_trainer(_params(tiny_student, data, out, max_length=max_length)).trainer.train_dataset
    assert trained.cache_files
    assert all(Path(f["filename"]).is_relative_to(out / "data_cache") for f in trained.cache_files)
    assert [r["input_ids"] for r in trained] == [ids for _, ids, _ in kept]
    assert [[int(t != -100) for t in r["labels"]] for r in trained] == [mask for _, _, mask in kept]

    # building again gives the same ids; a file with rows of the wrong shape is refused, naming the row
    again = build_trainer(_params(tiny_student, data, out, max_length=max_length)).trainer.train_dataset
    assert [r["input_ids"] for r in again] == [ids for _, ids, _ in kept]
    rows = pq.read_table(data).to_pylist()
    rows[3]["completion"] = [{"role": "user", "content": "not an answer"}]
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(data)), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad.parquet: row 3: completion messages must have role 'assistant'"):
        build_trainer(_params(tiny_student, tmp_path / "bad.parquet", tmp_path / "bad_out"))


# ----------------------------------------------------------------------------------------------------------------
# training in process


def test_lora_training_logs_saves_and_generates(tmp_path, tiny_student, sft_parquet, sft_rows):
    out = tmp_path / "lora"
    streamed: list[dict] = []
    result = train(_params(tiny_student, sft_parquet, out), on_log=streamed.append)

    assert result.steps == 3 and result.resumed_from_step == 0
    assert result.final_kind == "lora_adapter"
    assert math.isfinite(result.train_loss) and math.isfinite(result.final_loss)
    assert result.examples == len(sft_rows) and result.truncated_examples == 0 and result.dropped_too_long == 0
    assert result.tokens_seen == result.train_tokens > 0 and result.train_tokens_per_second > 0
    assert 0 < result.train_seconds <= result.wall_seconds and result.peak_memory_mb > 0
    log = read_train_log(out)
    _check_log(log, 3)
    assert streamed == log
    # the curve is the Trainer's own log_history (what a checkpoint saves and a resume restores), step for step
    assert result.loss_curve == loss_curve(_log_history(out / "checkpoint-3"))
    assert [(p["step"], p["loss"], p["learning_rate"]) for p in result.loss_curve] == [
        (e["step"], e["loss"], e["learning_rate"]) for e in log]
    assert log[-1]["num_tokens"] == result.tokens_seen
    # every save_steps, and at the last step
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert find_resume_checkpoint(out).name == "checkpoint-3"
    assert TrainResult.from_json((out / RESULT_FILE).read_text()) == result

    from peft import AutoPeftModelForCausalLM, PeftModel

    final = Path(result.final_path)
    assert (final / "adapter_config.json").is_file() and (final / "tokenizer.json").is_file()
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        Path(tiny_student.path).resolve()
    )
    model = AutoPeftModelForCausalLM.from_pretrained(str(final))
    assert isinstance(model, PeftModel)
    model.eval()
    model2, tok = load_trained_model(final, merge=True)
    assert not isinstance(model2, PeftModel)
    _generate(model, tok, sft_rows[0]["prompt"][0]["content"])
    _generate(model2, tok, sft_rows[0]["prompt"][0]["content"])


def test_full_finetune_saves_plain_model(tmp_path, tiny_student, sft_parquet, sft_rows):
    from transformers import AutoModelForCausalLM

    result = train(_params(tiny_student, sft_parquet, tmp_path / "full", lora=False, max_steps=2, save_steps=10))
    assert result.final_kind == "full" and result.steps == 2 and math.isfinite(result.train_loss)
    final = Path(result.final_path)
    assert not (final / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(final).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_student.path)
    pairs = zip(model.named_parameters(), base.named_parameters(), strict=True)
    changed = [n for (n, p), (_, q) in pairs if not torch.equal(p, q)]
    assert changed, "full fine-tuning changed no weight"
    from transformers import AutoTokenizer

    _generate(model, AutoTokenizer.from_pretrained(final), sft_rows[0]["prompt"][0]["content"])


def test_profile_sft_section_reaches_trl_full_finetune_with_pass_through(
    tmp_path, tiny_student, sft_parquet, write_profile
):
    """A profile's [sft] keys and [sft.training_args] become trl.SFTConfig as written (full fine-tuning at 1e-5,
    cosine schedule with warmup), and training follows them."""
    from orion_assets.profiles import load_profile

    path = write_profile(
        """
        [sft]
        lora = false
        learning_rate = 1e-5
        max_steps = 5
        per_device_train_batch_size = 2
        save_steps = 10
        [sft.training_args]
        lr_scheduler_type = "cosine"
        warmup_steps = 1
        weight_decay = 0.01
        max_grad_norm = 0.5
        """
    )
    sft = load_profile(str(path)).config.sft
    params = TrainParams.from_sft_config(
        sft, base_model_path=tiny_student.path, dataset_path=sft_parquet, output_dir=tmp_path / "out",
        base_model_hash=tiny_student.config_hash, device="cpu",
    )
    args = build_trainer(params).trainer.args
    assert (args.learning_rate, args.max_steps, args.per_device_train_batch_size) == (1e-5, 5, 2)
    assert (str(args.lr_scheduler_type.value), args.warmup_steps, args.weight_decay, args.max_grad_norm) == (
        "cosine", 1, 0.01, 0.5,
    )
    assert args.max_length is None and args.save_steps == 10 and args.report_to == []

    result = train(params)
    assert result.final_kind == "full" and result.steps == 5
    lrs = [e["learning_rate"] for e in read_train_log(tmp_path / "out")]
    # warmup to the peak over 2 steps, then the cosine decay; never above [sft] learning_rate
    # the rate each step trained with: a 1-step warmup to [sft] learning_rate, then a cosine decay (not TRL's
    # default linear one: 0.75e-5 at step 3)
    cosine = [1e-5 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)]
    assert lrs == pytest.approx([0.0, *cosine], abs=1e-12), lrs


def test_checkpoint_rows_keep_the_trainer_curve_and_the_report_plots_it(tmp_path, tiny_student, sft_parquet):
    """Real runs' curves in ``student_checkpoint`` rows of a real store, whose table predates the column; the
    report's loss-curve plot and the metadata PNG drawn from them."""
    from orion_assets.assets.training import checkpoint_row
    from orion_assets.method.evaluation.report import build_report, loss_curve_png, png_markdown
    from orion_assets.store import Store

    store = Store(tmp_path / "orion_store.duckdb")
    old = checkpoint_row(checkpoint_id="old", student="tiny", variant="base", seed=0, kind="base", steps=0).drop("loss_curve")
    store.replace_rows("student_checkpoint", old, replace_where={"student": "tiny", "variant": "base", "seed": 0},
                       materialization={"asset_key": "student_checkpoint"})
    curves = {}
    for variant, seed in (("teacher_sft", 0), ("orion", 0), ("orion", 1)):
        out = tmp_path / f"{variant}-{seed}"
        result = train(_params(tiny_student, sft_parquet, out, seed=seed, save_steps=10, lora_dropout=0.1))
        assert result.loss_curve == loss_curve(_log_history(out / "checkpoint-3"))  # saved at the last step
        curves[(variant, seed)] = result.loss_curve
        row = checkpoint_row(checkpoint_id=f"{variant}-{seed}", student="tiny", variant=variant, seed=seed, kind="lora_adapter",
                             steps=result.steps, loss_curve=result.loss_curve)
        store.replace_rows("student_checkpoint", row, replace_where={"student": "tiny", "variant": variant, "seed": seed},
                           materialization={"asset_key": "student_checkpoint"})
    assert curves[("orion", 0)] != curves[("orion", 1)]

    stored = {(r["variant"], r["seed"]): r["loss_curve"] for r in store.read("student_checkpoint").iter_rows(named=True)}
    assert stored == {("base", 0): None, **curves}  # the row written before the column reads null
    with pytest.raises(ValueError, match=r"orion.student_checkpoint has column\(s\) \['loss_curve'\] that the new rows lack"):
        store.replace_rows("student_checkpoint", old, replace_where={"student": "tiny", "variant": "base", "seed": 0},
                           materialization={"asset_key": "student_checkpoint"})

    report = build_report(store, tmp_path / "report")
    assert report.loss_curves_png == tmp_path / "report" / "loss_curves.png"
    assert "](loss_curves.png)" in report.markdown and not any("loss_curves" in note for note in report.notes)
    width, height = _png_size(report.loss_curves_png.read_bytes())
    assert (width, height) == (770, 396) and report.loss_curves_png.stat().st_size > 10_000

    png = loss_curve_png(curves[("orion", 1)], "tiny/orion/1")
    assert _png_size(png) == (704, 374) and len(png) > 10_000
    markdown = png_markdown(png, "loss curve")
    assert markdown.startswith("![loss curve](data:image/png;base64,")
    assert base64.b64decode(markdown.split(",", 1)[1].rstrip(")")) == png


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


# ----------------------------------------------------------------------------------------------------------------
# kill and resume (the process entry point)


@pytest.mark.slow
def test_sigkill_then_resume_from_last_checkpoint(tmp_path, tiny_student, sft_parquet):
    out = tmp_path / "resume"
    params = _params(tiny_student, sft_parquet, out, max_steps=6, save_steps=2, save_total_limit=None)
    params_file = tmp_path / "params.json"
    params_file.write_text(json.dumps(params.to_json()))
    cmd = [sys.executable, "-m", "orion_assets.training.main", "--params", str(params_file)]

    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while find_resume_checkpoint(out) is None:
            assert proc.poll() is None, f"sft_main exited ({proc.returncode}) before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed_at = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file())
    assert 2 <= killed_at < 6, f"first run was not killed mid-way (checkpoint {killed_at})"
    assert not (out / RESULT_FILE).exists()
    # a checkpoint cut short by the kill must be skipped (and removed), never resumed from
    partial = out / "checkpoint-5"
    partial.mkdir(exist_ok=True)
    (partial / "trainer_state.json").write_text('{"global_st')

    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])["orion_sft_result"]
    result = TrainResult.from_json((out / RESULT_FILE).read_text())
    assert printed == result.to_json()
    assert result.resumed_from_step >= killed_at > 0
    assert result.steps == 6
    assert not partial.exists()
    log = read_train_log(out)
    _check_log(log, 6)  # steps 1..6 once each: entries logged after the checkpoint by the killed run were dropped
    assert result.tokens_seen == log[-1]["num_tokens"] > result.train_tokens > 0  # tokens before the kill counted
    # the curve is whole: the steps the killed run trained (restored from the checkpoint's log_history), then the rest
    assert [p["step"] for p in result.loss_curve] == list(range(1, 7))
    assert [p["loss"] for p in result.loss_curve] == [e["loss"] for e in log]
    assert result.loss_curve == loss_curve(_log_history(out / "checkpoint-6"))
    killed_run = loss_curve(_log_history(out / f"checkpoint-{result.resumed_from_step}"))  # written before the kill
    assert result.loss_curve[: result.resumed_from_step] == killed_run

    # a rerun of the finished run resumes at its last step: no step is trained twice, the final model is rewritten
    again = train(params)
    assert again.steps == 6 and again.resumed_from_step == 6 and again.train_tokens == 0
    assert again.tokens_seen == result.tokens_seen and read_train_log(out) == log
    assert again.loss_curve == result.loss_curve
    assert (Path(again.final_path) / "adapter_config.json").is_file()


# ----------------------------------------------------------------------------------------------------------------
# Dagster Pipes


@pytest.mark.slow
def test_pipes_materialize_reports_result_and_training_log(tmp_path, tiny_student, sft_parquet):
    from orion_assets.io.sft_pipes import run_sft_with_pipes

    params = _params(tiny_student, sft_parquet, tmp_path / "pipes", max_steps=3, save_steps=2)
    outcomes = []

    @dg.asset
    def throwaway_checkpoint(context: dg.AssetExecutionContext, pipes_subprocess_client: dg.PipesSubprocessClient):
        outcome = run_sft_with_pipes(
            context, pipes_subprocess_client, params, ["{python}", "-m", "orion_assets.training.main"]
        )
        outcomes.append(outcome)
        return dg.MaterializeResult(metadata=outcome.metadata)

    instance = dg.DagsterInstance.ephemeral()
    res = dg.materialize(
        [throwaway_checkpoint],
        instance=instance,
        resources={"pipes_subprocess_client": dg.PipesSubprocessClient(cwd=str(REPO))},
    )
    assert res.success
    (outcome,) = outcomes
    assert outcome.result["steps"] == 3 and outcome.result["resumed_from_step"] == 0
    assert Path(outcome.result["final_path"], "adapter_config.json").is_file()

    (mat,) = res.asset_materializations_for_node("throwaway_checkpoint")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["steps"] == 3 and meta["log_entries"] == 3
    assert meta["truncated_examples"] == 0 and meta["dropped_too_long"] == 0 and meta["examples"] == N_EXAMPLES
    assert meta["config_hash"] == config_hash(params)
    assert math.isfinite(meta["first_loss"]) and math.isfinite(meta["last_loss"]) and meta["tokens_seen"] > 0
    assert meta["loss_curve"]["step"] == [1, 2, 3]
    table = meta["train_log"]
    assert table.startswith("| step |") and len(table.strip().splitlines()) == 2 + 3
    assert meta["final_path"] == outcome.result["final_path"]

    # each training-log entry was streamed to the run's event log while training
    messages = [e.user_message for e in instance.all_logs(res.run_id)]
    steps = [json.loads(m.split("sft step ", 1)[1])["step"] for m in messages if "sft step " in m]
    assert steps == [1, 2, 3]
    assert (Path(params.output_dir) / TRAIN_LOG_FILE).is_file()


@pytest.mark.slow
def test_the_same_seed_trains_the_same_weights_and_another_seed_others(tmp_path, tiny_student, sft_parquet):
    """[sft] seeds: a re-run with a seed reproduces its checkpoint (so its scores), another seed changes it."""
    from safetensors.torch import load_file

    def trained(seed: int, name: str) -> tuple[list[float], dict]:
        out = tmp_path / name
        train(_params(tiny_student, sft_parquet, out, seed=seed, lora_dropout=0.1))
        return [e["loss"] for e in read_train_log(out)], load_file(out / "final" / "adapter_model.safetensors")

    losses, weights = trained(0, "a")
    again_losses, again = trained(0, "b")
    other_losses, other = trained(1, "c")
    assert losses == again_losses and all(torch.equal(weights[k], again[k]) for k in weights)
    assert losses != other_losses and any(not torch.equal(weights[k], other[k]) for k in weights)
