"""gpu_check's ``handover`` part: the managed ``transformers serve`` path and the hf backend on one device, with
the device memory in use measured at each hand-over (imported by ``gpu_check.py``).

1. ``transformers serve`` started the way ``[endpoints.student] serve = "transformers"`` starts it
   (``orion_assets.serving.managed_server``), on the device; chat completions through it, timed (generated tokens/s);
2. the server released as before SFT (``serving.handover.release_accelerator``: stopped), then a LoRA SFT run of
   ``--sft-steps`` steps, timed, in this process;
3. hf-backend generation on the device (``make_endpoint(backend="hf")``), timed, then ``release_models()``.

Device memory is ``total - free`` from ``torch.cuda.mem_get_info()`` (every process on the device counts):
before anything, with the server up, after its release, after SFT (its memory freed), with the hf model
loaded, after ``release_models()``. A stage counts as released when the memory in use is back within
``RELEASED_SLACK_GIB`` of the baseline. On the CPU (``--dry-cpu``) the memory fields are null.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

RELEASED_SLACK_GIB = 0.5


def _used_gib(cuda: bool) -> float | None:
    if not cuda:
        return None
    import torch

    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**30


def part_handover(args: Any, work: Path, model: tuple[str, str, int], cuda: bool, sft_data: str) -> dict[str, Any]:
    from openai import OpenAI

    from orion_assets.llm import make_endpoint
    from orion_assets.llm.hf_backend import release_models
    from orion_assets.llm.types import GenerationRequest, SamplingParams
    from orion_assets.profiles.schema import EndpointConfig
    from orion_assets.serving import managed_server
    from orion_assets.serving.handover import release_accelerator
    from orion_assets.store import Store
    from orion_assets.training import TrainParams, train

    path, _, _ = model
    device = "cuda" if cuda else "cpu"
    memory: dict[str, float | None] = {"baseline": _used_gib(cuda)}
    port = managed_server.free_port()
    command = managed_server.default_command("transformers", path, port, device=device, lora_rank=16)
    env = managed_server.server_env("transformers", sleep_mode=False)
    plan = managed_server.ServerPlan(kind="transformers", model=path, port=port, command=tuple(command),
                                     log_path=work / "logs" / f"serve-handover-{port}.log", timeout_s=600, env=env)
    t = time.perf_counter()
    running = managed_server.server_for("handover", lambda: plan)
    started_s = time.perf_counter() - t
    client = OpenAI(base_url=running.plan.base_url, api_key="EMPTY")
    prompts = [f"What is {i} + {i + 2}? Reason step by step." for i in range(args.gen_prompts[0])]
    tokens, t = 0, time.perf_counter()
    for prompt in prompts:
        reply = client.chat.completions.create(model=path, messages=[{"role": "user", "content": prompt}],
                                               max_tokens=args.gen_max_tokens, temperature=0.0)
        tokens += reply.usage.completion_tokens
    served_s = time.perf_counter() - t
    memory["server_up"] = _used_gib(cuda)
    released = release_accelerator()
    memory["server_released"] = _used_gib(cuda)

    t = time.perf_counter()
    result = train(TrainParams(base_model_path=path, dataset_path=sft_data, output_dir=str(work / "handover-sft"),
                               max_steps=args.sft_steps, per_device_train_batch_size=args.sft_batch_size,
                               max_length=args.sft_max_length, save_steps=args.sft_steps, learning_rate=1e-4,
                               device=device))
    sft_s = time.perf_counter() - t
    if cuda:
        import torch

        torch.cuda.empty_cache()
    memory["after_sft"] = _used_gib(cuda)

    cfg = EndpointConfig(backend="hf", device=device, dtype="bfloat16" if cuda else "float32", batch_size=8)
    endpoint = make_endpoint(cfg, Store(work / "handover.duckdb"), role="student", model_path=path)
    params = SamplingParams(max_tokens=args.gen_max_tokens, temperature=0.0)
    requests = [GenerationRequest(messages=({"role": "user", "content": p},), params=params) for p in prompts]
    t = time.perf_counter()
    results = endpoint.generate(requests)
    hf_s = time.perf_counter() - t
    memory["hf_loaded"] = _used_gib(cuda)
    freed = release_models()
    memory["hf_released"] = _used_gib(cuda)
    managed_server.stop_all()

    def back(stage: str) -> bool | None:
        if memory[stage] is None or memory["baseline"] is None:
            return None
        return memory[stage] <= memory["baseline"] + RELEASED_SLACK_GIB

    out = {
        "device": device, "server_start_seconds": started_s, "server_requests": len(prompts),
        "server_tokens_per_second": tokens / served_s if served_s else None, "released": released,
        "sft_seconds": sft_s, "sft_steps": result.steps, "sft_tokens_per_second": result.train_tokens_per_second,
        "hf_tokens_per_second": sum(r.completion_tokens or 0 for r in results) / hf_s if hf_s else None,
        "hf_models_freed": freed, "memory_gib": memory,
        "memory_back_after": {stage: back(stage) for stage in ("server_released", "after_sft", "hf_released")},
    }  # fmt: skip
    print(f"  handover: server up in {started_s:.1f} s, {out['server_tokens_per_second'] or 0:,.0f} tokens/s; SFT "
          f"{sft_s:.1f} s; hf {out['hf_tokens_per_second'] or 0:,.0f} tokens/s; memory {memory}", flush=True)
    return out
