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


def _token_counts(cots: list[str], tokenizer: Any) -> list[int]:
    if not cots:
        return []
    try:
        # verbose=False: no "sequence longer than the model maximum" warning for long CoTs.
        encoded = tokenizer(cots, add_special_tokens=False, verbose=False)["input_ids"]
    except TypeError:  # a tokenizer without the keyword arguments
        encoded = [tokenizer.encode(text, add_special_tokens=False) for text in cots]
    return [len(ids) for ids in encoded]


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
