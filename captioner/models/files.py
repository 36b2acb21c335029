"""A model directory on disk: where the embedded default lives, which files make a model, and reading them safely.

A model directory holds ``model.safetensors`` (decoder weights, plus encoder weights when the encoder was
fine-tuned), ``config.json`` (:class:`captioner.config.ModelConfig`), ``vocab.json`` and a ``README.md`` model card;
optionally ``image_mean.safetensors`` and ``tag_calibration.json``. Nothing is pickled: a pickle posing as weights is
refused by its first bytes. Directories are replaced atomically, and a save that was killed is recovered.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from captioner.config import ModelConfig

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "pretrained" / "default"
MODEL_FILES = ("model.safetensors", "config.json", "vocab.json")


IMAGE_MEAN_FILE = "image_mean.safetensors"  # optional: the training images' mean features (captioner visualize)


TAG_CALIBRATION_FILE = "tag_calibration.json"  # optional: how reliable each image-tag word was (guided decoding)


class ModelLoadError(RuntimeError):
    """A model directory is missing or incomplete; the message names the path."""


def check_model_dir(directory: Path) -> None:
    """Refuse a directory that lacks a model's files, saying where a killed save left the previous model if it did.

    Raises:
        ModelLoadError: naming the directory and the missing files.
    """
    missing = [name for name in MODEL_FILES if not (directory / name).is_file()]
    olds = sorted(directory.parent.glob(f".{glob.escape(directory.name)}.old-*"))
    if missing and olds and not directory.exists():
        raise ModelLoadError(f"{directory} is missing, but a save that was interrupted left the previous model "
                             f"in {olds[-1]}: rename it back to {directory.name} (or save the model again)")
    if missing:
        raise ModelLoadError(
            f"{directory} is not a captioner model directory (missing {', '.join(missing)}); "
            "pass a directory written by `captioner train` or Captioner.save_pretrained"
        )


def resolve_model_dir(name_or_dir: str | Path | None) -> Path:
    """``None`` or ``"default"`` → the embedded default model; a training run's directory (``runs/mine``, holding
    ``model/`` and ``train_config.json`` but no ``config.json``) → its best model ``runs/mine/model``; anything
    else is the model directory itself."""
    if name_or_dir is None or str(name_or_dir) == "default":
        return DEFAULT_MODEL_DIR
    path = Path(name_or_dir)
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        return path / "model"
    return path


_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # a pickle stream; a torch.save zip archive


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; anything else (a pickle, a torch checkpoint, a damaged file) is refused
    with a :class:`ModelLoadError` and never unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith(_PICKLE_MAGIC):
        raise ModelLoadError(f"{path} is a pickle or torch.save checkpoint, not safetensors; captioner never loads "
                             "pickles (they can run code): save the model with Captioner.save_pretrained")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelLoadError(f"{path} is not a readable safetensors file ({err}); it is truncated or corrupt: "
                             "copy or train the model again") from None


def load_tag_calibration(directory: Path) -> dict | None:
    """The directory's tag calibration (None: none, or unreadable, which is logged)."""
    path = directory / TAG_CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not {"min_precision", "min_count", "words"} <= set(data):
            raise ValueError("missing keys")
        return data
    except (OSError, ValueError, AttributeError) as err:
        logger.warning("ignoring %s: %s", path, err)
        return None


def load_image_mean(directory: Path, config: ModelConfig) -> torch.Tensor | None:
    """The training images' mean features the directory holds (None: it has none, or they do not fit the model,
    which is logged)."""
    from safetensors.torch import load_file

    path = directory / IMAGE_MEAN_FILE
    if not path.is_file():
        return None
    try:
        mean = load_file(str(path))["mean"]
    except Exception as err:  # a damaged optional file must not stop the model from captioning
        logger.warning("ignoring %s: %s", path, err)
        return None
    if tuple(mean.shape) != tuple(config.feature_shape()):
        logger.warning("ignoring %s: shape %s, the model's features are %s", path, tuple(mean.shape),
                       tuple(config.feature_shape()))
        return None
    return mean.float()


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def recover_interrupted_save(directory: Path) -> None:
    """Clean up after a :meth:`Captioner.save_pretrained` that was killed: a half-written ``.NAME.*`` sibling is
    removed; if the kill came between moving the old directory aside and moving the new one in, the old one
    (``.NAME.old-PID``, complete) is put back first, so no model is ever lost."""
    leftovers = sorted(directory.parent.glob(f".{glob.escape(directory.name)}.*"))
    if not directory.exists():
        olds = [p for p in leftovers if p.name.startswith(f".{directory.name}.old-")]
        if olds:
            newest = max(olds, key=lambda p: p.stat().st_mtime)
            os.replace(newest, directory)
            logger.warning("restored %s from %s (a save was interrupted)", directory, newest.name)
            leftovers.remove(newest)
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)


def replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``, replacing it; the old directory is removed only after the move."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def default_card(config: ModelConfig) -> str:
    decoders = f"{config.num_decoders} {config.cell.upper()} decoders" if config.num_decoders > 1 else (
        f"{config.cell.upper()} decoder")
    return (
        "# captioner model\n\n"
        f"Encoder `{config.encoder}`, {decoders} ({config.inject} image injection), "
        f"hidden {config.hidden_dim}, vocabulary {config.vocab_size}.\n"
    )
