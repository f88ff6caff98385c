"""Every prompt of the pipeline, as named templates (our wording of the paper's intent).

Templates name their fields in braces (``{problem}``). Rendering is one pass over the template,
so problem text is pure data: braces, ``{question}``, backslashes, ``$`` and unicode in a
problem or a CoT are inserted verbatim and never re-read as placeholders. A profile may replace
any template under ``[prompts]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from orion_assets.llm.types import split_thinking
from orion_assets.vocabulary import PROMPTS

SYSTEM = None  # no system prompt by default: small chat models follow the user turn best

SOLVE = "{problem}\n\nReason step by step and put the final answer in \\boxed{}."

REFLECT_ORION = (
    "Problem:\n{problem}\n\n"
    "Here is a correct solution by a stronger solver:\n{teacher_cot}\n\n"
    "Here is your earlier attempt, which reached a wrong answer:\n{student_attempt}\n\n"
    "Find the step where your attempt went wrong and why. Then write a complete solution in your "
    "own words, following the correct reasoning, that avoids that mistake. Put the final answer in "
    "\\boxed{}.\n\n"
    "Reply in two parts:\nREFLECTION: where and why your attempt went wrong.\n"
    "SOLUTION: the complete solution."
)

# Problems the student never got wrong are refined without an error to reflect on.
REFLECT_NO_ERROR = (
    "Problem:\n{problem}\n\n"
    "Here is a correct solution by a stronger solver:\n{teacher_cot}\n\n"
    "Rewrite this solution in your own words, keeping every step you need and dropping what you "
    "don't. Put the final answer in \\boxed{}.\n\n"
    "Reply in two parts:\nREFLECTION: what the solution needs and what it can drop.\n"
    "SOLUTION: the complete solution."
)

# Sent to the teacher (the `orion_no_reflection` ablation).
REFLECT_NO_REFLECTION = (
    "Problem:\n{problem}\n\n"
    "Your solution:\n{teacher_cot}\n\n"
    "A student attempted the problem and reached a wrong answer:\n{student_attempt}\n\n"
    "Rewrite your solution for this student so that it addresses the mistake in its attempt. "
    "Put the final answer in \\boxed{}.\n\n"
    "Reply in two parts:\nREFLECTION: the student's mistake.\nSOLUTION: the complete solution."
)

JUDGE = (
    "Problem:\n{problem}\n\nSolution:\n{cot}\n\n"
    "Rate the coherence (1-5) and the logical consistency (1-5) of this solution. "
    'Reply with JSON only: {"coherence": <1-5>, "logical_consistency": <1-5>}'
)

TEMPLATES: dict[str, str] = {
    "solve": SOLVE,
    "reflect_orion": REFLECT_ORION,
    "reflect_no_error": REFLECT_NO_ERROR,
    "reflect_no_reflection": REFLECT_NO_REFLECTION,
    "judge": JUDGE,
}
if tuple(TEMPLATES) != PROMPTS:  # the names [prompts] accepts are the vocabulary's: one list, checked here
    raise ImportError(f"prompts.TEMPLATES names {tuple(TEMPLATES)}, the vocabulary's PROMPTS {PROMPTS}")

_FIELD = re.compile(r"\{([a-z_]+)\}")


def render(template: str, **fields: str) -> str:
    """Fill ``{name}`` placeholders in one pass; a missing field is an error, extra fields too."""
    wanted = set(_FIELD.findall(template))
    missing = wanted - fields.keys()
    if missing:
        raise KeyError(f"prompt needs field(s) {sorted(missing)}")
    unused = fields.keys() - wanted
    if unused:
        raise KeyError(f"prompt has no placeholder for {sorted(unused)}")
    return _FIELD.sub(lambda m: fields[m.group(1)], template)


def messages(name: str, overrides: Mapping[str, str | None] | None = None, **fields: str) -> tuple[dict[str, str], ...]:
    """Chat messages for template ``name`` (a profile override wins over the default)."""
    template = (overrides or {}).get(name) or TEMPLATES[name]
    return ({"role": "user", "content": render(template, **fields)},)


# A section marker on a line of its own or opening one: "SOLUTION:", "### Solution",
# "**Solution:**", "2. Solution:", "solution:", "Refined Solution:", "**Corrected solution**".
_LEAD = r"^[ \t]*(?:#{1,6}[ \t]*)?(?:(?:\d+|[A-Za-z])[.)][ \t]*)?(?:\*\*|__)?[ \t]*"
_QUALIFIER = r"(?:(?:refined|revised|corrected|complete|correct|new|final|improved|rewritten)[ \t]+)?"
_TAIL = r"[ \t]*(?:\*\*|__)?[ \t]*(?::[ \t]*(?:\*\*|__)?|(?=\n)|$)[ \t]*"
_SOLUTION = re.compile(
    _LEAD + r"(?P<qualifier>" + _QUALIFIER + r")(?P<word>solution)" + _TAIL, re.IGNORECASE | re.MULTILINE
)
_REFLECTION = re.compile(_LEAD + r"(?:reflection|analysis|error[ \t]+analysis)" + _TAIL, re.IGNORECASE | re.MULTILINE)


def split_reflection(reply: str, *, unmarked_is_solution: bool = False) -> tuple[str | None, str | None]:
    """Split a reflect reply into (reflection notes, solution); only the solution is SFT data.

    Thinking (a ``<think>`` block) is not part of either: pass the reply's answer part
    (:attr:`~orion_assets.llm.GenerationResult.answer`). The solution starts at the first
    solution marker after the reflection marker (so "Solution: step 1" inside the solution, or
    a "Refined Solution:" heading, stays in it) and runs to the end. A line of the notes that
    reads like a marker ("Correct solution: multiply first.") loses to the marker the templates
    ask for (``SOLUTION``, in capitals), and a qualified marker to a bare "Solution" after it, so
    the notes stay out of the solution. A reply without a solution
    marker, or with an empty solution, cannot be split: ``(None, None)``; its text must never
    become SFT data. With ``unmarked_is_solution`` a reply with neither marker is all solution
    (a small model that ignores the two-part format; ``[reflection] unmarked_reply``).
    """
    _, text = split_thinking(None, reply)
    reflection = _REFLECTION.search(text)
    start = reflection.end() if reflection else 0
    markers = list(_SOLUTION.finditer(text, start))
    if not markers:
        if unmarked_is_solution and reflection is None and text.strip() and "<think>" not in reply:
            return None, text.strip()
        return None, None
    # min() keeps the first of the best rank: the templates' "SOLUTION", then a bare "solution".
    solution = min(markers, key=lambda m: (m["word"] != "SOLUTION" or bool(m["qualifier"]), bool(m["qualifier"])))
    body = text[solution.end():].strip()
    if not body:
        return None, None
    notes = text[start:solution.start()].strip() if reflection else text[:solution.start()].strip()
    return notes or None, body
