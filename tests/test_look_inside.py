"""The look-inside pictures (issue 25, item 6): attention.png's titles stay between their rows, index.html's text is
readable on its backgrounds (WCAG contrast), and ``captioner visualize`` reports the caption's attention entropy
(``captioner plot``'s step line: tests/test_plot_steps.py)."""

from __future__ import annotations

import json
import re
import types
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from captioner.cli.main import main
from captioner.models.factory import complete_config
from captioner.pipeline import Captioner

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt

from captioner.inspection import render

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "coffee.jpg"


def _drawn_figures(monkeypatch) -> list:
    """Keep the figures the renderer closes, to look at their layout."""
    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    return kept


def _attention_data(words: list[str], pixels: tuple[int, int, int] = (3, 260, 260), locations: int = 81) -> dict:
    torch.manual_seed(0)
    weights = torch.softmax(3 * torch.randn(len(words), locations), dim=1)  # (T, L)
    return {"words": words, "trace": types.SimpleNamespace(attention=weights), "pixels": torch.rand(*pixels)}


CAPTIONS = {
    "one row": ["a", "dog", "runs", "<end>"],
    "three rows": ["a", "man", "in", "a", "red", "shirt", "is", "riding", "a", "bicycle", "down", "the", "dirt",
                   "road", "<end>"],
    "long words": ["extraordinarily-long-unbreakable-wordpiece"] * 9 + ["<end>"],
    "seven rows": [f"word{i}" for i in range(40)],
}


@pytest.mark.parametrize("caption", CAPTIONS.values(), ids=CAPTIONS.keys())
@pytest.mark.parametrize("pixels", [(3, 260, 260), (3, 200, 320)], ids=["square", "wide"])
def test_attention_titles_never_cover_another_panel(tmp_path, monkeypatch, caption, pixels):
    kept = _drawn_figures(monkeypatch)
    render._attention_png(plt, _attention_data(caption, pixels), tmp_path / "attention.png")
    fig = kept[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == len(caption)
    titles = {ax: ax.title.get_window_extent(renderer) for ax in panels}
    clashes = []
    for ax, title in titles.items():
        assert title.height > 0 and ax.title.get_text()
        for other in panels:
            if other is not ax and title.overlaps(other.get_window_extent(renderer)):
                clashes.append((ax.title.get_text(), "over the image of", other.title.get_text()))
            if other is not ax and title.overlaps(titles[other]):
                clashes.append((ax.title.get_text(), "over the title of", other.title.get_text()))
        if fig._suptitle is not None:
            assert not title.overlaps(fig._suptitle.get_window_extent(renderer))
    assert not clashes, clashes[:3]
    width = fig.get_window_extent(renderer)
    assert all(width.x0 <= t.x0 and t.x1 <= width.x1 for t in titles.values())  # no title cut off at the sides


# --- index.html: every text on every background reads at WCAG AA (4.5:1) ---

NAMED = {"black": (0, 0, 0), "white": (255, 255, 255)}


def _rgb(text: str) -> tuple[int, int, int]:
    text = text.strip().lower()
    if text in NAMED:
        return NAMED[text]
    if match := re.fullmatch(r"#([0-9a-f]{3}|[0-9a-f]{6})", text):
        digits = match.group(1)
        digits = "".join(c * 2 for c in digits) if len(digits) == 3 else digits
        return tuple(int(digits[i: i + 2], 16) for i in (0, 2, 4))
    if match := re.fullmatch(r"rgb\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)", text):
        return tuple(int(v) for v in match.groups())
    raise AssertionError(f"a colour the test cannot read: {text!r}")


def _wcag_contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    def luminance(rgb):
        lin = [(c / 255) / 12.92 if c / 255 <= 0.03928 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def _declarations(text: str) -> dict[str, str]:
    pairs = (d.split(":", 1) for d in text.split(";") if ":" in d)
    return {k.strip().lower(): v.strip() for k, v in pairs}


class _Colours(HTMLParser):
    """Each text run of the body with the colour it is drawn in and the background behind it, from the page's
    ``<style>`` rules (selectors: ``tag``, ``.class``, ``tag.class``, lists and descendants) and inline styles;
    unset, a browser draws black on white."""

    def __init__(self, css: str) -> None:
        super().__init__()
        self.rules = []
        for selectors, body in re.findall(r"([^{}]+)\{([^}]*)\}", css):
            for selector in selectors.split(","):
                self.rules.append((selector.split(), _declarations(body)))
        self.stack: list[tuple[str, set, dict]] = []
        self.runs: list[tuple[str, tuple, tuple]] = []

    @staticmethod
    def _simple(part: str, tag: str, classes: set) -> bool:
        name, *wanted = part.split(".")
        return (not name or name == tag) and set(wanted) <= classes

    def _matches(self, parts: list[str], depth: int) -> bool:
        tag, classes, _ = self.stack[depth]
        if not self._simple(parts[-1], tag, classes):
            return False
        ancestors = iter(range(depth - 1, -1, -1))
        return all(any(self._simple(p, *self.stack[i][:2]) for i in ancestors) for p in reversed(parts[:-1]))

    def handle_starttag(self, tag, attrs):
        if tag in ("img", "meta", "br"):
            return
        attrs = dict(attrs)
        classes = set((attrs.get("class") or "").split())
        self.stack.append((tag, classes, {}))
        style = {}
        for parts, declarations in self.rules:
            if self._matches(parts, len(self.stack) - 1):
                style.update(declarations)
        style.update(_declarations(attrs.get("style") or ""))
        self.stack[-1] = (tag, classes, style)

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def _nearest(self, *keys) -> str | None:
        for _, _, style in reversed(self.stack):
            for key in keys:
                if key in style:
                    return style[key]
        return None

    def handle_data(self, data):
        tags = [t for t, _, _ in self.stack]
        if not data.strip() or "body" not in tags or "style" in tags:
            return
        colour = self._nearest("color") or "black"
        background = self._nearest("background-color", "background") or "white"
        self.runs.append((data.strip(), _rgb(colour), _rgb(background.split()[0])))


def _facts() -> dict:
    words = ["a", "man", "riding", "a", "bike", "<end>"]
    values = [v / 10 for v in range(-10, 11)]  # every shade of the cell colours, saturated blue and red included
    return {
        "caption": "a man riding a bike", "hidden_size": 24, "baseline": True,
        "steps": [{"word": w, "prob": 0.5, "top5": [{"word": w, "prob": 0.5}] * 5, "sensitivity_tv": 0.4,
                   "attention_entropy": 4.0, "attention_entropy_ratio": 0.91} for w in words * 4],
        "cells": [{"cell": 3, "why": "active", "score": 0.9, "hidden": values[:12]},
                  {"cell": 7, "why": "image", "score": 0.5, "hidden": values[12:] + values[:3]}],
        "attention": {"peak_share": 0.2, "steps": 24, "locations": 81, "uniform_entropy": 4.39,
                      "mean_entropy_ratio": 0.91, "focused_steps": 3, "top_changes": 7},
    }


def test_every_text_on_the_page_has_contrast_4_5():
    page = render.page(_facts(), ["cells.png", "attention.png"])
    parser = _Colours(re.search(r"<style>(.*?)</style>", page, re.DOTALL).group(1))
    parser.feed(page)
    words = {w for w in ["a", "man", "riding", "bike", "<end>"]}
    on_cells = [r for r in parser.runs if r[0] in words and r[2] != (255, 255, 255)]
    assert len(on_cells) >= 20  # the coloured words were found
    low = sorted({(round(_wcag_contrast(fg, bg), 2), text, fg, bg) for text, fg, bg in parser.runs if
                  _wcag_contrast(fg, bg) < 4.5})
    assert not low, low[:5]


# --- captioner visualize reports the attention's entropy ---


def test_visualize_reports_the_attention_entropy_per_step(vocab, tmp_path, capsys):
    torch.manual_seed(0)
    config = complete_config(tiny_config(len(vocab), inject="attention", attention_dim=8), len(vocab))
    Captioner(config, vocab).eval().save_pretrained(tmp_path / "m")
    out = tmp_path / "viz"
    assert main(["visualize", str(SAMPLE), "--model", str(tmp_path / "m"), "--out", str(out), "--max-length", "6",
                 "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    locations = config.feature_locations
    for step in facts["steps"]:
        weights = torch.tensor(step["attention"], dtype=torch.float64)
        h = float(-(weights * weights.clamp_min(1e-12).log()).sum())
        assert step["attention_entropy"] == pytest.approx(h, abs=1e-3)
        assert step["attention_entropy_ratio"] == pytest.approx(h / torch.log(torch.tensor(locations)).item(),
                                                                abs=1e-3)
        assert 0 <= step["attention_entropy_ratio"] <= 1 + 1e-6
    summary = facts["attention"]
    assert summary["locations"] == locations and summary["steps"] == len(facts["steps"])
    ratios = [s["attention_entropy_ratio"] for s in facts["steps"]]
    assert summary["mean_entropy_ratio"] == pytest.approx(sum(ratios) / len(ratios), abs=1e-4)
    page = (out / "index.html").read_text()
    assert "attention entropy" in page and f"({ratios[0]:.2f})" in page
    assert "of the uniform distribution" in page
