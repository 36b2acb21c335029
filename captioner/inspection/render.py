"""Draw what :func:`captioner.inspection.visualize.describe` gathers: PNG figures, an HTML page and a JSON file.

Files written into the output directory:

- ``cells.png``: hidden (and LSTM cell) state of the chosen cells, one column per generated word;
- ``sensitivity.png``: the image sensitivity of each step (with a baseline image);
- ``attention.png``: a strip of the photo with each word's attention map over it (attention models);
- ``photo.png``: the photo as the model sees it (resized and cropped);
- ``index.html``: all of it on one page, with each step's probability and top-5 alternatives (and, for attention
  models, its attention entropy) and the caption coloured by each chosen cell, as in the classic char-rnn cell
  visualisation; every text has a WCAG contrast of at least 4.5:1 on its background;
- ``visualization.json``: the numbers behind the figures (with :mod:`captioner.inspection.attention`'s measures of
  the caption's attention).
"""

from __future__ import annotations

import html
import json
import math
import textwrap
from pathlib import Path

import torch

from captioner.inspection.attention import PEAK_SHARE, describe_attention
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


ATTENTION_COLUMNS = 6  # attention.png: word panels per row
PANEL_INCHES = 2.2  # each panel's width (and its photo's height)
TITLE_POINTS = 9  # the panel titles' font size


def _panel_titles(data: dict, weights: torch.Tensor) -> list[str]:
    """Each panel's title, wrapped to the panel's width (a long word is broken rather than drawn over its
    neighbours)."""
    chars = max(int(PANEL_INCHES * 72 / (0.62 * TITLE_POINTS)), 8)  # ~0.62 em per character of DejaVu Sans
    return ["\n".join(textwrap.wrap(f"{t + 1}. {word} (max {float(weights[t].max()):.2f})", chars)) or " "
            for t, word in enumerate(data["words"])]


def _attention_png(plt, data: dict, path: Path) -> None:
    """One panel per word, ``ATTENTION_COLUMNS`` to a row; the constrained layout keeps every title in the space
    between its row and the row above, however many rows and title lines there are."""
    weights = data["trace"].attention  # (T, L)
    side = math.isqrt(weights.shape[1])
    photo = data["pixels"].permute(1, 2, 0).numpy()  # (H, W, 3)
    height, width = photo.shape[:2]
    titles = _panel_titles(data, weights)
    columns = min(len(titles), ATTENTION_COLUMNS)
    rows = math.ceil(len(titles) / columns)
    title_lines = [max(t.count("\n") + 1 for t in titles[r * columns: (r + 1) * columns]) for r in range(rows)]
    row_inches = [PANEL_INCHES * height / width + 0.2 + lines * TITLE_POINTS * 1.3 / 72 for lines in title_lines]
    fig, axes = plt.subplots(rows, columns, figsize=(PANEL_INCHES * columns + 0.3, sum(row_inches) + 0.6),
                             squeeze=False, layout="constrained", gridspec_kw={"height_ratios": row_inches})
    for ax in axes.flat:
        ax.axis("off")
    for t, (ax, title) in enumerate(zip(axes.flat, titles)):
        grid = weights[t].view(1, 1, side, side)
        heat = torch.nn.functional.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        ax.imshow(photo)
        ax.imshow(heat.numpy(), cmap="inferno", alpha=0.55, extent=(0, width, height, 0))
        ax.set_title(title, fontsize=TITLE_POINTS)
    fig.suptitle("Attention over the photo for each generated word (brighter: more weight)")
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
    """The numbers behind the figures, JSON-ready (with attention: each step's attention weights, entropy in nats,
    entropy over the uniform distribution's and top weight, and the caption's ``attention`` facts, see
    :func:`captioner.inspection.attention.describe_attention`)."""
    weights = data["trace"].attention  # (T, L) or None
    measures = describe_attention(weights) if weights is not None else None
    steps = []
    for t, word in enumerate(data["words"]):
        step = {"word": word, "prob": data["prob"][t],
                "top5": [{"word": w, "prob": p} for w, p in data["top5"][t]]}
        if data["sensitivity"] is not None:
            step["sensitivity_tv"] = float(data["sensitivity"]["tv"][t])
            step["sensitivity_kl"] = float(data["sensitivity"]["kl"][t])
        if measures is not None:
            step["attention"] = [round(float(a), 5) for a in weights[t]]
            step["attention_entropy"] = round(measures["entropy"][t], 5)
            step["attention_entropy_ratio"] = round(measures["entropy_ratio"][t], 5)
            step["attention_peak"] = round(measures["peak"][t], 5)
        steps.append(step)
    cells = [{**c, "hidden": [round(float(v), 4) for v in row]}
             for c, row in zip(data["cells"], _cell_matrix(data, "hidden"))]
    facts = {"caption": data["caption"], "steps": steps, "cells": cells,
             "hidden_size": int(data["trace"].hidden.shape[1]), "baseline": data["sensitivity"] is not None}
    if measures is not None:
        facts["attention"] = {"peak_share": PEAK_SHARE, "steps": len(steps),
                              **{k: v for k, v in measures.items() if not isinstance(v, list)}}
    return facts


TEXT_DARK, TEXT_LIGHT, PAGE_BACKGROUND = (0, 0, 0), (255, 255, 255), (255, 255, 255)


def luminance(rgb: tuple[int, int, int]) -> float:
    """WCAG 2 relative luminance of an sRGB colour given as 0-255 channels (0 black, 1 white)."""
    linear = [c / 255 / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """WCAG 2 contrast ratio of two colours, 1 to 21 (text needs at least 4.5)."""
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def _css(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{c:02x}" for c in rgb)


def _cell_style(value: float) -> str:
    """The style of a word coloured by an activation in [-1, 1]: a red background for positive, blue for negative,
    and whichever of black or white text reads better on it (a contrast of 4.59:1 at worst, over WCAG's 4.5)."""
    value = max(-1.0, min(1.0, value))
    fade = int(255 * (1 - abs(value)))
    background = (255, fade, fade) if value >= 0 else (fade, fade, 255)
    text = max((TEXT_DARK, TEXT_LIGHT), key=lambda colour: contrast(colour, background))
    return f"background:rgb{background};color:{_css(text)}".replace(" ", "")


def _cell_rows(facts: dict) -> str:
    esc = html.escape
    return "".join(
        f"<tr><th>cell {c['cell']} <small>({esc(c['why'])})</small></th><td>"
        + " ".join(f'<span style="{_cell_style(v)}" title="{v:+.3f}">{esc(s["word"])}</span>'
                   for v, s in zip(c["hidden"], facts["steps"]))
        + "</td></tr>" for c in facts["cells"])


def _step_table(facts: dict) -> str:
    """The table of steps: word, probability, top-5, and image sensitivity and attention entropy when measured."""
    esc, attention = html.escape, "attention" in facts
    head = "<tr><th>#</th><th>word</th><th>probability</th><th>top-5 alternatives</th>"
    head += "<th>image sensitivity</th>" if facts["baseline"] else ""
    head += "<th>attention entropy, nats (of uniform)</th>" if attention else ""
    rows = ""
    for t, s in enumerate(facts["steps"], start=1):
        alternatives = ", ".join(f"{esc(a['word'])} {a['prob']:.3f}" for a in s["top5"])
        row = f"<tr><td>{t}</td><td>{esc(s['word'])}</td><td>{s['prob']:.3f}</td><td>{alternatives}</td>"
        if facts["baseline"]:
            width = int(200 * s["sensitivity_tv"])
            row += (f'<td><span class="bar" style="width:{width}px"></span> {s["sensitivity_tv"]:.3f}</td>')
        if attention:
            row += f"<td>{s['attention_entropy']:.2f} ({s['attention_entropy_ratio']:.2f})</td>"
        rows += row + "</tr>"
    return f"<table>{head}</tr>{rows}</table>"


def _attention_note(facts: dict) -> str:
    """A paragraph on how peaked and mobile the caption's attention is (empty without attention)."""
    if "attention" not in facts:
        return ""
    a = facts["attention"]
    return (f"<p>Attention: its entropy is on average {a['mean_entropy_ratio']:.2f} of the uniform distribution's "
            f"({a['uniform_entropy']:.2f} nats over {a['locations']} locations; 1: spread evenly, 0: one location). "
            f"{a['focused_steps']} of {a['steps']} steps put more than {a['peak_share']:.0%} of the weight on one "
            f"location; the top location changes at {a['top_changes']} of {a['steps'] - 1} steps.</p>")


def page(facts: dict, files: list[str]) -> str:
    """The HTML page: the figures, the caption coloured by each chosen cell, and the table of steps."""
    esc = html.escape
    figures = "".join(f'<figure><img src="{esc(name)}" alt="{esc(name)}"><figcaption>{esc(name)}</figcaption></figure>'
                      for name in files if name != "photo.png")
    note = "" if facts["baseline"] else (
        "<p><em>No image sensitivity: the model has no mean training image (image_mean.safetensors); pass "
        "--reference DIR with some photos to measure it.</em></p>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>captioner: {esc(facts['caption'])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1200px; color: {_css(TEXT_DARK)};
  background: {_css(PAGE_BACKGROUND)}; }}
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
<table class="cells">{_cell_rows(facts)}</table>
<h2>Steps</h2>{note}{_attention_note(facts)}
{_step_table(facts)}
<h2>Figures</h2>{figures}
</body></html>
"""
