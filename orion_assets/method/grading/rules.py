"""The grading rules of ``GRADING_RULES``, one entry point each: how a rule reads a reply and compares it.

Each returns a ``Verdict`` when it can decide in process, else a ``_Pending`` item for the math_verify
worker processes of :mod:`.pool`. ``strict`` is this project's rule; ``qwen_math`` and ``lighteval``
follow the evaluations published numbers used, so that ours can be set beside them (docs/grading.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from orion_assets.method.grading.compare import (
    LIGHTEVAL,
    MATH_VERIFY,
    Verdict,
    _Pending,
    _wrap_for_mv,
    compare_answer,
    compare_items,
    normalize_gold,
    several_items,
)
from orion_assets.method.grading.extract import _all_boxes, _extract, _final_part
from orion_assets.vocabulary import GRADING_RULES

log = logging.getLogger(__name__)

# lighteval's Metrics.latex_gold_metric / expr_gold_metric compare numbers at 5 decimals (precision=5).
LIGHTEVAL_FLOAT_ROUNDING = 5

Prepared = Verdict | _Pending


def _compare(output: str, gold, benchmark: str | None, numbers: str, as_qwen: bool) -> Prepared:
    """The extractor's answer compared with the gold; for a gold of several items, several boxes (the last
    holding one item) are compared together with its items, as a set (docs/grading.md)."""
    extracted, method = _extract(output, as_qwen=as_qwen)
    if method in ("boxed", "fbox") and several_items(gold, benchmark):
        boxes = _all_boxes(output, as_qwen)
        if len(boxes) > 1 and not several_items(boxes[-1]):
            return compare_items(boxes, "boxes", gold, benchmark, numbers)
    return compare_answer(extracted, method, gold, benchmark, numbers=numbers)


def strict_rule(output: str, gold, benchmark: str | None, truncated: bool) -> Prepared:
    """This project's rule: a reply cut at the length limit is never correct; GSM-Hard's numbers at the
    precision the answer shows, other numbers at 1e-9, AIME integers exactly."""
    if truncated:  # never correct; a closed final answer is still shown
        extracted, method = _extract(output, last_number=False)
        return Verdict(False, extracted, method, "truncated")
    return _compare(output, gold, benchmark, "precision", as_qwen=False)


def qwen_math_rule(output: str, gold, benchmark: str | None, truncated: bool) -> Prepared:
    """Qwen2.5-Math's evaluation: the answer is read whatever the finish reason (a box cut open up to the
    cut), numbers by its ``math_equal`` (relative 1e-4, the gold x100 and /100 too) on every benchmark."""
    del truncated  # its evaluation never looks at the finish reason
    return _compare(output, gold, benchmark, "math_equal", as_qwen=True)


def lighteval_rule(output: str, gold, benchmark: str | None, truncated: bool) -> Prepared:
    """lighteval's math metrics: math_verify reads the reply after any thinking, a closed box first, whatever
    the finish reason, and compares numbers rounded to 5 decimals. Always decided in a worker."""
    del truncated  # lighteval grades the text it got, cut or not
    text = _final_part(output)
    if not text or not text.strip():
        return Verdict(False, None, None, "no_answer")
    return _Pending(None, "math_verify", _wrap_for_mv(normalize_gold(gold, benchmark)), text, mode=LIGHTEVAL)


RULES: dict[str, Callable[[str, object, str | None, bool], Prepared]] = {
    "strict": strict_rule, "qwen_math": qwen_math_rule, "lighteval": lighteval_rule,
}
assert tuple(RULES) == GRADING_RULES, "every rule of GRADING_RULES has one entry point here"


def check_rule(rule: object) -> str:
    """``rule`` if it names a grading rule, else a ``ValueError`` that lists them."""
    if not isinstance(rule, str) or rule not in RULES:
        raise ValueError(f"grading rule must be one of {', '.join(map(repr, GRADING_RULES))}; got {rule!r}")
    return rule


def prepare(rule: str, output, gold, benchmark: str | None, truncated: bool) -> Prepared:
    """The rule's verdict or worker item for one reply; never raises."""
    try:
        return RULES[rule]("" if output is None else str(output), gold, benchmark, bool(truncated))
    except Exception as exc:  # noqa: BLE001 - grading must never raise
        log.debug("grading prepare failed", exc_info=True)
        return Verdict(False, None, None, f"error:{type(exc).__name__}")


def verify_item(gold: str, pred: str, mode: str, gold_cache: dict) -> bool | tuple[bool, str | None]:
    """Run in a worker process: math_verify's verdict on one item; a lighteval item also gives the answer read."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify  # deferred: heavy, worker only

    if mode == MATH_VERIFY:
        gold_config, pred_config, rounding = None, None, 6  # math_verify's defaults
    else:  # lighteval: gold as LaTeX or a plain expression, the reply with a box first
        gold_config = (LatexExtractionConfig(), ExprExtractionConfig())
        pred_config = (ExprExtractionConfig(), LatexExtractionConfig(boxed_match_priority=0))
        rounding = LIGHTEVAL_FLOAT_ROUNDING
    key = (mode, gold)
    g = gold_cache.get(key)
    if g is None:
        g = parse(gold, parsing_timeout=None) if gold_config is None else parse(
            gold, extraction_config=gold_config, parsing_timeout=None)
        if len(gold_cache) > 4096:
            gold_cache.clear()
        gold_cache[key] = g
    p = parse(pred, parsing_timeout=None) if pred_config is None else parse(
        pred, extraction_config=pred_config, fallback_mode="first_match", extraction_mode="any_match",
        parsing_timeout=None)
    ok = bool(g) and bool(p) and bool(verify(g, p, float_rounding=rounding, timeout_seconds=None))
    if mode == MATH_VERIFY:
        return ok
    return ok, (str(p[-1]) if p else None)
