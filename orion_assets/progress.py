"""Progress and failed calls as records on one Python logger; ``orion run`` draws them (cli/console.py).

Costs nothing when no one listens, so the method, the LLM layer and the trainer report freely.
"""

from __future__ import annotations

import logging
from typing import Any

PROGRESS_LOGGER = "orion_assets.progress"


PROGRESS_ATTR = "orion_progress"


CALL_FAILED = "orion_call_failed"  # extra={CALL_FAILED: True} on a failed LLM call's warning
TERMINAL = "orion_terminal"  # extra={TERMINAL: True}: orion run prints the record in the terminal too

progress_log = logging.getLogger(PROGRESS_LOGGER)


def report_progress(label: str, done: int, total: int | None, *, unit: str = "calls", **fields: Any) -> None:
    """Report ``done`` of ``total`` for ``label``; costs nothing when no one listens.

    For LLM calls the endpoint reports the cached calls first (see ``BaseEndpoint``), so the
    first ``done`` of each batch is its cache hits; a batch ends at ``done == total``."""
    if progress_log.isEnabledFor(logging.INFO):
        progress_log.info("%s: %s/%s %s", label, done, total, unit,
                          extra={PROGRESS_ATTR: {"label": label, "done": int(done), "total": total, "unit": unit,
                                                 **fields}})
