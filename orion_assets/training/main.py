"""The SFT process: ``python -m orion_assets.training.main [--params PARAMS.json]``.

Launched through Dagster Pipes by :func:`orion_assets.io.sft_pipes.run_sft_with_pipes` with the profile's
launcher (``{python} -m ...`` or ``accelerate launch -m ...``), or by hand; docs/sft.md has the protocol.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from dagster_pipes import PipesDefaultContextLoader, PipesEnvVarParamsLoader, open_dagster_pipes

from orion_assets.training.checkpoints import read_train_log
from orion_assets.training.config import TrainParams
from orion_assets.training.trainer import TrainResult, train

PARAMS_EXTRA = "train_params"
RESULT_MESSAGE_KEY = "train_result"
STDOUT_RESULT_KEY = "orion_sft_result"
STEP_LOG_PREFIX = "sft step "  # a Pipes log message: this prefix, then one training-log entry as JSON
LOG_TABLE_ROWS = 40  # rows of the training-log table in the materialization metadata
LOSS_CURVE_POINTS = 500
#: Minimum seconds between two training-log entries streamed to Dagster (the Pipes extra ``log_interval_s``, else
#: this environment variable; default 0: every entry).  All entries are in output_dir/train_log.jsonl and in the
#: materialization metadata regardless.
LOG_INTERVAL_EXTRA = "log_interval_s"
LOG_INTERVAL_ENV = "ORION_SFT_PIPES_LOG_INTERVAL_S"

logger = logging.getLogger("orion_assets.training.main")


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _evenly(entries: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """At most n entries, evenly spaced, always keeping the first and the last."""
    if len(entries) <= n:
        return list(entries)
    idx = sorted({round(i * (len(entries) - 1) / (n - 1)) for i in range(n)})
    return [entries[i] for i in idx]


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def log_summary(log: list[dict[str, Any]]) -> dict[str, Any]:
    """Scalars summarizing a training log (first/last/min loss, logged steps)."""
    losses = [e["loss"] for e in log if e.get("loss") is not None]
    return {
        "log_entries": len(log),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "min_loss": min(losses) if losses else None,
    }


def log_table_markdown(log: list[dict[str, Any]], rows: int = LOG_TABLE_ROWS) -> str:
    cols = ["step", "epoch", "loss", "learning_rate", "grad_norm", "num_tokens", "completion_tokens",
            "mean_token_accuracy", "elapsed_s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for e in _evenly(log, rows):
        lines.append("| " + " | ".join(_fmt(e.get(c)) for c in cols) + " |")
    if len(log) > rows:
        lines.append(f"\n{rows} of {len(log)} logged steps shown (evenly spaced); all in train_log.jsonl.")
    return "\n".join(lines)


def result_metadata(result: TrainResult, log: list[dict[str, Any]]) -> dict[str, Any]:
    """Materialization metadata in the Pipes wire format (raw values, or ``{"raw_value", "type"}``)."""
    meta: dict[str, Any] = {}
    for key, value in result.to_json().items():
        if value is None or key in ("final_path", "log_path", "loss_curve"):
            continue
        meta[key] = value
    for key, value in log_summary(log).items():
        if value is not None:
            meta[key] = value
    meta["final_path"] = {"raw_value": result.final_path, "type": "path"}
    meta["log_path"] = {"raw_value": result.log_path, "type": "path"}
    curve = _evenly([e for e in result.loss_curve if e.get("loss") is not None], LOSS_CURVE_POINTS)
    meta["loss_curve"] = {
        "raw_value": {"step": [e["step"] for e in curve], "loss": [e["loss"] for e in curve]},
        "type": "json",
    }
    meta["train_log"] = {"raw_value": log_table_markdown(log), "type": "md"}
    return meta


def _params_from_file(path: str | None) -> TrainParams:
    if not path:
        raise SystemExit("sft_main: no training parameters (not under Dagster Pipes and no --params PATH)")
    return TrainParams.from_json(Path(path).read_text(encoding="utf-8"))


def _params_from_pipes_context_readonly() -> TrainParams | None:
    """Non-main ranks under Pipes: read the extras without opening the message channel."""
    loader = PipesEnvVarParamsLoader()
    if not loader.is_dagster_pipes_process():
        return None
    with PipesDefaultContextLoader().load_context(loader.load_context_params()) as data:
        extras = data.get("extras") or {}
    return TrainParams.from_json(extras[PARAMS_EXTRA]) if PARAMS_EXTRA in extras else None


def _run_under_pipes(args: argparse.Namespace) -> int:
    with open_dagster_pipes() as pipes:
        extras = pipes.extras or {}
        if PARAMS_EXTRA in extras:
            params = TrainParams.from_json(extras[PARAMS_EXTRA])
        else:
            params = _params_from_file(args.params)
        pipes.log.info(
            f"SFT: base={params.base_model_path} data={params.dataset_path} out={params.output_dir} "
            f"lora={params.lora} max_length={params.max_length} budget={params.budget} max_steps={params.max_steps} "
            f"epochs={params.num_train_epochs} budget_tokens={params.budget_tokens}"
        )

        interval = float(extras.get(LOG_INTERVAL_EXTRA) or os.environ.get(LOG_INTERVAL_ENV) or 0)
        last_sent = [float("-inf")]

        def on_log(entry: dict[str, Any]) -> None:
            now = time.monotonic()
            if now - last_sent[0] >= interval:
                last_sent[0] = now
                pipes.log.info(STEP_LOG_PREFIX + json.dumps(entry))

        result = train(params, on_log=on_log)
        log = read_train_log(params.output_dir)
        if result.dropped_too_long:
            pipes.log.warning(
                f"{result.dropped_too_long} of {result.examples} SFT examples exceed max_length={result.max_length} "
                f"tokens (longest {result.max_example_tokens}) and were dropped, not truncated"
            )
        pipes.log.info(
            f"SFT done: steps={result.steps} epochs={result.epochs} completion_tokens={result.completion_tokens} "
            f"train_loss={result.train_loss} tokens_seen={result.tokens_seen} "
            f"tokens/s={result.train_tokens_per_second} final={result.final_path}"
        )
        pipes.report_custom_message({RESULT_MESSAGE_KEY: result.to_json()})
        if pipes.is_asset_step:
            pipes.report_asset_materialization(
                metadata=result_metadata(result, log), asset_key=extras.get("asset_key")
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orion_assets.training.main", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--params", help="JSON file with TrainParams (used when not launched by Dagster Pipes)")
    args, _unknown = parser.parse_known_args(argv)  # tolerate launcher-added arguments

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        import datasets  # deferred: heavy

        datasets.disable_progress_bars()
    except Exception:  # pragma: no cover - progress bars are cosmetic
        pass

    under_pipes = PipesEnvVarParamsLoader().is_dagster_pipes_process()
    if under_pipes and _rank() == 0:
        return _run_under_pipes(args)

    params = (_params_from_pipes_context_readonly() if under_pipes else None) or _params_from_file(args.params)
    result = train(params)
    if _rank() == 0:
        print(json.dumps({STDOUT_RESULT_KEY: result.to_json()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
