"""Which server answers for which weights, and under which name: the student's endpoint pointed at a
managed server (``[endpoints.student] serve``), or checked against the user's own.

Evaluation asks for a trained checkpoint by a name that carries its id (``orion-1a2b3c4d5e6f``), so an
adapter left from an earlier training can never answer for a new one: a managed vLLM loads the adapter
under that name at run time, a managed ``transformers serve`` loads it by a path of that name, and a
server the user runs must list it (with ``root`` the checkpoint's directory) or evaluation refuses with the
command that would serve it.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from orion_assets.devices import resolve_device
from orion_assets.export.weights import merge_adapter
from orion_assets.llm.context import model_context_window
from orion_assets.profiles.schema import EndpointConfig, OrionConfig
from orion_assets.serving import managed_server, vllm_client, vllm_host

logger = logging.getLogger(__name__)
SERVED_LINKS = "served"  # $ORION_DATA_DIR/served/<student>/<name>: the paths transformers serve loads
MERGED = "merged"  # $ORION_DATA_DIR/merged/<student>/<name>: base + adapter, for lora_serving = "merged"
MARKER = "orion_checkpoint_id"  # in a served directory: the checkpoint it was made for
DEFAULT_WINDOW = 8192  # vLLM's tokens per step on a CPU when neither the profile nor the model says


class ServedModelError(RuntimeError):
    """The student's server does not serve the checkpoint being scored; the message says how to fix it."""


def checkpoint_name(variant: str, checkpoint_id: str) -> str:
    """The served name of a trained checkpoint: its variant and the first 12 characters of its id."""
    return f"{variant}-{checkpoint_id[:12]}"


def _device(cfg: EndpointConfig) -> str:
    return "cpu" if cfg.device == "cpu" else "cuda" if cfg.device.startswith("cuda") else "auto"


def on_cpu(cfg: EndpointConfig) -> bool:
    """Whether the student's server runs on the CPU: ``device = "cpu"``, or ``auto`` where torch sees no GPU."""
    return cfg.device == "cpu" or (cfg.device == "auto" and resolve_device("auto") == "cpu")


def vllm_flags(config: OrionConfig, model: str) -> vllm_host.HostFlags:
    """vLLM's flags for this host, from the profile and the served model's context window."""
    cfg = config.endpoints.student
    window = model_context_window(model) if Path(model).is_dir() else None
    return vllm_host.host_flags(on_cpu=on_cpu(cfg), sleep_mode=cfg.sleep_mode,
                                gpu_memory_utilization=cfg.gpu_memory_utilization, kv_cache_gib=cfg.kv_cache_gib,
                                max_model_len=cfg.context_window, batched_tokens=window or DEFAULT_WINDOW)


def _plan(config: OrionConfig, student: str, kind: str, model: str, logs: Path) -> managed_server.ServerPlan:
    cfg = config.endpoints.student
    port = managed_server.free_port()
    if cfg.serve_command:  # the user's command: its flags are theirs; sleep only where they asked or on a GPU
        sleeps = kind == "vllm" and (cfg.sleep_mode if cfg.sleep_mode is not None else not on_cpu(cfg))
        flags = vllm_host.HostFlags(False, (), sleep_mode=sleeps)
        command = managed_server.fill_command(cfg.serve_command, port=str(port), model=model)
    else:
        flags = vllm_flags(config, model) if kind == "vllm" else vllm_host.HostFlags(False, ())
        found = vllm_host.find_vllm() if kind == "vllm" else None
        command = managed_server.default_command(kind, model, port, device=_device(cfg), lora_rank=config.sft.lora_r,
                                                 vllm_python=found.python if found else None, host_args=flags.args,
                                                 extra=cfg.serve_args)
    return managed_server.ServerPlan(kind=kind, model=model, port=port, command=tuple(command),
                                     log_path=logs / f"serve-{student}-{kind}-{port}.log", timeout_s=cfg.serve_timeout_s,
                                     env=managed_server.server_env(kind, sleep_mode=flags.sleep_mode, host_env=flags.env),
                                     sleep_mode=flags.sleep_mode, max_restarts=cfg.serve_restarts)


def server_command(config: OrionConfig, student: str, model: str, logs: Path) -> str:
    """The command the run will start for ``student``, after the environment it adds (what ``orion check`` prints)."""
    plan = _plan(config, student, config.endpoints.student.serve, model, logs)
    return " ".join([*(f"{k}={v}" for k, v in plan.env.items()), *plan.command])


def served_endpoint(config: OrionConfig, student: str, *, base_model: str, data_path: Path,
                    checkpoint: dict[str, Any] | None = None) -> tuple[EndpointConfig, str]:
    """``(endpoint settings, model name)`` to ask for ``checkpoint`` (None or ``base``: the base weights).

    ``serve = "none"``: the profile's server; a trained checkpoint must be listed under
    :func:`checkpoint_name` (or come from ``[endpoints.student.variants.<variant>]``). Managed: the server is
    started (or woken) here and kept for the next asset of the process."""
    cfg = config.endpoints.student
    trained = checkpoint is not None and checkpoint["variant"] != "base" and checkpoint["kind"] != "base"
    if trained and checkpoint["variant"] in cfg.variants:
        where = cfg.variants[checkpoint["variant"]]
        return cfg.model_copy(update={"base_url": where["base_url"], "serve": "none"}), where.get("model", cfg.model)
    if cfg.serve == "none":
        if not trained:
            return cfg, cfg.model
        name = checkpoint_name(checkpoint["variant"], checkpoint["checkpoint_id"])
        _check_listed(cfg, name, checkpoint, base_model)
        return cfg, name
    logs = data_path / "logs"
    full = trained and checkpoint["kind"] == "full"
    name = checkpoint_name(checkpoint["variant"], checkpoint["checkpoint_id"]) if trained else None
    weights = base_model
    if trained and cfg.serve == "vllm" and full:
        weights = checkpoint["path"]
    elif trained and cfg.serve == "vllm" and cfg.lora_serving == "merged":
        weights = str(merged_directory(data_path / MERGED / student / name, checkpoint, base_model))
    running = managed_server.server_for(f"{student}/{cfg.serve}/{weights}",
                                        lambda: _plan(config, student, cfg.serve, weights, logs))
    endpoint = cfg.model_copy(update={"base_url": running.plan.base_url})
    if not trained or weights != base_model:
        return endpoint, running.plan.model_name
    if cfg.serve == "vllm":
        listed = {m.id: m for m in vllm_client.list_models(running.plan.base_url)}
        if name not in listed:
            logger.info("loading adapter %s from %s into the vllm server on port %d", name, checkpoint["path"],
                        running.plan.port)
            running.load_adapter(name, checkpoint["path"])
        return endpoint, name
    # transformers serve loads a model by its path: a directory named after the checkpoint
    return endpoint, str(served_directory(data_path / SERVED_LINKS / student / name, checkpoint, base_model))


def merged_directory(target: Path, checkpoint: dict[str, Any], base_model: str) -> Path:
    """``target``: the base weights merged with the checkpoint's LoRA adapter (``lora_serving = "merged"``), made
    once and atomically, with the checkpoint id it was made for beside the weights."""
    if (target / MARKER).is_file() and (target / MARKER).read_text() == checkpoint["checkpoint_id"]:
        return target
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    logger.info("merging adapter %s into %s for serving", checkpoint["path"], base_model)
    merge_adapter(base_model, Path(checkpoint["path"]), tmp)
    (tmp / MARKER).write_text(checkpoint["checkpoint_id"])
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def served_directory(target: Path, checkpoint: dict[str, Any], base_model: str) -> Path:
    """``target``: links to the base model's files and, over them, the checkpoint's (a LoRA adapter: its
    ``adapter_config.json``, which transformers applies on load; a full fine-tune: all of its own), so that a
    server that loads a model by path (``transformers serve``) finds config, weights and adapter in one place.
    Made once, atomically; the links name where the files are, so two checkpoints never share a directory."""
    if (target / MARKER).is_file() and (target / MARKER).read_text() == checkpoint["checkpoint_id"]:
        return target
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sources = ([] if checkpoint["kind"] == "full" else [Path(base_model)]) + [Path(checkpoint["path"])]
    for source in sources:
        for item in source.resolve().iterdir():
            if item.name in {"build_info.json", MARKER} or item.name.startswith("."):
                continue
            (tmp / item.name).unlink(missing_ok=True)
            (tmp / item.name).symlink_to(item.resolve())
    (tmp / MARKER).write_text(checkpoint["checkpoint_id"])
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def _check_listed(cfg: EndpointConfig, name: str, checkpoint: dict[str, Any], base_model: str) -> None:
    """Refuse a server that does not list ``name``, or lists it from another directory, with the fix."""
    try:
        models = {m.id: m for m in vllm_client.list_models(cfg.base_url or "")}
    except vllm_client.ServerError as exc:
        raise ServedModelError(f"the student server at {cfg.base_url} cannot list its models: {exc}") from exc
    path = str(Path(checkpoint["path"]).resolve())
    listed = models.get(name)
    fix = (f"serve it under that name, e.g. `vllm serve {cfg.model or base_model} --enable-lora --lora-modules "
           f"{name}={path}` (or, with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1, POST /v1/load_lora_adapter "
           f'{{"lora_name": "{name}", "lora_path": "{path}"}}), or set [endpoints.student] serve = "vllm" and let '
           "the pipeline do it")
    if listed is None:
        others = ", ".join(sorted(models)) or "nothing"
        raise ServedModelError(f"the student server at {cfg.base_url} does not serve checkpoint "
                               f"{checkpoint['checkpoint_id']} ({checkpoint['variant']}) as `{name}` (it serves: "
                               f"{others}): {fix}")
    if listed.root and Path(listed.root).is_absolute() and str(Path(listed.root).resolve()) != path:
        raise ServedModelError(f"the student server at {cfg.base_url} serves `{name}` from {listed.root}, not from "
                               f"checkpoint {checkpoint['checkpoint_id']}'s {path}: {fix}")


def release_accelerator() -> dict[str, str]:
    """Before SFT on the accelerator the servers and local models hold: sleep or stop each managed server and
    free every local (hf backend) model and the CUDA cache. What each server did."""
    from orion_assets.llm.hf_backend import release_models  # deferred: imports torch

    released = managed_server.release_all()
    release_models()
    return released
