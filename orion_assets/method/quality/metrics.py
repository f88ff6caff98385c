"""All metrics of each CoT as one polars frame: tokens, words, steps, reflection markers, repetition, coherence.

The ``cot_quality`` asset calls :func:`cot_metrics`; :mod:`orion_assets.method.quality.rules` judges the rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import polars as pl

from orion_assets.method.quality.embedding import Embedder, iter_coherence
from orion_assets.method.quality.lexical import reflection_marker_count, repeated_ngram_ratio, split_steps, words

__all__ = ["COT_METRICS_SCHEMA", "cot_metrics"]

COT_METRICS_SCHEMA: dict[str, pl.DataType] = {
    "n_tokens": pl.Int64(),
    "n_words": pl.Int64(),
    "n_steps": pl.Int64(),
    "reflection_markers": pl.Int64(),
    "reflection_density": pl.Float64(),
    "repeated_4gram_ratio": pl.Float64(),
    "coherence": pl.Float64(),
}


#: CoTs per call of the student's tokenizer when counting tokens. A call's output is Python lists of every
#: token id (and the tokenizer's own encodings): ~120 bytes per token, 1 GB for a chunk of 3,600 CoTs of
#: 1,000 words at once; 64 at a time keep it to a few MB (benchmarks/README.md, "Memory of cot_quality").
TOKEN_COUNT_BATCH = 64


def _token_counts(cots: list[str], tokenizer: Any, batch: int = TOKEN_COUNT_BATCH) -> list[int]:
    counts: list[int] = []
    for start in range(0, len(cots), batch):
        texts = cots[start : start + batch]
        try:
            # verbose=False: no "sequence longer than the model maximum" warning for long CoTs; only the ids.
            encoded = tokenizer(texts, add_special_tokens=False, verbose=False, return_attention_mask=False,
                                return_token_type_ids=False)["input_ids"]
        except TypeError:  # a tokenizer without the keyword arguments
            encoded = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
        counts += [len(ids) for ids in encoded]
    return counts


def cot_metrics(
    cots: Sequence[str],
    *,
    tokenizer: Any,
    embedder: Embedder,
    batch_size: int = 64,
    window: int = 1024,
    max_pairs: int | None = None,
) -> pl.DataFrame:
    """One row of :data:`COT_METRICS_SCHEMA` per CoT, in input order (columns in docs/quality.md).

    A text that occurs several times is split and embedded once; coherence streams through
    :func:`iter_coherence` (``batch_size``, ``window`` and ``max_pairs`` passed on), so memory stays bounded.
    """
    texts = ["" if cot is None else str(cot) for cot in cots]
    distinct = list(dict.fromkeys(texts))
    n_steps: dict[str, int] = {}

    def steps_of_each() -> Iterator[list[str]]:
        for text in distinct:
            steps = split_steps(text)
            n_steps[text] = len(steps)
            yield steps

    scores = dict(zip(distinct, iter_coherence(steps_of_each(), embedder, batch_size=batch_size, window=window,
                                                 max_pairs=max_pairs)))
    n_words = [len(words(text)) for text in texts]
    markers = [reflection_marker_count(text) for text in texts]
    return pl.DataFrame(
        {
            "n_tokens": _token_counts(texts, tokenizer),
            "n_words": n_words,
            "n_steps": [n_steps[text] for text in texts],
            "reflection_markers": markers,
            "reflection_density": [100.0 * m / w if w else 0.0 for m, w in zip(markers, n_words)],
            "repeated_4gram_ratio": [repeated_ngram_ratio(text, 4) for text in texts],
            "coherence": [scores[text] for text in texts],
        },
        schema=COT_METRICS_SCHEMA,
    )
