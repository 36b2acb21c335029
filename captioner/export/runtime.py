"""Caption with ONNX Runtime from a directory written by :func:`captioner.export.onnx.export_onnx`.

:class:`OrtDecoder` runs the exported init and step graphs behind the decoder interface of
:mod:`captioner.models.base` (``config``, ``start``, ``step``), so :func:`captioner.generation.generate` searches with it
exactly as with a PyTorch decoder: greedy, beam and sampling are the same code. Its context and state are flat
tuples of CPU tensors (context rows on dimension 0, state rows on dimension 1), which the search repeats and
reorders like any other. :class:`OnnxCaptioner` adds the encoder graph and the preprocessing recorded in the config.

onnxruntime is imported only here, when this backend is used.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from captioner.config import ModelConfig, from_json
from captioner.export.onnx import EXPORT_FILES, FORMAT_VERSION, MANIFEST
from captioner.models.base import DecoderStep
from captioner.models.transforms import make_transform
from captioner.pipeline import ImageCaptioning
from captioner.vocab import Vocabulary

logger = logging.getLogger(__name__)


class ExportLoadError(RuntimeError):
    """A directory that is not a usable ONNX export; the message says what to do."""


def default_export_dir() -> Path:
    """Where the embedded default model's ONNX export is kept: ``onnx/default-VERSION-HASH`` in
    :func:`captioner.data.cache.cache_root`, keyed by captioner's version and the weights' SHA-256, so an upgrade
    or other weights get a fresh export."""
    from captioner.data.cache import cache_root
    from captioner.fileio import file_sha256
    from captioner.models.files import DEFAULT_MODEL_DIR
    from captioner.version import __version__

    digest = file_sha256(DEFAULT_MODEL_DIR / "model.safetensors")[:16]
    return cache_root() / "onnx" / f"default-{__version__}-{digest}"


def default_export() -> Path:
    """The default model's export directory, written on first use (a few seconds; later runs load it)."""
    directory = default_export_dir()
    if (directory / MANIFEST).is_file():
        return directory
    from captioner.export.onnx import export_onnx, require_onnx
    from captioner.pipeline import Captioner

    require_onnx()
    logger.warning("exporting the default model for ONNX Runtime, once, to %s", directory)
    export_onnx(Captioner.from_pretrained("default", device="cpu"), directory)
    return directory


def check_export_dir(directory: Path) -> dict:
    """Read and check an export directory's manifest.

    Raises:
        ExportLoadError: the directory is missing, a PyTorch model directory, incomplete or of a newer format.
    """
    if not directory.is_dir():
        raise ExportLoadError(f"{directory} is not a directory; pass a directory written by `captioner export`")
    if not (directory / MANIFEST).is_file():
        hint = "a PyTorch model directory" if (directory / "model.safetensors").is_file() else "not an ONNX export"
        raise ExportLoadError(f"{directory} is {hint} (no {MANIFEST}); run `captioner export --model {directory} "
                              f"--out EXPORT_DIR` first and pass --model EXPORT_DIR")
    missing = [name for name in EXPORT_FILES if not (directory / name).is_file()]
    if missing:
        raise ExportLoadError(f"{directory} is an incomplete ONNX export (missing {', '.join(missing)}); export the "
                              "model again with `captioner export`")
    manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ExportLoadError(f"{directory} was exported by a newer captioner (format {manifest['format_version']}, "
                              f"this one reads {FORMAT_VERSION}); upgrade captioner or export again")
    return manifest


def make_session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session with all graph optimisations and ``threads`` intra-op threads (None: as many as
    torch uses)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportLoadError("the onnxruntime backend needs onnxruntime: pip install 'captioner[onnx]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1  # the graphs are chains: no parallel branches worth a thread pool
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads sleep instead of spinning: the decoder's step graph is many small runs, between which spinning
    # threads burn a core; with other processes on the CPU, that made greedy search 1.7x slower here.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own exception types (bad protobuf, unknown op, ...)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportLoadError(f"ONNX Runtime cannot load {path} ({reason}); export the model again with "
                              "`captioner export`") from None


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().contiguous().numpy()


class OrtDecoder:
    """The exported decoder behind the interface :func:`captioner.generation.generate` drives.

    Args:
        config: the model configuration (``generate`` reads ``config.attention``).
        init_session, step_session: sessions of ``decoder_init.onnx`` and ``decoder_step.onnx``.
        manifest: the export's manifest (names of the context and state tensors).
    """

    def __init__(self, config: ModelConfig, init_session, step_session, manifest: dict) -> None:
        self.config = config
        self.init_session, self.step_session = init_session, step_session
        self.context_names, self.state_names = list(manifest["context"]), list(manifest["state"])
        self.attention = bool(manifest["attention_output"])

    def start(self, features: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Per-image context (tensors with rows on dimension 0) and initial state (``(layers, B, H)`` tensors)
        for features ``(B, D)`` or ``(B, L, C)``."""
        outs = self.init_session.run(None, {"features": _numpy(features.float())})
        tensors = tuple(torch.from_numpy(o) for o in outs)
        return tensors[: len(self.context_names)], tensors[len(self.context_names) :]

    def step(self, tokens: torch.Tensor, context: tuple, state: tuple) -> DecoderStep:
        """One step: ids ``(B,)`` → logits ``(B, V)`` (an ensemble's mean log-probabilities), the new state and,
        for attention models, the weights ``(B, L)``."""
        feed = {"tokens": _numpy(tokens)}
        feed.update({name: _numpy(t) for name, t in zip(self.context_names, context)})
        feed.update({name: _numpy(t) for name, t in zip(self.state_names, state)})
        outs = [torch.from_numpy(o) for o in self.step_session.run(None, feed)]
        count = len(self.state_names)
        return DecoderStep(outs[0], tuple(outs[1 : 1 + count]), outs[1 + count] if self.attention else None)


class OnnxCaptioner(ImageCaptioning):
    """An exported model run by ONNX Runtime, with the captioning methods of :class:`captioner.pipeline.Captioner`.

    Args:
        directory: the export directory.
        threads: intra-op threads per session (None: ``torch.get_num_threads()``).
    """

    def __init__(self, directory: str | Path, threads: int | None = None) -> None:
        directory = Path(directory)
        manifest = check_export_dir(directory)
        graphs = manifest["graphs"]
        self.directory, self.manifest = directory, manifest
        self.config = from_json(ModelConfig, directory / "config.json")
        self.vocab = Vocabulary.load(directory / "vocab.json")
        self.encoder = make_session(directory / graphs["encoder"], threads)
        self.decoder = OrtDecoder(self.config, make_session(directory / graphs["decoder_init"], threads),
                                  make_session(directory / graphs["decoder_step"], threads), manifest)
        self.transform = make_transform(self.config.preprocess)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed images ``(B, 3, H, W)`` → features ``(B, D)`` or ``(B, L, C)`` (float32)."""
        return torch.from_numpy(self.encoder.run(None, {"pixels": _numpy(pixels.float())})[0])

    def search_features(self, features: torch.Tensor) -> torch.Tensor:
        """The graphs run on the CPU."""
        return features.cpu()

    def imagenet_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The encoder's ImageNet logits, for guided decoding: this export has no classifier graph.

        Raises:
            ValueError: always, saying what to use instead.
        """
        raise ValueError(f"the ONNX export {self.directory} has no ImageNet classifier graph, which guided decoding "
                         "needs for its image tags; caption with the PyTorch backend (--backend torch), or give the "
                         "tags yourself (GenerationConfig(tags=...))")


@torch.inference_mode()
def compare_backends(model, onnx_model: OnnxCaptioner, pixels: torch.Tensor, steps: int = 3) -> dict[str, float]:
    """Largest differences between a PyTorch model and its export: encoder features, then the step logits of
    ``steps`` greedy steps (both backends fed PyTorch's greedy tokens, each carrying its own state).

    Args:
        model: the :class:`captioner.pipeline.Captioner` that was exported.
        onnx_model: its export.
        pixels: preprocessed images ``(B, 3, H, W)``.
        steps: decoding steps to compare.

    Returns:
        ``{"features": max |diff|, "logits": max |diff| over all steps}``.
    """
    features = model.encode(pixels)  # (B, ...) float32
    feature_diff = float((features - onnx_model.encode(pixels)).abs().max())
    torch_context, torch_state = model.decoder.start(features)
    ort_context, ort_state = onnx_model.decoder.start(features)
    tokens = torch.full((features.shape[0],), model.vocab.start_id, dtype=torch.long)
    logit_diff = 0.0
    for _ in range(steps):
        want = model.decoder.step(tokens, torch_context, torch_state)
        got = onnx_model.decoder.step(tokens, ort_context, ort_state)
        logit_diff = max(logit_diff, float((want.logits - got.logits).abs().max()))
        torch_state, ort_state = want.state, got.state
        tokens = want.logits.argmax(dim=-1)
    return {"features": feature_diff, "logits": logit_diff}
