"""The preflight probes of the LLM endpoints: the backend, the API key, one ``GET /models``, the
served model and variants, and whether the planned prompts and answers fit the context window."""

from __future__ import annotations

import os
from pathlib import Path

from orion_assets.cli.preflight.context import Context
from orion_assets.cli.preflight.net import http_get, is_loopback, why_unreachable
from orion_assets.cli.preflight.plan import Stage
from orion_assets.cli.preflight.report import Section
from orion_assets.profiles.schema import EndpointConfig
from orion_assets.serving import vllm_host
from orion_assets.serving.handover import on_cpu, server_command
from orion_assets.serving.served_weights import checkpoint_name


def check_endpoint(ctx: Context, role: str, *, needed: bool, stages: list[Stage]) -> None:
    cfg: EndpointConfig | None = getattr(ctx.cfg.endpoints, role)
    if cfg is None:
        if role == "judge":
            ctx.report.section("judge: none (no LLM-judge scores)")
        return
    if not needed:
        ctx.report.section(f"{role}: not used by the selected assets")
        return
    if cfg.backend == "replay":
        source = f"file {cfg.replay_file}" if cfg.replay_file else f"the problems' {cfg.replay_field!r} field"
        ctx.report.section(f"{role}: replay backend (answers from {source}): no endpoint to check")
        return
    if cfg.backend == "hf":
        ctx.report.section(f"{role}: hf backend (local generation, device {cfg.device}): no server to check")
        return
    if role == "student" and cfg.serve != "none":
        _check_managed_server(ctx, cfg)
        return
    section = ctx.report.section(f"{role}: openai backend at {cfg.base_url}, model {cfg.model}")
    if not cfg.base_url or not cfg.model:
        section.add("problem", f"set [endpoints.{role}] base_url and model (the openai backend needs both)")
        return
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    if key:
        section.add("ok", f"API key: ${cfg.api_key_env} is set")
    elif is_loopback(cfg.base_url) or not cfg.api_key_env:
        what = f"${cfg.api_key_env} is not set" if cfg.api_key_env else "no api_key_env"
        section.add("ok", f"API key: {what} (a loopback server needs none)")
    else:
        section.add("problem", f"set the environment variable {cfg.api_key_env}: the server at {cfg.base_url} "
                               f"needs an API key ([endpoints.{role}] api_key_env)")
        return
    url = cfg.base_url.rstrip("/") + "/models"
    try:
        status, body, seconds = http_get(url, key, ctx.timeout_s)
    except (OSError, ValueError) as exc:
        section.add("problem", f"cannot reach {url}: {why_unreachable(exc, ctx.timeout_s)}")
        return
    if status in (401, 403):
        section.add("problem", f"GET {url}: HTTP {status}: the server refused the key in ${cfg.api_key_env}")
        return
    if status != 200 or not isinstance(body, dict) or not isinstance(body.get("data"), list):
        hint = " (base_url usually ends in /v1)" if status == 404 else ""
        section.add("problem", f"GET {url}: HTTP {status}, not a model list{hint}")
        return
    cards = {str(c.get("id")): c for c in body["data"] if isinstance(c, dict)}
    section.add("ok", f"GET /models answered in {seconds:.2f} s: {len(cards)} model(s)")
    if cfg.model in cards:
        section.add("ok", f"serves {cfg.model}")
    else:
        shown = ", ".join(sorted(cards)[:5]) or "none"
        section.add("problem", f"the server does not list model {cfg.model} (it lists: {shown})")
    if role == "student" and any(s.asset == "benchmark_predictions" for s in stages):
        _check_variants(ctx, section, cards)
    served_len = cards.get(cfg.model, {}).get("max_model_len")
    _check_window(section, role, cfg, served_len if isinstance(served_len, int) else None, stages)


def _check_variants(ctx: Context, section: Section, served: dict[str, dict]) -> None:
    """Evaluation asks the student server for each trained checkpoint by a name that carries its id
    (``<variant>-<checkpoint id[:12]>``, serving/served_weights.py): a server of the user's own must list each."""
    trained = [row for row in ctx.checkpoints() if row["variant"] != "base" and row.get("kind") != "base"]
    if ctx.selected("student_checkpoint") or not trained:
        section.add("warn", "evaluation asks for each checkpoint by <variant>-<checkpoint id[:12]>: serve them after "
                            "SFT (--lora-modules <name>=<checkpoint path>), or set [endpoints.student] serve = "
                            '"vllm" to let the pipeline load them')
        return
    names = {checkpoint_name(row["variant"], row["checkpoint_id"]): row["path"] for row in trained}
    missing = {name: path for name, path in names.items() if name not in served}
    for name, path in names.items():
        root = str(served.get(name, {}).get("root") or "")
        if root.startswith("/") and Path(root).resolve() != Path(path).resolve():
            section.add("problem", f"serves {name} from {root}, not from its checkpoint {path}: restart it with "
                                   f"--lora-modules {name}={path}")
    if not missing:
        section.add("ok", f"serves every checkpoint: {', '.join(sorted(names))}")
        return
    modules = " ".join(f"{name}={path}" for name, path in sorted(missing.items()))
    section.add("problem", f"does not serve checkpoint(s) {', '.join(sorted(missing))}: start vLLM with "
                           f"--enable-lora --lora-modules {modules}")


def _check_window(section: Section, role: str, cfg: EndpointConfig, served_len: int | None,
                  stages: list[Stage]) -> None:
    """Whether max_tokens plus a typical prompt fits the window the profile or the server states."""
    configured = cfg.context_window
    if configured is not None and served_len is not None and configured > served_len:
        section.add("problem", f"[endpoints.{role}] context_window = {configured} but the server's max_model_len "
                               f"is {served_len}: set context_window = {served_len}")
        return
    window = configured or served_len
    if window is None:
        section.add("warn", f"context window unknown (the server does not say): set [endpoints.{role}] "
                            "context_window to its --max-model-len so long prompts are fitted, not refused")
        return
    where = "the profile" if configured is not None else "max_model_len from /models"
    worst = max(stages, key=lambda s: s.max_tokens + s.prompt_tokens) if stages else None
    if worst is None:
        section.add("ok", f"context window {window} ({where})")
        return
    over = [s for s in stages if s.max_tokens + s.prompt_tokens > window]
    if not over:
        section.add("ok", f"context window {window} ({where}): max_tokens {worst.max_tokens} + a "
                          f"~{worst.prompt_tokens}-token prompt fits ({worst.asset})")
        return
    for stage in over:
        text = (f"{stage.asset}: max_tokens {stage.max_tokens} + a ~{stage.prompt_tokens}-token prompt "
                f"exceeds the {window}-token context window ({where})")
        if stage.budgeted and configured is not None:
            section.add("warn", text + "; max_tokens is cut to fit each prompt")
        elif stage.asset.startswith("refined_cots"):
            section.add("warn", text + f"; set [endpoints.{role}] context_window so that prompts are fitted")
        elif stage.max_tokens <= window:  # vLLM 0.32 cuts max_tokens to the room left; older vLLM refused with a 400
            section.add("warn", text + f"; vLLM cuts such replies short (finish_reason length), other servers may "
                                       f"refuse them: set [endpoints.{role}] context_window so that prompts are fitted")
        else:
            section.add("problem", text + "; the server refuses such requests: lower that max_tokens")


def _check_managed_server(ctx: Context, cfg: EndpointConfig) -> None:
    """A server the run starts itself: which vLLM and Python, what the host allows, and the command it will run
    (per student)."""
    section = ctx.report.section(f"student: a {cfg.serve} server the run starts, sleeps or stops, and stops at the end")
    if cfg.serve == "vllm" and not cfg.serve_command:
        cpu = on_cpu(cfg)
        found = vllm_host.find_vllm()
        if found is None:
            section.add("problem", f"no vLLM found: run `orion install-vllm` (vLLM's CPU build, in an environment of "
                                   f"its own at {vllm_host.default_env()}), `pip install vllm` here on a GPU host, or "
                                   f"set ${vllm_host.PYTHON_VAR} to a Python that has it")
        elif found.version is None:
            section.add("problem", f"{found.python} ({found.found_by}) has no vLLM: run `orion install-vllm` and unset "
                                   f"${vllm_host.PYTHON_VAR}, or point it at a Python that has vLLM")
        else:
            section.add("ok", f"vLLM: {found}")
        if cpu and cfg.sleep_mode:
            section.add("problem", "sleep_mode = true, but vLLM has no sleep mode on a CPU host: leave it unset")
        elif cpu:
            section.add("ok", "CPU host: the server stops before SFT and starts again for evaluation (no sleep mode); "
                              "KV cache as bytes, no chunked prefill (seeded requests crash it on a CPU), float32 "
                              "unless the CPU has bfloat16 (docs/serving.md)")
        else:
            _check_gpu_memory(section, cfg)
    for student in ctx.cfg.all_students:
        config = ctx.cfg.for_student(student.name)
        model = student.name_or_path if student.source == "pretrained" else "<the student_base_model path>"
        try:
            command = server_command(config, student.name, model or "<model>", ctx.data_dir / "logs")
        except ValueError as exc:
            section.add("problem", f"{student.name}: {exc}")
            continue
        section.add("ok", f"{student.name}: {command}")
    if cfg.serve_restarts:
        section.add("ok", f"restarted on its port at most {cfg.serve_restarts} time(s) if it dies mid-step "
                          "([endpoints.student] serve_restarts)")


def _check_gpu_memory(section: Section, cfg: EndpointConfig) -> None:
    try:
        import torch  # deferred: heavy, and only for a vLLM check

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        section.add("problem", f"device = {cfg.device!r}, but torch sees no CUDA GPU")
        return
    free, total = torch.cuda.mem_get_info()
    wanted = cfg.gpu_memory_utilization * total
    level = "ok" if free >= wanted else "problem"
    section.add(level, f"GPU memory: {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB; "
                       f"--gpu-memory-utilization {cfg.gpu_memory_utilization} asks for {wanted / 2**30:.1f} GiB")
