"""Parameter accounting of a model: every layer's parameter count, and for each recurrent layer the count the
textbook formula predicts next to the count PyTorch holds.

A recurrent layer with hidden width ``h`` and input width ``x`` has, per gate, a weight matrix over ``[h_{t-1} ; x_t]``
and a bias: ``h·(h + x) + h`` parameters. An LSTM has 4 gates (input, forget, cell, output), a GRU 3 (reset,
update, new), a plain RNN 1. PyTorch keeps two bias vectors per gate (``b_ih`` and ``b_hh``, for cuDNN
compatibility), which adds ``gates · h``. In captioner the first layer's input is ``[word embedding ; image]``, so
its input-to-hidden matrix W_ih splits into word columns and image columns: the image columns are what feeds the
image to the cell at every step.
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import nn

from captioner.pipeline import Captioner

GATES = {"LSTM": 4, "LSTMCell": 4, "GRU": 3, "GRUCell": 3, "RNN": 1, "RNNCell": 1}
_RECURRENT = tuple(getattr(nn, name) for name in GATES)
_DATA_HASH = re.compile(r"data sha256[^`]*`([0-9a-f]{64})`", re.IGNORECASE)


def gate_formula(gates: int, hidden: int, inputs: int, second_bias: bool = True) -> int:
    """Parameters of one recurrent layer: ``gates · (h·(h + x) + h)``, plus ``gates · h`` for PyTorch's second
    bias."""
    return gates * (hidden * (hidden + inputs) + hidden) + (gates * hidden if second_bias else 0)


def recurrent_layers(module: nn.Module, prefix: str = "") -> list[dict]:
    """One entry per layer of every recurrent module under ``module``: its input and hidden widths, the formula's
    count and the measured one (``sum(p.numel())`` of that layer's tensors)."""
    found = []
    for name, sub in module.named_modules(prefix=prefix):
        if not isinstance(sub, _RECURRENT):
            continue
        kind = type(sub).__name__
        gates = GATES[kind]
        hidden = sub.hidden_size
        layers = getattr(sub, "num_layers", 1)
        for layer in range(layers):
            suffix = f"_l{layer}" if hasattr(sub, "num_layers") else ""
            names = [f"{part}{suffix}" for part in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            tensors = [getattr(sub, n) for n in names if getattr(sub, n, None) is not None]
            inputs = tensors[0].shape[1]
            found.append({
                "name": name if layers == 1 else f"{name} (layer {layer})", "type": kind, "gates": gates,
                "hidden": hidden, "inputs": inputs, "layer": layer,
                "formula_params": gate_formula(gates, hidden, inputs, second_bias=len(tensors) == 4),
                "measured_params": sum(t.numel() for t in tensors),
            })
    return found


def w_ih_split(model: Captioner) -> dict:
    """The first recurrent layer's W_ih split into word-embedding columns and image columns (the projected image,
    or the attention context; none for ``init_only``), as columns and as parameters."""
    cfg = model.config
    first = next(layer for layer in recurrent_layers(model.decoder) if layer["layer"] == 0)
    rows = first["gates"] * first["hidden"]
    image_columns = first["inputs"] - cfg.embed_dim
    return {"w_ih_word_columns": cfg.embed_dim, "w_ih_image_columns": image_columns,
            "w_ih_word_params": rows * cfg.embed_dim, "w_ih_image_params": rows * image_columns}


def layer_rows(module: nn.Module, prefix: str, stored: bool, max_depth: int | None = None) -> list[dict]:
    """Layers with parameters: every module whose weights are all its own (or, with ``max_depth``, the modules that
    many levels below ``module``, each counted whole) as ``{"name", "type", "params", "stored", "shapes"}``
    (``stored``: the weights are in the model file, not taken from the encoder's pretrained package)."""
    rows = []
    for name, sub in module.named_modules(prefix=prefix):
        depth = name.count(".") - prefix.count(".")
        leaf = not any(True for child in sub.children() for _ in child.parameters())  # all its weights are its own
        if (max_depth is not None and depth == max_depth) or (leaf and (max_depth is None or depth < max_depth)):
            params = list(sub.parameters())
            if params:
                rows.append({"name": name, "type": type(sub).__name__, "params": sum(p.numel() for p in params),
                             "stored": stored,
                             "shapes": [list(p.shape) for p in sub.parameters(recurse=False)]})
    return rows


def data_hash(model_dir: Path | None) -> str | None:
    """The training data's SHA-256 as the model card states it (None when there is no card or it has none)."""
    card = model_dir / "README.md" if model_dir is not None else None
    if card is None or not card.is_file():
        return None
    found = _DATA_HASH.search(card.read_text(encoding="utf-8", errors="replace"))
    return found.group(1) if found else None


def inspect_model(model: Captioner, model_dir: Path | None = None, encoder: bool = True) -> dict:
    """Everything ``captioner inspect`` reports about a model.

    Args:
        model: the model.
        model_dir: its directory (for the model card's data hash).
        encoder: also build the encoder (with its weights) and count its layers.

    Returns:
        ``{"layers", "recurrent" (the first entry with the W_ih split), "totals", "vocab_size", "encoder",
        "preprocess", "data_sha256", ...}``.
    """
    cfg = model.config
    layers = layer_rows(model.decoder, "decoder", stored=True)
    totals = {"decoder": sum(p.numel() for p in model.decoder.parameters())}
    if encoder:
        layers = layer_rows(model.encoder, "encoder", cfg.encoder_weights_in_file, max_depth=3) + layers
        totals["encoder"] = sum(p.numel() for p in model.encoder.parameters())
    totals["model"] = sum(totals.values())
    split = w_ih_split(model)
    recurrent = recurrent_layers(model.decoder, "decoder")
    recurrent[0].update(split)  # the first layer's W_ih: word columns and image columns
    return {
        "encoder": cfg.encoder, "encoder_dim": cfg.encoder_dim, "inject": cfg.inject, "cell": cfg.cell,
        "num_layers": cfg.num_layers, "num_decoders": cfg.num_decoders, "vocab_size": cfg.vocab_size,
        "preprocess": {"resize": cfg.preprocess.resize, "crop": cfg.preprocess.crop,
                       "interpolation": cfg.preprocess.interpolation, "mean": list(cfg.preprocess.mean),
                       "std": list(cfg.preprocess.std)},
        "feature_shape": list(cfg.feature_shape()), "data_sha256": data_hash(model_dir),
        "layers": layers, "recurrent": recurrent,
        "image_injection_share": split["w_ih_image_params"] / totals["decoder"], "totals": totals,
    }


def format_report(report: dict) -> str:
    """The report as the text ``captioner inspect`` prints: a layer table, the recurrent accounting, the facts."""
    lines = [f"{'layer':<44} {'type':<18} {'parameters':>12}  weights", "-" * 100]
    lines += [f"{row['name']:<44} {row['type']:<18} {row['params']:>12,}  "
              f"{'model file' if row['stored'] else 'encoder package (frozen)'}" for row in report["layers"]]
    totals = report["totals"]
    lines += ["-" * 100] + [f"{'total ' + part:<63} {count:>12,}" for part, count in totals.items()]
    lines += ["", "Recurrent layers: per gate h·(h+x) + h, times the gates, plus PyTorch's second bias (gates·h)"]
    for layer in report["recurrent"]:
        g, h, x = layer["gates"], layer["hidden"], layer["inputs"]
        check = "matches" if layer["formula_params"] == layer["measured_params"] else "DIFFERS"
        lines.append(f"  {layer['name']} ({layer['type']}, {g} gates, h={h}, x={x}): "
                     f"{g}·({h}·({h}+{x}) + {h}) + {g}·{h} = {layer['formula_params']:,}; "
                     f"measured {layer['measured_params']:,} ({check})")
    split = report["recurrent"][0]
    lines.append(f"  first layer W_ih: {split['w_ih_word_columns']} word-embedding columns "
                 f"({split['w_ih_word_params']:,} parameters) + {split['w_ih_image_columns']} image columns "
                 f"({split['w_ih_image_params']:,} parameters, {report['image_injection_share']:.1%} of the decoder) "
                 "that inject the image at every step")
    pre = report["preprocess"]
    lines += ["", f"encoder: {report['encoder']} ({report['encoder_dim']}-d, features {report['feature_shape']})",
              f"preprocessing: resize {pre['resize']} ({pre['interpolation']}), center crop {pre['crop']}, "
              f"mean {pre['mean']}, std {pre['std']}",
              f"image injection: {report['inject']}; cell: {report['cell']} × {report['num_layers']} layer(s); "
              f"decoders: {report['num_decoders']}",
              f"vocabulary: {report['vocab_size']} tokens",
              f"training data sha256: {report['data_sha256'] or 'not recorded in the model card'}"]
    return "\n".join(lines)
