"""Answer extraction and grading for math-reasoning outputs; rules and stages in docs/grading.md.

``extract`` finds the final answer, ``compare`` decides what it can in process, ``pool`` runs
math_verify in worker processes with a hard timeout and holds ``grade``/``grade_batch``.
"""

from orion_assets.method.grading.compare import GSM_HARD_RULES, Verdict, answer_key, normalize_gold
from orion_assets.method.grading.extract import extract_answer
from orion_assets.method.grading.pool import DEFAULT_TIMEOUT_S, grade, grade_batch, shutdown_pool

__all__ = [
    "Verdict",
    "extract_answer",
    "normalize_gold",
    "answer_key",
    "grade",
    "grade_batch",
    "shutdown_pool",
    "GSM_HARD_RULES",
    "DEFAULT_TIMEOUT_S",
]
