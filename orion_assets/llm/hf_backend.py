"""Local transformers generation, for a machine without an inference server.

The model is loaded once per endpoint, on first use (a fully cached run never loads it). Calls are
grouped by sampling parameters, sorted by prompt length and run in batches of ``batch_size`` with
left padding. A batch's seed derives from its parameters' seed and its call ids, so a re-run of the
same calls samples the same text.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orion_assets.devices import resolve_device
from orion_assets.ids import content_id, model_fingerprint
from orion_assets.llm.cache import FLUSH_EVERY, FLUSH_INTERVAL_S, CallIdentity
from orion_assets.llm.endpoint import BaseEndpoint, Emit, EndpointError
from orion_assets.llm.types import GenerationRequest, GenerationResult, SamplingParams
from orion_assets.store import Store

if TYPE_CHECKING:
    from orion_assets.profiles.schema import EndpointConfig

log = logging.getLogger(__name__)

# Below this many parameters CPU generation runs on one torch thread (see generation_threads). It covers
# SmolLM2-135M-Instruct (134.5 M), measured one thread against two in benchmarks/bench_generation.py;
# larger models were not measured.
SMALL_MODEL_PARAMETERS = 200_000_000
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16", "half": "float16"}  # fmt: skip


def generation_threads(device_type: str, parameters: int, threads: int) -> int:
    """Torch intra-op threads for generating with a model of ``parameters`` on ``device_type``.

    A small model's decoding steps are many tiny kernels: intra-op threads gain little on them, and
    on a busy machine their barriers make every step wait for a descheduled thread (a 135 M model
    on the 2-vCPU dev VM under load: several times slower on two threads than on one).
    """
    return 1 if device_type == "cpu" and parameters < SMALL_MODEL_PARAMETERS else threads


def batch_seed(params: SamplingParams, call_ids: Sequence[str]) -> int:
    return int(content_id("hf-batch-seed", params.seed, sorted(call_ids)), 16) % (2**31 - 1)


_LOADED: weakref.WeakSet[HFEndpoint] = weakref.WeakSet()  # endpoints holding a model, for release_models()


def release_models() -> int:
    """Free every loaded model of the process and the CUDA cache (before SFT takes the GPU); a later call
    loads its model again. How many were freed."""
    freed = 0
    for endpoint in list(_LOADED):
        with endpoint._load_lock:
            if endpoint._model is not None:
                endpoint._model = endpoint._tokenizer = None
                freed += 1
        _LOADED.discard(endpoint)
    gc.collect()
    if freed and "torch" in sys.modules:
        import torch  # deferred: heavy (already imported when a model was loaded)

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return freed


class HFEndpoint(BaseEndpoint):
    backend = "hf"

    def __init__(
        self,
        cfg: EndpointConfig,
        store: Store,
        *,
        role: str,
        model_path: str | None = None,
        model_revision: str | None = None,
        flush_every: int = FLUSH_EVERY,
        flush_interval_s: float = FLUSH_INTERVAL_S,
    ):
        super().__init__(
            cfg, store, role=role, model_revision=model_revision, flush_every=flush_every,
            flush_interval_s=flush_interval_s,
        )  # fmt: skip
        path = model_path or cfg.model
        if not path:
            raise EndpointError(f"endpoints.{role}: the hf backend needs a model directory (model_path or model)")
        self.model_path = Path(path).expanduser().resolve()
        if not self.model_path.is_dir():
            raise EndpointError(f"endpoints.{role}: hf model directory {self.model_path} does not exist")
        self._model_id = f"{self.model_path.name}@{model_fingerprint(self.model_path)}"
        self._model: Any = None
        self._tokenizer: Any = None
        self._device: Any = None
        self._parameters = 0
        self._load_lock = threading.Lock()

    @property
    def identity(self) -> CallIdentity:
        return CallIdentity(self.role, self.backend, None, self._model_id)

    # -- loading ---------------------------------------------------------------------------------

    def _load(self) -> tuple[Any, Any, Any]:
        with self._load_lock:
            if self._model is None:
                import torch  # deferred: heavy
                from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: heavy

                device = torch.device(resolve_device(self.cfg.device))
                dtype_name = _DTYPES.get(self.cfg.dtype, self.cfg.dtype)
                if dtype_name == "auto":
                    if device.type == "cuda":
                        dtype_name = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
                    else:
                        dtype_name = "float32"
                dtype = getattr(torch, dtype_name, None)
                if not isinstance(dtype, torch.dtype):
                    raise EndpointError(f"endpoints.{self.role}.dtype {self.cfg.dtype!r} is not a torch dtype")
                started = time.monotonic()
                tokenizer = AutoTokenizer.from_pretrained(str(self.model_path), local_files_only=True)
                tokenizer.padding_side = "left"
                if tokenizer.pad_token_id is None:
                    tokenizer.pad_token = tokenizer.eos_token
                model = AutoModelForCausalLM.from_pretrained(str(self.model_path), dtype=dtype, local_files_only=True)
                model.to(device)
                model.eval()
                self._model, self._tokenizer, self._device = model, tokenizer, device
                self._parameters = sum(p.numel() for p in model.parameters())
                _LOADED.add(self)
                log.info(
                    "%s: loaded %s on %s (%s) in %.1fs",
                    self.role, self.model_path, device, dtype_name, time.monotonic() - started,
                )  # fmt: skip
        return self._model, self._tokenizer, self._device

    def _eos_ids(self, model: Any, tokenizer: Any) -> set[int]:
        ids: set[int] = set()
        for source in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
            if source is None:
                continue
            ids.update(source if isinstance(source, list | tuple) else [source])
        return ids

    # -- generation ------------------------------------------------------------------------------

    def _prompt(self, tokenizer: Any, request: GenerationRequest) -> str:
        return tokenizer.apply_chat_template(
            [dict(m) for m in request.messages], add_generation_prompt=True, tokenize=False
        )

    def _run(self, todo: Sequence[tuple[str, GenerationRequest]], emit: Emit) -> None:
        import torch  # deferred: heavy

        model, tokenizer, device = self._load()
        eos_ids = self._eos_ids(model, tokenizer)
        prompts = {call_id: self._prompt(tokenizer, request) for call_id, request in todo}
        lengths = {
            call_id: len(ids)
            for call_id, ids in zip(
                prompts, tokenizer(list(prompts.values()), add_special_tokens=False)["input_ids"], strict=True
            )
        }
        # Same parameters together, then by length (short first) so a batch pads little.
        order = sorted(
            todo,
            key=lambda item: (
                item[1].params.max_tokens, item[1].params.temperature, item[1].params.top_p,
                -1 if item[1].params.seed is None else item[1].params.seed, lengths[item[0]], item[0],
            ),
        )  # fmt: skip
        batches: list[list[tuple[str, GenerationRequest]]] = []
        for item in order:
            if batches and len(batches[-1]) < self.cfg.batch_size and batches[-1][0][1].params == item[1].params:
                batches[-1].append(item)
            else:
                batches.append([item])
        threads = torch.get_num_threads()
        wanted = generation_threads(device.type, self._parameters, threads)
        if wanted != threads:
            torch.set_num_threads(wanted)
        try:
            self._run_batches(batches, model, tokenizer, device, eos_ids, prompts, emit)
        finally:
            if wanted != threads:
                torch.set_num_threads(threads)

    def _run_batches(
        self,
        batches: list[list[tuple[str, GenerationRequest]]],
        model: Any,
        tokenizer: Any,
        device: Any,
        eos_ids: set[int],
        prompts: dict[str, str],
        emit: Emit,
    ) -> None:
        import torch  # deferred: heavy

        for batch in batches:
            started = time.monotonic()
            try:
                outputs = self._generate_batch(model, tokenizer, device, eos_ids, batch, prompts)
            except Exception as exc:  # noqa: BLE001 - one failed batch is recorded, the run goes on
                if isinstance(exc, torch.cuda.OutOfMemoryError):
                    torch.cuda.empty_cache()
                error = f"hf generation failed: {type(exc).__name__}: {exc}"[:600]
                log.warning("%s: %s", self.role, error)
                for call_id, _ in batch:
                    emit(call_id, GenerationResult(call_id, None, None, "error", None, None,
                                                   time.monotonic() - started, 0, error, False))  # fmt: skip
                continue
            latency = time.monotonic() - started
            for (call_id, _), (text, finish, n_prompt, n_completion) in zip(batch, outputs, strict=True):
                emit(call_id, GenerationResult(call_id, text, None, finish, n_prompt, n_completion,
                                               latency, 0, None, False))  # fmt: skip

    def _generate_batch(
        self,
        model: Any,
        tokenizer: Any,
        device: Any,
        eos_ids: set[int],
        batch: list[tuple[str, GenerationRequest]],
        prompts: dict[str, str],
    ) -> list[tuple[str, str, int, int]]:
        import torch  # deferred: heavy

        params = batch[0][1].params
        encoded = tokenizer(
            [prompts[call_id] for call_id, _ in batch],
            add_special_tokens=False,
            padding=True,
            return_tensors="pt",
        ).to(device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": sorted(eos_ids) if eos_ids else None,
        }
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False)
        cuda_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices), torch.inference_mode():  # leave the global RNG alone
            torch.manual_seed(batch_seed(params, [call_id for call_id, _ in batch]))
            generated = model.generate(**encoded, **kwargs)
        prompt_width = encoded["input_ids"].shape[1]
        prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()
        results = []
        for row, n_prompt in zip(generated[:, prompt_width:].tolist(), prompt_lengths, strict=True):
            end = next((i for i, token in enumerate(row) if token in eos_ids), None)
            if end is None:
                tokens, n_completion = row, len(row)
                finish = "length" if n_completion >= params.max_tokens else "stop"
            else:
                tokens, n_completion, finish = row[:end], end + 1, "stop"
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            results.append((text, finish, int(n_prompt), n_completion))
        return results

    def __repr__(self) -> str:
        return f"HFEndpoint(role={self.role!r}, model_path={str(self.model_path)!r}, batch_size={self.cfg.batch_size})"
