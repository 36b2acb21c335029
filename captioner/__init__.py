"""captioner: image captioning with a pretrained CNN encoder and an LSTM decoder fed the image at every step.

Heavy modules (torch, timm) load only when used: ``from captioner import Captioner`` imports them on access.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Captioner", "GenerationConfig", "ModelConfig", "__version__"]


def __getattr__(name: str):
    if name == "Captioner":
        from captioner.model import Captioner

        return Captioner
    if name == "GenerationConfig":
        from captioner.generate import GenerationConfig

        return GenerationConfig
    if name == "ModelConfig":
        from captioner.config import ModelConfig

        return ModelConfig
    raise AttributeError(f"module 'captioner' has no attribute {name!r}")
