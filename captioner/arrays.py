"""Arrays that may be numpy arrays or PyTorch tensors, without importing PyTorch: the ONNX Runtime path works on
numpy arrays and accepts tensors from callers that have them."""

from __future__ import annotations

import numpy as np


def is_tensor(value) -> bool:
    """True for a PyTorch tensor (checked without importing PyTorch)."""
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def as_array(value, dtype=None) -> np.ndarray:
    """A numpy array of ``value``: a tensor is detached and brought to the CPU (half precision becomes float32)."""
    if is_tensor(value):
        value = value.detach()
        if value.is_floating_point() and value.element_size() < 4:
            value = value.float()
        value = value.cpu().numpy()
    return np.asarray(value, dtype=dtype)


def like(values: np.ndarray, reference):
    """``values`` as a CPU tensor when ``reference`` is a tensor, else as they are."""
    if is_tensor(reference):
        import torch

        return torch.from_numpy(np.ascontiguousarray(values))
    return values
