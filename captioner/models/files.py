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
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from captioner.config import ModelConfig, from_json
from captioner.vocab import Vocabulary

if TYPE_CHECKING:
    import torch

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


def _refuse_pickle(path: Path) -> None:
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith(_PICKLE_MAGIC):
        raise ModelLoadError(f"{path} is a pickle or torch.save checkpoint, not safetensors; captioner never loads "
                             "pickles (they can run code): save the model with Captioner.save_pretrained")


def _unreadable(path: Path, reason: object) -> ModelLoadError:
    return ModelLoadError(f"{path} is not a readable safetensors file ({reason}); it is truncated or corrupt: copy "
                          "or train the model again")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; anything else (a pickle, a torch checkpoint, a damaged file) is refused
    with a :class:`ModelLoadError` and never unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _refuse_pickle(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise _unreadable(path, err) from None


_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_FLOATS = ("F64", "F32", "F16", "BF16")
_MAX_HEADER = 100 << 20  # safetensors' own limit


def weights_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{tensor name: (dtype, shape)}`` from a safetensors file's header, read without loading a tensor: 8 bytes of
    little-endian header length, then JSON giving each tensor's dtype, shape and byte range. The byte ranges are
    checked against the shapes and the file's size, so a header cannot promise tensors the file does not hold.

    Raises:
        ModelLoadError: a pickle posing as weights, or a header that is damaged or does not match the file.
    """
    _refuse_pickle(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8).ljust(8, b"\xff"), "little")
        if length > min(size - 8, _MAX_HEADER):
            raise _unreadable(path, f"its header says {length:,} bytes, the file has {size:,}")
        try:
            header = json.loads(handle.read(length))
        except (ValueError, RecursionError) as err:
            raise _unreadable(path, f"its header is not JSON: {str(err)[:80]}") from None
    if not isinstance(header, dict):
        raise _unreadable(path, "its header is not a JSON object")
    header.pop("__metadata__", None)
    tensors, end = {}, 0
    for name, entry in header.items():
        tensors[name] = _header_entry(path, name, entry)
        end = max(end, entry["data_offsets"][1])
    if end != size - 8 - length:
        raise _unreadable(path, f"its tensors need {end:,} bytes after the header, the file holds {size - 8 - length:,}")
    return tensors


def _header_entry(path: Path, name: str, entry: object) -> tuple[str, tuple[int, ...]]:
    """One tensor's ``(dtype, shape)``, its byte range checked against its shape."""
    try:
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not all(isinstance(n, int) and n >= 0 for n in (*shape, begin, end)):
            raise ValueError
        fits = end - begin == math.prod(shape) * _ITEM_BYTES[dtype]
    except (TypeError, KeyError, ValueError):
        raise _unreadable(path, f"tensor {name[:80]!r} has a damaged header entry") from None
    if not fits:
        raise _unreadable(path, f"tensor {name[:80]!r}: its byte range does not hold a {dtype} tensor of shape "
                                f"{tuple(shape)}")
    return dtype, tuple(shape)


def decoder_shapes(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every decoder tensor ``config`` implies, as ``{name: (shape, the config fields it comes from)}``, by the
    arithmetic of :mod:`captioner.models.pooled` and :mod:`captioner.models.attention` (without building a module);
    an ensemble's members are ``members.<i>.<name>``. ``tests/reliability/test_bad_configs.py`` compares it with built decoders.
    """
    c = config
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[c.cell] * c.hidden_dim
    state = (2 if c.cell == "lstm" else 1) * c.num_layers * c.hidden_dim
    shapes = {"embed.weight": ((c.vocab_size, c.embed_dim), "vocab_size, embed_dim"),
              "head.weight": ((c.vocab_size, c.hidden_dim), "vocab_size, hidden_dim"),
              "head.bias": ((c.vocab_size,), "vocab_size")}
    if c.inject != "init_only":
        shapes["image_proj.0.weight"] = ((c.image_proj_dim, c.encoder_dim), "image_proj_dim, encoder_dim")
        shapes["image_proj.0.bias"] = ((c.image_proj_dim,), "image_proj_dim")
    if c.inject == "init_only" or (c.attention and c.attention_init == "mean"):
        shapes["init_state.weight"] = ((state, c.encoder_dim), "cell, num_layers, hidden_dim, encoder_dim")
        shapes["init_state.bias"] = ((state,), "cell, num_layers, hidden_dim")
    first = c.embed_dim + (0 if c.inject == "init_only" else c.image_proj_dim)
    for layer in range(c.num_layers):
        inputs = first if layer == 0 else c.hidden_dim
        names = ("rnn.{}_l%d" % layer) if not c.attention else f"rnn.{layer}.{{}}"
        shapes[names.format("weight_ih")] = ((gates, inputs), "cell, hidden_dim, embed_dim, image_proj_dim")
        shapes[names.format("weight_hh")] = ((gates, c.hidden_dim), "cell, hidden_dim")
        shapes[names.format("bias_ih")] = shapes[names.format("bias_hh")] = ((gates,), "cell, hidden_dim")
    if c.attention:
        shapes["attention.key.weight"] = ((c.attention_dim, c.image_proj_dim), "attention_dim, image_proj_dim")
        shapes["attention.key.bias"] = ((c.attention_dim,), "attention_dim")
        shapes["attention.query.weight"] = ((c.attention_dim, c.hidden_dim), "attention_dim, hidden_dim")
        shapes["attention.score.weight"] = ((1, c.attention_dim), "attention_dim")
        if c.attention_gate:
            shapes["attention.gate.weight"] = ((c.image_proj_dim, c.hidden_dim), "image_proj_dim, hidden_dim")
            shapes["attention.gate.bias"] = ((c.image_proj_dim,), "image_proj_dim")
    if c.num_decoders == 1:
        return shapes
    return {f"members.{i}.{name}": shape for i in range(c.num_decoders) for name, shape in shapes.items()}


def check_weights_fit(path: Path, config: ModelConfig) -> None:
    """Refuse ``model.safetensors`` when its header's decoder tensors are not the ones ``config`` implies (missing,
    extra, wrongly shaped, not floating point), or its encoder tensors are there when ``encoder_weights_in_file`` is
    false or missing when it is true; nothing is loaded.

    Raises:
        ModelLoadError: naming the tensor and the config fields its shape comes from.
    """
    tensors = weights_header(path)
    expected = {f"decoder.{name}": shape for name, shape in decoder_shapes(config).items()}
    problem = None
    missing = [name for name in expected if name not in tensors]
    extra = [name for name in tensors if name.startswith("decoder.") and name not in expected]
    has_encoder = any(name.startswith("encoder.") for name in tensors)
    wrong = [name for name in expected if name in tensors and tensors[name][1] != expected[name][0]]
    if missing:
        problem = f"{len(missing)} tensor(s) config.json implies are missing, e.g. {missing[0]}"
    elif wrong:
        name = wrong[0]
        problem = f"{name} is {tensors[name][1]}, config.json makes it {expected[name][0]} from {expected[name][1]}"
    elif extra:
        problem = f"{len(extra)} tensor(s) config.json does not describe, e.g. {extra[0][:80]}"
    elif has_encoder != config.encoder_weights_in_file:
        problem = (f"encoder_weights_in_file is {str(config.encoder_weights_in_file).lower()} but the file "
                   f"{'holds' if has_encoder else 'lacks'} encoder weights")
    elif any(tensors[name][0] not in _FLOATS for name in expected):
        problem = "a decoder tensor is not floating point"
    if problem:
        raise ModelLoadError(f"{path} does not fit config.json and vocab.json ({problem}); the files come from "
                             "different models")


def read_config(path: Path) -> ModelConfig:
    """``config.json`` with every field's type and range checked (:func:`captioner.config.check_model_fields`) and
    the encoder known to the registry.

    Raises:
        ModelLoadError: in one line naming the file and the field.
    """
    from captioner.models import encoders

    try:
        config = from_json(ModelConfig, path)
        config.feature_shape()  # an attention model needs its feature map's size
    except ValueError as err:
        text = str(err).splitlines()[0]
        raise ModelLoadError(text if text.startswith(str(path)) else f"{path}: {text}") from None
    try:
        encoders.get_spec(config.encoder)
    except ValueError as err:
        raise ModelLoadError(f"{path}: {err} (a model from a newer captioner?)") from None
    return config


def validate_model_dir(directory: Path) -> tuple[ModelConfig, Vocabulary]:
    """Check a model directory before anything is built from it: its files are there, ``config.json`` is within
    the ranges of :mod:`captioner.config`, ``vocab.json`` has ``vocab_size`` words and the tensors in the header of
    ``model.safetensors`` have the shapes the config implies (the header alone is read). A hostile config.json is
    thus refused before a tensor is allocated.

    Returns:
        The configuration and the vocabulary.

    Raises:
        ModelLoadError: one line naming the file and the field.
    """
    check_model_dir(directory)
    config = read_config(directory / "config.json")
    path = directory / "vocab.json"
    try:
        vocab = Vocabulary.load(path)
    except (ValueError, RecursionError) as err:  # Vocabulary.load names the file unless the JSON is bad
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelLoadError(text if text.startswith(str(path)) else f"{path}: not valid JSON ({text[:120]})") from None
    if len(vocab) != config.vocab_size:
        raise ModelLoadError(f"{directory / 'vocab.json'}: vocabulary has {len(vocab)} tokens but config.json's "
                             f"vocab_size is {config.vocab_size}; the files come from different models")
    check_weights_fit(directory / "model.safetensors", config)
    return config, vocab


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
