"""``cot_quality``'s core without Dagster (``method.quality.candidates.QualityChunks``): one student's candidate
SFT CoTs chunk by chunk, measured with the real MiniLM tokenizer and embedder, checked against the real benchmark
index, scored by a judge over real HTTP (the project's simulator), and judged by the per-row rules; the summary
is what the rows say."""

from __future__ import annotations

import json

import polars as pl
import pytest

from orion_assets.assets.quality import COT_QUALITY
from orion_assets.llm import make_endpoint
from orion_assets.method import baselines
from orion_assets.method.problems import ContaminationIndex, all_benchmarks
from orion_assets.method.quality import candidates, embedding
from orion_assets.profiles import load_profile
from orion_assets.profiles.schema import EndpointConfig, QualityConfig
from orion_assets.records import PACKAGE_DATA as PACKAGE_DATA_DIR
from orion_assets.store import Store
from orion_devtools.llm_simulator import SimConfig, Simulator

with (PACKAGE_DATA_DIR / "train" / "gsm8k_train.jsonl").open(encoding="utf-8") as _handle:
    GSM8K = [json.loads(line) for _, line in zip(range(5), _handle)]
IDS = [f"p{i}" for i in range(5)]
# a rewrite of p1's solution: orion's row of p1 (chunk 1) and, word for word, of p2 (chunk 2)
REWRITE = ("Weng earns 12 / 60 = 0.2 dollars per minute.\nShe worked 50 minutes, so she earned 0.2 x 50 = 10 "
           "dollars.\nSo the answer is 10.")


def _inputs() -> tuple[pl.DataFrame, candidates.QualityInputs, str]:
    """Teacher CoTs of five problems (p1 twice: [reflection] teacher_samples = "first" draws sample 0; p3's cut
    off at the token limit; every exposure call on p4 failed), refined rows of three modes (one a mode this
    profile skips), baseline rows (rft kept, short_cot skipped), and the benchmark problem r3 quotes."""
    teacher = pl.DataFrame({
        "teacher_cot_id": ["t0", "t1", "t1b", "t2", "t3", "t4"], "problem_id": ["p0", "p1", "p1", "p2", "p3", "p4"],
        "sample_index": [0, 0, 1, 0, 0, 0],
        "cot": [GSM8K[0]["answer"], GSM8K[1]["answer"], GSM8K[1]["answer"] + "\nDone.", GSM8K[2]["answer"],
                GSM8K[3]["answer"], GSM8K[4]["answer"]],
        "solution": [r["answer"].splitlines()[-1] for r in (GSM8K[0], GSM8K[1], GSM8K[1], GSM8K[2], GSM8K[3], GSM8K[4])],
        "finish_reason": ["stop", "stop", "stop", "stop", "length", "stop"],
    })  # fmt: skip
    attempts = pl.DataFrame({
        "attempt_id": [f"a{i}" for i in range(5)], "problem_id": IDS, "sample_index": 0,
        "text": ["Natalia sold 24 clips in May and 48 + 24 = 72 in all.\n#### 72", "1", "2", "3", "4"],
        "correct": [True, False, False, False, False], "finish_reason": ["stop"] * 4 + ["error"],
    })  # fmt: skip
    math500 = all_benchmarks().filter(pl.col("benchmark") == "math500").row(0, named=True)
    refined = pl.DataFrame({
        "mode": ["orion", "orion", "orion", "orion", "no_error", "no_reflection"],
        "problem_id": ["p0", "p1", "p2", "p3", "p0", "p1"],
        "teacher_cot_id": ["t0", "t1", "t2", "t3", "t0", "t1"],
        "refined_cot_id": ["r0", "r1", "r2", "r3", "n0", "x1"],
        "source": ["teacher_fallback", "refined", "refined", "refined", "refined", "refined"],
        "cot": [GSM8K[0]["answer"], REWRITE, REWRITE, f"The problem says: {math500['problem']}\n{GSM8K[3]['answer']}",
                REWRITE, REWRITE],
        "verified": [True, True, True, True, False, True],
        "finish_reason": "stop",
    })  # fmt: skip
    drawn = teacher.filter(pl.col("sample_index") == 0)
    baseline = pl.concat([baselines.rft_rows(attempts, IDS, "tiny", "all"), baselines.short_cot_rows(drawn, "tiny")])
    read = candidates.QualityInputs(
        refined=lambda ids: refined.filter(pl.col("problem_id").is_in(ids)),
        baseline=lambda ids: baseline.filter(pl.col("problem_id").is_in(ids)),
        attempts=lambda ids: attempts.filter(pl.col("problem_id").is_in(ids)).select("problem_id", "finish_reason"),
        problems=lambda ids: {p: GSM8K[IDS.index(p)]["question"] for p in ids})
    return teacher, read, math500["problem_id"]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """The rows of two chunks (p0-p1, p2-p4), the summary, and what the judge's progress heard, by chunk."""
    teacher, read, contaminating = _inputs()
    location = embedding.resolve_embedding_model(QualityConfig().embedding_model)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(location), local_files_only=True)
    embedder = embedding.load_embedder(QualityConfig().embedding_model)
    tiny = load_profile("tiny").config.for_student("tiny")
    heard: list[tuple[int, int, int]] = []
    with Simulator(SimConfig(persona="judge", model="judge"), port=0) as sim:
        judge_cfg = EndpointConfig(backend="openai", base_url=sim.base_url, model="judge", concurrency=4, max_tokens=200)
        cfg = tiny.model_copy(update={
            "sft": tiny.sft.model_copy(update={"variants": ["teacher_sft", "orion", "orion_no_error", "rft"]}),
            "endpoints": tiny.endpoints.model_copy(update={"judge": judge_cfg}),
        })  # fmt: skip
        judge = make_endpoint(judge_cfg, Store(tmp_path_factory.mktemp("calls") / "calls.duckdb"), role="judge")
        quality = candidates.QualityChunks(
            read, student="tiny", cfg=cfg, columns=COT_QUALITY.columns, tokenizer=tokenizer, embedder=embedder,
            index=ContaminationIndex.build(all_benchmarks(), cfg.data.decontamination_ngram), judge=judge,
            report=lambda done, total, planned: heard.append((done, total, planned)), run_id="run-1")
        chunks = quality.chunks([teacher.filter(pl.col("problem_id").is_in(IDS[:2])),
                                 teacher.filter(pl.col("problem_id").is_in(IDS[2:]))])
        first = next(chunks)
        planned_after_first = max(p for _, _, p in heard)
        rest = list(chunks)
        asked = sim.requests()
    return {"chunks": [first, *rest], "planned_after_first": planned_after_first, "heard": heard, "asked": asked,
            "summary": quality.summary(), "contaminating": contaminating}


def _rows(made: dict) -> pl.DataFrame:
    return pl.concat(made["chunks"])


def _by_id(frame: pl.DataFrame) -> dict[str, dict]:
    return {r["refined_cot_id"] or r["baseline_cot_id"] or r["teacher_cot_id"]: r for r in frame.iter_rows(named=True)}


def test_rows_per_chunk_and_variant_without_the_text(made) -> None:
    first, second = made["chunks"]
    assert all(list(chunk.schema.items()) == list(COT_QUALITY.columns.items()) for chunk in made["chunks"])  # no cot
    counts = lambda chunk: dict(sorted(chunk.group_by("variant").len().iter_rows()))  # noqa: E731
    # p1's second sample is not drawn; the skipped variants' rows (orion_no_reflection, short_cot) are left out
    assert counts(first) == {"orion": 2, "orion_no_error": 1, "rft": 1, "teacher_sft": 2}
    # p4: exposure never reached it, so no variant draws on it
    assert counts(second) == {"orion": 2, "teacher_sft": 2}
    assert "p4" not in set(second["problem_id"]) and "t1b" not in set(_rows(made)["teacher_cot_id"].drop_nulls())
    rows = _rows(made)
    assert rows["cot_quality_id"].n_unique() == rows.height
    assert set(rows.filter(pl.col("variant") == "rft")["cot_table"]) == {"baseline_cots"}


def test_drop_reasons_and_the_duplicate_of_an_earlier_chunk(made) -> None:
    rows = _by_id(_rows(made))
    assert rows["t3"]["drop_reasons"] == ["truncated"] and rows["t3"]["truncated"]
    assert rows["n0"]["drop_reasons"] == ["unverified"]
    assert rows["r3"]["drop_reasons"] == ["contaminated"]
    assert rows["r3"]["contaminated_with"] == made["contaminating"]
    # r2 is r1's text word for word: r1, in the earlier chunk, keeps it; the same text in another variant (n0) is
    # no duplicate
    assert rows["r1"]["kept"] and rows["r2"]["drop_reasons"] == ["duplicate"] and rows["r1"]["cot_hash"] == rows["r2"]["cot_hash"]
    kept = sorted(r for r, row in rows.items() if row["kept"])
    rft = [r for r, row in rows.items() if row["variant"] == "rft"]
    assert kept == sorted(["t0", "t1", "t2", "r0", "r1", *rft])
    assert all(row["kept"] == (not row["drop_reasons"]) for row in rows.values())


def test_metrics_similarity_and_judge_scores(made) -> None:
    rows = _by_id(_rows(made))
    assert rows["r0"]["teacher_similarity"] == 1.0  # a fallback copies the teacher CoT
    assert 0.0 <= rows["r1"]["teacher_similarity"] < 1.0
    assert all(row["teacher_similarity"] is None for row in rows.values() if row["cot_table"] != "refined_cots")
    assert all(row["n_tokens"] > 4 and row["n_steps"] >= 2 and row["coherence"] is not None for row in rows.values())
    # the judge scored every candidate, chunk by chunk: the second chunk's calls were planned only after the first
    # chunk was yielded; the server was asked once per distinct (problem, CoT): t0 and r0 are one prompt
    assert made["planned_after_first"] == 6 and made["heard"][-1][2] == len(rows) == 10
    assert len(made["asked"]) == len({(r["problem_id"], r["cot_hash"]) for r in rows.values()}) == 9
    assert {e["kind"] for e in made["asked"]} == {"judge"}
    assert (rows["t0"]["judge_coherence"], rows["t0"]["judge_consistency"]) == (
        rows["r0"]["judge_coherence"], rows["r0"]["judge_consistency"])
    assert all(1 <= row["judge_coherence"] <= 5 and 1 <= row["judge_consistency"] <= 5 for row in rows.values())


def test_the_summary_is_what_the_rows_say(made) -> None:
    rows, summary = _rows(made), made["summary"]
    assert summary == candidates.summary(rows)
    assert (summary["kept"], summary["dropped"], summary["contaminated"]) == (6, 4, 1)
    assert summary["dropped_by_reason"] == {"unverified": 1, "truncated": 1, "contaminated": 1, "duplicate": 1}
    assert {v: s["rows"] for v, s in summary["by_variant"].items()} == {
        "orion": 4, "orion_no_error": 1, "rft": 1, "teacher_sft": 4}
    assert summary["by_variant"]["orion"]["dropped_by_reason"] == {"contaminated": 1, "duplicate": 1}
    # teacher similarity of orion's true rewrites (r1, r2, r3), not of its fallback (r0)
    assert summary["by_variant"]["orion"]["teacher_similarity"]["n"] == 3
    assert summary["n_tokens_percentiles"]["max"] == rows["n_tokens"].max()
