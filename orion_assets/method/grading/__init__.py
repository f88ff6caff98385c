"""Answer extraction and grading for math-reasoning outputs.

Public API::

    Verdict(correct, extracted, method, reason)
    extract_answer(output) -> (answer, method)
    normalize_gold(gold, benchmark=None) -> str
    grade(output, gold, benchmark=None, timeout_s=5.0, *,
          gsm_hard_rule="precision", truncated=False) -> Verdict
    grade_batch(pairs, benchmark=None, timeout_s=5.0, workers=None, *,
                gsm_hard_rule="precision", truncated=False) -> list[Verdict]

Grading runs in two stages:

1. A cheap, in-process stage (regular expressions and exact ``Fraction``
   arithmetic only, never sympy): both sides are normalised (``$``, units,
   ``\\left``/``\\right``, degrees, percents, thousands separators, ``\\dfrac``,
   leading ``x =`` ...). Equal strings are correct; two plain numbers are
   compared numerically: exact integers for AIME-like benchmarks, the
   ``gsm_hard_rule`` for GSM-Hard (below), relative tolerance 1e-9 otherwise.
2. Everything still undecided goes to ``math_verify`` (sympy), which can hang
   on adversarial input (``9^{9^{9^{9^9}}}`` ...). It therefore never runs in
   the caller's process: a small, module-level pool of worker processes
   (``forkserver`` context, one ``Pipe`` each) does the work and the caller
   waits with ``conn.poll(timeout)``. On timeout the worker is killed and
   replaced, so the per-item limit is hard, does not rely on ``SIGALRM`` and
   works from any thread (Dagster runs op code outside the main thread).

Workers are started from a fork server that has imported sympy/math_verify
once, so starting or replacing one is cheap. Like any ``spawn``/``forkserver``
user, a *script* that grades at import time must guard its entry point with
``if __name__ == "__main__":`` (workers re-import the main module).
``shutdown_pool()`` stops the workers (also done at exit).

Truncated output is never correct:

* a text that ends inside a box (``\\boxed{\\frac{\\frac{1}{``, a closed box inside
  an unclosed one, or the text ending at ``\\boxed``) was cut inside its final
  answer: ``extract_answer`` gives no answer, neither an earlier box nor a
  number from inside it. A later ``\\boxed`` that opens no box (``\\boxed{}``,
  ``$\\boxed$`` in prose) still leaves the answer to an earlier closed box;
* ``truncated=True`` (the server said ``finish_reason: "length"``): the verdict
  is ``Verdict(False, extracted, method, "truncated")``, where ``extracted`` is
  a closed final answer (box, ``####``, "the answer is") if there is one, for
  inspection; the last-number fallback never applies. math_verify never runs.

Thinking blocks: if the output has a ``</think>``, the answer is taken only from
the text after the last one (``<think> ... \\boxed{7} ... </think> The answer is
9.`` gives 9, not the box); nothing there means the model never stated a final
answer: no answer. A ``<think>`` after the last ``</think>`` (or with no
``</think>`` at all) means the output was cut while thinking: no answer. Thinking and
answer joined without tags (DeepSeek's ``reasoning_content`` + ``"\\n\\n"`` +
``content``) cannot be told apart: the usual order applies to the whole text, so
the last box wins, and a boxed guess while thinking beats a final answer given
only in words.

GSM-Hard numbers (``gsm_hard_rule``; only when the benchmark is GSM-Hard). Its
golds are Python floats printed with ``repr`` (``-9867630.0``,
``12.333333333333334``, ``3244047.0999999996``), some rounded to 10 decimals
(``5489.5466666667``); digits past the 15th significant one are binary noise, so
the gold is taken as known to ``u`` = one unit in its 15th significant digit.

* ``"precision"`` (default), all in exact decimal arithmetic on the strings shown:

  - an integer gold (``-9867630``, ``27.0``, ``55938720.00000001``: within ``u``
    of an integer) must be matched exactly: ``-9867630.0`` yes, ``-9867000`` no;
  - a non-integer gold against a decimal answer with ``d >= 1`` decimals: the
    answer must be the gold rounded to ``d`` decimals, a tie rounding either way
    (``|answer - gold| <= 0.5 * 10**-d + u``). Gold ``1234.5678``: ``1234.57``,
    ``1234.6``, ``1234.5678``, ``1234.56780`` yes; ``1235.57`` no; ``1234.56``
    (truncated, not rounded) no; ``1234.56781`` no. Rounding only: truncation
    is not accepted;
  - a non-integer gold against an answer with no decimals (``1235``, ``1.2e3``)
    or one that rounds to zero (``0.00``): no;
  - a non-integer gold against an exact value (``\\frac{37}{3}``, ``37/3``): within
    half a unit of the gold's last shown decimal (``|answer - gold| <=
    0.5 * 10**-dg + u``, ``dg`` the gold's decimals): ``37/3`` matches
    ``12.333333333333334`` and ``12.33``; note it also matches a gold ``12.3``,
    whose one decimal is all the precision it claims;
  - a percent sign on either side shifts that side by two decimals, as elsewhere;
  - only plain numbers (decimals, ``\\frac{a}{b}``, ``a/b``) are compared so; any
    other form (``-9.867\\times10^6``, ``12\\frac{1}{3}``) goes to math_verify and
    its own comparison, under either rule.

* ``"math_equal"``: Qwen's ``math_equal`` rule, relative tolerance 1e-4, as most
  published GSM-Hard numbers used (``-9867000`` matches ``-9867630``), so that
  our numbers can be set beside those.

Reasons: ``match:string``, ``match:numeric``, ``match:math_verify``,
``mismatch:numeric``, ``mismatch:math_verify``, ``no_answer``, ``truncated``, ``timeout``,
``error:<ExcType>`` (``error:WorkerCrashed`` when a worker dies mid-item).
"""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing as mp
import os
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "Verdict",
    "extract_answer",
    "normalize_gold",
    "grade",
    "grade_batch",
    "shutdown_pool",
    "GSM_HARD_RULES",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
# Seconds a freshly started worker may take to import sympy/math_verify.
_WORKER_START_TIMEOUT_S = 120.0
# Recycle a worker after this many items (sympy's caches only grow).
_MAX_TASKS_PER_WORKER = 20_000
# grade_batch sends undecided items to a worker in chunks of at most this many.
_BATCH_CHUNK = 16


@dataclass(frozen=True)
class Verdict:
    correct: bool
    extracted: str | None
    method: str | None
    reason: str


# --------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(boxed|fbox)(?![A-Za-z])")
_HASH_RE = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS_RE = re.compile(
    r"(?i)\b(?:final\s+answer|answer)[*\s]*(?:is\b(?!['\u2019])|:|=)[*:\s]*"
)
_NUMBER_RE = re.compile(
    r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?![\d.]))?|(?<![\w.])-?\.\d+"
)


def _match_brace(s: str, i: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``s[i]``; -1 if unbalanced.

    Escaped braces (``\\{``, ``\\}``) do not count.
    """
    depth = 0
    n = len(s)
    j = i
    while j < n:
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    return -1


def _boxed(text: str) -> tuple[str | None, str | None, bool]:
    """``(content, method, cut)`` of the last usable box.

    ``cut``: the text ends inside a box (a ``\\boxed{`` never closed, however
    deep, or the text ends right after ``\\boxed``): the output was cut inside
    its final answer, so there is no answer, neither an earlier box nor a
    closed box inside the cut one.
    """
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None, None, False
    if not text[matches[-1].end():].strip():
        return None, None, True
    n = len(text)
    found: tuple[str, str] | None = None
    # From the last box back: the answer is the last box that yields something
    # (a later ``\\boxed{}`` or ``$\\boxed$`` in prose leaves it to an earlier
    # one; only the last 8 are looked at). Every box is checked for closure, as
    # an unclosed earlier box would hold all later ones; a closed box costs a
    # scan of its own content only, an unclosed one ends the search.
    for idx in range(len(matches) - 1, -1, -1):
        m = matches[idx]
        j = m.end()
        while j < n and text[j] in " \t":
            j += 1
        if j < n and text[j] == "{":
            k = _match_brace(text, j)
            if k < 0:
                return None, None, True
            content = text[j + 1 : k].strip()
        else:
            # ``\boxed 5`` / ``\boxed5``: one token, up to whitespace or ``$``.
            tok = re.match(r"[^\s$]+", text[j:])
            content = tok.group(0) if tok else ""
            content = content.rstrip(".,;")
        if found is None and content and idx >= len(matches) - 8:
            found = (content, m.group(1))
    if found is None:
        return None, None, False
    return found[0], found[1], False


def _extract_boxed(text: str) -> tuple[str | None, str | None]:
    content, method, _cut = _boxed(text)
    return content, method


def _strip_answer_text(ans: str) -> str:
    ans = ans.strip()
    for _ in range(3):
        ans = ans.strip().strip("*").strip()
        ans = re.sub(r"[.;,:]+$", "", ans).strip()  # not "!": 5! is a factorial
        if len(ans) >= 2 and ans[0] == "$" and ans[-1] == "$":
            ans = ans.strip("$").strip()
        elif ans.startswith("\\(") and ans.endswith("\\)"):
            ans = ans[2:-2].strip()
        elif ans.startswith("\\[") and ans.endswith("\\]"):
            ans = ans[2:-2].strip()
    return ans


def _answer_is_tail(rest: str) -> str:
    """The answer right after "the answer is": a math span or one sentence."""
    rest = rest.lstrip()
    for open_, close in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(open_):
            end = rest.find(close, len(open_))
            if end > 0:
                return rest[len(open_) : end]
            break
    line = rest.split("\n", 1)[0]
    # end of the sentence, or a clause such as ", since ..." / "; so ..."
    m = re.search(r"\.(?:\s|$)|[,;]\s+(?=[A-Za-z]{3,}\b)", line)
    if m:
        line = line[: m.start()]
    return line


def extract_answer(output: str) -> tuple[str | None, str | None]:
    """Pull the final answer out of a model output / worked solution.

    Order: last ``\\boxed{...}``/``\\fbox{...}`` (nested braces matched,
    ``\\boxed 5`` accepted) -> last ``#### x`` -> last ``<answer>x</answer>``
    or "the answer is x" / "final answer: x" (both reported as method
    ``"answer_is"``) -> last number in the text (``"last_number"``). Returns ``(None, None)``
    when nothing is found, and when the text ends inside a box (cut inside its
    final answer: no earlier box, no number from inside it).

    Thinking: with a ``</think>`` the answer is looked for only after the last
    one (a boxed guess while thinking never beats the final answer; nothing
    after it: no answer); a ``<think>`` never closed means the output was cut
    while thinking: no answer.
    """
    return _extract(output)


_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"


def _final_part(text: str) -> str | None:
    """Where the final answer must be: the text after the last ``</think>``;
    ``None`` when a ``<think>`` is still open at the end (cut while thinking)."""
    close = text.rfind(_THINK_CLOSE)
    if text.rfind(_THINK_OPEN) > close:
        return None
    return text[close + len(_THINK_CLOSE):] if close >= 0 else text


def _extract(output: str, last_number: bool = True) -> tuple[str | None, str | None]:
    if not output:
        return None, None
    text = _final_part(str(output))
    if not text:
        return None, None
    if "\\boxed" in text or "\\fbox" in text:
        ans, method, cut = _boxed(text)
        if cut:
            return None, None
        if ans is not None:
            return ans, method
    if "####" in text:
        for m in reversed(list(_HASH_RE.finditer(text))):
            ans = _strip_answer_text(m.group(1))
            if ans:
                return ans, "hash"
    end = text.rfind("</answer>")
    if end > 0:  # r1-zero style "... </think> <answer> x </answer>"
        start = text.rfind("<answer>", 0, end)
        if start >= 0:
            ans = _strip_answer_text(text[start + len("<answer>") : end])
            if ans:
                return ans, "answer_is"
    for m in reversed(list(_ANSWER_IS_RE.finditer(text))):
        ans = _strip_answer_text(_answer_is_tail(text[m.end() : m.end() + 400]))
        if ans:
            return ans, "answer_is"
    if not last_number:
        return None, None
    last = None
    for last in _NUMBER_RE.finditer(text):
        pass
    if last is not None:
        return last.group(0), "last_number"
    return None, None


# --------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------

_AIME_PREFIX = "aime"
_TEXT_MACROS = ("text", "textbf", "textit", "textrm", "textnormal", "mathrm", "mathbf",
                "mathit", "mbox", "hbox", "operatorname", "mathsf", "bf", "rm")
_TEXT_MACRO_RE = re.compile(r"\\(" + "|".join(_TEXT_MACROS) + r")(?![A-Za-z])\s*")
_UNIT_WORD_RE = re.compile(r"^[A-Za-z][A-Za-z .\-/]*(?:\^\{?\d\}?)?$")
_NUM_RE = r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,3})?"
_PLAIN_NUM_RE = re.compile(r"^[+-]?" + _NUM_RE + r"$")
_FRAC_RE = re.compile(r"^([+-]?)\\frac\{([+-]?" + _NUM_RE + r")\}\{([+-]?" + _NUM_RE + r")\}$")
_SLASH_RE = re.compile(r"^([+-]?" + _NUM_RE + r")/([+-]?" + _NUM_RE + r")$")
_THOUSANDS_RE = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_ASSIGN_RE = re.compile(r"^\s*(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?[\w]+\}?)?\s*(?:=|\\approx)\s*(.+)$", re.S)
_NUM_THEN_WORDS_RE = re.compile(
    r"^([+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)\s+([A-Za-z]{2,}(?:[ \-][A-Za-z]{2,})*)(?:\^\{?\d\}?)?$"
)
_SPACING_RE = re.compile(r"\\[,;:! ]|\\q?quad(?![A-Za-z])|~")


def _is_aime(benchmark: str | None) -> bool:
    return bool(benchmark) and str(benchmark).lower().startswith(_AIME_PREFIX)


def _is_gsm_hard(benchmark: str | None) -> bool:
    return bool(benchmark) and str(benchmark).lower().replace("-", "_") == "gsm_hard"


def _format_float(x: float) -> str:
    if math.isfinite(x) and x == int(x) and abs(x) < 1e18:
        return str(int(x))
    r = repr(float(x))
    return r


def normalize_gold(gold: str | int | float, benchmark: str | None = None) -> str:
    """Canonical string for a gold answer.

    ``27.0 -> "27"``, ``2.5 -> "2.5"``, ``"025" -> "25"`` for AIME-like
    benchmarks, surrounding ``$`` / a whole-string ``\\boxed{}`` removed,
    ``"... #### 72"`` -> ``"72"``.
    """
    if isinstance(gold, bool):
        gold = int(gold)
    if isinstance(gold, int):
        return str(gold)
    if isinstance(gold, float):
        return _format_float(gold)
    s = str(gold).strip()
    if "####" in s:
        s = s.rsplit("####", 1)[1].strip()
    s = _strip_answer_text(s)
    m = re.fullmatch(r"\\(?:boxed|fbox)\s*\{(.*)\}", s, re.S)
    if m and _match_brace(s, s.index("{")) == len(s) - 1:
        s = m.group(1).strip()
    if re.fullmatch(r"[+-]?\d+\.0*", s):  # "27.0" -> "27"
        s = s.split(".")[0]
    if _is_aime(benchmark) and re.fullmatch(r"[+-]?\d+", s):
        s = str(int(s))
    return s


def _unwrap_macros(s: str) -> str:
    """Drop trailing unit text (``5\\text{ cm}``) and unwrap other ``\\text{X}``."""
    for _ in range(20):
        m = None
        for m in _TEXT_MACRO_RE.finditer(s):
            pass  # innermost-last: work from the end
        if m is None:
            return s
        start, j = m.start(), m.end()
        if j < len(s) and s[j] == "{":
            k = _match_brace(s, j)
            if k < 0:
                return s
            inner = s[j + 1 : k]
            after = s[k + 1 :]
            prefix = s[:start]
            unit_tail = re.fullmatch(r"\s*(?:\^\{?\d\}?)?\s*\.?\s*", after)
            if (
                unit_tail
                and prefix.strip()
                and re.search(r"[\d}]\s*$", prefix)
                and _UNIT_WORD_RE.match(inner.strip() or "x")
            ):
                s = prefix.rstrip()
            else:
                s = prefix + inner + after
        else:  # ``\bf 5`` style: just drop the macro name
            s = s[:start] + s[j:]
    return s


_UNICODE = {"\u2212": "-", "\u2013": "-", "\u2044": "/", "\u00d7": "\\times ", "\u00b7": "\\cdot ",
            "\u03c0": "\\pi ", "\u221e": "\\infty ", "\u221a": "\\sqrt", "\u2264": "\\le ",
            "\u2265": "\\ge ", "\u00a0": " ", "\u2009": " ", "\u202f": " "}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split())}
_NUMBER_WORDS.update({"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60",
                      "seventy": "70", "eighty": "80", "ninety": "90", "hundred": "100"})


def _normalize(s: str) -> tuple[str, bool]:
    """Canonical comparable form of an answer; second item: a percent sign was seen."""
    s = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], s.strip()).strip()
    if "\\boxed" in s or "\\fbox" in s:
        inner, _ = _extract_boxed(s)
        if inner is not None and "\\boxed" not in inner:
            s = inner
    s = s.replace("\\displaystyle", "")
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])\.?", "", s)
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"\\[dt]binom(?![A-Za-z])", r"\\binom", s)
    s = s.replace("{,}", ",")
    s = _SPACING_RE.sub("", s)
    s = s.replace("\\$", "").replace("$", "")
    # degrees
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degree(?![A-Za-z])", "", s)
    pct = False
    if re.search(r"\\?%|\\percent(?![A-Za-z])", s):
        pct = True
        s = re.sub(r"\\?%|\\percent(?![A-Za-z])", "", s)
    s = _unwrap_macros(s)
    s = s.strip()
    if len(s) >= 2 and s[0] == "{" and _match_brace(s, 0) == len(s) - 1:
        s = s[1:-1].strip()
    s = re.sub(r"[.\s]+$", "", s)
    m = _ASSIGN_RE.match(s)
    if m and "=" not in m.group(1) and "\\approx" not in m.group(1):
        s = m.group(1).strip()
    m = _NUM_THEN_WORDS_RE.match(s)
    if m:  # "5 cm", "12 dollars", "45 degrees", "50 percent"
        if m.group(2).lower() == "percent":
            pct = True
        s = m.group(1)
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"[.]+$", "", s)
    # \frac shorthands: \frac12, \frac1{2}, \frac{1}2 ; \sqrt2
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d+)", r"\\sqrt{\1}", s)
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    m = re.fullmatch(r"\(([+-]?" + _NUM_RE + r")\)", s)
    if m:  # "(113)" (AMC/AIME-style answer label) -> 113
        s = m.group(1)
    m = re.fullmatch(r"\(([A-Z])\)", s)
    if m:  # "(E)" -> "E" (multiple-choice label)
        s = m.group(1)
    if s.startswith("+") and _PLAIN_NUM_RE.match(s):
        s = s[1:]
    s = _NUMBER_WORDS.get(s.lower(), s)
    return s, pct


def _to_fraction(tok: str) -> Fraction | None:
    m = re.search(r"[eE]([+-]?\d+)$", tok)
    if m and abs(int(m.group(1))) > 300:
        return None
    try:
        return Fraction(tok)
    except (ValueError, ZeroDivisionError):
        return None


def _to_number(s: str) -> Fraction | None:
    """Value of a *plain* number: int, decimal, ``\\frac{a}{b}``, ``a/b``."""
    if _PLAIN_NUM_RE.match(s):
        return _to_fraction(s)
    m = _FRAC_RE.match(s)
    if m:
        num, den = _to_fraction(m.group(2)), _to_fraction(m.group(3))
        if num is None or not den:
            return None
        v = num / den
        return -v if m.group(1) == "-" else v
    m = _SLASH_RE.match(s)
    if m:
        num, den = _to_fraction(m.group(1)), _to_fraction(m.group(2))
        if num is None or not den:
            return None
        return num / den
    return None


_REL_TOL = Fraction(1, 10**9)
_REL_TOL_GSM_HARD = Fraction(1, 10**4)  # Qwen's math_equal (gsm_hard_rule="math_equal")
_ABS_TOL = Fraction(1, 10**9)

GSM_HARD_RULES = ("precision", "math_equal")
_SHOWN_RE = re.compile(r"^[+-]?\d*(?:\.(\d*))?(?:[eE]([+-]?\d+))?$")


def _check_gsm_hard_rule(rule: str) -> str:
    if not isinstance(rule, str) or rule not in GSM_HARD_RULES:
        raise ValueError(f"gsm_hard_rule must be one of {', '.join(map(repr, GSM_HARD_RULES))}; "
                         f"got {rule!r}")
    return rule


def _close(a: Fraction, b: Fraction, benchmark: str | None) -> bool:
    """``math.isclose`` in exact arithmetic (no float overflow on 1e300)."""
    if a == b:
        return True
    rel = _REL_TOL_GSM_HARD if _is_gsm_hard(benchmark) else _REL_TOL
    return abs(a - b) <= max(rel * max(abs(a), abs(b)), _ABS_TOL)


def _shown_decimals(s: str) -> int | None:
    """Decimals a plain number literal shows: ``"1234.50"`` -> 2, ``"27"`` -> 0,
    ``"5.158e-07"`` -> 10, ``"1.2e3"`` -> -2; ``None`` for anything else (an
    exact value such as ``\\frac{37}{3}`` or ``37/3``)."""
    if not _PLAIN_NUM_RE.match(s):
        return None
    m = _SHOWN_RE.match(s)
    if m is None:
        return None
    return len(m.group(1) or "") - int(m.group(2) or 0)


def _noise_unit(g: Fraction) -> Fraction:
    """One unit in the 15th significant digit of ``g`` (0 for 0): how far a
    gold printed from a double may be off (``3244047.0999999996``)."""
    a = abs(g)
    if a == 0:
        return Fraction(0)
    e = len(str(a.numerator)) - len(str(a.denominator))
    while a >= Fraction(10) ** (e + 1):
        e += 1
    while a < Fraction(10) ** e:
        e -= 1
    return Fraction(10) ** (e - 14)


def _precision_equal(p: Fraction, dp: int | None, g: Fraction, dg: int | None) -> bool:
    """The GSM-Hard ``"precision"`` rule (see the module docstring).

    ``dp``/``dg``: decimals the answer/gold show (``None``: an exact value).
    """
    u = _noise_unit(g) if dg is not None else Fraction(0)
    gi = round(g)
    if abs(g - gi) <= u:  # an integer gold (up to float noise): exactly
        return p == gi
    if p == 0:  # rounded to nothing
        return False
    if dp is not None:  # a decimal answer: the gold rounded to dp decimals, ties either way
        return dp > 0 and abs(p - g) <= Fraction(1, 2) / Fraction(10) ** dp + u
    if dg is None:  # exact answer, exact gold
        return p == g
    # an exact answer (fraction): within half a unit of the gold's last shown decimal
    return abs(p - g) <= Fraction(1, 2) / Fraction(10) ** dg + u


def _numeric_equal(p: Fraction, p_pct: bool, g: Fraction, g_pct: bool, benchmark: str | None,
                   dp: int | None = None, dg: int | None = None,
                   gsm_hard_rule: str = "precision") -> bool:
    if _is_aime(benchmark) and g.denominator == 1:
        return p == g  # exact integers: 025 == 25, 25.5 != 25
    if gsm_hard_rule == "precision" and _is_gsm_hard(benchmark):
        def shift(d: int | None) -> int | None:
            return None if d is None else d + 2

        return (_precision_equal(p, dp, g, dg)
                or (g_pct and _precision_equal(p, dp, g / 100, shift(dg)))  # gold 50%, pred 0.5
                or (p_pct and _precision_equal(p / 100, shift(dp), g, dg)))  # gold 0.5, pred 50%
    if _close(p, g, benchmark):
        return True
    if g_pct and _close(p, g / 100, benchmark):  # gold 50%, pred 0.5
        return True
    if p_pct and _close(p / 100, g, benchmark):  # gold 0.5, pred 50%
        return True
    return False


# --------------------------------------------------------------------------
# Cheap in-process stage
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pending:
    """An item the cheap stage could not decide: math_verify must look at it."""

    extracted: str
    method: str
    gold_mv: str
    pred_mv: str


def _wrap_for_mv(s: str) -> str:
    s = s.strip()
    if s.count("{") - s.count("\\{") == s.count("}") - s.count("\\}"):
        return "\\boxed{" + s + "}"
    return "$" + s + "$"


def _prepare(output: str, gold, benchmark: str | None,
             gsm_hard_rule: str = "precision", truncated: bool = False) -> Verdict | _Pending:
    if truncated:  # never correct; a closed final answer is still shown
        extracted, method = _extract(output, last_number=False)
        return Verdict(False, extracted, method, "truncated")
    extracted, method = extract_answer(output)
    if extracted is None:
        return Verdict(False, None, None, "no_answer")
    gold_s = normalize_gold(gold, benchmark)
    p_norm, p_pct = _normalize(extracted)
    g_norm, g_pct = _normalize(gold_s)
    if p_norm and p_norm == g_norm:
        return Verdict(True, extracted, method, "match:string")
    p_val, g_val = _to_number(p_norm), _to_number(g_norm)
    if p_val is not None and g_val is not None:
        ok = _numeric_equal(p_val, p_pct, g_val, g_pct, benchmark,
                            _shown_decimals(p_norm), _shown_decimals(g_norm), gsm_hard_rule)
        return Verdict(ok, extracted, method, "match:numeric" if ok else "mismatch:numeric")
    return _Pending(extracted, method, _wrap_for_mv(gold_s), _wrap_for_mv(extracted))


# --------------------------------------------------------------------------
# Worker processes running math_verify
# --------------------------------------------------------------------------


def _limit_worker_memory() -> None:  # pragma: no cover - runs in the child process
    """Cap a worker's address space so a runaway sympy computation fails with
    ``MemoryError`` (math_verify then reports a mismatch) instead of exhausting
    the machine before the timeout fires. ``ORION_GRADING_WORKER_MEM_MB``
    (default 4096, 0 = no cap) is added to the worker's current size."""
    try:
        import resource

        extra_mb = int(os.environ.get("ORION_GRADING_WORKER_MEM_MB", "4096"))
        if extra_mb <= 0:
            return
        with open("/proc/self/statm") as fh:
            current = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = current + extra_mb * 1024 * 1024
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except Exception:  # noqa: BLE001 - best effort (non-Linux, no /proc)
        pass


def _worker_main(conn) -> None:  # pragma: no cover - runs in the child process
    """Loop of a math_verify worker: recv (gold, pred) -> send result."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    _limit_worker_memory()
    try:
        from math_verify import parse, verify
    except BaseException as exc:  # noqa: BLE001
        try:
            conn.send(("fatal", type(exc).__name__))
        finally:
            return
    gold_cache: dict[str, list] = {}
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            break
        if msg is None:
            break
        # msg: a list of (gold, pred). Its receipt is acknowledged first, so a
        # worker that dies before reading it (killed while idle) is told apart
        # from one that an item crashed. Then one result is sent back per
        # item, as soon as it is ready, so the parent can time each item.
        try:
            conn.send(("got", len(msg)))
        except (OSError, ValueError):
            return
        for gold, pred in msg:
            t0 = time.perf_counter()
            try:
                g = gold_cache.get(gold)
                if g is None:
                    g = parse(gold, parsing_timeout=None)
                    if len(gold_cache) > 4096:
                        gold_cache.clear()
                    gold_cache[gold] = g
                p = parse(pred, parsing_timeout=None)
                ok = bool(g) and bool(p) and bool(verify(g, p, timeout_seconds=None))
                result = ("ok", ok, time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001
                result = ("error", type(exc).__name__, time.perf_counter() - t0)
            try:
                conn.send(result)
            except (OSError, ValueError):
                return


class _Worker:
    __slots__ = ("proc", "conn", "tasks")

    def __init__(self, ctx) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child,), daemon=True,
                                name="orion-grading-worker")
        self.proc.start()
        child.close()
        self.conn = parent
        self.tasks = 0
        try:
            if not parent.poll(_WORKER_START_TIMEOUT_S):
                raise TimeoutError("math_verify worker did not start")
            msg = parent.recv()
            if msg[0] != "ready":
                raise RuntimeError(f"math_verify worker failed to start: {msg[1]}")
        except BaseException:
            self.kill()
            raise

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def kill(self) -> None:
        try:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(timeout=5)
        except Exception:  # noqa: BLE001
            pass
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass

    def stop(self) -> None:
        try:
            self.conn.send(None)
            self.proc.join(timeout=1)
        except Exception:  # noqa: BLE001
            pass
        self.kill()


def _mp_context():
    methods = mp.get_all_start_methods()
    if "forkserver" in methods:
        ctx = mp.get_context("forkserver")
        # Import sympy/math_verify once in the fork server; each worker is then
        # a cheap fork of it (the server is single-threaded, so this is safe
        # even when the caller has many threads).
        ctx.set_forkserver_preload([__name__, "math_verify", "sympy"])
        return ctx
    return mp.get_context("spawn")


class _WorkerPool:
    """At most ``size`` math_verify worker processes, started on demand.

    A caller checks out an idle worker (thread-safe, LIFO so caches stay
    warm), sends it one item or a chunk, and waits on the worker's own pipe.
    """

    def __init__(self, size: int) -> None:
        self.size = max(1, int(size))
        self._ctx = _mp_context()
        self._cond = threading.Condition(threading.Lock())
        self._idle: list[_Worker] = []
        self._live: set[_Worker] = set()
        self._starting = 0
        self._closed = False
        self.pid = os.getpid()
        self.stats = {"items": 0, "timeouts": 0, "crashes": 0, "started": 0, "worker_s": 0.0}

    # -- checkout --------------------------------------------------------
    def _acquire(self) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("grading pool is shut down")
                if self._idle:
                    return self._idle.pop()
                if len(self._live) + self._starting < self.size:
                    self._starting += 1
                    break
                self._cond.wait()
        try:
            w = _Worker(self._ctx)
        except BaseException:
            with self._cond:
                self._starting -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._starting -= 1
            self._live.add(w)
            self.stats["started"] += 1
        return w

    def _release(self, w: _Worker, healthy: bool) -> None:
        """Return a worker; an unhealthy one (timed out, crashed) is killed."""
        retire = healthy and w.tasks >= _MAX_TASKS_PER_WORKER
        with self._cond:
            keep = healthy and not retire and not self._closed
            if keep:
                self._idle.append(w)
            else:
                self._live.discard(w)
            self._cond.notify()
        if not keep:
            w.stop() if healthy else w.kill()

    def warm(self, n: int) -> None:
        """Start up to ``n`` workers in parallel (best effort)."""
        n = min(n, self.size)
        with self._cond:
            missing = n - len(self._live) - self._starting
        if missing <= 0:
            return
        ws: list[_Worker] = []
        lock = threading.Lock()

        def start():
            try:
                w = self._acquire()
            except Exception:  # noqa: BLE001
                return
            with lock:
                ws.append(w)

        threads = [threading.Thread(target=start, daemon=True) for _ in range(missing)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for w in ws:
            self._release(w, True)

    # -- items -----------------------------------------------------------
    def run(self, gold: str, pred: str, timeout_s: float) -> tuple[str, object]:
        """``("ok", bool)`` | ``("timeout", None)`` | ``("error", ExcName)``."""
        return self.run_many([(gold, pred)], timeout_s)[0]

    def run_many(self, items: list[tuple[str, str]], timeout_s: float) -> list[tuple[str, object]]:
        """Verify ``items`` on one worker, streaming: the worker goes through
        the whole list without waiting for the caller, the caller waits at
        most ``timeout_s`` for each next result. After a timeout or crash the
        worker is killed and the rest of the list goes to a fresh worker. A
        worker that dies before acknowledging the list (killed while idle; the
        kill may land just after the send succeeded) is replaced and the list
        resent, at most ``size + 2`` times."""
        results: list[tuple[str, object]] = []
        dead_on_checkout = 0
        while len(results) < len(items):
            rest = items[len(results):]
            try:
                w = self._acquire()
            except Exception as exc:  # noqa: BLE001
                results += [("error", type(exc).__name__)] * len(rest)
                break
            receipt = self._send(w, rest, timeout_s)
            if receipt != "ok":
                self._release(w, False)
                if receipt == "timeout":
                    results.append(("timeout", None))
                    self._count("timeouts")
                    continue
                dead_on_checkout += 1
                if dead_on_checkout > self.size + 2:
                    results += [("error", "WorkerCrashed")] * len(rest)
                    break
                continue
            healthy = False
            try:
                for _ in rest:
                    w.tasks += 1
                    try:
                        ready = w.conn.poll(timeout_s)
                        msg = w.conn.recv() if ready else None
                    except (EOFError, OSError, ValueError):
                        ready, msg = True, None
                    if not ready:
                        results.append(("timeout", None))
                        self._count("timeouts")
                        break
                    if msg is None:
                        results.append(("error", "WorkerCrashed"))
                        self._count("crashes")
                        break
                    with self._cond:
                        self.stats["items"] += 1
                        self.stats["worker_s"] += msg[2]
                    results.append((msg[0], msg[1]))
                else:
                    healthy = True
            finally:
                # unhealthy (timeout, crash, caller interrupted): killed here;
                # a fresh worker replaces it on demand
                self._release(w, healthy)
        return results

    @staticmethod
    def _send(w: _Worker, items: list[tuple[str, str]], timeout_s: float) -> str:
        """Send ``items``: ``"ok"`` once the worker acknowledges them,
        ``"dead"`` if it is gone before that, ``"timeout"`` if it stays alive
        and silent for ``timeout_s`` (counted against the first item)."""
        try:
            w.conn.send(items)
            if not w.conn.poll(timeout_s):
                return "timeout"
            ack = w.conn.recv()
        except (EOFError, OSError, ValueError):
            return "dead"
        return "ok" if ack[0] == "got" else "dead"

    def _count(self, key: str) -> None:
        with self._cond:
            self.stats[key] += 1

    def worker_pids(self) -> list[int]:
        with self._cond:
            return [w.pid for w in self._live if w.pid is not None]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            live = list(self._live)
            self._live.clear()
            self._cond.notify_all()
        for w in idle:
            w.stop()
        for w in live:
            if w not in idle:
                w.kill()


_POOL: _WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def _get_pool(min_size: int | None = None) -> _WorkerPool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid() or _POOL._closed:
            _POOL = _WorkerPool(os.cpu_count() or 1)
        if min_size and min_size > _POOL.size:
            with _POOL._cond:
                _POOL.size = int(min_size)
        return _POOL


def shutdown_pool() -> None:
    """Stop all math_verify worker processes (a later call starts new ones)."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None and pool.pid == os.getpid():
        pool.close()


atexit.register(shutdown_pool)


def _pool_worker_pids() -> list[int]:
    pool = _POOL
    return pool.worker_pids() if pool is not None else []


# --------------------------------------------------------------------------
# Public grading API
# --------------------------------------------------------------------------


def _verdict(pending: _Pending, status: str, value: object) -> Verdict:
    if status == "ok":
        ok = bool(value)
        return Verdict(ok, pending.extracted, pending.method,
                       "match:math_verify" if ok else "mismatch:math_verify")
    if status == "timeout":
        return Verdict(False, pending.extracted, pending.method, "timeout")
    return Verdict(False, pending.extracted, pending.method, f"error:{value}")


def _timeout(timeout_s: float | None) -> float:
    if timeout_s is None or timeout_s <= 0:
        return DEFAULT_TIMEOUT_S
    return float(timeout_s)


def _run_pending(pending: _Pending, timeout_s: float | None) -> tuple[str, object]:
    return _get_pool().run(pending.gold_mv, pending.pred_mv, _timeout(timeout_s))


def _safe_prepare(output, gold, benchmark, gsm_hard_rule: str = "precision",
                  truncated: bool = False) -> Verdict | _Pending:
    try:
        return _prepare("" if output is None else str(output), gold, benchmark, gsm_hard_rule,
                        truncated)
    except Exception as exc:  # noqa: BLE001 - grading must never raise
        log.debug("grading prepare failed", exc_info=True)
        return Verdict(False, None, None, f"error:{type(exc).__name__}")


def grade(output: str, gold: str, benchmark: str | None = None,
          timeout_s: float = DEFAULT_TIMEOUT_S, *, gsm_hard_rule: str = "precision",
          truncated: bool = False) -> Verdict:
    """Grade one model output against a gold answer. Never hangs; never raises on
    any output or gold (a ``gsm_hard_rule`` outside ``GSM_HARD_RULES`` is a
    ``ValueError``).

    ``gsm_hard_rule`` (``"precision"`` | ``"math_equal"``) picks how plain
    numbers are compared when ``benchmark`` is GSM-Hard; other benchmarks
    ignore it (module docstring).

    ``truncated``: the output was cut by the length limit (the server said
    ``finish_reason: "length"``). Such an output is never correct: reason
    ``"truncated"``; ``extracted``/``method`` still show a closed final answer
    (box, ``####``, "the answer is") if there is one, never the last number.
    """
    _check_gsm_hard_rule(gsm_hard_rule)
    pre = _safe_prepare(output, gold, benchmark, gsm_hard_rule, bool(truncated))
    if isinstance(pre, Verdict):
        return pre
    return _verdict(pre, *_run_pending(pre, timeout_s))


def grade_batch(
    pairs: Sequence[tuple[str, str]],
    benchmark: str | None | Sequence[str | None] = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    workers: int | None = None,
    *,
    gsm_hard_rule: str = "precision",
    truncated: bool | Sequence[bool] = False,
) -> list[Verdict]:
    """Grade many ``(output, gold)`` pairs; the result keeps the input order.

    ``benchmark`` is one name for all pairs or one per pair. The cheap stage
    runs here, in the calling thread. Undecided items are deduplicated by
    (gold, answer), cut into chunks and streamed through ``workers``
    math_verify processes (default ``os.cpu_count()``) at once; every item
    still has its own ``timeout_s``. Same verdicts as calling ``grade()`` on
    each pair. ``gsm_hard_rule`` and ``truncated`` as in :func:`grade`;
    ``truncated`` is one flag for all pairs or one per pair.
    """
    _check_gsm_hard_rule(gsm_hard_rule)
    pairs = list(pairs)
    n = len(pairs)
    if benchmark is None or isinstance(benchmark, str):
        benches: Sequence[str | None] = [benchmark] * n
    else:
        benches = list(benchmark)
        if len(benches) != n:
            raise ValueError(f"got {len(benches)} benchmarks for {n} pairs")
    try:
        cut = [bool(t) for t in truncated]  # type: ignore[union-attr]
    except TypeError:  # one flag for all
        cut = [bool(truncated)] * n
    if len(cut) != n:
        raise ValueError(f"got {len(cut)} truncated flags for {n} pairs")
    out: list[Verdict | None] = [None] * n
    # Undecided items, deduplicated: math_verify only sees (gold, pred), so
    # repeated answers to the same problem (many samples per problem) are
    # verified once.
    groups: dict[tuple[str, str], list[tuple[int, _Pending]]] = {}
    for i, ((output, gold), bench, t) in enumerate(zip(pairs, benches, cut)):
        pre = _safe_prepare(output, gold, bench, gsm_hard_rule, t)
        if isinstance(pre, Verdict):
            out[i] = pre
        else:
            groups.setdefault((pre.gold_mv, pre.pred_mv), []).append((i, pre))
    if groups:
        # Input order is kept: neighbouring items (samples of one problem)
        # share strings, and a worker's parse caches profit from that.
        todo = list(groups.values())
        n_workers = max(1, int(workers or os.cpu_count() or 1))
        pool = _get_pool(n_workers)
        n_threads = min(n_workers, len(todo))
        pool.warm(n_threads)

        # Chunks of distinct items, streamed through one worker each (no
        # round trip per item); several chunks per worker keep the load even.
        chunk = max(1, min(_BATCH_CHUNK, len(todo) // (4 * n_threads) or 1))
        chunks = [todo[k:k + chunk] for k in range(0, len(todo), chunk)]
        tmo = _timeout(timeout_s)

        def settle(batch: list[list[tuple[int, _Pending]]]) -> None:
            items = [(g[0][1].gold_mv, g[0][1].pred_mv) for g in batch]
            for group, (status, value) in zip(batch, pool.run_many(items, tmo)):
                for i, pend in group:
                    out[i] = _verdict(pend, status, value)

        if n_threads == 1:
            for c in chunks:
                settle(c)
        else:
            # n_threads feeder threads pull chunks off one shared iterator;
            # each blocks on its own worker process, so the GIL is no limit.
            it = iter(chunks)
            it_lock = threading.Lock()

            def drain() -> None:
                while True:
                    with it_lock:
                        c = next(it, None)
                    if c is None:
                        return
                    settle(c)

            with ThreadPoolExecutor(max_workers=n_threads,
                                    thread_name_prefix="orion-grade") as ex:
                futs = [ex.submit(drain) for _ in range(n_threads)]
                for f in futs:
                    f.result()
    return [v if v is not None else Verdict(False, None, None, "error:Missing") for v in out]


def answer_key(answer: str | None, benchmark: str | None = None) -> str | None:
    """The key under which an extracted answer votes (maj@k): equivalent answers share one.

    The answer goes through the grader's own normalisation (``$``, ``\\boxed``, ``\\dfrac``, units,
    thousands separators, a leading ``x =`` ...); a plain number or fraction then becomes its exact
    value (``\\frac{1}{2}``, ``0.5``, ``1/2`` and ``2/4`` are all ``"1/2"``; ``025`` and ``25.0`` are
    ``"25"``), anything else stays its normalized string. A percent sign is dropped, as in the
    grader's string stage (``50\\%`` votes with ``50``). Numbers are grouped by exact value, not by
    the grader's tolerances (a tolerance is not transitive, so it cannot define groups).
    ``benchmark`` is accepted for symmetry with :func:`grade`; the key is the same for every
    benchmark today. ``None`` (no answer) and an answer that normalizes to nothing give ``None``.
    Never raises: an answer the normaliser fails on keys as its stripped text.
    """
    if answer is None:
        return None
    try:
        normalized, _ = _normalize(str(answer))
        value = _to_number(normalized) if normalized else None
    except Exception:  # noqa: BLE001 - a vote key must never fail a scoring run
        log.debug("answer_key: normalisation failed for %r", answer, exc_info=True)
        normalized, value = str(answer).strip(), None
    if value is not None:
        return str(value)  # Fraction: "5", "-3/4"
    return normalized or None
