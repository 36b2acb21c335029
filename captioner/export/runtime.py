"""Caption with ONNX Runtime from a directory written by :func:`captioner.export.onnx.export_onnx`, without PyTorch.

:class:`OrtDecoder` runs the exported init and step graphs on numpy arrays behind the decoder contract of
:mod:`captioner.models.base` (``config``, ``start``, ``step``): its context and state are flat tuples of arrays
(context rows on axis 0, state rows on axis 1). :class:`OnnxCaptioner` adds the encoder and classifier graphs and the
preprocessing recorded in the config (in numpy, :mod:`captioner.models.resample`), and searches with
:mod:`captioner.generation.array_search` and :mod:`captioner.generation.constrained` (guided decoding): a cold
``captioner caption ONE.jpg`` never imports PyTorch. What those do not do (sampling, attention weights) runs :func:`captioner.generation.generate` on PyTorch tensors through :class:`captioner.export.
torch_decoder.TorchOrtDecoder`, the same graphs, importing PyTorch then.

:func:`load_onnx` is what the commands use (with :func:`captioner.export.sessions.choose_backend`): ONNX Runtime on
the CPU by default, each model directory exported once into the cache (which needs PyTorch, once).
onnxruntime is imported only in :mod:`captioner.export`, when this backend is used.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from captioner.arrays import as_array, like
from captioner.captioning import ImageCaptioning
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
from captioner.generation import array_search, constrained
from captioner.generation.confidence import ConfidenceModel
from captioner.generation.config import GenerationConfig, Hypothesis
from captioner.generation.tags import Tag, guide, search_tags
from captioner.models.files import load_tag_calibration
from captioner.models.resample import ArrayTransform
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


class ArrayStep(NamedTuple):
    """One decoder step on arrays: logits ``(B, V)``, the new state and, for attention models, the weights
    ``(B, L)``."""

    logits: np.ndarray
    state: tuple
    attention: np.ndarray | None


class OrtDecoder:
    """The exported decoder behind the interface the searches drive, on numpy arrays.

    Args:
        config: the model configuration (the searches read ``config.attention`` and the model's defaults).
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

    def start(self, features: np.ndarray) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """Per-image context (arrays with rows on axis 0) and initial state (``(layers, B, H)`` arrays) for
        features ``(B, D)`` or ``(B, L, C)``."""
        outs = self.init_session.run(None, {"features": np.ascontiguousarray(features, dtype=np.float32)})
        return tuple(outs[: len(self.context_names)]), tuple(outs[len(self.context_names) :])

    def step(self, tokens: np.ndarray, context: tuple, state: tuple) -> ArrayStep:
        """One step: ids ``(B,)`` → logits ``(B, V)`` (an ensemble's mean log-probabilities), the new state and,
        for attention models, the weights ``(B, L)``."""
        feed = {"tokens": np.ascontiguousarray(tokens, dtype=np.int64)}
        feed.update({name: np.ascontiguousarray(t) for name, t in zip(self.context_names, context)})
        feed.update({name: np.ascontiguousarray(t) for name, t in zip(self.state_names, state)})
        outs = self.step_session.run(None, feed)
        count = len(self.state_names)
        logits = outs[0][:, : self.width] if outs[0].shape[1] > self.width else outs[0]
        return ArrayStep(logits, tuple(outs[1 : 1 + count]), outs[1 + count] if self.attention else None)


class OnnxCaptioner(ImageCaptioning):
    """An exported model run by ONNX Runtime, with the captioning methods of :class:`captioner.pipeline.Captioner`.

    Its methods take numpy arrays or PyTorch tensors and give back the same kind; captioning PIL images works on
    arrays throughout (see the module's docstring for when PyTorch is imported).

    Args:
        directory: the export directory.
        threads: intra-op threads per session (None: :func:`captioner.export.sessions.default_threads`).
        sessions: sessions already made of some of its graphs, by name (:class:`captioner.export.sessions.
            OpeningExport` makes them on a thread); the others are made here, the classifier's on first use (only
            guided decoding and confidence need it).
    """

    feature_key_suffix = "|onnxruntime"  # ONNX Runtime's features differ from PyTorch's in the last bits

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
        self.array_transform = ArrayTransform(self.config.preprocess)
        self._transform = None

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

    @property
    def transform(self):
        """PIL image → normalised tensor ``(3, H, W)`` (PyTorch's; :meth:`preprocess` uses the numpy one, which
        gives the same numbers)."""
        if self._transform is None:
            from captioner.models.transforms import make_transform

            self._transform = make_transform(self.config.preprocess)
        return self._transform

    def preprocess(self, images: Sequence) -> np.ndarray:
        """RGB PIL images → normalised pixels ``(B, 3, H, W)`` in numpy (the same numbers as :attr:`transform`)."""
        return np.stack([self.array_transform(image) for image in images])

    def encode(self, pixels: Any) -> Any:
        """Preprocessed images ``(B, 3, H, W)`` → features ``(B, D)`` or ``(B, L, C)`` (float32), an array or a
        tensor as given."""
        return like(self.encoder.run(None, {"pixels": as_array(pixels, np.float32)})[0], pixels)

    def weights_sha256(self) -> str:
        """The exported model's :meth:`captioner.pipeline.Captioner.weights_sha256` (exports older than format 2:
        the SHA-256 of the step graph)."""
        from captioner.fileio import file_sha256

        step_graph = self.directory / self.manifest["graphs"]["decoder_step"]
        return self.manifest.get("model_sha256") or file_sha256(step_graph)

    def imagenet_logits(self, features: Any) -> Any:
        """The encoder's ImageNet logits ``(B, 1000)`` from the classifier graph, for guided decoding (an array or a
        tensor as given).

        Raises:
            ValueError: the export has none (an older export, or an encoder without an ImageNet head).
        """
        if self.classifier is None:
            raise ValueError(f"the ONNX export {self.directory} has no ImageNet classifier graph, which guided "
                             "decoding needs for its image tags; export the model again with this captioner, caption "
                             "with --plain, or use the PyTorch backend (--backend torch)")
        return like(self.classifier.run(None, {"features": as_array(features, np.float32)})[0], features)

    def search(self, features: Any, config: GenerationConfig, tags: list[list[Tag]] | None) -> list[list[Hypothesis]]:
        """Search captions (``config`` with the model's defaults filled in) in numpy: beam or greedy search, and for
        guided decoding the constrained search (as a fallback, only for the images whose plain caption misses a
        tag); sampling and attention weights through PyTorch (:meth:`torch_search`)."""
        if not array_search.supports(config):
            return self.torch_search(features, config, tags)
        arrays = as_array(features, np.float32)
        if not (config.guided or config.tags):
            return array_search.array_search(self.decoder, arrays, self.vocab, config)
        tags = search_tags(config, tags, len(arrays))

        def constrain(images: list[int]) -> list[list[Hypothesis]]:
            return constrained.tag_search(self.decoder.with_extra_rows, arrays[images], self.vocab, config,
                                          [tags[i] for i in images])

        plain = partial(array_search.array_search, self.decoder, arrays, self.vocab, config)
        return guide(tags, self.vocab, config.guided_fallback, plain, constrain)

    def torch_search(self, features: Any, config: GenerationConfig,
                     tags: list[list[Tag]] | None) -> list[list[Hypothesis]]:
        """:func:`captioner.generation.generate` through the PyTorch view of the decoder (imports PyTorch)."""
        import torch

        from captioner.export.torch_decoder import TorchOrtDecoder
        from captioner.generation.core import generate

        tensors = torch.from_numpy(np.ascontiguousarray(as_array(features, np.float32)))
        return generate(TorchOrtDecoder(self.decoder), tensors, self.vocab, config, tags=tags)


def load_onnx(model: str | Path | None = None, threads: int | None = None,
              opening: OpeningExport | None = None) -> OnnxCaptioner:
    """The ONNX Runtime captioner of an export directory, or of a model directory (exported into the cache on first
    use; None or ``default``: the embedded default model).

    Args:
        model: the export or model directory.
        threads: intra-op threads per session (None: :func:`captioner.export.sessions.default_threads`).
        opening: :func:`captioner.export.sessions.open_export` of the same ``model``, started earlier (the
            sessions are then already loading); None opens it here.
    """
    opening = opening or open_export(model, threads)
    directory, manifest, sessions = opening.result()
    if manifest is None:  # not exported yet
        return OnnxCaptioner(cached_export(model), threads)
    return OnnxCaptioner(directory, threads, sessions=sessions)
