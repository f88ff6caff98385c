"""Replay: answers that the data already holds (a column of the problem row, or a JSONL trace file).

GSM8K solutions become clean CoTs: the ``<<48/2=24>>`` calculator annotations go, and the
``#### 72`` line becomes a closing sentence with ``\\boxed{72}``. A solution that already has a
``\\boxed{}`` answer is kept as it is.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orion_assets.llm.cache import CallIdentity
from orion_assets.llm.endpoint import BaseEndpoint, Emit, EndpointError
from orion_assets.llm.types import GenerationRequest, GenerationResult
from orion_assets.records import InputError, read_records
from orion_assets.store import Store

if TYPE_CHECKING:
    from orion_assets.profiles.schema import EndpointConfig

CALC_ANNOTATION = re.compile(r"<<[^<>]*>>")
GSM8K_FINAL = re.compile(r"^[ \t]*####[ \t]*(?P<answer>.*?)[ \t]*$", re.MULTILINE)
THOUSANDS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")


def has_boxed(text: str) -> bool:
    return "\\boxed{" in text or "\\boxed " in text


def gsm8k_to_cot(solution: str) -> str:
    """A GSM8K solution as a clean CoT ending in ``\\boxed{answer}``; other texts unchanged."""
    if has_boxed(solution):
        return solution
    match = None
    for match in GSM8K_FINAL.finditer(solution):
        pass  # the last "####" line is the answer
    if match is None:
        return solution
    answer = match.group("answer").strip()
    if THOUSANDS.match(answer):
        answer = answer.replace(",", "")
    body = CALC_ANNOTATION.sub("", solution[: match.start()] + solution[match.end() :]).strip()
    closing = f"The final answer is $\\boxed{{{answer}}}$."
    return f"{body}\n{closing}" if body else closing


def load_replay_file(path: str | Path) -> dict[str, str]:
    """``problem_id`` -> ``cot`` from a JSONL, JSON or Parquet file (the last row for an id wins)."""
    file = Path(path).expanduser()
    table: dict[str, str] = {}
    try:
        for number, record in read_records(file):
            if "problem_id" not in record or "cot" not in record:
                raise EndpointError(f"replay file {file} row {number}: needs the fields 'problem_id' and 'cot'")
            table[str(record["problem_id"])] = record["cot"]
    except InputError as exc:
        raise EndpointError(f"replay file: {exc}") from None
    return table


class ReplayEndpoint(BaseEndpoint):
    backend = "replay"

    def __init__(self, cfg: EndpointConfig, store: Store, *, role: str, **kwargs: Any):
        super().__init__(cfg, store, role=role, **kwargs)
        if not cfg.replay_file and not cfg.replay_field:
            raise EndpointError(f"endpoints.{role}: the replay backend needs replay_field or replay_file")
        self._file_table: dict[str, str] | None = None

    @property
    def source(self) -> str:
        if self.cfg.replay_file:
            return f"file:{Path(self.cfg.replay_file).name}"
        return f"field:{self.cfg.replay_field}"

    @property
    def identity(self) -> CallIdentity:
        return CallIdentity(self.role, self.backend, None, self.source)

    def _table(self) -> dict[str, str]:
        if self._file_table is None:
            self._file_table = load_replay_file(self.cfg.replay_file or "")
        return self._file_table

    def replay(self, request: GenerationRequest) -> tuple[str | None, str | None]:
        """(cot, None) or (None, error naming the problem and the field)."""
        row: Mapping[str, Any] | None = request.replay_row
        if row is None:
            return None, "replay: the request carries no replay_row (the problem row with problem_id)"
        problem_id = row.get("problem_id")
        if self.cfg.replay_file:
            if problem_id is None:
                return None, "replay: the replay_row has no 'problem_id' to look up in the replay file"
            value = self._table().get(str(problem_id))
            where = f"replay file {self.cfg.replay_file} has no 'cot' for problem_id {problem_id!s}"
        else:
            field = self.cfg.replay_field or ""
            value = row.get(field)
            where = f"problem {problem_id!s} has no value in the replay field '{field}'"
        if value is None or (isinstance(value, str) and not value.strip()):
            return None, f"replay: {where}"
        return gsm8k_to_cot(str(value)), None

    def key_extra(self, request: GenerationRequest) -> object:
        text, error = self.replay(request)
        digest = hashlib.sha256((text if text is not None else f"error:{error}").encode("utf-8")).hexdigest()
        return {"replay": digest[:32]}

    def _run(self, todo: Sequence[tuple[str, GenerationRequest]], emit: Emit) -> None:
        for call_id, request in todo:
            text, error = self.replay(request)
            emit(
                call_id,
                GenerationResult(
                    call_id=call_id,
                    text=text,
                    reasoning=None,
                    finish_reason="error" if error else "stop",
                    prompt_tokens=None,
                    completion_tokens=None,
                    latency_s=0.0,
                    retries=0,
                    error=error,
                    cached=False,
                ),
            )
