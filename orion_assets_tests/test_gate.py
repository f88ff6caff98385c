"""The Great Expectations quality gate on frames built from real solutions (real GX, real MiniLM)."""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

import polars as pl
import pytest

from orion_assets import quality
from orion_assets.gate import EXPECTATION_NAMES, GateResult, run_gate
from orion_assets.problems import ContaminationIndex, all_benchmarks
from orion_assets.profiles.schema import QualityConfig

TRAIN = Path(quality.__file__).resolve().parent / "data" / "train"
# The clean rows (real GSM8K and short AIME solutions) stay under max_tokens; the long one not.
CFG = QualityConfig(min_tokens=8, max_tokens=768, min_coherence=0.2, coherence_mostly=0.9)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@pytest.fixture(scope="module")
def texts() -> dict[str, list[str]]:
    """Clean CoTs from real solutions and the text of each kind of planted bad row.

    Planted texts reuse the clean texts' steps where they can, so the one embedding pass
    (which encodes each distinct step once) stays small.
    """
    with (TRAIN / "gsm8k_train.jsonl").open(encoding="utf-8") as handle:
        gsm8k = [json.loads(line)["answer"] for _, line in zip(range(100), handle)]
    aime = [r["solution"] for r in json.loads((TRAIN / "aime_1983_2023.json").read_text(encoding="utf-8"))]
    short_aime = [s for s in aime if 300 < len(s) < 1000][:8]
    clean = gsm8k[:32] + short_aime
    word_steps = [step for text in gsm8k[:32] for step in quality.split_steps(text)]
    latex_steps = [step for text in short_aime for step in quality.split_steps(text)]
    rng = random.Random(3)
    incoherent = []
    for _ in range(10):  # six steps from different problems, word problems alternating with LaTeX
        picks = rng.sample(word_steps, 3) + rng.sample(latex_steps, 3)
        incoherent.append("\n".join(picks[i // 2 + 3 * (i % 2)] for i in range(6)))
    math500 = all_benchmarks().filter(pl.col("benchmark") == "math500")["problem"].to_list()
    return {
        "clean": clean,
        "long": ["\n\n".join(short_aime)],
        "short": ["#### 5"],
        "unverified": [gsm8k[41], gsm8k[42]],
        "truncated": [gsm8k[43][: len(gsm8k[43]) // 2]],
        "duplicate": [gsm8k[44], gsm8k[44]],
        "contaminated": [f"The problem says: {math500[0]}\n{gsm8k[45]}"],
        "incoherent": incoherent,
        "looping": ["Let me compute 3 + 4 = 7.\n" + "Wait, so the total is 7, let me check again.\n" * 25],
    }


@pytest.fixture(scope="module")
def metrics(texts: dict[str, list[str]]) -> dict[str, dict]:
    """cot_metrics of every distinct text, computed once (one embedding pass)."""
    from transformers import AutoTokenizer

    location = quality.resolve_embedding_model(CFG.embedding_model)
    tokenizer = AutoTokenizer.from_pretrained(str(location), local_files_only=True)
    embedder = quality.load_embedder(CFG.embedding_model)
    distinct = list(dict.fromkeys(t for group in texts.values() for t in group))
    frame = quality.cot_metrics(distinct, tokenizer=tokenizer, embedder=embedder)
    by_text = dict(zip(distinct, frame.iter_rows(named=True)))
    assert by_text[texts["long"][0]]["n_tokens"] > CFG.max_tokens
    assert max(by_text[t]["n_tokens"] for t in texts["clean"]) < CFG.max_tokens
    return by_text


@pytest.fixture(scope="module")
def index() -> ContaminationIndex:
    return ContaminationIndex.build(all_benchmarks(), 13)


def _row(row_id: str, text: str, metrics: dict[str, dict], index: ContaminationIndex, *,
         variant: str = "orion", verified: bool = True, truncated: bool = False) -> dict:
    m = metrics[text]
    return {
        "cot_quality_id": row_id,
        "variant": variant,
        "cot": text,
        "cot_hash": _hash(text),
        "verified": verified,
        "truncated": truncated,
        "n_tokens": m["n_tokens"],
        "coherence": m["coherence"],
        "repeated_4gram_ratio": m["repeated_4gram_ratio"],
        "contaminated": index.match(text) is not None,
    }


@pytest.fixture(scope="module")
def clean_rows(texts, metrics, index) -> list[dict]:
    variants = ["orion", "teacher_sft", "orion_no_error", "orion_no_reflection"]
    rows = [_row(f"clean-{i}", t, metrics, index, variant=variants[i % 4]) for i, t in enumerate(texts["clean"])]
    # The same CoT in two variants is not a duplicate.
    rows.append(_row("clean-other-variant", texts["clean"][0], metrics, index, variant="teacher_sft"))
    return rows


def _frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema_overrides={"coherence": pl.Float64})


def _planted(kind: str, texts, metrics, index) -> list[dict]:
    group = texts[kind]
    if kind == "unverified":
        return [_row(f"bad-{kind}-{i}", t, metrics, index, verified=False) for i, t in enumerate(group)]
    if kind == "truncated":
        return [_row(f"bad-{kind}-{i}", t, metrics, index, truncated=True) for i, t in enumerate(group)]
    return [_row(f"bad-{kind}-{i}", t, metrics, index) for i, t in enumerate(group)]


@pytest.fixture(scope="module")
def clean_result(clean_rows) -> GateResult:
    return run_gate(_frame(clean_rows), CFG)


def test_clean_frame_passes(clean_result: GateResult, clean_rows) -> None:
    assert clean_result.passed, clean_result.to_metadata()
    assert clean_result.row_count == len(clean_rows)
    assert [o.name for o in clean_result.outcomes] == list(EXPECTATION_NAMES)
    assert all(o.success for o in clean_result.outcomes)
    assert clean_result.failing_ids == []
    stats = clean_result.outcome("verified").statistics
    assert stats["element_count"] == len(clean_rows) and stats["unexpected_count"] == 0
    metadata = clean_result.to_metadata()
    json.dumps(metadata)  # JSON-able as is
    assert metadata["passed"] is True and set(metadata["expectations"]) == set(EXPECTATION_NAMES)


@pytest.mark.parametrize(
    ("kind", "expectation"),
    [
        ("long", "length_within_bounds"),
        ("short", "length_within_bounds"),
        ("unverified", "verified"),
        ("truncated", "not_truncated"),
        ("duplicate", "unique_within_variant"),
        ("contaminated", "not_contaminated"),
        ("incoherent", "coherent"),
        ("looping", "no_repetition_loops"),
    ],
)
def test_planted_rows_fail_the_right_expectation(kind, expectation, texts, metrics, index, clean_rows, clean_result) -> None:
    planted = _planted(kind, texts, metrics, index)
    planted_ids = {row["cot_quality_id"] for row in planted}
    result = run_gate(_frame(clean_rows + planted), CFG)
    assert not result.passed
    assert result.failed == [expectation], result.to_metadata()["failed_expectations"]
    outcome = result.outcome(expectation)
    expected = set(planted_ids)
    if kind == "incoherent":
        # Exactly the rows whose coherence is under the threshold: most planted rows, and the
        # clean CoTs that `mostly` tolerated on the clean frame.
        low = {r["cot_quality_id"] for r in clean_rows + planted
               if r["coherence"] is not None and r["coherence"] < CFG.min_coherence}
        assert len(low & planted_ids) >= 8
        assert low - planted_ids == set(clean_result.outcome("coherent").failing_ids)
        expected = low
    assert set(outcome.failing_ids) == expected
    assert set(result.failing_ids) == expected
    assert outcome.statistics["unexpected_count"] == len(expected)
    assert outcome.statistics["element_count"] == len(clean_rows) + len(planted)
    metadata = result.to_metadata()
    json.dumps(metadata)
    assert metadata["expectations"][expectation]["success"] is False
    assert set(metadata["failing_ids"]) == expected


def test_all_planted_rows_together(texts, metrics, index, clean_rows) -> None:
    kinds = ["long", "unverified", "truncated", "duplicate", "contaminated", "incoherent"]
    planted = [row for kind in kinds for row in _planted(kind, texts, metrics, index)]
    result = run_gate(_frame(clean_rows + planted), CFG)
    assert set(result.failed) == {
        "length_within_bounds", "verified", "not_truncated", "unique_within_variant",
        "not_contaminated", "coherent",
    }
    assert {row["cot_quality_id"] for row in planted} <= set(result.failing_ids)
    assert not any(i.startswith("clean-") for i in result.outcome("verified").failing_ids)


def test_empty_frame_fails(clean_rows) -> None:
    result = run_gate(_frame(clean_rows).head(0), CFG)
    assert not result.passed and result.row_count == 0
    assert result.failed == ["has_rows"]
    assert result.outcome("has_rows").statistics["observed_value"] == 0
    assert result.failing_ids == []
    json.dumps(result.to_metadata())


def test_missing_evidence_counts_against_the_row(clean_rows) -> None:
    frame = _frame(clean_rows).with_columns(
        pl.when(pl.col("cot_quality_id") == "clean-1").then(None).otherwise(pl.col("verified")).alias("verified"),
        pl.when(pl.col("cot_quality_id") == "clean-2").then(None).otherwise(pl.col("contaminated")).alias("contaminated"),
        pl.when(pl.col("cot_quality_id") == "clean-3").then(None).otherwise(pl.col("n_tokens")).alias("n_tokens"),
    )
    result = run_gate(frame, CFG)
    assert result.outcome("verified").failing_ids == ["clean-1"]
    assert result.outcome("not_contaminated").failing_ids == ["clean-2"]
    assert result.outcome("length_within_bounds").failing_ids == ["clean-3"]


def test_without_optional_column_and_custom_id(clean_rows) -> None:
    frame = _frame(clean_rows).drop("repeated_4gram_ratio").rename({"cot_quality_id": "row_id"})
    result = run_gate(frame, CFG, id_column="row_id")
    assert result.passed
    assert "no_repetition_loops" not in [o.name for o in result.outcomes]
    with pytest.raises(ValueError, match="cot_quality_id"):
        run_gate(frame, CFG)
    with pytest.raises(ValueError, match="contaminated"):
        run_gate(frame.drop("contaminated"), CFG, id_column="row_id")


def test_gate_on_a_thousand_rows_is_fast(clean_rows) -> None:
    base = _frame(clean_rows)
    rows = pl.concat([base] * (1000 // base.height + 1)).head(1000)
    frame = rows.with_columns(
        pl.format("row-{}", pl.int_range(pl.len())).alias("cot_quality_id"),
        pl.format("{}-{}", pl.col("cot_hash"), pl.int_range(pl.len())).alias("cot_hash"),
    )
    started = time.perf_counter()
    result = run_gate(frame, CFG)
    elapsed = time.perf_counter() - started
    assert result.passed and result.row_count == 1000
    assert elapsed < 10, elapsed
