"""Which server answers for which weights, and under which name: the student's endpoint pointed at a
managed server (``[endpoints.student] serve``), or at the user's own, and the accelerator handed over to SFT.

Evaluation asks for a trained checkpoint by a name that carries its id
(:func:`orion_assets.serving.served_weights.checkpoint_name`): a managed vLLM loads the adapter under that name
at run time, a managed ``transformers serve`` loads it by a path of that name, and a server the user runs must
list it (:mod:`orion_assets.serving.user_server`) or evaluation refuses with the command that would serve it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from orion_assets.devices import resolve_device
from orion_assets.llm.context import model_context_window
from orion_assets.profiles.schema import EndpointConfig, OrionConfig
from orion_assets.serving import managed_server, vllm_client, vllm_host
from orion_assets.serving.served_weights import MERGED, SERVED_LINKS, AskedWeights, merged_directory, served_directory
from orion_assets.serving.user_server import check_listed

logger = logging.getLogger(__name__)
DEFAULT_WINDOW = 8192  # vLLM's tokens per step on a CPU when neither the profile nor the model says


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


def _plan(config: OrionConfig, student: str, model: str, logs: Path) -> managed_server.ServerPlan:
    """How ``[endpoints.student] serve`` (its kind) is started for ``student`` on the weights at ``model``."""
    cfg = config.endpoints.student
    kind = cfg.serve
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
    plan = _plan(config, student, model, logs)
    return " ".join([*(f"{k}={v}" for k, v in plan.env.items()), *plan.command])


def served_endpoint(config: OrionConfig, student: str, asked: AskedWeights,
                    data_path: Path) -> tuple[EndpointConfig, str]:
    """``(endpoint settings, model name)`` to ask for the weights ``asked`` (:meth:`AskedWeights.of` a
    ``student_checkpoint`` row, or of None for the base weights).

    ``serve = "none"``: the profile's server; a trained checkpoint must be listed under its name (or come from
    ``[endpoints.student.variants.<variant>]``). Managed: the server is started (or woken) here and kept for the
    next asset of the process."""
    cfg = config.endpoints.student
    if asked.trained and asked.variant in cfg.variants:
        where = cfg.variants[asked.variant]
        return cfg.model_copy(update={"base_url": where["base_url"], "serve": "none"}), where.get("model", cfg.model)
    if cfg.serve == "none":
        if not asked.trained:
            return cfg, cfg.model
        check_listed(cfg, asked)
        return cfg, asked.name
    weights = asked.base_model
    if asked.trained and cfg.serve == "vllm" and asked.full:
        weights = asked.path
    elif asked.trained and cfg.serve == "vllm" and cfg.lora_serving == "merged":
        weights = str(merged_directory(data_path / MERGED / student / asked.name, asked))
    running = managed_server.server_for(f"{student}/{cfg.serve}/{weights}",
                                        lambda: _plan(config, student, weights, data_path / "logs"))
    endpoint = cfg.model_copy(update={"base_url": running.plan.base_url})
    if not asked.trained or weights != asked.base_model:
        return endpoint, running.plan.model_name
    if cfg.serve == "vllm":
        listed = {m.id for m in vllm_client.list_models(running.plan.base_url)}
        if asked.name not in listed:
            logger.info("loading adapter %s from %s into the vllm server on port %d", asked.name, asked.path,
                        running.plan.port)
            running.load_adapter(asked.name, asked.path)
        return endpoint, asked.name
    # transformers serve loads a model by its path: a directory named after the checkpoint
    return endpoint, str(served_directory(data_path / SERVED_LINKS / student / asked.name, asked))


def release_accelerator() -> dict[str, str]:
    """Before SFT on the accelerator the servers and local models hold: sleep or stop each managed server and
    free every local (hf backend) model and the CUDA cache. What each server did."""
    from orion_assets.llm.hf_backend import release_models  # deferred: imports torch

    released = managed_server.release_all()
    release_models()
    return released
