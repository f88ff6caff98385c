"""Answer extraction and grading for math-reasoning outputs; rules and stages in docs/grading.md.

``extract`` finds the final answer, ``compare`` decides what it can in process, ``rules`` holds one
entry point per grading rule (``GRADING_RULES``), ``pool`` runs math_verify in worker processes with a
hard timeout and holds ``grade``/``grade_batch``.
"""

from orion_assets.method.grading.compare import Verdict, answer_key, normalize_gold
from orion_assets.method.grading.extract import extract_answer
from orion_assets.method.grading.pool import DEFAULT_TIMEOUT_S, grade, grade_batch, shutdown_pool
from orion_assets.method.grading.rules import check_rule

__all__ = [
    "Verdict",
    "extract_answer",
    "normalize_gold",
    "answer_key",
    "grade",
    "grade_batch",
    "check_rule",
    "shutdown_pool",
    "DEFAULT_TIMEOUT_S",
]
