"""The ONNX Runtime decoder seen through PyTorch tensors, for the searches that run on them
(:func:`captioner.generation.generate`: sampling, attention weights, the constrained search of guided decoding),
and :func:`compare_backends`, which checks an export against its PyTorch model. Importing this module imports
PyTorch; :mod:`captioner.export.runtime` does so only when a search needs it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from captioner.arrays import as_array
from captioner.models.base import DecoderStep
from captioner.vocab import Vocabulary


class TorchOrtDecoder:
    """:class:`captioner.export.runtime.OrtDecoder` (``decoder``) taking and giving CPU tensors (context rows on
    dimension 0, state rows on dimension 1), so that the searches of :mod:`captioner.generation` drive it as a
    PyTorch decoder."""

    def __init__(self, decoder: Any) -> None:
        self.decoder = decoder

    @property
    def config(self):
        return self.decoder.config

    def with_extra_rows(self, vocab: Vocabulary) -> TorchOrtDecoder:
        """See :meth:`captioner.export.runtime.OrtDecoder.with_extra_rows`."""
        return TorchOrtDecoder(self.decoder.with_extra_rows(vocab))

    def start(self, features: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Context and initial state for features ``(B, D)`` or ``(B, L, C)``, as tensors."""
        context, state = self.decoder.start(as_array(features, np.float32))
        return tuple(map(torch.from_numpy, context)), tuple(map(torch.from_numpy, state))

    def step(self, tokens: torch.Tensor, context: tuple, state: tuple) -> DecoderStep:
        """One step on tensors: ids ``(B,)`` → logits ``(B, V)``, the new state, the weights ``(B, L)`` or None."""
        logits, new_state, alpha = self.decoder.step(as_array(tokens), tuple(map(as_array, context)),
                                                     tuple(map(as_array, state)))
        return DecoderStep(torch.from_numpy(logits), tuple(map(torch.from_numpy, new_state)),
                           None if alpha is None else torch.from_numpy(alpha))


@torch.inference_mode()
def compare_backends(model, onnx_model: Any, pixels: torch.Tensor, steps: int = 3) -> dict[str, float]:
    """Largest differences between a PyTorch model and its export: encoder features, then the step logits of
    ``steps`` greedy steps (both backends fed PyTorch's greedy tokens, each carrying its own state).

    Args:
        model: the :class:`captioner.pipeline.Captioner` that was exported.
        onnx_model: its export (:class:`captioner.export.runtime.OnnxCaptioner`).
        pixels: preprocessed images ``(B, 3, H, W)``.
        steps: decoding steps to compare.

    Returns:
        ``{"features": max |diff|, "logits": max |diff| over all steps}``.
    """
    features = model.encode(pixels)  # (B, ...) float32
    feature_diff = float((features - onnx_model.encode(pixels)).abs().max())
    torch_context, torch_state = model.decoder.start(features)
    ort_decoder = TorchOrtDecoder(onnx_model.decoder)
    ort_context, ort_state = ort_decoder.start(features)
    tokens = torch.full((features.shape[0],), model.vocab.start_id, dtype=torch.long)
    logit_diff = 0.0
    for _ in range(steps):
        want = model.decoder.step(tokens, torch_context, torch_state)
        got = ort_decoder.step(tokens, ort_context, ort_state)
        logit_diff = max(logit_diff, float((want.logits - got.logits).abs().max()))
        torch_state, ort_state = want.state, got.state
        tokens = want.logits.argmax(dim=-1)
    return {"features": feature_diff, "logits": logit_diff}
