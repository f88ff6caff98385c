"""Finding the final answer in a model reply: boxes, ``####``, "the answer is", the last number.

Only the text after the last ``</think>`` counts; a reply cut inside a box or a think block has no
answer. Regular expressions only, no sympy. Rules: docs/grading.md.
"""

from __future__ import annotations

import re

_BOX_RE = re.compile(r"\\(boxed|fbox)(?![A-Za-z])")
_HASH_RE = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS_RE = re.compile(
    r"(?i)\b(?:final\s+answer|answer)[*\s]*(?:is\b(?!['\u2019])|:|=)[*:\s]*"
)
# A box with nothing in it (``\\boxed{}``, ``$\\boxed{ }$``): a template echoed, not an answer.
_EMPTY_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{\s*\}")
# An answer that is arithmetic with its result ("2 * 25 + 15 + 10 = 75", "5 + 13 = $18"): the left of the last
# "=" holds only numbers and operators (SmolLM2's "3 x 12" included), the right a number, perhaps with a currency
# sign, a percent or unit words. Letters on the left ("2x + 3y = 6", "x = 7") make it no such answer.
_ARITH_LHS_RE = re.compile(r"[\d\s.,+\-*/\u00d7\u00f7\u00b7()\[\]{}$%^=]*\d[\d\s.,+\-*/\u00d7\u00f7\u00b7()\[\]{}$%^=]*")
_ARITH_OP_RE = re.compile(r"[+\-*/\u00d7\u00f7\u00b7^]")
_LATEX_OPS_RE = re.compile(r"\\(?:times|cdot|div|left|right|[dt]?frac|\$)(?![A-Za-z])|(?<=[\d)])\s*[xX]\s*(?=[\d$(])")
_RESULT_RE = re.compile(
    r"(?:\\?\$\s*)?-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?(?:\s*\\?%|\s+[A-Za-z][A-Za-z \-]*)?"
    r"|\\[dt]?frac\{\d+\}\{\d+\}"
)
# A final answer given as a sentence ("Final Answer: The total number of marbles is 45"): words, then a verb
# such as "is"; what follows the last such verb (words only before it) is the answer.
_SENTENCE_RE = re.compile(
    r"(?:[A-Za-z][A-Za-z'\u2019\-]*,?\s+)+(?:is|are|was|were|equals|comes\s+to|will\s+be|would\s+be)\s+(\S.*)",
    re.S,
)
# Math delimited as LaTeX; an inline ``$...$`` stays on one line (a currency ``$`` is not paired across lines);
# at most 1000 characters each, so that a reply full of unclosed delimiters costs little.
_SPAN_MAX = 1000
_MATH_SPAN_RE = re.compile(
    rf"\$\$(.{{1,{_SPAN_MAX}}}?)\$\$|\\\[(.{{1,{_SPAN_MAX}}}?)\\\]|\\\((.{{1,{_SPAN_MAX}}}?)\\\)"
    rf"|(?<!\\)\$((?:\\.|[^$\\\n]){{1,{_SPAN_MAX}}})\$",
    re.S,
)
# What makes an expression LaTeX rather than a plain number: a command, a brace, a super- or subscript.
_LATEX_MARK_RE = re.compile(r"\\[A-Za-z]+|[{}^_]")
_OPERATOR_END_RE = re.compile(r"(?:[+\-*/=^_]|\\(?:times|cdot|div|pm|mp))$")
_OPERATOR_START_RE = re.compile(r"(?:[+\-*/=^_]|\\(?:times|cdot|div|pm|mp))(?![A-Za-z])")
# What ends a displayed expression without being part of it: "\\end{align*}", "\\qquad\\Box", a final "\\\\".
_LATEX_END_RE = re.compile(
    r"(?:\s|\.|\\\\|\\end\{(?:align|aligned|equation|eqnarray|gather|gathered|multline|split)\*?\}"
    r"|\\q?quad|\\(?:Box|square|blacksquare|qed)(?![A-Za-z]))+$"
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


Box = tuple[str, str, int, int]  # content, "boxed" or "fbox", where the box starts, where it ends


def _boxes(text: str) -> list[Box] | None:
    """Every box of the text in order, ``None`` when the text ends inside one.

    The text ends inside a box when a ``\\boxed{`` never closes, however deep, or the text ends right after
    ``\\boxed``: the output was cut inside its final answer, so there is no answer, neither an earlier box nor
    a closed box inside the cut one. Every box is checked for closure, as an unclosed earlier box would hold
    all later ones; a closed box costs a scan of its own content only.
    """
    matches = list(_BOX_RE.finditer(text))
    if matches and not text[matches[-1].end():].strip():
        return None
    n = len(text)
    out: list[Box] = []
    for m in matches:
        j = m.end()
        while j < n and text[j] in " \t":
            j += 1
        if j < n and text[j] == "{":
            k = _match_brace(text, j)
            if k < 0:
                return None
            out.append((text[j + 1 : k].strip(), m.group(1), m.start(), k + 1))
        else:
            # ``\boxed 5`` / ``\boxed5``: one token, up to whitespace or ``$``.
            tok = re.match(r"[^\s$]+", text[j:])
            content = tok.group(0) if tok else ""
            out.append((content.rstrip(".,;"), m.group(1), m.start(), j + len(content)))
    return out


def _last_box(boxes: list[Box]) -> tuple[str | None, str | None]:
    """``(content, method)`` of the last usable box: the last that yields something (a later ``\\boxed{}`` or
    ``$\\boxed$`` in prose leaves it to an earlier one); only the last 8 are looked at."""
    for content, method, _start, _end in reversed(boxes[-8:]):
        if content:
            return content, method
    return None, None


def _boxed(text: str) -> tuple[str | None, str | None, bool]:
    """``(content, method, cut)`` of the last usable box; ``cut``: the text ends inside a box (``_boxes``)."""
    boxes = _boxes(text)
    if boxes is None:
        return None, None, True
    return (*_last_box(boxes), False)


def _all_boxes(output: str, as_qwen: bool = False) -> list[str]:
    """The answers of every non-empty box where the final answer is read, outermost only, in order; none when
    the text ends inside a box. For a gold of several items, which several boxes may give together."""
    text = str(output or "") if as_qwen else _final_part(str(output or ""))
    out: list[str] = []
    last_end = -1
    for content, _method, start, end in _boxes(text or "") or []:
        if start >= last_end and content:  # a box inside an earlier one is part of it
            out.append(_equation_result(content))
        last_end = max(last_end, end)
    return out


def _last_box_to_the_cut(text: str) -> tuple[str | None, str | None]:
    """Qwen2.5-Math's reading of the last box: its content, up to the end of the text if it never closes."""
    m = list(_BOX_RE.finditer(text))[-1]
    j = m.end()
    while j < len(text) and text[j] in " \t":
        j += 1
    if j < len(text) and text[j] == "{":
        k = _match_brace(text, j)
        content = text[j + 1 : k if k >= 0 else len(text)].strip()
    else:
        content = text[j:].split("$", 1)[0].strip()
    return (content, m.group(1)) if content else (None, None)


def _extract_boxed(text: str) -> tuple[str | None, str | None]:
    content, method, _cut = _boxed(text)
    return content, method


def _strip_answer_text(ans: str) -> str:
    ans = _EMPTY_BOX_RE.sub("", ans).strip()
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


def _equation_result(ans: str) -> str:
    """The result of an answer that is arithmetic with its result: ``"2 * 25 + 15 + 10 = 75"`` -> ``"75"``
    (what a person reads as the answer); any other answer unchanged."""
    if "=" not in ans:
        return ans
    lhs, rhs = ans.rsplit("=", 1)
    rhs = _strip_answer_text(rhs)
    ops = _LATEX_OPS_RE.sub("*", lhs)
    if rhs and _RESULT_RE.fullmatch(rhs) and _ARITH_LHS_RE.fullmatch(ops) and _ARITH_OP_RE.search(ops):
        return rhs
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


def _math_span_around(text: str, a: int, b: int) -> str | None:
    """The content of the ``$...$`` / ``$$...$$`` / ``\\(...\\)`` / ``\\[...\\]`` that holds ``text[a:b]``."""
    start = max(0, a - 2 * _SPAN_MAX)  # a span holding the number starts after this; from a line start if
    newline = text.find("\n", start, a)  # one is near (an inline ``$`` pairs within its line)
    for m in _MATH_SPAN_RE.finditer(text, newline + 1 if newline >= 0 else start):
        if m.start() >= b:
            return None
        if m.start() < a and b <= m.end():
            return next(g for g in m.groups() if g is not None)
    return None


def _chunk_around(text: str, a: int, b: int) -> str:
    """The run of text around ``text[a:b]`` up to spaces or ``$`` outside braces (``\\frac{1 + 2}{3}`` is one),
    runs joined by operators (``1.5 \\times 10^6``) taken together; within its line."""
    lo, hi = text.rfind("\n", 0, a) + 1, text.find("\n", b)
    line = text[lo : hi if hi >= 0 else len(text)]
    chunks: list[list[int]] = []  # [start, end] of each run, in line coordinates
    depth, start = 0, None
    for i, c in enumerate(line + " "):
        if depth == 0 and (c.isspace() or c == "$"):
            if start is not None:
                chunks.append([start, i])
                start = None
            if c == "$":  # a math span's edge: nothing joins across it
                chunks.append([i, i])
            continue
        if start is None:
            start = i
        if c in "{}" and (i == 0 or line[i - 1] != "\\"):
            depth = max(0, depth + (1 if c == "{" else -1))
    merged: list[list[int]] = []
    for ch in chunks:
        if merged and (_OPERATOR_END_RE.search(line[merged[-1][0] : merged[-1][1]])
                       or _OPERATOR_START_RE.match(line[ch[0] : ch[1]])):
            merged[-1][1] = ch[1]
        else:
            merged.append(ch)
    for c0, c1 in merged:
        if c0 <= a - lo and b - lo <= c1:
            return line[c0:c1].rstrip(".,;:")
    return text[a:b]


def _latex_around(text: str, a: int, b: int) -> str | None:
    """The LaTeX expression the number ``text[a:b]`` is part of (the last number of ``$\\frac{1+\\sqrt{5}}{2}$``
    is no 2 but the fraction), ``None`` when the number stands alone or in plain arithmetic."""
    expr = _math_span_around(text, a, b)
    if expr is None or not _LATEX_MARK_RE.search(expr):
        expr = _chunk_around(text, a, b)
        if not _LATEX_MARK_RE.search(expr):
            return None
    expr = _LATEX_END_RE.sub("", expr)
    # an equation states its result last ("$a+b = 121+909 = 1030$" gives 1030), as the plain last number did
    depth, cut = 0, -1
    for i, c in enumerate(expr):
        depth += (c == "{") - (c == "}")
        if depth == 0 and c == "=" and expr[i - 1 : i] not in ("<", ">", "!", "="):
            cut = i
        elif depth == 0 and expr.startswith("\\approx", i):
            cut = i + len("\\approx") - 1
    return _strip_answer_text(expr[cut + 1 :].lstrip("&")) or _strip_answer_text(expr) or None


def _sentence_answer(ans: str) -> str:
    """What a final-answer sentence states: ``"The total number of marbles is 45"`` -> ``"45"``; else ``ans``."""
    m = _SENTENCE_RE.fullmatch(ans)
    if m is None:
        return ans
    return _strip_answer_text(_answer_is_tail(m.group(1))) or ans


def _answer_is(text: str, start: int = 0, final_only: bool = False) -> str | None:
    """The answer of the last "the answer is x" / "final answer: x" from ``start`` on; ``final_only``: only a
    "final answer" counts (one after the last box overrides it, a mere "the answer is correct" does not)."""
    for m in reversed(list(_ANSWER_IS_RE.finditer(text, start))):
        if final_only and "final" not in m.group(0).lower():
            continue
        ans = _sentence_answer(_strip_answer_text(_answer_is_tail(text[m.end() : m.end() + 400])))
        if ans:
            return ans
    return None


def extract_answer(output: str) -> tuple[str | None, str | None]:
    """Pull the final answer out of a model output: ``(answer, method)``, ``(None, None)`` if none.

    Order: last ``\\boxed{}``/``\\fbox{}`` -> last ``#### x`` -> ``<answer>x</answer>`` or "the answer is x"
    (method ``"answer_is"``) -> the last number (a LaTeX expression it is part of, whole); a "final answer"
    after the last box wins over it. Only the text after the last ``</think>`` counts; a text cut inside a
    box or a think block has no answer (docs/grading.md).
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


def _extract(output: str, last_number: bool = True, as_qwen: bool = False) -> tuple[str | None, str | None]:
    """``as_qwen``: as Qwen2.5-Math's parser reads, the whole text (thinking too), a box cut open read up to the cut."""
    if not output:
        return None, None
    text = str(output) if as_qwen else _final_part(str(output))
    if not text:
        return None, None
    if "\\boxed" in text or "\\fbox" in text:
        boxes = _boxes(text)
        if boxes is None and as_qwen:
            ans, method = _last_box_to_the_cut(text)
            return (_equation_result(ans), method) if ans else (None, None)
        if boxes is None:
            return None, None
        ans, method = _last_box(boxes)
        if ans is not None:
            later = _answer_is(text, max(end for *_, end in boxes), final_only=True)
            if later:  # "... \\boxed{255} ... Final Answer: The final answer is $10,455$.": a person reads 10,455
                return _equation_result(later), "answer_is"
            return _equation_result(ans), method
    if "####" in text:
        for m in reversed(list(_HASH_RE.finditer(text))):
            ans = _strip_answer_text(m.group(1))
            if ans:
                return _equation_result(ans), "hash"
    end = text.rfind("</answer>")
    if end > 0:  # r1-zero style "... </think> <answer> x </answer>"
        start = text.rfind("<answer>", 0, end)
        if start >= 0:
            ans = _strip_answer_text(text[start + len("<answer>") : end])
            if ans:
                return _equation_result(ans), "answer_is"
    ans = _answer_is(text)
    if ans:
        return _equation_result(ans), "answer_is"
    if not last_number:
        return None, None
    last = None
    for last in _NUMBER_RE.finditer(text):
        pass
    if last is not None:
        return _latex_around(text, last.start(), last.end()) or last.group(0), "last_number"
    return None, None

