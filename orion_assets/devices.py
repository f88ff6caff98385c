"""Which torch device a step runs on."""

from __future__ import annotations


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when CUDA is available, else ``cpu``; ``cpu`` / ``cuda`` / ``cuda:N`` as given, but a
    CUDA device without CUDA is refused here, with the device named, rather than deep inside torch."""
    import torch  # deferred: heavy

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return device
