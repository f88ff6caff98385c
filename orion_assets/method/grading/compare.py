"""Comparing an extracted answer with a gold one, in process: normalisation and exact-number rules.

What this cheap stage cannot decide becomes a ``_Pending`` item for math_verify, which runs in the
worker processes of :mod:`.pool`. Rules (AIME, GSM-Hard, tolerances, Qwen's ``math_equal``): docs/grading.md.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from fractions import Fraction

from orion_assets.method.grading.extract import _extract_boxed, _match_brace, _strip_answer_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    correct: bool
    extracted: str | None
    method: str | None
    reason: str


_AIME_PREFIX = "aime"
_TEXT_MACROS = ("text", "textbf", "textit", "textrm", "textnormal", "mathrm", "mathbf",
                "mathit", "mbox", "hbox", "operatorname", "mathsf", "bf", "rm", "boldsymbol")
_TEXT_MACRO_RE = re.compile(r"\\(" + "|".join(_TEXT_MACROS) + r")(?![A-Za-z])\s*")
_UNIT_WORD_RE = re.compile(r"^[A-Za-z][A-Za-z .\-/]*(?:\^\{?\d\}?)?$")
_NUM_RE = r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,3})?"
_PLAIN_NUM_RE = re.compile(r"^[+-]?" + _NUM_RE + r"$")
_FRAC_RE = re.compile(r"^([+-]?)\\frac\{([+-]?" + _NUM_RE + r")\}\{([+-]?" + _NUM_RE + r")\}$")
_SLASH_RE = re.compile(r"^([+-]?" + _NUM_RE + r")/([+-]?" + _NUM_RE + r")$")
# A thousands separator: groups of three after a first group that is not 0 ("0,111" is a list), no space after it.
_THOUSANDS_RE = re.compile(r"^[+-]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?$")
# Digits joined by commas (a number with thousands separators, or a list such as "0,111" or "1,5").
_DIGIT_COMMAS_RE = re.compile(r"(?<![\d.,])\d+(?:,\d+)+(?:\.\d+)?(?![\d,])")
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
    spaced_comma = bool(re.search(r",\s", s))  # "12, 345" is a list of two numbers, not 12345
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"[.]+$", "", s)
    # \frac shorthands: \frac12, \frac1{2}, \frac{1}2 ; \sqrt2
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d+)", r"\\sqrt{\1}", s)
    if not spaced_comma and _THOUSANDS_RE.match(s):
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
_REL_TOL_MATH_EQUAL = Fraction(1, 10**4)  # Qwen2.5-Math's numeric_equal: math.isclose(rel_tol=1e-4)
_ABS_TOL = Fraction(1, 10**9)

# How two plain numbers compare: "precision" (the strict rule) or "math_equal" (Qwen2.5-Math's).
NUMBER_RULES = ("precision", "math_equal")
_SHOWN_RE = re.compile(r"^[+-]?\d*(?:\.(\d*))?(?:[eE]([+-]?\d+))?$")


def _close(a: Fraction, b: Fraction) -> bool:
    """``math.isclose`` in exact arithmetic (no float overflow on 1e300)."""
    if a == b:
        return True
    return abs(a - b) <= max(_REL_TOL * max(abs(a), abs(b)), _ABS_TOL)


def _math_equal_number(p: Fraction, g: Fraction) -> bool:
    """Qwen2.5-Math's ``is_numerical_equal``: ``isclose(rel_tol=1e-4)`` (no absolute tolerance) against the
    gold, the gold / 100 and the gold * 100 (its ``include_percentage``); percent signs are dropped before."""
    return any(p == c or abs(p - c) <= _REL_TOL_MATH_EQUAL * max(abs(p), abs(c)) for c in (g, g / 100, g * 100))


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
    """The GSM-Hard ``"precision"`` rule (docs/grading.md).

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
                   dp: int | None = None, dg: int | None = None, numbers: str = "precision") -> bool:
    if numbers == "math_equal":  # every benchmark alike, as Qwen's evaluation does
        return _math_equal_number(p, g)
    if _is_aime(benchmark) and g.denominator == 1:
        return p == g  # exact integers: 025 == 25, 25.5 != 25
    if _is_gsm_hard(benchmark):
        def shift(d: int | None) -> int | None:
            return None if d is None else d + 2

        return (_precision_equal(p, dp, g, dg)
                or (g_pct and _precision_equal(p, dp, g / 100, shift(dg)))  # gold 50%, pred 0.5
                or (p_pct and _precision_equal(p / 100, shift(dp), g, dg)))  # gold 0.5, pred 50%
    if _close(p, g):
        return True
    if g_pct and _close(p, g / 100):  # gold 50%, pred 0.5
        return True
    if p_pct and _close(p / 100, g):  # gold 0.5, pred 50%
        return True
    return False


MATH_VERIFY = "math_verify"  # a worker item: math_verify's own parse and verify of an extracted answer
LIGHTEVAL = "lighteval"  # a worker item: a whole reply, read and compared as lighteval's math metrics do


@dataclass(frozen=True)
class _Pending:
    """An item the cheap stage could not decide: math_verify must look at it (``mode`` says how)."""

    extracted: str | None
    method: str
    gold_mv: str
    pred_mv: str
    mode: str = MATH_VERIFY


def _wrap_for_mv(s: str) -> str:
    s = s.strip()
    if s.count("{") - s.count("\\{") == s.count("}") - s.count("\\}"):
        return "\\boxed{" + s + "}"
    return "$" + s + "$"


def _list_commas(s: str) -> str:
    """``"0,111"`` -> ``"0, 111"``: digits joined by commas that are no thousands separators are a list, so
    math_verify must not read them as a decimal comma (0.111); ``"12,345"`` is left as it is."""
    def space(m: re.Match) -> str:
        return m.group(0) if _THOUSANDS_RE.match(m.group(0)) else m.group(0).replace(",", ", ")

    return _DIGIT_COMMAS_RE.sub(space, s)


def compare_answer(extracted: str | None, method: str | None, gold, benchmark: str | None,
                   numbers: str = "precision") -> Verdict | _Pending:
    """The verdict on an extracted answer, or the item math_verify must decide; ``numbers``: NUMBER_RULES."""
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
                            _shown_decimals(p_norm), _shown_decimals(g_norm), numbers)
        return Verdict(ok, extracted, method, "match:numeric" if ok else "mismatch:numeric")
    return _Pending(extracted, method, _wrap_for_mv(_list_commas(gold_s)), _wrap_for_mv(_list_commas(extracted)))


def _items(s: str) -> list[str]:
    """A normalized answer cut at its top-level commas: ``"(2,2),(6,2)"`` -> ``["(2,2)", "(6,2)"]``; an interval
    ``"[1,2)"`` or a tuple ``"(1,2)"`` is one item."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        elif c == "," and depth == 0:
            items.append(s[start:i])
            start = i + 1
    return [*items, s[start:]]


def several_items(answer: str, benchmark: str | None = None) -> bool:
    """Whether a gold (or an answer) is a list of several items, such as ``"(2, 2), (6, 2)"`` or ``"-1, 3"``."""
    return len(_items(_normalize(normalize_gold(answer, benchmark))[0])) > 1


def compare_items(answers: list[str], method: str, gold, benchmark: str | None,
                  numbers: str = "precision") -> Verdict | _Pending:
    """Several answers (boxes) against a gold of several items, as sets: order-free, repeats ignored."""
    gold_s = normalize_gold(gold, benchmark)
    extracted = ", ".join(answers)
    preds = {_normalize(a) for a in answers}
    golds = {_normalize(g) for g in _items(_normalize(gold_s)[0])}
    if {p for p, _ in preds} == {g for g, _ in golds}:
        return Verdict(True, extracted, method, "match:string")
    p_vals = [(_to_number(p), pct, _shown_decimals(p)) for p, pct in preds]
    g_vals = [(_to_number(g), pct, _shown_decimals(g)) for g, pct in golds]
    if all(v is not None for v, _, _ in p_vals + g_vals):
        def equal(p: tuple, g: tuple) -> bool:
            return _numeric_equal(p[0], p[1], g[0], g[1], benchmark, p[2], g[2], numbers)

        every_pred_in_gold = all(any(equal(p, g) for g in g_vals) for p in p_vals)
        ok = every_pred_in_gold and all(any(equal(p, g) for p in p_vals) for g in g_vals)
        return Verdict(ok, extracted, method, "match:numeric" if ok else "mismatch:numeric")
    # math_verify reads a comma list as a set (order-free), tuples and intervals inside it as themselves
    return _Pending(extracted, method, _wrap_for_mv(_list_commas(gold_s)), _wrap_for_mv(_list_commas(extracted)))


def _verdict(pending: _Pending, status: str, value: object) -> Verdict:
    if status == "ok":  # value: the verdict, or (verdict, the answer math_verify read) for a lighteval item
        ok, extracted = value if isinstance(value, tuple) else (value, pending.extracted)
        if extracted is None:
            return Verdict(False, None, None, "no_answer")
        return Verdict(bool(ok), extracted, pending.method, "match:math_verify" if ok else "mismatch:math_verify")
    if status == "timeout":
        return Verdict(False, pending.extracted, pending.method, "timeout")
    return Verdict(False, pending.extracted, pending.method, f"error:{value}")


def answer_key(answer: str | None, benchmark: str | None = None) -> str | None:
    """The key under which an extracted answer votes (maj@k): equivalent answers share one.

    The grader's normalisation, then a plain number's exact value (``\\frac{1}{2}``, ``0.5`` and ``2/4`` are
    all ``"1/2"``), else the normalized string; ``None`` for no answer. Never raises (docs/grading.md).
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
