"""The quality gate: per-row drop rules and the per-variant Great Expectations suite, on frames built from
real solutions (real GX; their MiniLM coherence given as numbers, checked against the model on a sample), on
large synthetic frames with precomputed metrics, and through the Dagster check, the stored per-variant
verdicts and ``sft_dataset`` (the cot_quality asset test runs the real MiniLM)."""

from __future__ import annotations

import hashlib
import json
import random
from datetime import UTC, datetime

import polars as pl
import pytest

from orion_assets.method.problems import ContaminationIndex, all_benchmarks
from orion_assets.method.quality import embedding, lexical
from orion_assets.method.quality.gate import EXPECTATION_NAMES, run_gate
from orion_assets.method.quality.results import GateResult
from orion_assets.method.quality.rules import DROP_REASONS, row_drop_reasons
from orion_assets.profiles.schema import QualityConfig
from orion_assets.records import PACKAGE_DATA as PACKAGE_DATA_DIR
from orion_assets_tests.graph import all_assets, cot_quality, quality_gate, sft_dataset

TRAIN = PACKAGE_DATA_DIR / "train"
# The clean rows (real GSM8K and short AIME solutions) stay under max_tokens; the long one not.
CFG = QualityConfig(min_tokens=8, max_tokens=768, min_coherence=0.2, coherence_mostly=0.9)
VARIANTS = ["teacher_sft", "orion", "orion_no_error", "orion_no_reflection"]


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@pytest.fixture(scope="module")
def texts() -> dict[str, list[str]]:
    """Clean CoTs from real solutions and the text of each kind of planted bad row (their coherence is
    in COHERENCE)."""
    with (TRAIN / "gsm8k_train.jsonl").open(encoding="utf-8") as handle:
        gsm8k = [json.loads(line)["answer"] for _, line in zip(range(100), handle)]
    aime = [r["solution"] for r in json.loads((TRAIN / "aime_1983_2023.json").read_text(encoding="utf-8"))]
    short_aime = [s for s in aime if 300 < len(s) < 1000][:8]
    clean = gsm8k[:32] + short_aime
    word_steps = [step for text in gsm8k[:32] for step in lexical.split_steps(text)]
    latex_steps = [step for text in short_aime for step in lexical.split_steps(text)]
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


# Coherence of each text of ``texts`` as the shipped MiniLM (CFG.embedding_model) measures it, rounded
# to 4 decimals: the threshold tests below get these numbers instead of loading the model, and
# test_frozen_coherence_is_what_the_embedder_measures checks a sample of them against MiniLM.
COHERENCE: dict[str, list[float | None]] = {
    "clean": [0.5673, 0.3632, 0.5289, 0.5515, 0.6163, 0.6058, 0.6619, 0.5793, 0.4357, 0.6863, 0.6644, 0.6102,
              0.5878, 0.42, 0.3433, 0.6191, 0.4908, 0.7128, 0.7223, 0.647, 0.4927, 0.5732, 0.4361, 0.5815,
              0.4041, 0.6833, 0.3843, 0.5945, 0.4926, 0.6035, 0.5287, 0.5966,  # GSM8K
              0.1886, 0.3639, 0.6298, 0.2847, 0.4456, 0.7531, 0.2615, 0.3851],  # short AIME solutions
    "long": [0.3271],
    "short": [None],  # one step
    "unverified": [0.6194, 0.5811],
    "truncated": [0.754],
    "duplicate": [0.4549, 0.4549],
    "contaminated": [0.4083],
    "incoherent": [0.1362, 0.1261, 0.1451, 0.1472, 0.0866, 0.1229, 0.0591, 0.0442, 0.0541, 0.0591],
    "looping": [0.9773],
}


@pytest.fixture(scope="module")
def metrics(texts: dict[str, list[str]]) -> dict[str, dict]:
    """The gate's inputs for every distinct text: tokens from MiniLM's tokenizer (no model), the
    repetition ratio, and the coherence in COHERENCE."""
    from transformers import AutoTokenizer

    location = embedding.resolve_embedding_model(CFG.embedding_model)
    tokenizer = AutoTokenizer.from_pretrained(str(location), local_files_only=True)
    by_text: dict[str, dict] = {}
    for kind, group in texts.items():
        assert len(COHERENCE[kind]) == len(group), kind
        for text, score in zip(group, COHERENCE[kind]):
            by_text[text] = {
                "n_tokens": len(tokenizer.encode(text, add_special_tokens=False)),
                "repeated_4gram_ratio": lexical.repeated_ngram_ratio(text, 4),
                "coherence": score,
            }
    assert by_text[texts["long"][0]]["n_tokens"] > CFG.max_tokens
    assert max(by_text[t]["n_tokens"] for t in texts["clean"]) < CFG.max_tokens
    return by_text


def test_frozen_coherence_is_what_the_embedder_measures(texts) -> None:
    """The real MiniLM on a sample of the texts: the lowest clean CoT, incoherent splices, the loop."""
    sample = [("clean", 32), ("clean", 37), ("incoherent", 0), ("incoherent", 7), ("looping", 0), ("short", 0)]
    embedder = embedding.load_embedder(CFG.embedding_model)
    measured = embedding.coherence([lexical.split_steps(texts[kind][i]) for kind, i in sample], embedder)
    frozen = [COHERENCE[kind][i] for kind, i in sample]
    assert measured == [None if f is None else pytest.approx(f, abs=1e-4) for f in frozen]


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
    """Every clean CoT in every variant (the same CoT in two variants is not a duplicate)."""
    return [_row(f"clean-{v}-{i}", t, metrics, index, variant=v) for v in VARIANTS for i, t in enumerate(texts["clean"])]


def _frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema_overrides={"coherence": pl.Float64})


def _planted(kind: str, texts, metrics, index) -> list[dict]:
    group = texts[kind]
    if kind == "unverified":
        return [_row(f"bad-{kind}-{i}", t, metrics, index, verified=False) for i, t in enumerate(group)]
    if kind == "truncated":
        return [_row(f"bad-{kind}-{i}", t, metrics, index, truncated=True) for i, t in enumerate(group)]
    return [_row(f"bad-{kind}-{i}", t, metrics, index) for i, t in enumerate(group)]


def _reasons(frame: pl.DataFrame) -> dict[str, list[str]]:
    return dict(frame.select("cot_quality_id", "drop_reasons").iter_rows())


@pytest.fixture(scope="module")
def clean_result(clean_rows) -> GateResult:
    return run_gate(_frame(clean_rows), CFG, variants=VARIANTS)


def test_clean_frame_passes_every_variant(clean_result: GateResult, clean_rows) -> None:
    assert clean_result.passed, clean_result.to_metadata()
    assert clean_result.variants == VARIANTS and clean_result.failed_variants == []
    assert clean_result.row_count == len(clean_rows)
    # The only clean rows dropped are those below min_coherence (the old gate's `mostly` trained on them).
    low = {r["cot_quality_id"] for r in clean_rows if r["coherence"] is not None and r["coherence"] < CFG.min_coherence}
    assert len(low) < 0.1 * len(clean_rows)
    reasons = _reasons(row_drop_reasons(_frame(clean_rows), CFG))
    assert {i for i, r in reasons.items() if r} == low
    assert all(reasons[i] == ["incoherent"] for i in low)
    for verdict in clean_result.verdicts:
        assert [o.name for o in verdict.outcomes] == list(EXPECTATION_NAMES)
        assert verdict.passed and verdict.failed == [] and verdict.failing_ids == []
        assert verdict.rows == len(clean_rows) // 4 and verdict.kept == verdict.rows - len(low) // 4
        assert verdict.outcome("drop_rate").statistics["observed_value"] == pytest.approx(verdict.drop_rate)
        assert verdict.outcome("min_rows").statistics["observed_value"] == verdict.kept
    metadata = clean_result.to_metadata()
    json.dumps(metadata)  # JSON-able as is
    assert metadata["passed"] is True and set(metadata["variants"]) == set(VARIANTS)
    assert set(metadata["variants"]["orion"]["expectations"]) == set(EXPECTATION_NAMES)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("long", "too_long"),
        ("short", "too_short"),
        ("unverified", "unverified"),
        ("truncated", "truncated"),
        ("duplicate", "duplicate"),
        ("contaminated", "contaminated"),
        ("incoherent", "incoherent"),
        ("looping", "repetition_loop"),
    ],
)
def test_planted_rows_are_dropped_with_their_reason(kind, reason, texts, metrics, index, clean_rows) -> None:
    planted = _planted(kind, texts, metrics, index)
    frame = row_drop_reasons(_frame(clean_rows + planted), CFG)
    reasons = _reasons(frame)
    clean_reasons = _reasons(row_drop_reasons(_frame(clean_rows), CFG))
    assert {i: reasons[i] for i in clean_reasons} == clean_reasons  # planting changes no clean row's verdict
    if kind == "duplicate":  # two copies of one CoT: the first by id is kept, the other dropped
        first, second = sorted(r["cot_quality_id"] for r in planted)
        assert (reasons[first], reasons[second]) == ([], ["duplicate"])
        dropped = {second}
    elif kind == "incoherent":  # word problems spliced with LaTeX: most are below min_coherence
        dropped = {r["cot_quality_id"] for r in planted if reasons[r["cot_quality_id"]]}
        assert len(dropped) >= 8 and all(reasons[i] == ["incoherent"] for i in dropped)
    else:
        assert all(reasons[r["cot_quality_id"]] == [reason] for r in planted), [reasons[r["cot_quality_id"]] for r in planted]
        dropped = {r["cot_quality_id"] for r in planted}
    assert frame.filter(~pl.col("kept"))["cot_quality_id"].to_list() == [
        i for i in frame["cot_quality_id"] if reasons[i]
    ]

    result = run_gate(frame, CFG, variants=VARIANTS)
    orion = result.verdict("orion")
    assert orion.rows == len(clean_rows) // 4 + len(planted)
    assert set(orion.outcome("drop_rate").failing_ids) == {i for i in reasons if reasons[i] and i in
                                                          set(frame.filter(pl.col("variant") == "orion")["cot_quality_id"])}
    assert dropped <= set(orion.outcome("drop_rate").failing_ids)
    assert orion.dropped_by_reason.get(reason, 0) >= len(dropped)
    assert [v.variant for v in result.verdicts if not v.passed] in ([], ["orion"])
    if kind != "incoherent":
        # one or two bad rows among 40 leave the variant well under max_drop_rate: dropped, not blocking
        assert orion.passed and result.passed, orion.message
    else:
        # ten incoherent rows are a quarter of the variant: a batch problem, not a few bad rows
        assert not orion.passed and set(orion.failed) == {"drop_rate", "coherent_mostly"}, orion.message
    json.dumps(result.to_metadata())


def test_all_planted_kinds_together_poison_the_variant(texts, metrics, index, clean_rows) -> None:
    kinds = ["long", "unverified", "truncated", "duplicate", "contaminated", "incoherent", "looping"]
    planted = [row for kind in kinds for row in _planted(kind, texts, metrics, index)]
    result = run_gate(_frame(clean_rows + planted), CFG, variants=VARIANTS)
    assert not result.passed and result.failed_variants == ["orion"]
    orion = result.verdict("orion")
    assert "drop_rate" in orion.failed
    planted_ids = {row["cot_quality_id"] for row in planted}
    assert planted_ids - set(orion.failing_ids) <= {"bad-duplicate-0"}  # the kept copy of the pair
    assert not any(i.startswith("clean-teacher_sft") for i in result.failing_ids)
    for reason in ("too_long", "unverified", "truncated", "duplicate", "contaminated", "incoherent", "repetition_loop"):
        assert orion.dropped_by_reason[reason] >= 1, reason
    assert list(orion.dropped_by_reason) == [r for r in DROP_REASONS if r in orion.dropped_by_reason]
    assert all(result.verdict(v).passed for v in VARIANTS if v != "orion")


# -- large frames with precomputed metrics (no embedding model) ------------------------------------


def _synthetic(n: int, variant: str = "orion", prefix: str = "row") -> list[dict]:
    """``n`` clean candidate rows with precomputed metrics."""
    return [
        {
            "cot_quality_id": f"{prefix}-{i:05d}", "variant": variant, "cot_hash": f"{prefix}-hash-{i}",
            "verified": True, "truncated": False, "n_tokens": 100 + i % 500, "coherence": 0.3 + (i % 50) / 100,
            "repeated_4gram_ratio": 0.05, "contaminated": False,
        }
        for i in range(n)
    ]


def test_one_bad_row_does_not_block_a_large_variant() -> None:
    rows = _synthetic(2000) + _synthetic(50, variant="teacher_sft", prefix="t")
    rows[1234]["contaminated"] = True
    result = run_gate(_frame(rows), CFG)
    assert result.passed, result.to_metadata()
    orion = result.verdict("orion")
    assert (orion.rows, orion.kept, orion.dropped_by_reason) == (2000, 1999, {"contaminated": 1})
    assert orion.outcome("drop_rate").failing_ids == ["row-01234"]  # flagged, but the expectation holds
    assert orion.outcome("kept_not_contaminated").success


def test_a_poisoned_share_of_a_variant_fails_it_and_names_why() -> None:
    rows = _synthetic(2000) + _synthetic(100, variant="teacher_sft", prefix="t")
    for i in range(0, 600, 2):  # 30% of orion: 300 contaminated, 300 unverified
        rows[i]["contaminated"] = True
        rows[i + 1]["verified"] = False
    result = run_gate(_frame(rows), CFG, variants=["teacher_sft", "orion"])
    assert not result.passed and result.failed_variants == ["orion"]
    assert result.verdict("teacher_sft").passed
    orion = result.verdict("orion")
    assert orion.failed == ["drop_rate"] and orion.kept == 1400
    assert orion.dropped_by_reason == {"unverified": 300, "contaminated": 300}
    assert orion.outcome("drop_rate").statistics["observed_value"] == pytest.approx(0.3)
    assert orion.outcome("kept_not_contaminated").success  # contaminated rows were dropped, not kept
    message = orion.message
    for part in ("variant orion failed drop_rate", "1400 of 2000 rows kept", "600 of 2000 rows dropped",
                 "30.0% > max_drop_rate 20%", "unverified 300, contaminated 300", "row-00000", "(+595 more)"):
        assert part in message, (part, message)
    # The same share under a looser max_drop_rate passes.
    assert run_gate(_frame(rows), CFG.model_copy(update={"max_drop_rate": 0.3})).passed


def test_min_rows_and_a_variant_without_rows() -> None:
    rows = _synthetic(5)
    strict = CFG.model_copy(update={"min_rows": 10})
    result = run_gate(_frame(rows), strict, variants=["orion"])
    assert result.verdict("orion").failed == ["min_rows"]
    assert "min_rows: 5 row(s) kept < min_rows 10" in result.verdict("orion").message
    result = run_gate(_frame(rows), CFG, variants=["teacher_sft", "orion"])
    empty = result.verdict("teacher_sft")
    assert not result.passed and empty.rows == 0 and set(empty.failed) == {"drop_rate", "min_rows"}
    assert "no candidate rows" in empty.message
    assert result.verdict("orion").passed
    json.dumps(result.to_metadata())


def test_coherence_mostly_bounds_the_share_of_incoherent_candidates() -> None:
    rows = _synthetic(100)
    for i in range(15):  # 15% incoherent: dropped one by one, under max_drop_rate, over 1 - coherence_mostly
        rows[i]["coherence"] = 0.05
    rows[50]["coherence"] = None  # a one-step CoT: no coherence, no verdict
    result = run_gate(_frame(rows), CFG)
    orion = result.verdict("orion")
    assert orion.dropped_by_reason == {"incoherent": 15} and orion.failed == ["coherent_mostly"]
    assert "15 of 99 CoTs below min_coherence 0.2" in orion.message
    assert set(orion.outcome("coherent_mostly").failing_ids) == {f"row-{i:05d}" for i in range(15)}
    for i in range(9, 15):
        rows[i]["coherence"] = 0.5
    result = run_gate(_frame(rows), CFG)  # 9 of 99: within coherence_mostly, and the nine rows still dropped
    assert result.passed and result.verdict("orion").dropped_by_reason == {"incoherent": 9}


def test_a_kept_contaminated_row_fails_the_variant() -> None:
    """The gate checks the stored ``kept`` column it is given, not only the rules that made it."""
    frame = row_drop_reasons(_frame(_synthetic(100)), CFG)
    frame = frame.with_columns(
        pl.when(pl.col("cot_quality_id") == "row-00007").then(True).otherwise(pl.col("contaminated")).alias("contaminated")
    )
    result = run_gate(frame, CFG)
    assert result.verdict("orion").failed == ["kept_not_contaminated"]
    assert result.failing_ids == ["row-00007"]
    # recomputed from the metrics (no kept column), the same row is dropped instead
    recomputed = run_gate(frame.drop("kept", "drop_reasons"), CFG)
    assert recomputed.passed and recomputed.verdict("orion").dropped_by_reason == {"contaminated": 1}


def test_duplicates_keep_one_copy_by_a_stable_order() -> None:
    rows = _synthetic(6)
    for row in rows:
        row["cot_hash"] = "same"
    rows[0]["verified"] = False  # the smallest id is not clean: the first clean copy is kept instead
    expected = {
        "row-00000": ["unverified", "duplicate"], "row-00001": [], "row-00002": ["duplicate"],
        "row-00003": ["duplicate"], "row-00004": ["duplicate"], "row-00005": ["duplicate"],
    }
    for seed in range(3):
        shuffled = random.Random(seed).sample(rows, len(rows))
        assert _reasons(row_drop_reasons(_frame(shuffled), CFG)) == expected
    other = [{**rows[1], "cot_quality_id": "x-1", "variant": "teacher_sft"}]
    assert _reasons(row_drop_reasons(_frame(rows + other), CFG))["x-1"] == []  # another variant: no duplicate


def test_missing_evidence_counts_against_the_row() -> None:
    rows = _synthetic(8)
    rows[1]["verified"] = None
    rows[2]["contaminated"] = None
    rows[3]["n_tokens"] = None
    rows[4]["truncated"] = None
    rows[5]["repeated_4gram_ratio"] = None
    rows[6]["coherence"] = float("nan")
    reasons = _reasons(row_drop_reasons(_frame(rows), CFG))
    assert [reasons[f"row-{i:05d}"] for i in range(8)] == [
        [], ["unverified"], ["contaminated"], ["length_unknown"], ["truncated"], ["repetition_loop"], [], [],
    ]


# Sentences of rewrites that name what only the rewrite prompt showed (the solve prompt never does).
REWRITE_CONTEXT_LEAKS = {
    "As the stronger solver showed, we add first: 2 + 3 = 5.": "stronger solver",
    "Your earlier attempt multiplied before adding; here we add first.": "Your earlier attempt",
    "Unlike your attempt, we add 2 and 3 first.": "your attempt",
    "The student’s mistake was to multiply first.": "The student's mistake",
    "The student's attempt forgot the second step.": "The student's attempt",
    "The student went wrong in step 2, so we redo it.": "The student went wrong",
    "For this student, the key is the order of operations.": "For this student",
    "Following the original solution, 2 + 3 = 5.": "the original solution",
    "The teacher's solution adds first, and so do we.": "The teacher's solution",
    "As in the given solution, the answer is \\boxed{10}.": "the given solution",
    "THE STRONGER SOLVER adds first.": "STRONGER SOLVER",
}
# Ordinary math text that mentions students, attempts and solutions.
REWRITE_CONTEXT_CLEAN = [
    "A student buys 3 pencils at $2 each. How much does the student spend?",
    "The student has 5 books and the students in her class have 40 books in all.",
    "Each student's score is 90, so the total is 270.",
    "The teacher gave every student 3 apples; the teacher's salary is irrelevant.",
    "She made 3 attempts at the high jump; her first attempt cleared 1.2 m.",
    "The solution of the equation is x = 3, and the given equation has one solution.",
    "My attempt: 2 + 3 = 5. Wait, let me check again.",  # a long CoT's own self-correction
    "Like in the solution above, there are 84 ways to pick 3 delegates.",  # AIME write-ups say this
    "The stronger team wins; the solver of the puzzle gets a prize.",
]


def test_rewrite_context_phrases_are_caught_and_ordinary_math_text_is_not() -> None:
    from orion_assets.method.quality.rules import rewrite_context_phrase

    patterns = QualityConfig().rewrite_context_patterns
    for text, phrase in REWRITE_CONTEXT_LEAKS.items():
        assert rewrite_context_phrase(text, patterns) == phrase, text
    for text in REWRITE_CONTEXT_CLEAN:
        assert rewrite_context_phrase(text, patterns) is None, text
    assert rewrite_context_phrase("the student'sattempt", patterns) is None and rewrite_context_phrase(None, patterns) is None


def test_no_shipped_problem_or_solution_refers_to_rewrite_context() -> None:
    """Every question and worked solution shipped (GSM8K train, AIME 1983-2023, the benchmarks) passes the rule."""
    from orion_assets.method.quality.rules import rewrite_context_phrase

    texts = []
    with (TRAIN / "gsm8k_train.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            texts += [record["question"], record["answer"]]
    texts += [r[k] or "" for r in json.loads((TRAIN / "aime_1983_2023.json").read_text(encoding="utf-8"))
              for k in ("problem", "solution")]
    benchmarks = all_benchmarks()
    texts += [t or "" for column in ("problem", "reference_solution") for t in benchmarks[column].to_list()]
    assert len(texts) > 20_000
    patterns = QualityConfig().rewrite_context_patterns
    assert [t[:80] for t in texts if rewrite_context_phrase(t, patterns)] == []


def test_a_cot_referring_to_rewrite_context_is_dropped_and_a_profile_sets_the_phrases() -> None:
    rows = _synthetic(len(REWRITE_CONTEXT_LEAKS) + len(REWRITE_CONTEXT_CLEAN) + 1)
    cots = [*REWRITE_CONTEXT_LEAKS, *REWRITE_CONTEXT_CLEAN, None]
    frame = _frame([{**row, "cot": cot} for row, cot in zip(rows, cots, strict=True)])
    reasons = list(_reasons(row_drop_reasons(frame, CFG)).values())
    leaks = len(REWRITE_CONTEXT_LEAKS)
    assert reasons[:leaks] == [["rewrite_context"]] * leaks
    assert reasons[leaks:-1] == [[]] * len(REWRITE_CONTEXT_CLEAN)
    assert reasons[-1] == ["rewrite_context"]  # no text to check: missing evidence never keeps a row
    assert "rewrite_context" in DROP_REASONS
    # a profile replaces the list: none at all, or its own phrases
    assert not any(_reasons(row_drop_reasons(frame, CFG.model_copy(update={"rewrite_context_patterns": []}))).values())
    own = QualityConfig(rewrite_context_patterns=["high jump"])
    assert [r for r in _reasons(row_drop_reasons(frame, own)).values() if r] == [["rewrite_context"]] * 2
    with pytest.raises(ValueError, match="rewrite_context_patterns.*not a regular expression"):
        QualityConfig(rewrite_context_patterns=["your (attempt"])


def test_without_optional_column_and_custom_id(clean_rows) -> None:
    frame = _frame(clean_rows).drop("repeated_4gram_ratio").rename({"cot_quality_id": "row_id"})
    result = run_gate(frame, CFG, id_column="row_id")
    assert result.passed
    with pytest.raises(ValueError, match="cot_quality_id"):
        run_gate(frame, CFG)
    with pytest.raises(ValueError, match="contaminated"):
        run_gate(frame.drop("contaminated"), CFG, id_column="row_id")
    looping = frame.head(1).with_columns(pl.lit(0.99).alias("repeated_4gram_ratio"))
    assert _reasons(row_drop_reasons(looping.rename({"row_id": "cot_quality_id"}), CFG)) == {
        looping["row_id"][0]: ["repetition_loop"]}


# -- the Dagster check, stored per-variant verdicts and sft_dataset ---------------------------------


def _cot_quality_table(poisoned: str, variants: list[str]) -> pl.DataFrame:
    """cot_quality rows of ``variants``; ``poisoned`` has 30% unverified rows, the others one bad row."""
    rows = []
    for variant in variants:
        batch = _synthetic(20, variant=variant, prefix=variant)
        if variant == poisoned:
            for row in batch[:6]:
                row["verified"] = False
        else:
            batch[0]["contaminated"] = True
        rows += batch
    frame = row_drop_reasons(_frame(rows), CFG)
    return frame.with_columns(
        pl.format("p{}", pl.col("cot_quality_id").str.slice(-2)).alias("problem_id"),
        pl.lit("teacher_cots").alias("cot_table"),
        pl.format("t-{}", pl.col("cot_quality_id")).alias("teacher_cot_id"),
        pl.lit(None, dtype=pl.Utf8).alias("refined_cot_id"),
        pl.lit(None, dtype=pl.Utf8).alias("baseline_cot_id"),
        pl.lit("teacher").alias("source"),
        pl.lit("run-0").alias("dagster_run_id"),
    )


def _teacher_cots_of(table: pl.DataFrame) -> pl.DataFrame:
    """The teacher_cots rows that hold the texts of ``table``'s CoTs (cot_quality keeps only ids)."""
    return table.select(
        "teacher_cot_id", "problem_id",
        pl.format("A rewrite {} ... so the answer is \\boxed{{7}}.", pl.col("cot_quality_id")).alias("cot"),
    )


def test_check_stores_per_variant_verdicts_and_sft_dataset_follows_them(tmp_path, write_profile) -> None:
    import dagster as dg

    from orion_assets.io.io_manager import resources_for
    from orion_assets.io.resource import OrionResource
    from orion_assets.method.quality.verdicts import GATE_TABLE, latest_gate_verdict
    from orion_assets.store import Store

    profile = write_profile("[quality]\nmin_tokens = 8\nmax_tokens = 768\n")
    data_dir = tmp_path / "data"
    orion = OrionResource(profile=str(profile), data_dir=str(data_dir))
    store = Store(data_dir / "orion_store.duckdb")

    def verdict(variant=None):  # as sft_dataset asks: for the cot_quality materialization it reads
        return latest_gate_verdict(store, store.latest_materializations("cot_quality", "tiny")[0], variant)

    assert verdict("orion") == (False, "cot_quality has not been materialized")
    problems = pl.DataFrame({"problem_id": [f"p{i:02d}" for i in range(20)],
                             "problem": [f"What is {i} + 7 - {i}?" for i in range(20)]})
    store.replace_rows("train_problems", problems, replace_where=None, materialization={"asset_key": "train_problems"})
    # orion_no_reflection has no candidate rows (a mode the profile did not run): no verdict, no failure
    gated = ["teacher_sft", "orion", "orion_no_error"]
    table = _cot_quality_table(poisoned="orion", variants=gated)
    store.replace_rows("teacher_cots", _teacher_cots_of(table), replace_where=None,
                       materialization={"asset_key": "teacher_cots"})
    table = table.with_columns(pl.lit("tiny").alias("student"))
    store.replace_rows("cot_quality", table, replace_where={"student": "tiny"},
                       materialization={"asset_key": "cot_quality", "partition_key": "tiny"})
    # a verdict table written before verdicts were per variant (no variant column), for an older materialization
    store.append(GATE_TABLE, pl.DataFrame([{
        "checked_materialization_id": "older", "dagster_run_id": "run-0", "passed": True, "row_count": 1,
        "failed_expectations": "[]", "failing_ids": "[]", "checked_at": datetime(2025, 1, 1, tzinfo=UTC)}]))
    assert verdict("teacher_sft")[0] is False  # the gate has not run on this materialization

    job = dg.define_asset_job("gate_only", selection=dg.AssetSelection.checks_for_assets("cot_quality"),
                              partitions_def=quality_gate.partitions_def)
    defs = dg.Definitions(assets=all_assets, asset_checks=[quality_gate], jobs=[job],
                          resources=resources_for(orion))
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("gate_only").execute_in_process(instance=instance, raise_on_error=False,
                                                                       tags={"dagster/partition": "tiny"})
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed  # one failed variant fails the check (which blocks nothing: sft_dataset refuses)
    metadata = evaluation.metadata
    assert metadata["failed_variants"].value == ["orion"]
    variants = metadata["variants"].value
    assert variants["orion"]["failed_expectations"] == ["drop_rate"]
    assert variants["orion"]["dropped_by_reason"] == {"unverified": 6}
    assert variants["teacher_sft"]["passed"] and variants["teacher_sft"]["dropped_by_reason"] == {"contaminated": 1}

    stored = store.read(GATE_TABLE).filter(pl.col("checked_materialization_id") != "older")
    assert sorted(stored["variant"]) == sorted(gated)
    assert dict(stored.select("variant", "passed").iter_rows()) == {v: v != "orion" for v in gated}
    assert stored["checked_at"].n_unique() == 1

    passed, why = verdict("orion")
    assert not passed
    for part in ("quality gate failed for variant orion", "drop_rate", "6 of 20 rows dropped", "unverified 6",
                 "orion-00000"):
        assert part in why, (part, why)
    assert verdict("teacher_sft") == (True, "passed")
    assert verdict()[0] is False  # every variant: no
    passed, why = verdict("orion_no_reflection")
    assert not passed and "no verdict for variant orion_no_reflection" in why

    # A passing variant's SFT data is built from its kept rows only; the failing one is refused.
    built = dg.materialize(all_assets, selection=[sft_dataset.key], partition_key="tiny/teacher_sft",
                           resources=resources_for(orion))
    assert built.success
    sft = store.read("sft_dataset")
    kept = table.filter((pl.col("variant") == "teacher_sft") & pl.col("kept"))
    assert sorted(sft["cot_quality_id"]) == sorted(kept["cot_quality_id"]) and sft.height == 19
    # the completion is the CoT's text, read from the table that holds it (cot_quality keeps ids only)
    for quality_id, completion in sft.select("cot_quality_id", "completion").iter_rows():
        assert completion == [{"role": "assistant", "content": f"A rewrite {quality_id} ... so the answer is \\boxed{{7}}."}]
    (mat,) = built.asset_materializations_for_node("sft_dataset")
    assert mat.metadata["dropped_by_quality"].value == 1
    assert mat.metadata["dropped_by_reason"].value == {"contaminated": 1}
    refused = dg.materialize(all_assets, selection=[sft_dataset.key], partition_key="tiny/orion", resources=resources_for(orion),
                             raise_on_error=False)
    assert not refused.success
    (failure,) = [e for e in refused.all_events if e.event_type_value == "STEP_FAILURE"]
    text = str(failure.event_specific_data.error)
    assert "refusing to build SFT data for tiny/orion" in text and "quality gate failed for variant orion" in text
    assert store.read("sft_dataset").filter(pl.col("variant") == "orion").height == 0


def test_gate_on_ten_thousand_rows_of_four_variants() -> None:
    rows = []
    for variant in VARIANTS:
        rows += _synthetic(2500, variant=variant, prefix=variant)
    result = run_gate(_frame(rows), CFG, variants=VARIANTS)
    assert result.passed and result.row_count == 10_000


def test_cot_quality_stores_drop_reasons_kept_and_teacher_similarity_and_the_report_shows_them(tmp_path) -> None:
    """The asset on a small store (MiniLM's tokenizer stands in for the student's): per-row verdicts and
    similarity to the teacher land in the table and its metadata, and the report's quality section reads them."""
    import dagster as dg

    from orion_assets.assets.baselines import BASELINE_COTS
    from orion_assets.io.io_manager import resources_for
    from orion_assets.io.resource import OrionResource
    from orion_assets.method.evaluation.report import build_report, quality_frame
    from orion_assets.store import Store

    with (TRAIN / "gsm8k_train.jsonl").open(encoding="utf-8") as handle:
        records = [json.loads(line) for _, line in zip(range(6), handle)]
    data_dir = tmp_path / "data"
    store = Store(data_dir / "orion_store.duckdb")
    teacher = pl.DataFrame({"problem_id": [f"p{i}" for i in range(6)], "teacher_cot_id": [f"t{i}" for i in range(6)],
                            "cot": [r["answer"] for r in records], "finish_reason": ["stop"] * 6,
                            "sample_index": [0] * 6})
    refined = []
    for i, record in enumerate(records):
        first_line = record["answer"].splitlines()[0]
        cot = {0: record["answer"],  # a teacher fallback: the teacher's CoT itself
               1: record["answer"],  # a "rewrite" that copies the teacher
               }.get(i, f"I restate the problem before I compute anything.\n{first_line}\nSo the result follows.")
        refined.append({"mode": "orion", "problem_id": f"p{i}", "teacher_cot_id": f"t{i}", "refined_cot_id": f"r{i}",
                        "student": "tiny", "source": "teacher_fallback" if i == 0 else "refined", "cot": cot, "verified": i != 3,
                        "finish_reason": "stop"})
    tables = {
        "teacher_cots": teacher,
        "refined_cots": pl.DataFrame(refined),
        "train_problems": pl.DataFrame({"problem_id": [f"p{i}" for i in range(6)],
                                        "problem": [r["question"] for r in records]}),
        "student_base_model": pl.DataFrame({"path": [str(embedding.resolve_embedding_model(CFG.embedding_model))],
                                            "model_id": ["minilm"], "student": ["tiny"]}),
        # exposure reached every problem; the tiny profile makes no baseline (a replay teacher, a random student)
        "student_attempts": pl.DataFrame({"attempt_id": [f"a{i}" for i in range(6)], "student": "tiny",
                                          "problem_id": [f"p{i}" for i in range(6)], "finish_reason": "stop"}),
        "baseline_cots": BASELINE_COTS.empty().with_columns(pl.lit("tiny").alias("student")),
    }
    for name, frame in tables.items():
        partition = "tiny" if "student" in frame.columns else None
        store.replace_rows(name, frame, replace_where={"student": "tiny"} if partition else None,
                           materialization={"asset_key": name, "partition_key": partition})
    result = dg.materialize(all_assets, selection=[cot_quality.key], partition_key="tiny",
                            resources=resources_for(OrionResource(profile="tiny", data_dir=str(data_dir))))
    assert result.success
    table = store.read("cot_quality")
    assert table.height == 12 and {"drop_reasons", "kept", "teacher_similarity"} <= set(table.columns)
    assert table.filter(pl.col("variant") == "teacher_sft")["teacher_similarity"].null_count() == 6
    orion = {r["refined_cot_id"]: r for r in table.filter(pl.col("variant") == "orion").iter_rows(named=True)}
    assert orion["r0"]["teacher_similarity"] == orion["r1"]["teacher_similarity"] == 1.0
    assert all(0.0 < orion[f"r{i}"]["teacher_similarity"] < 1.0 for i in range(2, 6))  # one teacher line kept
    assert "unverified" in orion["r3"]["drop_reasons"] and not orion["r3"]["kept"]
    assert table["kept"].to_list() == [not reasons for reasons in table["drop_reasons"].to_list()]
    (materialization,) = result.asset_materializations_for_node("cot_quality")
    by_variant = materialization.metadata["by_variant"].value
    similarity = by_variant["orion"]["teacher_similarity"]
    assert similarity["n"] == 5 and similarity["max"] == 1.0 and similarity["p50"] < 1.0  # fallback r0 left out
    assert by_variant["orion"]["dropped_by_reason"]["unverified"] == 1
    assert by_variant["teacher_sft"]["teacher_similarity"]["p50"] is None

    summary = {r["variant"]: r for r in quality_frame(table).iter_rows(named=True)}
    assert list(summary) == ["teacher_sft", "orion"]
    orion_rows = table.filter(pl.col("variant") == "orion")
    assert summary["orion"]["rows"] == 6 and summary["orion"]["kept"] == orion_rows["kept"].sum()
    expected_median = orion_rows.filter(pl.col("source") == "refined")["teacher_similarity"].median()
    assert summary["orion"]["teacher_similarity_p50"] == pytest.approx(expected_median)
    assert summary["teacher_sft"]["teacher_similarity_p50"] is None
    only_quality = Store(tmp_path / "report_db" / "orion_store.duckdb")  # the section needs no other table
    only_quality.replace_rows("cot_quality", table, replace_where=None, materialization={"asset_key": "cot_quality"})
    report = build_report(only_quality, tmp_path / "report")
    section = report.markdown.split("## SFT data quality per variant", 1)[1].split("\n## ", 1)[0]
    dropped = summary["orion"]["dropped"]
    assert f"| `orion` | 6 | {6 - dropped} | {dropped} | " in section and "unverified 1" in section
    assert f"{expected_median:.2f} |" in section
    assert "| `teacher_sft` | 6 |" in section
