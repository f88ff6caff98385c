"""Small shared helpers for describing text columns: token counts and percentiles."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl


@lru_cache(maxsize=4)
def _tokenizer(path: str):
    from transformers import AutoTokenizer  # deferred: heavy

    return AutoTokenizer.from_pretrained(path)


def load_tokenizer(tokenizer_path: str):
    """The student's tokenizer (one instance per path and process)."""
    return _tokenizer(str(tokenizer_path))


def batch_token_counter(tokenizer_path: str) -> Callable[[Sequence[str]], list[int]]:
    """Count tokens the way the student sees them (its own tokenizer, no special tokens), many
    texts in one tokenizer call (the fast tokenizer batches)."""
    tokenizer = _tokenizer(str(tokenizer_path))

    def count(texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    return count


def token_counter(tokenizer_path: str) -> Callable[[str], int]:
    """:func:`batch_token_counter` for one text at a time."""
    count = batch_token_counter(tokenizer_path)
    return lambda text: count([text])[0]


def percentiles(column: pl.Series, qs: tuple[float, ...] = (0.1, 0.5, 0.9, 0.99)) -> dict[str, float | None]:
    """``{"p10": ..., "p50": ..., "max": ...}`` of a numeric column (None when empty)."""
    if column.len() == 0 or column.null_count() == column.len():
        return {f"p{int(q * 100)}": None for q in qs} | {"max": None}
    out = {f"p{int(q * 100)}": float(column.quantile(q, interpolation="nearest")) for q in qs}
    return out | {"max": float(column.max())}
