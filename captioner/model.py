"""``Captioner``: encoder + decoder + vocabulary, saved and loaded as one directory.

A model directory holds ``model.safetensors`` (decoder weights, plus encoder weights when the encoder was
fine-tuned), ``config.json`` (:class:`captioner.config.ModelConfig`), ``vocab.json`` and a ``README.md`` model card.
Nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from captioner import encoders
from captioner.checkpoint import save_error
from captioner.config import ModelConfig, from_json, to_json
from captioner.decoder import build_decoder
from captioner.generate import GenerationConfig, Hypothesis, generate
from captioner.vocab import Vocabulary

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).parent / "pretrained" / "default"
MODEL_FILES = ("model.safetensors", "config.json", "vocab.json")
IMAGE_MEAN_FILE = "image_mean.safetensors"  # optional: the training images' mean features (captioner visualize)
TAG_CALIBRATION_FILE = "tag_calibration.json"  # optional: how reliable each image-tag word was (guided decoding)


class ModelLoadError(RuntimeError):
    """A model directory is missing or incomplete; the message names the path."""


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


def complete_config(config: ModelConfig, vocab_size: int, image_size: int = 0) -> ModelConfig:
    """Fill in what the vocabulary and the encoder decide: sizes, preprocessing and, for attention, the feature
    map's locations.

    Args:
        config: the architecture.
        vocab_size: the vocabulary's size.
        image_size: 0 keeps the encoder's own preprocessing; N resizes the shorter side to N and center-crops N x N
            (the whole of a square image, where the encoder's own crop cuts its borders off).
    """
    spec = encoders.get_spec(config.encoder)
    preprocess = dataclasses.replace(spec.preprocess, resize=image_size, crop=image_size) if image_size else (
        spec.preprocess)
    if config.attention:
        return dataclasses.replace(config, vocab_size=vocab_size, preprocess=preprocess, encoder_dim=spec.out_dim,
                                   feature_locations=encoders.feature_locations(spec.name, preprocess.crop))
    return dataclasses.replace(config, vocab_size=vocab_size, preprocess=preprocess,
                               encoder_dim=encoders.pooled_dim(spec.out_dim, config.pooling))


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


class ImageCaptioning:
    """Captioning of PIL images for anything with ``transform`` (image → ``(3, H, W)``), ``encode`` (pixels →
    features), ``caption_features`` (features → hypotheses) and ``vocab``: the PyTorch :class:`Captioner` and the
    ONNX Runtime one (:class:`captioner.onnx_backend.OnnxCaptioner`)."""

    def caption_images(
        self, images: Sequence[Image.Image], config: GenerationConfig | None = None
    ) -> list[list[Hypothesis]]:
        """Preprocess, encode and search RGB PIL images; hypotheses per image, best first."""
        if not images:
            return []
        pixels = torch.stack([self.transform(img) for img in images])  # (B, 3, H, W)
        return self.caption_features(self.encode(pixels), config)

    def caption(self, images: Sequence[Image.Image], config: GenerationConfig | None = None) -> list[str]:
        """Caption RGB PIL images (best hypothesis each)."""
        return [self.vocab.decode(h[0].tokens) for h in self.caption_images(images, config)]


class Captioner(ImageCaptioning, nn.Module):
    """An image-captioning model.

    Args:
        config: the model configuration.
        vocab: its vocabulary (``len(vocab) == config.vocab_size``).
        encoder: an already built encoder; None builds it from ``config.encoder`` on first use.
    """

    def __init__(self, config: ModelConfig, vocab: Vocabulary, encoder: encoders.ImageEncoder | None = None) -> None:
        super().__init__()
        if len(vocab) != config.vocab_size:
            raise ValueError(f"vocabulary has {len(vocab)} tokens but config.vocab_size is {config.vocab_size}")
        self.vocab = vocab
        self.decoder = _build_decoders(config)
        self._encoder = encoder
        self._transform = None
        self.image_mean: torch.Tensor | None = None  # mean features of the training images, (D,) or (L, C)
        self.tag_calibration: dict | None = None  # tag_calibration.json: how reliable each image tag word was

    @property
    def config(self) -> ModelConfig:
        """The model configuration: the decoder's, kept in one place (the search reads the decoder's, so a changed
        setting such as ``no_repeat_ngram`` reaches captioning and saving alike)."""
        return self.decoder.config

    @config.setter
    def config(self, config: ModelConfig) -> None:
        self.decoder.config = config

    @property
    def encoder(self) -> encoders.ImageEncoder:
        """The image encoder, built (with its pretrained weights) the first time it is needed."""
        if self._encoder is None:
            enc = encoders.build_encoder(self.config.encoder, pretrained=True, pooling=self.config.pooling,
                                         spatial=self.config.attention)
            self._encoder = enc.to(self.device).to(memory_format=torch.channels_last)
        return self._encoder

    @property
    def device(self) -> torch.device:
        return self.decoder.head.weight.device

    @property
    def transform(self):
        """PIL image → normalised tensor ``(3, H, W)``, as recorded in ``config.preprocess``."""
        if self._transform is None:
            self._transform = encoders.make_transform(self.config.preprocess)
        return self._transform

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image features for preprocessed images: ``(B, 3, H, W)`` → vectors ``(B, D)``, or feature maps
        ``(B, L, D)`` for an attention model (float32)."""
        enc = self.encoder.eval()
        pixels = pixels.to(self.device).contiguous(memory_format=torch.channels_last)
        return enc(pixels).float()

    def caption_features(self, features: torch.Tensor,
                         config: GenerationConfig | None = None) -> list[list[Hypothesis]]:
        """Search captions for image features (``(B, D)`` or ``(B, L, D)``, as :meth:`encode` gives them); see
        :func:`captioner.generate.generate`."""
        self.decoder.eval()
        if config is not None and (config.guided or config.tags):
            from captioner.guided import guided_captions

            return guided_captions(self, features, config)
        return generate(self.decoder, features.to(self.device), self.vocab, config)

    # --- persistence -------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, card: str | None = None, half: bool = False) -> None:
        """Write the model directory atomically (a half-written directory never replaces a good one).

        Args:
            directory: destination; replaced if it exists.
            card: model-card markdown for ``README.md`` (None keeps a short generated card).
            half: store floating-point weights as float16 (smaller; loading converts back to float32).

        Raises:
            SaveError: the disk is full or not writable; the previous directory is intact.
        """
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        recover_interrupted_save(directory)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; a model directory is meant to be shared
        try:
            self._write_files(tmp, card, half)
            _replace_dir(tmp, directory)
        except OSError as err:
            raise save_error(directory, err) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _write_files(self, tmp: Path, card: str | None, half: bool) -> None:
        """The model directory's files, into ``tmp``."""
        from safetensors.torch import save_file

        save_file(self._weights_to_save(half), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        to_json(self.config, tmp / "config.json")
        self.vocab.save(tmp / "vocab.json")
        (tmp / "README.md").write_text(card or _default_card(self.config), encoding="utf-8")
        if self.image_mean is not None:
            save_file({"mean": self.image_mean.detach().float().cpu().contiguous()}, str(tmp / IMAGE_MEAN_FILE))
        if self.tag_calibration is not None:
            (tmp / TAG_CALIBRATION_FILE).write_text(json.dumps(self.tag_calibration, indent=0), encoding="utf-8")
        for path in tmp.iterdir():
            path.chmod(0o644)  # safetensors writes its file private; a model is meant to be shared

    def _weights_to_save(self, half: bool) -> dict[str, torch.Tensor]:
        state = {f"decoder.{k}": v for k, v in self.decoder.state_dict().items()}
        if self.config.encoder_weights_in_file:
            state.update({f"encoder.{k}": v for k, v in self.encoder.state_dict().items()})
        out = {}
        for key, value in state.items():
            value = value.detach().cpu()
            out[key] = value.half() if half and value.is_floating_point() else value.contiguous()
        return out

    @classmethod
    def from_pretrained(cls, directory: str | Path | None = None, device: str | torch.device = "cpu") -> Captioner:
        """Load a model directory (None or ``"default"``: the embedded default model).

        Raises:
            ModelLoadError: missing or damaged files, a pickle posing as weights, an unknown encoder, or weights that
                do not fit the configuration and vocabulary; the message names the file.
        """
        directory = resolve_model_dir(directory)
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
        config = from_json(ModelConfig, directory / "config.json")
        try:
            encoders.get_spec(config.encoder)
        except ValueError as err:
            raise ModelLoadError(f"{directory / 'config.json'}: {err} (a model from a newer captioner?)") from None
        vocab = Vocabulary.load(directory / "vocab.json")
        state = _read_weights(directory / "model.safetensors")
        try:
            encoder = None
            if config.encoder_weights_in_file:
                encoder = encoders.build_encoder(config.encoder, pretrained=False, pooling=config.pooling,
                                                 spatial=config.attention)
                encoder.load_state_dict(_strip(state, "encoder."), strict=True)
            model = cls(config, vocab, encoder)
            model.decoder.load_state_dict({k: v.float() for k, v in _strip(state, "decoder.").items()}, strict=True)
        except RuntimeError as err:  # missing, unexpected or wrongly shaped tensors
            first = str(err).strip().splitlines()[-1].strip()
            raise ModelLoadError(f"{directory / 'model.safetensors'} does not fit config.json and vocab.json "
                                 f"({first}); the files come from different models") from None
        model.image_mean = _load_image_mean(directory, config)
        model.tag_calibration = _load_tag_calibration(directory)
        return model.to(device).eval()


_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # a pickle stream; a torch.save zip archive


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
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


def _load_tag_calibration(directory: Path) -> dict | None:
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


def _load_image_mean(directory: Path, config: ModelConfig) -> torch.Tensor | None:
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


def _build_decoders(config: ModelConfig) -> nn.Module:
    """One decoder, or an ensemble of ``config.num_decoders`` (see :mod:`captioner.ensemble`)."""
    if config.num_decoders == 1:
        return build_decoder(config)
    from captioner.ensemble import DecoderEnsemble

    return DecoderEnsemble(config)


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
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


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``, replacing it; the old directory is removed only after the move."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _default_card(config: ModelConfig) -> str:
    decoders = f"{config.num_decoders} {config.cell.upper()} decoders" if config.num_decoders > 1 else (
        f"{config.cell.upper()} decoder")
    return (
        "# captioner model\n\n"
        f"Encoder `{config.encoder}`, {decoders} ({config.inject} image injection), "
        f"hidden {config.hidden_dim}, vocabulary {config.vocab_size}.\n"
    )
