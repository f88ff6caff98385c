"""Why a step of ``orion run`` failed, in a few lines: a user error is one line and exit 2,
a failed check names its expectations and failing ids, anything else its innermost error."""

from __future__ import annotations

import re
from pathlib import Path

# Exceptions that mean the user's input or setup is wrong, not the code: one line, exit 2.
USER_ERRORS = frozenset({"ProfileError", "InputError", "EndpointError"})
HUB_ERRORS = frozenset({"LocalEntryNotFoundError", "OfflineModeIsEnabled", "RepositoryNotFoundError",
                        "GatedRepoError", "RevisionNotFoundError"})
FAILING_IDS_SHOWN = 5


def _error_chain(error) -> list:
    chain = []
    while error is not None and len(chain) < 20:
        chain.append(error)
        error = error.cause or getattr(error, "context", None)
    return chain


# A managed student server that would not start or died once too often (serving/managed_server.py): the step's error
# ends with the server's log, whose last lines are printed with it.
SERVER_ERRORS = frozenset({"ServerStartError", "ServerDiedError"})
SERVER_LOG_LINES = 20


def _first_line(message: str, cls_name: str) -> str:
    """The message's first line without Dagster's ``module.ClsName: `` prefix."""
    text = re.sub(rf"^(?:[\w.]+\.)?{re.escape(cls_name)}: ", "", message.strip())
    return text.splitlines()[0].strip() if text else cls_name


def user_error_message(cls_name: str, message: str, model: str | None = None) -> str | None:
    """The one line to show for a user error (None: not one). ``model``: the profile's student model."""
    if cls_name in USER_ERRORS:
        return _first_line(message, cls_name)
    if cls_name in HUB_ERRORS:
        name = model or "the model"
        why = "HF_HUB_OFFLINE is set" if "outgoing traffic has been disabled" in message else "the Hub refused or could not be reached"
        return (f"{name} is not in the Hugging Face cache and {why} ({cls_name}): download it first "
                f"(hf download {model or '<id>'}) or point [student_model] name_or_path at a local directory")
    return None


def _meta(metadata, key: str, default=None):
    value = metadata.get(key, default)
    return getattr(value, "value", value) if value is not None else default


def _check_failure_lines(event) -> list[str]:
    """Why a blocking check failed, from its evaluation's metadata: per failed variant its
    expectations, counts and a few failing ids (without per-variant verdicts: the overall lists)."""
    evaluation = event.event_specific_data
    metadata = evaluation.metadata or {}
    lines = []
    variants = _meta(metadata, "variants") or {}
    for name, verdict in variants.items() if isinstance(variants, dict) else ():
        if isinstance(verdict, dict) and not verdict.get("passed", True):
            lines.append(str(verdict.get("message") or f"variant {name} failed {verdict.get('failed_expectations')}"))
    if not lines:
        failed = _meta(metadata, "failed_expectations") or _meta(metadata, "failed") or []
        ids = list(_meta(metadata, "failing_ids") or [])
        count = _meta(metadata, "failing_id_count", len(ids))
        rows = _meta(metadata, "row_count")
        shown = ", ".join(map(str, ids[:FAILING_IDS_SHOWN])) + (f" (+{count - FAILING_IDS_SHOWN} more)"
                                                                if count > FAILING_IDS_SHOWN else "")
        lines.append(f"failed expectations: {', '.join(map(str, failed)) or '?'}"
                     + (f" on {rows} rows" if rows is not None else "") + (f"; failing ids: {shown}" if ids else ""))
    return lines


def gate_query(run_id: str) -> str:
    return f"orion sql \"SELECT * FROM orion.quality_gate_results WHERE dagster_run_id = '{run_id}'\""


def report_checks(result, label: str, out, prefix: str = "") -> bool:
    """Print each failed check of a step (its variants, expectations and failing ids); whether any failed."""
    failed = [e for e in result.all_events
              if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.event_specific_data.passed]
    for event in failed:
        evaluation = event.event_specific_data
        variants = _meta(evaluation.metadata or {}, "failed_variants") or []
        scope = f" for variant(s) {', '.join(variants)}" if variants else ""
        kind = "blocking check" if evaluation.blocking else "check"
        print(f"orion run: {prefix}{label}: the {kind} {evaluation.check_name} failed{scope}", file=out)
        for line in _check_failure_lines(event):
            print(f"  {line}", file=out)
    return bool(failed)


def report_failure(result, asset: str, label: str, log_path: Path, debug: bool, err, model: str | None = None) -> int:
    """Print why a step failed, from the run's events, and where to look further; the exit code."""
    run_id = result.run_id
    failed_checks = [
        e for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.event_specific_data.passed
    ]
    failures = [e for e in result.all_events if e.is_step_failure]
    more = [f"the log: {log_path}",
            f"the run in the Dagster UI (dagster dev): http://127.0.0.1:3000/runs/{run_id}"]
    code = 1
    if failed_checks and not failures:
        report_checks(result, label, err)
        if any(e.event_specific_data.check_name == "quality_gate" for e in failed_checks):
            more.insert(0, gate_query(run_id))
    elif failures:
        data = failures[0].step_failure_data
        error = data.error
        chain = _error_chain(error)
        user = next((m for e in chain if (m := user_error_message(e.cls_name, e.message, model)) is not None), None)
        if user is not None and not debug:
            print(f"orion run: {asset}: {user}", file=err)
            return 2
        if data.user_failure_data is not None and data.user_failure_data.description:
            reason = data.user_failure_data.description
        else:
            inner = chain[-1] if chain else None
            reason = f"{inner.cls_name}: {_first_line(inner.message, inner.cls_name)}" if inner else "unknown error"
            if inner is not None and inner.cls_name in SERVER_ERRORS:  # their message ends with the server's log
                tail = inner.message.strip().splitlines()[1:][-SERVER_LOG_LINES:]
                reason += "".join(f"\n    {line}" for line in tail)
        print(f"orion run: {label}: {reason}", file=err)
        code = 2 if user is not None else 1
    else:
        print(f"orion run: {label}: the run failed without a step failure (see the log)", file=err)
    if debug:
        for event in failures:
            if event.step_failure_data.error is not None:
                print(event.step_failure_data.error.to_string(), file=err)
    print("  more: " + "\n        ".join(more), file=err)
    return code
