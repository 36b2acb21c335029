"""Draw what :func:`captioner.inspection.visualize.describe` gathers: PNG figures, an HTML page and a JSON file.

Files written into the output directory:

- ``cells.png``: hidden (and LSTM cell) state of the chosen cells, one column per generated word;
- ``sensitivity.png``: the image sensitivity of each step (with a baseline image);
- ``attention.png``: a strip of the photo with each word's attention map over it (attention models);
- ``photo.png``: the photo as the model sees it (resized and cropped);
- ``index.html``: all of it on one page, with each step's probability and top-5 alternatives and the caption
  coloured by each chosen cell, as in the classic char-rnn cell visualisation;
- ``visualization.json``: the numbers behind the figures.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import torch

from captioner.inspection.plots import require_matplotlib


def _cell_matrix(data: dict, which: str) -> torch.Tensor:
    """Rows of the chosen cells ``(K, T)`` from the trace's ``hidden`` or ``cell`` ``(T, H)``."""
    states = getattr(data["trace"], which)
    return states[:, [c["cell"] for c in data["cells"]]].T


def _cells_png(plt, data: dict, path: Path) -> None:
    panels = [("hidden", "hidden state h (tanh, in [-1, 1])")]
    if data["trace"].cell is not None:
        panels.append(("cell", "LSTM cell state c"))
    rows = len(data["cells"])
    fig, axes = plt.subplots(1, len(panels), figsize=(3 + 0.55 * len(data["words"]) * len(panels), 1.5 + 0.28 * rows),
                             squeeze=False)
    labels = [f"{c['cell']} ({c['why']})" for c in data["cells"]]
    for ax, (which, title) in zip(axes[0], panels):
        matrix = _cell_matrix(data, which).numpy()
        bound = max(float(abs(matrix).max()), 1e-6) if which == "cell" else 1.0
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(len(data["words"])), data["words"], rotation=45, ha="right")
        ax.set_yticks(range(rows), labels, fontsize=8)
        ax.set_xlabel("generated word (state after the step that chose it)")
        ax.set_ylabel("cell (why chosen)")
        ax.set_title(title)
        fig.colorbar(image, ax=ax, label="activation")
    fig.suptitle(f"Recurrent cells while writing: \"{data['caption']}\"")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sensitivity_png(plt, data: dict, path: Path) -> None:
    tv = data["sensitivity"]["tv"].tolist()
    fig, ax = plt.subplots(figsize=(2.5 + 0.55 * len(tv), 4))
    ax.bar(range(len(tv)), tv, color="tab:orange")
    ax.set_xticks(range(len(tv)), data["words"], rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_xlabel("generated word")
    ax.set_ylabel("total variation distance (0-1)")
    ax.set_title("Image sensitivity: next-word distribution, photo vs the mean training image")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _attention_png(plt, data: dict, path: Path) -> None:
    weights = data["trace"].attention  # (T, L)
    side = math.isqrt(weights.shape[1])
    photo = data["pixels"].permute(1, 2, 0).numpy()  # (H, W, 3)
    height, width = photo.shape[:2]
    columns = min(len(data["words"]), 6)
    rows = math.ceil(len(data["words"]) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for t, (ax, word) in enumerate(zip(axes.flat, data["words"])):
        grid = weights[t].view(1, 1, side, side)
        heat = torch.nn.functional.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        ax.imshow(photo)
        ax.imshow(heat.numpy(), cmap="inferno", alpha=0.55, extent=(0, width, height, 0))
        ax.set_title(f"{t + 1}. {word} (max {float(weights[t].max()):.2f})", fontsize=9)
    fig.suptitle("Attention over the photo for each generated word (brighter: more weight)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _photo_png(plt, data: dict, path: Path) -> None:
    plt.imsave(path, data["pixels"].permute(1, 2, 0).numpy())


def render(data: dict, out: Path) -> list[Path]:
    """Write the figures, ``index.html`` and ``visualization.json`` into ``out``; returns the files written."""
    plt = require_matplotlib()
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "photo.png", out / "cells.png"]
    _photo_png(plt, data, written[0])
    _cells_png(plt, data, written[1])
    if data["sensitivity"] is not None:
        written.append(out / "sensitivity.png")
        _sensitivity_png(plt, data, written[-1])
    if data["trace"].attention is not None:
        written.append(out / "attention.png")
        _attention_png(plt, data, written[-1])
    facts = summary(data)
    (out / "visualization.json").write_text(json.dumps(facts, indent=2), encoding="utf-8")
    (out / "index.html").write_text(page(facts, [p.name for p in written]), encoding="utf-8")
    return written + [out / "visualization.json", out / "index.html"]


def summary(data: dict) -> dict:
    """The numbers behind the figures, JSON-ready."""
    steps = []
    for t, word in enumerate(data["words"]):
        step = {"word": word, "prob": data["prob"][t],
                "top5": [{"word": w, "prob": p} for w, p in data["top5"][t]]}
        if data["sensitivity"] is not None:
            step["sensitivity_tv"] = float(data["sensitivity"]["tv"][t])
            step["sensitivity_kl"] = float(data["sensitivity"]["kl"][t])
        if data["trace"].attention is not None:
            step["attention"] = [round(float(a), 5) for a in data["trace"].attention[t]]
        steps.append(step)
    cells = [{**c, "hidden": [round(float(v), 4) for v in row]}
             for c, row in zip(data["cells"], _cell_matrix(data, "hidden"))]
    return {"caption": data["caption"], "steps": steps, "cells": cells,
            "hidden_size": int(data["trace"].hidden.shape[1]), "baseline": data["sensitivity"] is not None}


def _colour(value: float) -> str:
    """A background for an activation in [-1, 1]: red for positive, blue for negative."""
    value = max(-1.0, min(1.0, value))
    fade = int(255 * (1 - abs(value)))
    return f"rgb(255,{fade},{fade})" if value >= 0 else f"rgb({fade},{fade},255)"


def page(facts: dict, files: list[str]) -> str:
    """The HTML page: the figures, the caption coloured by each chosen cell, and the table of steps."""
    esc = html.escape
    figures = "".join(f'<figure><img src="{esc(name)}" alt="{esc(name)}"><figcaption>{esc(name)}</figcaption></figure>'
                      for name in files if name != "photo.png")
    cell_rows = "".join(
        f"<tr><th>cell {c['cell']} <small>({esc(c['why'])})</small></th><td>"
        + " ".join(f'<span style="background:{_colour(v)}" title="{v:+.3f}">{esc(s["word"])}</span>'
                   for v, s in zip(c["hidden"], facts["steps"]))
        + "</td></tr>" for c in facts["cells"])
    head = "<tr><th>#</th><th>word</th><th>probability</th><th>top-5 alternatives</th>"
    head += "<th>image sensitivity</th></tr>" if facts["baseline"] else "</tr>"
    step_rows = ""
    for t, s in enumerate(facts["steps"], start=1):
        alternatives = ", ".join(f"{esc(a['word'])} {a['prob']:.3f}" for a in s["top5"])
        row = f"<tr><td>{t}</td><td>{esc(s['word'])}</td><td>{s['prob']:.3f}</td><td>{alternatives}</td>"
        if facts["baseline"]:
            width = int(200 * s["sensitivity_tv"])
            row += (f'<td><span class="bar" style="width:{width}px"></span> {s["sensitivity_tv"]:.3f}</td>')
        step_rows += row + "</tr>"
    note = "" if facts["baseline"] else (
        "<p><em>No image sensitivity: the model has no mean training image (image_mean.safetensors); pass "
        "--reference DIR with some photos to measure it.</em></p>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>captioner: {esc(facts['caption'])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1200px; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
.cells span {{ padding: 1px 3px; font-family: monospace; }}
.bar {{ display: inline-block; height: 10px; background: #f39c12; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>{esc(facts['caption'])}</h1>
<img src="photo.png" alt="the photo as the model sees it" style="max-width:260px">
<h2>Cells along the caption</h2>
<p>Each row is one hidden unit of the top recurrent layer ({facts['hidden_size']} in all), each word coloured by the
unit's value after the step that chose it (red positive, blue negative; hover for the value). "active": largest mean
|h|; "image": largest change when the photo is replaced by the mean training image.</p>
<table class="cells">{cell_rows}</table>
<h2>Steps</h2>{note}
<table>{head}{step_rows}</table>
<h2>Figures</h2>{figures}
</body></html>
"""
