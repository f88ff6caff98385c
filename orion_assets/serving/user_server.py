"""A student server the user runs (``[endpoints.student] serve = "none"``): checked before evaluation asks it for a
trained checkpoint. It must list the checkpoint under its name (:func:`orion_assets.serving.served_weights.checkpoint_name`),
from the checkpoint's own directory, or evaluation refuses with the command that would serve it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from orion_assets.serving import vllm_client

if TYPE_CHECKING:
    from orion_assets.profiles.schema import EndpointConfig
    from orion_assets.serving.served_weights import AskedWeights


class ServedModelError(RuntimeError):
    """The student's server does not serve the checkpoint being scored; the message says how to fix it."""


def check_listed(cfg: EndpointConfig, asked: AskedWeights) -> None:
    """Refuse a server that does not list ``asked.name``, or lists it from another directory, with the fix."""
    name = asked.name
    try:
        models = {m.id: m for m in vllm_client.list_models(cfg.base_url or "")}
    except vllm_client.ServerError as exc:
        raise ServedModelError(f"the student server at {cfg.base_url} cannot list its models: {exc}") from exc
    path = str(Path(asked.path).resolve())
    listed = models.get(name)
    fix = (f"serve it under that name, e.g. `vllm serve {cfg.model or asked.base_model} --enable-lora --lora-modules "
           f"{name}={path}` (or, with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1, POST /v1/load_lora_adapter "
           f'{{"lora_name": "{name}", "lora_path": "{path}"}}), or set [endpoints.student] serve = "vllm" and let '
           "the pipeline do it")
    if listed is None:
        others = ", ".join(sorted(models)) or "nothing"
        raise ServedModelError(f"the student server at {cfg.base_url} does not serve checkpoint "
                               f"{asked.checkpoint_id} ({asked.variant}) as `{name}` (it serves: {others}): {fix}")
    if listed.root and Path(listed.root).is_absolute() and str(Path(listed.root).resolve()) != path:
        raise ServedModelError(f"the student server at {cfg.base_url} serves `{name}` from {listed.root}, not from "
                               f"checkpoint {asked.checkpoint_id}'s {path}: {fix}")
