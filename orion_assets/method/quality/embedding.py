"""Sentence embeddings of reasoning steps: locating and loading the MiniLM embedder, and streamed coherence.

Coherence is the mean cosine similarity of adjacent steps' embeddings, over every adjacent pair or
at most ``max_pairs`` evenly spaced ones (docs/quality.md). The embedder is MiniLM through
sentence-transformers or, the profiles' default, its int8 ONNX model (:mod:`.onnx_embedder`).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import importlib
import itertools
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from orion_assets.devices import resolve_device as _resolve_device
from orion_assets.method.quality import onnx_embedder

__all__ = [
    "BACKENDS",
    "Embedder",
    "coherence",
    "iter_coherence",
    "load_embedder",
    "resolve_embedding_model",
    "sampled_pairs",
]

#: ``[quality] embedding_backend``: how the model of ``embedding_model`` runs.
BACKENDS = ("onnx-int8", "sentence-transformers")


@runtime_checkable
class Embedder(Protocol):
    """What coherence needs from a sentence encoder (a ``SentenceTransformer`` satisfies it)."""

    def encode(self, sentences: list[str], **kwargs: Any) -> Any: ...


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?")


def resolve_embedding_model(spec: str) -> Path | str:
    """Where ``spec`` points: ``package:<module>`` is the model directory shipped in that package
    (its ``get_model_path()``, else ``<module dir>/model``), an existing path is a local model
    directory, anything else is returned as a Hugging Face model id (see docs/quality.md).
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
        from transformers.utils import logging as hf_logging  # deferred: heavy
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
def _load_embedder(location: str, device: str, backend: str = "sentence-transformers") -> Any:
    if backend == "onnx-int8":
        return onnx_embedder.OnnxEmbedder(onnx_embedder.int8_model(Path(location)))
    from sentence_transformers import SentenceTransformer  # deferred: heavy

    local = Path(location).exists()
    with _quiet_transformers():
        return SentenceTransformer(location, device=device, local_files_only=local)


def load_embedder(spec: str, device: str = "cpu", backend: str = "sentence-transformers") -> Embedder:
    """The model named by ``spec`` (see :func:`resolve_embedding_model`), on ``device`` (``cpu``,
    ``cuda``, ``cuda:N`` or ``auto``). ``backend="onnx-int8"`` runs a local model directory as an
    int8 ONNX model on the CPU (built once and cached, :mod:`.onnx_embedder`); on a GPU device it
    falls back to sentence-transformers, which is faster there. Loaded once per process, device and
    backend; a model directory is read with ``local_files_only`` so nothing reaches the Hub.
    """
    if backend not in BACKENDS:
        raise ValueError(f"embedding backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    location = resolve_embedding_model(spec)
    device = _resolve_device(device)
    if backend == "onnx-int8" and not (device == "cpu" and isinstance(location, Path)):
        backend = "sentence-transformers"  # a GPU, or a Hub id (no local directory to export)
    with _EMBEDDER_LOCK:
        return _load_embedder(str(location), device, backend)


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


def sampled_pairs(n_steps: int, max_pairs: int | None) -> list[int]:
    """The ``i`` of the adjacent pairs ``(i, i + 1)`` that coherence averages over: all of them, or,
    past ``max_pairs``, ``max_pairs`` evenly spaced ones from the first to the last (no randomness:
    the same CoT always gets the same pairs)."""
    n_pairs = n_steps - 1
    if max_pairs is None or n_pairs <= max_pairs:
        return list(range(max(n_pairs, 0)))
    if max_pairs == 1:
        return [n_pairs // 2]
    return sorted({(k * (n_pairs - 1) + (max_pairs - 1) // 2) // (max_pairs - 1) for k in range(max_pairs)})


def _mean_pair_cosine(steps: list[str], pairs: list[int], vectors: dict[str, np.ndarray]) -> float:
    left = np.stack([vectors[steps[i]] for i in pairs])
    right = np.stack([vectors[steps[i + 1]] for i in pairs])
    return float(np.mean(np.einsum("ij,ij->i", left, right)))  # cosine of step i and i+1


def iter_coherence(
    steps_iter: Iterable[list[str]],
    embedder: Embedder,
    *,
    batch_size: int = 64,
    window: int = 1024,
    max_pairs: int | None = None,
) -> Iterator[float | None]:
    """:func:`coherence` as a stream: one score per CoT of ``steps_iter``, in input order, yielded
    as soon as its steps are encoded. Distinct steps are encoded ``window`` per ``encode`` call
    (model batches of ``batch_size``); memory holds at most about one window of embeddings
    (docs/quality.md, "Streamed coherence"). With ``max_pairs``, a CoT of more adjacent pairs is
    scored on the :func:`sampled_pairs` only, and only their steps are encoded.
    """
    if batch_size < 1 or window < 1:
        raise ValueError(f"batch_size and window must be at least 1, got {batch_size} and {window}")
    if max_pairs is not None and max_pairs < 1:
        raise ValueError(f"max_pairs must be at least 1 (or None: every pair), got {max_pairs}")
    vectors: dict[str, np.ndarray] = {}  # encoded steps that an unscored CoT still needs
    pending: dict[str, None] = {}  # distinct steps waiting to be encoded, in queue order
    # unscored CoTs, in order: (steps, sampled pairs, the steps those pairs need), or None
    waiting: collections.deque[tuple[list[str], list[int], list[str]] | None] = collections.deque()

    def encode(texts: list[str]) -> None:
        for text in texts:
            del pending[text]
        vectors.update(zip(texts, _encode(embedder, texts, batch_size=batch_size)))

    def ready() -> Iterator[float | None]:
        # CoTs are queued in order, so all but the last waiting one are complete after an encode.
        while waiting and (waiting[0] is None or all(step in vectors for step in waiting[0][2])):
            cot = waiting.popleft()
            yield None if cot is None else _mean_pair_cosine(cot[0], cot[1], vectors)
        needed = {step for cot in waiting if cot is not None for step in cot[2]}
        for step in [s for s in vectors if s not in needed]:
            del vectors[step]

    for steps in steps_iter:
        if len(steps) < 2:
            waiting.append(None)
        else:
            steps = list(steps)
            pairs = sampled_pairs(len(steps), max_pairs)
            used = list(dict.fromkeys(s for i in pairs for s in (steps[i], steps[i + 1])))
            waiting.append((steps, pairs, used))
            for step in used:
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
    steps_list: Iterable[list[str]],
    embedder: Embedder,
    *,
    batch_size: int = 64,
    window: int = 1024,
    max_pairs: int | None = None,
) -> list[float | None]:
    """Per CoT, the mean cosine similarity of adjacent steps' embeddings (over at most ``max_pairs``
    evenly spaced pairs); None under 2 steps.

    A list of :func:`iter_coherence`'s scores, so memory stays bounded however many CoTs come in.
    """
    return list(iter_coherence(steps_list, embedder, batch_size=batch_size, window=window, max_pairs=max_pairs))
