"""captioner: image captioning with a pretrained CNN encoder and an LSTM decoder fed the image at every step.

Heavy modules (torch, timm) load only when used: ``from captioner import Captioner`` imports them on access.
"""

from __future__ import annotations

from captioner.version import __version__

__all__ = ["Captioner", "GenerationConfig", "ModelConfig", "__version__"]


def __getattr__(name: str):
    if name == "Captioner":
        from captioner.pipeline import Captioner

        return Captioner
    if name == "GenerationConfig":
        from captioner.generation.config import GenerationConfig

        return GenerationConfig
    if name == "ModelConfig":
        from captioner.config import ModelConfig

        return ModelConfig
    raise AttributeError(f"module 'captioner' has no attribute {name!r}")
