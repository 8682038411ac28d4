"""Device choice: ``device=auto`` takes a GPU when one is present, else the CPU."""

from __future__ import annotations

import torch

from adamodal.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: {name!r} is not a device (use auto, cpu, cuda, cuda:0 ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for but no CUDA GPU is available (use device=auto)")
    return device
