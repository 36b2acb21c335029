"""Caption with ONNX Runtime from a directory written by :func:`captioner.export.onnx.export_onnx`.

:class:`OrtDecoder` runs the exported init and step graphs behind the decoder contract of
:mod:`captioner.models.base` (``config``, ``start``, ``step``), so :func:`captioner.generation.generate` searches
with it exactly as with a PyTorch decoder: greedy, beam, sampling and guided decoding are the same code. Its context
and state are flat tuples of CPU tensors (context rows on dimension 0, state rows on dimension 1), which the search
repeats and reorders like any other. :class:`OnnxCaptioner` adds the encoder and classifier graphs and the
preprocessing recorded in the config. :func:`load_onnx` is what the commands use (with
:func:`captioner.export.sessions.choose_backend`): ONNX Runtime on the CPU by default, each model directory exported
once into the cache, its sessions made while torch is imported (:func:`captioner.export.sessions.open_export`).

onnxruntime is imported only in :mod:`captioner.export`, when this backend is used.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch

from captioner.config import ModelConfig, from_json
from captioner.export.layout import (  # noqa: F401  (ExportLoadError, check_export_dir, default_export_dir: also here)
    ExportLoadError,
    check_export_dir,
    default_export_dir,
    export_location,
    is_default,
)
from captioner.export.sessions import (  # noqa: F401  (BACKENDS, choose_backend: also here)
    BACKENDS,
    OpeningExport,
    choose_backend,
    graph_files,
    graph_session,
    open_export,
)
from captioner.generation.confidence import ConfidenceModel
from captioner.models.base import DecoderStep
from captioner.models.files import load_tag_calibration
from captioner.models.transforms import make_transform
from captioner.pipeline import ImageCaptioning
from captioner.vocab import Vocabulary

logger = logging.getLogger(__name__)


def cached_export(model_dir: str | Path | None = None) -> Path:
    """The ONNX export of a model directory (None or ``default``: the embedded default), written into the cache on
    first use with a one-line notice (a few seconds; later runs load it)."""
    from captioner.models.files import resolve_model_dir

    directory, exported = export_location(model_dir)
    if exported:
        return directory
    from captioner.export.onnx import export_onnx, require_onnx
    from captioner.pipeline import Captioner

    require_onnx()
    source = resolve_model_dir(model_dir)
    what = "the default model" if is_default(model_dir) else str(source)
    logger.warning("exporting %s for ONNX Runtime, once, to %s", what, directory)
    export_onnx(Captioner.from_pretrained(source, device="cpu"), directory)
    return directory


def default_export() -> Path:
    """The default model's export directory, written on first use."""
    return cached_export("default")


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
        threads: intra-op threads per session (None: :func:`captioner.export.sessions.default_threads`, torch's).
        sessions: sessions already made of some of its graphs, by name (:class:`captioner.export.sessions.
            OpeningExport` makes them while torch is imported); the others are made here, the classifier's on first
            use (only guided decoding and confidence need it).
    """

    def __init__(self, directory: str | Path, threads: int | None = None, sessions: dict | None = None) -> None:
        directory = Path(directory)
        manifest = check_export_dir(directory)
        self.directory, self.manifest, self.threads = directory, manifest, threads
        self._graphs = graph_files(manifest)
        self._sessions = dict(sessions or {})
        self.config = from_json(ModelConfig, directory / "config.json")
        self.vocab = Vocabulary.load(directory / "vocab.json")
        self.session("encoder")  # a damaged graph is found now, not at the first image
        self.decoder = OrtDecoder(self.config, self.session("decoder_init"), self.session("decoder_step"), manifest)
        for word in self.decoder.extra_words:  # the ids the export gave the tag words the vocabulary lacks
            self.vocab.add_extra(word)
        self.tag_calibration = load_tag_calibration(directory)
        self.confidence_model = ConfidenceModel.from_dir(directory)
        self.transform = make_transform(self.config.preprocess)

    def session(self, name: str):
        """The ONNX Runtime session of the graph ``name`` (``encoder``, ``decoder_init``, ``decoder_step``,
        ``classifier``), created on first use; None when the export has no such graph."""
        if name not in self._sessions:
            file = self._graphs.get(name)
            self._sessions[name] = graph_session(self.directory, name, file, self.threads) if file else None
        return self._sessions[name]

    @property
    def encoder(self):
        """The encoder graph's session (created on first use)."""
        return self.session("encoder")

    @property
    def classifier(self):
        """The classifier graph's session (created on first use: only guided decoding and confidence need it), or
        None when the encoder has no ImageNet head."""
        return self.session("classifier")

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


def load_onnx(model: str | Path | None = None, threads: int | None = None,
              opening: OpeningExport | None = None) -> OnnxCaptioner:
    """The ONNX Runtime captioner of an export directory, or of a model directory (exported into the cache on first
    use; None or ``default``: the embedded default model).

    Args:
        model: the export or model directory.
        threads: intra-op threads per session (None: torch's).
        opening: :func:`captioner.export.sessions.open_export` of the same ``model``, started before torch was
            imported (the sessions are then already loading); None opens it here.
    """
    opening = opening or open_export(model, threads)
    directory, manifest, sessions = opening.result()
    if manifest is None:  # not exported yet
        return OnnxCaptioner(cached_export(model), threads)
    return OnnxCaptioner(directory, threads, sessions=sessions)
