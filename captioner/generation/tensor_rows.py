"""A PyTorch decoder driven by the constrained search (:mod:`captioner.generation.constrained`), whose bookkeeping
runs on numpy arrays: the features, context and state stay tensors on the decoder's device, the tokens come in and
the logits go out as numpy arrays (one copy of ``(rows, V)`` logits per step)."""

from __future__ import annotations

import numpy as np
import torch

from captioner.arrays import as_array
from captioner.models.base import map_tensors, reorder_state, select_context


class TensorDecoder:
    """``decoder`` (any decoder with the contract of :mod:`captioner.models.base`: PyTorch modules, ensembles, the
    ONNX Runtime decoder seen through tensors) with the row operations of
    :class:`captioner.generation.constrained.ArrayRows` on its own context and state."""

    def __init__(self, decoder, device: torch.device) -> None:
        self.decoder, self.device = decoder, device

    @property
    def config(self):
        return self.decoder.config

    def start(self, features: torch.Tensor):
        """The decoder's context and initial state for features ``(B, ...)`` (tensors, kept as they are)."""
        return self.decoder.start(features)

    def step(self, tokens: np.ndarray, context, state) -> tuple[np.ndarray, object, None]:
        """One step for ids ``(N,)``: float32 numpy logits ``(N, V)`` and the new state (tensors)."""
        out = self.decoder.step(torch.from_numpy(np.ascontiguousarray(tokens)).to(self.device), context, state)
        return as_array(out.logits, np.float32), out.state, None

    def _index(self, index: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(index, dtype=np.int64)).to(self.device)

    def take_context(self, context, index: np.ndarray):
        return select_context(context, self._index(index))

    def take_state(self, state, index: np.ndarray):
        return None if state is None else reorder_state(state, self._index(index))

    def put_state(self, state, index: np.ndarray, rows, size: int):
        """``state`` (``size`` rows; None means zeros) with rows ``index`` replaced by ``rows``."""
        if rows is None:
            return state
        if state is None:  # the rows not run keep zeros
            state = map_tensors(lambda t: t.new_zeros((t.shape[0], size, *t.shape[2:])), rows)
        return _scatter_rows(state, rows, self._index(index))


def _scatter_rows(old, new, index: torch.Tensor):
    """``old`` recurrent state (tensors ``(layers, N, H)`` in nested tuples) with rows ``index`` replaced by ``new``'s
    rows ``(layers, len(index), H)``."""
    if isinstance(old, torch.Tensor):
        return old.index_copy(1, index, new.to(old.dtype))
    items = [_scatter_rows(o, n, index) for o, n in zip(old, new)]
    return type(old)(*items) if hasattr(old, "_fields") else type(old)(items)
