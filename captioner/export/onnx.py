"""Export a model to ONNX: an encoder graph and the decoder as an "init" graph plus a one-step graph.

An export directory is self-contained (no PyTorch weights are read from it):

- ``encoder.onnx``: preprocessed pixels ``(B, 3, H, W)`` → the features the decoder reads: pooled vectors ``(B, D)``
  or, for attention models, the feature map's locations ``(B, L, C)``;
- ``decoder_init.onnx``: features → the decoder's per-image context (``context_i``, batch dimension 0) and its
  initial recurrent state (``state_i``, ``(layers, B, H)``: ``h`` and ``c`` for an LSTM; explicit zeros where the
  PyTorch decoder starts from None). For attention these are the projected locations and their keys, computed once
  per image;
- ``decoder_step.onnx``: ``tokens`` ``(B,)`` + context + state → ``logits`` ``(B, V)``, the new state
  (``new_state_i``) and, for attention models, the ``attention`` weights ``(B, L)``;
- ``classifier.onnx``: features → the encoder's ImageNet logits ``(B, 1000)`` (the image tags of guided decoding);
- ``config.json``, ``vocab.json`` (and ``tag_calibration.json`` when the model has one) and ``onnx_manifest.json``
  (graph files, tensor names, opset, versions, the extra words).

The step graph has an embedding and an output row for every tag word the vocabulary lacks (``extra_words`` in the
manifest, in the order :func:`captioner.generation.guided.add_tag_words` gives them ids), made as PyTorch's guided
decoding makes them, so that ONNX Runtime can guide too; plain decoding reads the first ``vocab_size`` logits only.

Every batch axis is dynamic. An ensemble (``num_decoders > 1``) is exported whole: its members' contexts and states
are concatenated and the step graph's ``logits`` are the mean of their log-probabilities, as in PyTorch.
:mod:`captioner.export.runtime` runs the graphs with ONNX Runtime behind the decoder interface that
:func:`captioner.generation.generate` drives, so both backends share one search.

Graphs are written by PyTorch's TorchScript-based exporter (``dynamo=False``): on this code it is about three times
faster than the dynamo exporter and needs no opset conversion.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from captioner.config import to_json
from captioner.export.layout import (  # noqa: F401  (EXPORT_FILES, FORMAT_VERSION, ExportError: also here)
    CLASSIFIER,
    EXPORT_FILES,
    FORMAT_VERSION,
    GRAPHS,
    MANIFEST,
    ExportError,
)
from captioner.fileio import owned_prefix, remove_abandoned_dirs, save_error, write_failure

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17


def flatten(tree: Any) -> tuple[list[torch.Tensor], Any]:
    """The tensors of a context or state (a tensor, None, or nested tuples/NamedTuples) in order, and its shape
    (``spec``) for :func:`unflatten`."""
    if tree is None:
        return [], None
    if isinstance(tree, torch.Tensor):
        return [tree], "tensor"
    leaves, specs = [], []
    for item in tree:
        item_leaves, spec = flatten(item)
        leaves += item_leaves
        specs.append(spec)
    return leaves, (type(tree), specs)


def unflatten(spec: Any, leaves) -> Any:
    """Rebuild a tree of the shape ``spec`` from an iterator over its tensors (inverse of :func:`flatten`)."""
    if spec is None:
        return None
    if spec == "tensor":
        return next(leaves)
    kind, children = spec
    items = [unflatten(child, leaves) for child in children]
    return kind(*items) if hasattr(kind, "_fields") else kind(items)


def explicit_state(decoder: nn.Module, state: Any, features: torch.Tensor) -> Any:
    """The decoder's initial state with None (zeros, as PyTorch's recurrent layers read it) made explicit zeros
    ``(layers, B, H)``, so the graphs always pass tensors; ensembles are handled member by member."""
    members = getattr(decoder, "members", None)
    if members is not None:
        return tuple(explicit_state(m, s, features) for m, s in zip(members, state))
    if state is not None:
        return state
    config = decoder.config
    zeros = features.new_zeros(config.num_layers, features.shape[0], config.hidden_dim)
    return (zeros, zeros.clone()) if config.cell == "lstm" else zeros


class InitGraph(nn.Module):
    """``decoder.start`` with flat outputs: features → ``(*context tensors, *state tensors)``."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        context, state = self.decoder.start(features)
        return tuple(flatten(context)[0] + flatten(explicit_state(self.decoder, state, features))[0])


class StepGraph(nn.Module):
    """``decoder.step`` with flat inputs and outputs: ``(tokens, *context, *state)`` → ``(logits, *state[,
    attention])``.

    Args:
        decoder: the decoder or ensemble.
        context_spec, state_spec: the trees' shapes, from :func:`flatten` of one ``start`` call.
    """

    def __init__(self, decoder: nn.Module, context_spec: Any, state_spec: Any) -> None:
        super().__init__()
        self.decoder = decoder
        self.context_spec, self.state_spec = context_spec, state_spec
        self.num_context = _count(context_spec)

    def forward(self, tokens: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        context = unflatten(self.context_spec, iter(tensors[: self.num_context]))
        state = unflatten(self.state_spec, iter(tensors[self.num_context :]))
        out = self.decoder.step(tokens, context, state)
        extra = () if out.attention is None else (out.attention,)
        return (out.logits, *flatten(out.state)[0], *extra)


def _count(spec: Any) -> int:
    """Number of tensors in a tree of the shape ``spec``."""
    if spec is None or spec == "tensor":
        return int(spec is not None)
    return sum(_count(child) for child in spec[1])


def require_onnx():
    """The ``onnx`` module, or an :class:`ExportError` that says how to install it."""
    try:
        import onnx
    except ImportError:
        raise ExportError("exporting to ONNX needs the onnx package (a dependency of captioner): pip install onnx") from None
    return onnx


class _Encoder(nn.Module):
    """The image encoder as a graph: pixels ``(B, 3, H, W)`` → float32 features ``(B, D)`` or ``(B, L, C)``."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixels).float()


class _Classifier(nn.Module):
    """The encoder's ImageNet head as a graph: features ``(B, D)`` or ``(B, L, C)`` → logits ``(B, 1000)``."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.encoder.classify_features(features.float()).float()


class _FixedPadConv(nn.Module):
    """A TF-"same" convolution with its padding computed once for a known input size: a constant pad, which ONNX
    Runtime fuses into the convolution, where timm computes it from the input's shape at every call (ops that keep
    the graph from being optimised as one chain of convolutions)."""

    def __init__(self, conv: nn.Conv2d, height: int, width: int) -> None:
        super().__init__()
        self.conv = conv
        pad_h, pad_w = (_same_padding(size, k, s, d)
                        for size, k, s, d in zip((height, width), conv.kernel_size, conv.stride, conv.dilation))
        self.pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)  # left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return nn.functional.conv2d(nn.functional.pad(x, self.pads), c.weight, c.bias, c.stride, 0, c.dilation,
                                    c.groups)


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Total padding of TF's "same" convolution along one axis of ``size`` pixels."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def fix_same_padding(encoder: nn.Module, pixels: torch.Tensor) -> nn.Module:
    """A copy of ``encoder`` whose timm ``Conv2dSame`` layers pad by constants for inputs shaped like ``pixels``
    ``(B, 3, H, W)`` (the same numbers; the exported graph then only takes H x W, which the preprocessing fixes)."""
    try:
        from timm.layers.conv2d_same import Conv2dSame
    except ImportError:
        return encoder
    encoder = copy.deepcopy(encoder)
    sizes: dict[nn.Module, tuple[int, int]] = {}

    def record(module: nn.Module, args: tuple) -> None:
        sizes[module] = tuple(args[0].shape[-2:])

    hooks = [m.register_forward_pre_hook(record) for m in encoder.modules() if isinstance(m, Conv2dSame)]
    with torch.no_grad():
        encoder(pixels)
    for hook in hooks:
        hook.remove()
    for parent in list(encoder.modules()):
        for name, child in parent.named_children():
            if child in sizes:
                setattr(parent, name, _FixedPadConv(child, *sizes[child]))
    return encoder


def export_onnx(model, out: str | Path, opset: int = DEFAULT_OPSET) -> dict:
    """Write ``model``'s export directory (see the module docstring), replacing ``out`` if it exists.

    The directory is written under a temporary name beside ``out`` (``.OUT.export-PID-XXXX``) and moved into place at
    the end, so a failed export never leaves a half-written directory behind; temporaries that killed exports left
    in that parent directory are removed first (:func:`remove_stale_exports`).

    Args:
        model: a :class:`captioner.pipeline.Captioner` (its encoder is built if needed; the model is moved to the CPU,
            where the export runs).
        out: the export directory.
        opset: the ONNX opset of the graphs.

    Returns:
        The manifest that was written.

    Raises:
        ExportError: the onnx package is missing.
        SaveError: the disk is full or not writable (naming ``out`` and saying the previous export is intact).
    """
    out = Path(out)
    model = model.to("cpu").eval()
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_exports(out.parent)
        tmp = Path(tempfile.mkdtemp(prefix=owned_prefix(out.name, _TMP_MARK), dir=out.parent))
        manifest = _write_export(model, tmp, opset)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except Exception as err:  # a full disk surfaces as OSError, or as a RuntimeError of the exporter or onnx
        failure = write_failure(err, out.parent)
        if failure is None:
            raise
        raise save_error(out, failure, then="export again") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("wrote %s (%s)", out, ", ".join(GRAPHS.values()))
    return manifest


def _write_export(model, tmp: Path, opset: int) -> dict:
    """Every file of the export into the directory ``tmp``; returns the manifest."""
    manifest = _write_graphs(model, tmp, opset)
    to_json(model.config, tmp / "config.json")
    model.vocab.save(tmp / "vocab.json")
    if getattr(model, "tag_calibration", None) is not None:
        (tmp / "tag_calibration.json").write_text(json.dumps(model.tag_calibration, indent=0), encoding="utf-8")
    if getattr(model, "confidence_model", None) is not None:
        model.confidence_model.save(tmp / "confidence.json")
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.chmod(0o755)  # mkdtemp makes it private; an export is meant to be shared
    return manifest


_TMP_MARK = ".export-"  # .OUT.export-PID-XXXX (older versions: .OUT.export-XXXX)


def remove_stale_exports(parent: Path) -> list[Path]:
    """Remove the export temporaries that killed exports left in ``parent`` (see
    :func:`captioner.fileio.remove_abandoned_dirs`); returns what was removed."""
    removed = remove_abandoned_dirs(parent, _TMP_MARK)
    if removed:
        logger.warning("removed %d temporary director%s that killed exports left in %s", len(removed),
                       "y" if len(removed) == 1 else "ies", parent)
    return removed


def _write_graphs(model, directory: Path, opset: int) -> dict:
    """Export the three graphs into ``directory``; returns the manifest describing them."""
    onnx = require_onnx()

    side = model.config.preprocess.crop
    pixels = torch.randn(2, 3, side, side)  # batch 2: a batch of 1 could be specialised away by the tracer
    encoder = _Encoder(fix_same_padding(model.encoder.eval(), pixels))
    with torch.no_grad():
        features = encoder(pixels)
        context, state = model.decoder.start(features)
        state = explicit_state(model.decoder, state, features)
    context_leaves, context_spec = flatten(context)
    state_leaves, state_spec = flatten(state)
    context_names = [f"context_{i}" for i in range(len(context_leaves))]
    state_names = [f"state_{i}" for i in range(len(state_leaves))]
    new_state = [f"new_{name}" for name in state_names]
    attention = bool(model.config.attention)
    step_outputs = ["logits", *new_state] + (["attention"] if attention else [])
    batch0 = {name: {0: "batch"} for name in ["pixels", "features", "tokens", "logits", "attention", *context_names]}
    batch1 = {name: {1: "batch"} for name in [*state_names, *new_state]}
    axes = {**batch0, **batch1}
    tokens = torch.full((2,), 1, dtype=torch.long)
    _export(encoder, (pixels,), directory / GRAPHS["encoder"], ["pixels"], ["features"], axes, opset)
    _export(InitGraph(model.decoder), (features,), directory / GRAPHS["decoder_init"], ["features"],
            context_names + state_names, axes, opset)
    step_decoder, extra_words = _with_tag_rows(model)
    _export(StepGraph(step_decoder, context_spec, state_spec), (tokens, *context_leaves, *state_leaves),
            directory / GRAPHS["decoder_step"], ["tokens", *context_names, *state_names], step_outputs, axes, opset)
    graphs = dict(GRAPHS)
    if getattr(model.encoder, "classifier", None) is not None:
        _export(_Classifier(model.encoder), (features,), directory / CLASSIFIER, ["features"], ["imagenet_logits"],
                {**axes, "imagenet_logits": {0: "batch"}}, opset)
        graphs["classifier"] = CLASSIFIER
    return {
        "format": "captioner-onnx", "format_version": FORMAT_VERSION, "graphs": graphs, "opset": opset,
        "context": context_names, "state": state_names, "attention_output": attention,
        "num_decoders": model.config.num_decoders, "feature_shape": list(features.shape[1:]),
        "vocab_size": len(model.vocab), "extra_words": extra_words, "model_sha256": model.weights_sha256(),
        "torch_version": torch.__version__, "onnx_version": onnx.__version__, "exporter": "torchscript",
    }


def _with_tag_rows(model) -> tuple[nn.Module, list[str]]:
    """The decoder with rows for every tag word its vocabulary lacks, and those words in id order (the model's own
    vocabulary is not changed)."""
    from captioner.generation.guided import add_tag_words, extend_decoder

    vocab = copy.deepcopy(model.vocab)
    vocab.extra = []
    extra = list(add_tag_words(vocab))
    return (extend_decoder(model.decoder, vocab).eval() if extra else model.decoder), extra


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict,
            opset: int) -> None:
    """One graph through the TorchScript-based exporter, batch axes dynamic, then checked by ``onnx.checker``."""
    onnx = require_onnx()
    used = set(inputs) | set(outputs)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice and tracer warnings about shapes
        torch.onnx.export(module.eval(), args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes={k: v for k, v in axes.items() if k in used}, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    graph = onnx.load(str(path))
    _drop_empty_trailing_inputs(graph)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))


def _drop_empty_trailing_inputs(model) -> None:
    """Remove the empty names that end some nodes' input lists (the exporter writes ``Pad(x, pads, "")``): they mean
    "not given", as an absent input does, but ONNX Runtime then does not fuse a ``Pad`` into the convolution after
    it, and every stride-2 layer of a TF-"same" encoder would run unfused, with layout conversions around it."""
    for node in model.graph.node:
        while node.input and node.input[-1] == "":
            node.input.pop()
