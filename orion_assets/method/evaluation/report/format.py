"""How the report writes numbers and tables: rounding, percentages, money and Markdown tables.

Shared by every section so that a value prints the same way in each table.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

MISSING = "—"


def _ordered(values: list[str], canonical: tuple[str, ...]) -> list[str]:
    present = set(values)
    return [v for v in canonical if v in present] + sorted(present - set(canonical))


def _number(value: object) -> float | None:
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    return None if math.isnan(number) else number


def _count(value: object) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _round(value: float, digits: int = 1) -> Decimal:
    """Round half away from zero, after dropping float noise (100 * (0.4375 - 0.4) is 3.7499...)."""
    exact = Decimal(repr(round(value, 9)))
    return exact.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP) + 0  # + 0: no "-0.0"


def _pct(value: float | None, digits: int = 1) -> str:
    return MISSING if value is None else f"{_round(100.0 * value, digits)}"


def _delta(points: float | None) -> str:
    return MISSING if points is None else f"{_round(points):+}"


def _md_table(header: list[str], rows: list[list[str]], align_first_left: bool = True) -> str:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join([":---" if align_first_left else "---:"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _money(value: float | None) -> str:
    return MISSING if value is None else f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:.4f}"
