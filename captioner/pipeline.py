"""``Captioner``: encoder + decoder + vocabulary, saved and loaded as one directory.

A model directory holds ``model.safetensors`` (decoder weights, plus encoder weights when the encoder was
fine-tuned), ``config.json`` (:class:`captioner.config.ModelConfig`), ``vocab.json`` and a ``README.md`` model card
(:mod:`captioner.models.files`). Nothing is pickled.

:class:`Captioner` captions through :class:`captioner.captioning.ImageCaptioning`, which the ONNX Runtime captioner
(:class:`captioner.export.runtime.OnnxCaptioner`) shares: images → pixels → features → image tags (for guided
decoding) → :func:`captioner.generation.generate`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from captioner.captioning import ImageCaptioning
from captioner.config import ModelConfig, to_json
from captioner.devices import resolve_device
from captioner.fileio import save_error
from captioner.generation.confidence import CONFIDENCE_FILE, ConfidenceModel
from captioner.models import encoders
from captioner.models.factory import build_decoder
from captioner.models.files import (
    IMAGE_MEAN_FILE,
    TAG_CALIBRATION_FILE,
    ModelLoadError,
    default_card,
    load_image_mean,
    load_tag_calibration,
    read_weights,
    recover_interrupted_save,
    replace_dir,
    resolve_model_dir,
    strip_prefix,
    validate_model_dir,
)
from captioner.models.transforms import make_transform
from captioner.vocab import Vocabulary


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
        self.decoder = build_decoder(config)
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
            self._transform = make_transform(self.config.preprocess)
        return self._transform

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image features for preprocessed images: ``(B, 3, H, W)`` → vectors ``(B, D)``, or feature maps
        ``(B, L, D)`` for an attention model (float32)."""
        enc = self.encoder.eval()
        pixels = pixels.to(self.device).contiguous(memory_format=torch.channels_last)
        return enc(pixels).float()

    def weights_sha256(self) -> str:
        """SHA-256 of the configuration, vocabulary and decoder weights: what captions depend on (the encoder's
        pretrained weights are named by the configuration)."""
        digest = hashlib.sha256()
        digest.update(json.dumps(dataclasses.asdict(self.config), sort_keys=True).encode())
        digest.update(json.dumps(self.vocab.itos, ensure_ascii=False).encode())
        for name, tensor in sorted(self.decoder.state_dict().items()):
            digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def search_features(self, features: torch.Tensor) -> torch.Tensor:
        """Features on the model's device, with the decoder put in eval mode for the search."""
        self.decoder.eval()
        return features.to(self.device)

    def imagenet_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The encoder's ImageNet logits ``(B, 1000)`` for its features (pooled ``(B, D)`` or maps ``(B, L, C)``,
        cached ones included), for image tags.

        Raises:
            ValueError: the encoder has no ImageNet head (guided decoding needs one).
        """
        if getattr(self.encoder, "classifier", None) is None:
            raise ValueError(f"the encoder {self.config.encoder!r} has no ImageNet head to tag images with; guided "
                             "decoding needs one (the EfficientNet-Lite encoders have it)")
        with torch.inference_mode():
            return self.encoder.classify_features(features.float().to(self.device))

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
            replace_dir(tmp, directory)
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
        (tmp / "README.md").write_text(card or default_card(self.config), encoding="utf-8")
        if self.image_mean is not None:
            save_file({"mean": self.image_mean.detach().float().cpu().contiguous()}, str(tmp / IMAGE_MEAN_FILE))
        if self.tag_calibration is not None:
            (tmp / TAG_CALIBRATION_FILE).write_text(json.dumps(self.tag_calibration, indent=0), encoding="utf-8")
        if self.confidence_model is not None:
            self.confidence_model.save(tmp / CONFIDENCE_FILE)
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
    def from_pretrained(cls, directory: str | Path | None = None, device: str | torch.device = "auto") -> Captioner:
        """Load a model directory (None or ``"default"``: the embedded default model) onto ``device`` (``"auto"``, as
        the command line: CUDA, else Apple's MPS, else the CPU).

        Raises:
            ModelLoadError: missing or damaged files, a pickle posing as weights, an unknown encoder, or weights that
                do not fit the configuration and vocabulary; the message names the file.
        """
        directory = resolve_model_dir(directory)
        config, vocab = validate_model_dir(directory)  # fields, vocabulary and tensor shapes, before any allocation
        state = read_weights(directory / "model.safetensors")
        try:
            encoder = None
            if config.encoder_weights_in_file:
                encoder = encoders.build_encoder(config.encoder, pretrained=False, pooling=config.pooling,
                                                 spatial=config.attention)
                encoder.load_state_dict(strip_prefix(state, "encoder."), strict=True)
            model = cls(config, vocab, encoder)
            decoder_state = {k: v.float() for k, v in strip_prefix(state, "decoder.").items()}
            model.decoder.load_state_dict(decoder_state, strict=True)
        except RuntimeError as err:  # missing, unexpected or wrongly shaped tensors
            first = str(err).strip().splitlines()[-1].strip()
            raise ModelLoadError(f"{directory / 'model.safetensors'} does not fit config.json and vocab.json "
                                 f"({first}); the files come from different models") from None
        model.image_mean = load_image_mean(directory, config)
        model.tag_calibration = load_tag_calibration(directory)
        model.confidence_model = ConfidenceModel.from_dir(directory)
        return model.to(resolve_device(device) if isinstance(device, str) else device).eval()
