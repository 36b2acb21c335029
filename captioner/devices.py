"""Choosing a torch device by name (``auto``, ``cpu``, ``cuda``, ``mps``)."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else Apple's MPS, else the CPU; asking for a device this machine lacks is an
    error that says what to do."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if name == "mps" and not mps:
        raise ValueError("device mps was asked for but this machine has no Apple MPS device; use --device cpu")
    return torch.device(name)
