"""Caption with ONNX Runtime from a directory written by :func:`captioner.export.onnx.export_onnx`.

:class:`OrtDecoder` runs the exported init and step graphs behind the decoder contract of
:mod:`captioner.models.base` (``config``, ``start``, ``step``), so :func:`captioner.generation.generate` searches
with it exactly as with a PyTorch decoder: greedy, beam, sampling and guided decoding are the same code. Its context
and state are flat tuples of CPU tensors (context rows on dimension 0, state rows on dimension 1), which the search
repeats and reorders like any other. :class:`OnnxCaptioner` adds the encoder and classifier graphs and the
preprocessing recorded in the config. :func:`choose_backend` and :func:`load_onnx` are what the commands use: ONNX
Runtime on the CPU by default, each model directory exported once into the cache.

onnxruntime is imported only here, when this backend is used.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import torch

from captioner.config import ModelConfig, from_json
from captioner.export.onnx import EXPORT_FILES, FORMAT_VERSION, MANIFEST
from captioner.generation.confidence import ConfidenceModel
from captioner.models.base import DecoderStep
from captioner.models.files import load_tag_calibration
from captioner.models.transforms import make_transform
from captioner.pipeline import ImageCaptioning
from captioner.vocab import Vocabulary

logger = logging.getLogger(__name__)


class ExportLoadError(RuntimeError):
    """A directory that is not a usable ONNX export; the message says what to do."""


def export_cache_dir(model_dir: Path, name: str) -> Path:
    """Where a model directory's ONNX export is kept: ``onnx/NAME-VERSION-fFORMAT-HASH`` in
    :func:`captioner.data.cache.cache_root`, keyed by captioner's version, the export format and the SHA-256 of the
    model's files, so an upgrade or other weights get a fresh export."""
    from captioner.data.cache import cache_root
    from captioner.fileio import files_sha256
    from captioner.version import __version__

    names = ("model.safetensors", "config.json", "vocab.json", "tag_calibration.json", "confidence.json")
    files = [model_dir / f for f in names]
    digest = files_sha256([f for f in files if f.is_file()])[:16]
    return cache_root() / "onnx" / f"{name}-{__version__}-f{FORMAT_VERSION}-{digest}"


def default_export_dir() -> Path:
    """Where the embedded default model's ONNX export is kept (see :func:`export_cache_dir`)."""
    from captioner.models.files import DEFAULT_MODEL_DIR

    return export_cache_dir(DEFAULT_MODEL_DIR, "default")


def cached_export(model_dir: str | Path | None = None) -> Path:
    """The ONNX export of a model directory (None or ``default``: the embedded default), written into the cache on
    first use with a one-line notice (a few seconds; later runs load it)."""
    from captioner.models.files import resolve_model_dir

    source = resolve_model_dir(model_dir)
    is_default = model_dir is None or str(model_dir) == "default"
    directory = default_export_dir() if is_default else export_cache_dir(source, _safe_name(source))
    if (directory / MANIFEST).is_file():
        return directory
    from captioner.export.onnx import export_onnx, require_onnx
    from captioner.pipeline import Captioner

    require_onnx()
    what = "the default model" if is_default else str(source)
    logger.warning("exporting %s for ONNX Runtime, once, to %s", what, directory)
    export_onnx(Captioner.from_pretrained(source, device="cpu"), directory)
    return directory


def default_export() -> Path:
    """The default model's export directory, written on first use."""
    return cached_export("default")


def _safe_name(directory: Path) -> str:
    """A short file-name-safe label for a model directory (its name, or its run's name for ``RUN/model``)."""
    name = directory.parent.name if directory.name == "model" else directory.name
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:40] or "model"


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
        raise ExportLoadError("the onnxruntime backend needs onnxruntime (a dependency of captioner): pip install onnxruntime") from None
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
        self.extra_words = list(manifest.get("extra_words", []))  # rows the step graph has past the vocabulary
        self.width = config.vocab_size  # logits given to the search: the vocabulary's, unless widened

    def with_extra_rows(self, vocab: Vocabulary) -> OrtDecoder:
        """This decoder giving logits for ``vocab``'s extra words too (guided decoding), which the export made
        rows for ahead of time.

        Raises:
            ValueError: a word the export has no row for.
        """
        if vocab.extra[: len(self.extra_words)] != self.extra_words[: len(vocab.extra)] or (
                len(vocab.extra) > len(self.extra_words)):
            new = [w for w in vocab.extra if w not in self.extra_words]
            raise ValueError(f"this ONNX export has no rows for {', '.join(map(repr, new[:3]))}, a word its model "
                             "never learned and not an ImageNet tag word; use the PyTorch backend (--backend torch)")
        view = copy.copy(self)
        view.width = self.config.vocab_size + len(vocab.extra)
        return view

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
        logits = outs[0][:, : self.width] if outs[0].shape[1] > self.width else outs[0]
        return DecoderStep(logits, tuple(outs[1 : 1 + count]), outs[1 + count] if self.attention else None)


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
        for word in self.decoder.extra_words:  # the ids the export gave the tag words the vocabulary lacks
            self.vocab.add_extra(word)
        self.classifier = (make_session(directory / graphs["classifier"], threads)
                           if graphs.get("classifier") else None)
        self.tag_calibration = load_tag_calibration(directory)
        self.confidence_model = ConfidenceModel.from_dir(directory)
        self.transform = make_transform(self.config.preprocess)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed images ``(B, 3, H, W)`` → features ``(B, D)`` or ``(B, L, C)`` (float32)."""
        return torch.from_numpy(self.encoder.run(None, {"pixels": _numpy(pixels.float())})[0])

    feature_key_suffix = "|onnxruntime"  # ONNX Runtime's features differ from PyTorch's in the last bits

    def search_features(self, features: torch.Tensor) -> torch.Tensor:
        """The graphs run on the CPU."""
        return features.cpu()

    def weights_sha256(self) -> str:
        """The exported model's :meth:`captioner.pipeline.Captioner.weights_sha256` (exports older than format 2:
        the SHA-256 of the step graph)."""
        from captioner.fileio import file_sha256

        step_graph = self.directory / self.manifest["graphs"]["decoder_step"]
        return self.manifest.get("model_sha256") or file_sha256(step_graph)

    def imagenet_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The encoder's ImageNet logits ``(B, 1000)`` from the classifier graph, for guided decoding.

        Raises:
            ValueError: the export has none (an older export, or an encoder without an ImageNet head).
        """
        if self.classifier is None:
            raise ValueError(f"the ONNX export {self.directory} has no ImageNet classifier graph, which guided "
                             "decoding needs for its image tags; export the model again with this captioner, caption "
                             "with --plain, or use the PyTorch backend (--backend torch)")
        return torch.from_numpy(self.classifier.run(None, {"features": _numpy(features.float())})[0])


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


BACKENDS = ("auto", "onnxruntime", "torch")


def choose_backend(backend: str, device: str) -> tuple[str, str | None]:
    """The backend to caption with, and why PyTorch when ``auto`` could not use ONNX Runtime (None otherwise).

    ``auto`` (the default) is ONNX Runtime on the CPU, PyTorch on a GPU (``--device cuda|mps``, or ``auto`` on a
    machine that has one) or where onnxruntime is missing.

    Raises:
        ValueError: ``onnxruntime`` asked for with a GPU device.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch", None
    if device in ("cuda", "mps"):
        if backend == "onnxruntime":
            raise ValueError(f"--backend onnxruntime runs on the CPU; drop --device {device} or use --backend torch")
        return "torch", f"--device {device} runs PyTorch (ONNX Runtime runs on the CPU here)"
    if device == "auto" and torch.cuda.is_available():
        if backend == "auto":
            return "torch", "a CUDA GPU is available, where PyTorch is the faster backend"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        if backend == "onnxruntime":
            raise ValueError("--backend onnxruntime needs onnxruntime: pip install onnxruntime") from None
        return "torch", "onnxruntime is not installed (pip install onnxruntime for the faster CPU backend)"
    return "onnxruntime", None


def load_onnx(model: str | Path | None = None, threads: int | None = None) -> OnnxCaptioner:
    """The ONNX Runtime captioner of an export directory, or of a model directory (exported into the cache on first
    use; None or ``default``: the embedded default model)."""
    path = Path(model) if model is not None and str(model) != "default" else None
    if path is not None and (path / MANIFEST).is_file():
        return OnnxCaptioner(path, threads)
    return OnnxCaptioner(cached_export(model), threads)
