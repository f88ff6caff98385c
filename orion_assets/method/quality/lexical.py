"""Lexical metrics of a CoT: words, reasoning steps, reflection markers, repeated n-grams, teacher similarity.

Plain functions over strings; definitions in docs/quality.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

__all__ = [
    "REFLECTION_MARKERS",
    "reflection_marker_count",
    "repeated_ngram_ratio",
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
    """Cut a CoT into stripped reasoning steps: lines, then sentences within a line.

    Display math stays one piece across lines; a period in a number, after an abbreviation or
    before a lowercase word does not end a step; pieces without a letter or digit are dropped.
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


def repeated_ngram_ratio(cot: str, n: int = 4, last: int | None = None) -> float:
    """The share of word n-grams that repeat an earlier n-gram of the same text.

    ``(total - distinct) / total``: 0.0 when no n-gram occurs twice (or there is none), close to
    1.0 for a generation stuck in a loop. ``last``: only the text's last ``last`` words count (its
    tail, where a loop that ran until the token limit is).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if last is not None and last < 1:
        raise ValueError(f"last must be at least 1, got {last}")
    tokens = words(cot or "")
    if last is not None:
        tokens = tokens[-last:]
    total = len(tokens) - n + 1
    if total <= 0:
        return 0.0
    distinct = len({tuple(tokens[i : i + n]) for i in range(total)})
    return (total - distinct) / total


# -- copying the teacher -------------------------------------------------------------------------


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def teacher_similarity(cot: str | None, teacher_cot: str | None, n: int = 4) -> float | None:
    """The share of ``cot``'s word n-grams (with repeats) that occur anywhere in ``teacher_cot``:
    1.0 for a copy, 0.0 for a rewrite sharing no n words in a row. Directional (docs/quality.md);
    None when either text is missing or ``cot`` has fewer than ``n`` words.
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
