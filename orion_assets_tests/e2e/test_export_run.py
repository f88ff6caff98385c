"""`orion export` after `orion run`, as a user types it: every format read back against the store the run wrote,
and each checkpoint's merged weights loaded and generating as its base plus adapter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from orion_assets.export import PROVENANCE_FILE
from orion_assets.store import Store
from orion_assets.vocabulary import VARIANT_MODE

# Reads the whole tiny graph, run once per session (minutes).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def orion_export(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orion_assets.cli", "export", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def test_every_format_and_merged_checkpoints_after_orion_run(tiny_run, tmp_path) -> None:
    import torch
    from datasets import load_from_disk
    from huggingface_hub import DatasetCard
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    env = tiny_run["env"]
    store = Store(Path(tiny_run["data_dir"]) / "orion_store.duckdb")
    sft = store.read("sft_dataset").sort("sft_example_id")
    variants = sorted(set(sft["variant"]))
    assert variants  # the run built SFT data

    made = orion_export(env, "--out", str(tmp_path / "hf"), "--checkpoints", "--merged")
    assert made.returncode == 0, made.stdout + made.stderr
    # the summary and nothing else: no progress bar, no library warning
    assert made.stderr == "" and made.stdout.splitlines()[-1] == str(tmp_path / "hf")
    assert all(line.startswith(("exported ", "left out ")) for line in made.stdout.splitlines()[:-1]), made.stdout
    dataset = load_from_disk(str(tmp_path / "hf" / "tiny"))
    assert sorted(dataset) == variants
    card = DatasetCard.load(tmp_path / "hf" / "tiny" / "README.md")
    assert card.data.license == "mit" and "not listed" not in card.text  # gsm8k_train and aime_1983_2023: MIT
    for variant in variants:
        rows = sft.filter(pl.col("variant") == variant)
        prompts, completions = rows["prompt"].to_list(), rows["completion"].to_list()
        assert dataset[variant]["messages"] == [p + c for p, c in zip(prompts, completions, strict=True)]
        assert dataset[variant]["prompt"] == prompts and dataset[variant]["completion"] == completions
        if VARIANT_MODE.get(variant):  # the splits table: refined against teacher fallback, as the store has them
            counts = rows["source"].value_counts()
            refined, fallback = (int(counts.filter(pl.col("source") == s)["count"].sum()) for s in
                                 ("refined", "teacher_fallback"))
            assert f"| `{variant}` | {VARIANT_MODE[variant]} | {rows.height} | {refined} | {fallback} |" in card.text
    weights = sorted((tmp_path / "hf" / "checkpoints").rglob("*.safetensors"))
    assert weights and {oct(p.stat().st_mode & 0o777) for p in weights} == {"0o644"}
    provenance = json.loads((tmp_path / "hf" / PROVENANCE_FILE).read_text())
    with store.connect(read_only=True) as con:
        stored = {r[0] for r in con.execute("SELECT materialization_id FROM orion.materializations").fetchall()}
    assert {m["materialization_id"] for m in provenance["materializations"]} <= stored
    assert provenance["refused"] == []

    checkpoints = store.read("student_checkpoint").filter(pl.col("variant") != "base")
    assert len(provenance["checkpoints"]) == checkpoints.height > 0
    base_path = store.read("student_base_model")["path"][0]
    for exported in provenance["checkpoints"]:
        folder = tmp_path / "hf" / exported["path"]
        merged = AutoModelForCausalLM.from_pretrained(str(folder / "merged")).eval()
        reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path),
                                              str(folder / "adapter")).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(folder / "merged"))
        inputs = tokenizer.apply_chat_template(sft["prompt"][0].to_list(), add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        kwargs = dict(max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        with torch.no_grad():
            assert torch.equal(merged.generate(**inputs, **kwargs), reference.generate(**inputs, **kwargs))
        assert "## Scores" in (folder / "merged" / "README.md").read_text() and exported["scores"]

    for fmt in ("llamafactory", "jsonl"):
        made = orion_export(env, "--out", str(tmp_path / fmt), "--format", fmt)
        assert made.returncode == 0, made.stdout + made.stderr
    info = json.loads((tmp_path / "llamafactory" / "dataset_info.json").read_text())
    assert sorted(info) == [f"orion_tiny_{v}" for v in variants]
    for variant in variants:
        lines = (tmp_path / "jsonl" / "tiny" / f"{variant}.jsonl").read_text().splitlines()
        assert len(lines) == sft.filter(pl.col("variant") == variant).height
