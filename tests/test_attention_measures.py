"""captioner.inspection.attention: entropy and its ratio to uniform, peaks, top-location moves, spread, and the
survey over many captions (docs/ablation.md, "Is the default's attention doing anything?")."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config

from captioner.generation import GenerationConfig
from captioner.inspection.attention import (
    attention_maps,
    describe_attention,
    entropy,
    entropy_ratio,
    grid_side,
    spread,
    survey,
    top_moves,
)
from captioner.models.factory import complete_config
from captioner.pipeline import Captioner


def one_hot(locations: int, *tops: int) -> torch.Tensor:
    """``(T, L)`` weights, step t all on location ``tops[t]``."""
    return torch.nn.functional.one_hot(torch.tensor(tops), locations).float()


def test_uniform_attention_has_ratio_one_and_one_location_ratio_zero():
    uniform = torch.full((4, 81), 1 / 81)
    assert torch.allclose(entropy(uniform), torch.full((4,), math.log(81), dtype=torch.float64))
    assert torch.allclose(entropy_ratio(uniform), torch.ones(4, dtype=torch.float64))
    assert torch.equal(entropy(one_hot(81, 3, 40)), torch.zeros(2, dtype=torch.float64))  # 0 log 0 = 0, no NaN
    assert torch.equal(entropy_ratio(one_hot(81, 3, 40)), torch.zeros(2, dtype=torch.float64))
    half = torch.zeros(1, 81)
    half[0, :2] = 0.5
    assert entropy_ratio(half).item() == pytest.approx(math.log(2) / math.log(81))
    assert entropy_ratio(torch.ones(3, 1)).tolist() == [0.0, 0.0, 0.0]  # one location: nothing to choose, no NaN


def test_top_moves_count_changes_and_grid_distance():
    weights = one_hot(9, 0, 2, 2, 8)  # a 3x3 grid: (0,0) -> (0,2) -> (0,2) -> (2,2)
    changed, moved = top_moves(weights)
    assert changed.tolist() == [True, False, True]
    assert moved.tolist() == [2.0, 0.0, 2.0]
    assert grid_side(81) == 9 and grid_side(10) is None
    changed, moved = top_moves(one_hot(10, 0, 9))
    assert changed.tolist() == [True] and moved is None  # not a square map: no distance


def test_spread_is_zero_for_one_map_and_one_half_for_two_disjoint_ones():
    assert torch.allclose(spread(torch.full((5, 9), 1 / 9)), torch.zeros(5, dtype=torch.float64))
    assert spread(one_hot(9, 0, 8)).tolist() == [0.5, 0.5]


def test_describe_attention_of_uniform_and_focused_captions():
    uniform = describe_attention(torch.full((3, 81), 1 / 81))
    assert uniform["entropy_ratio"] == pytest.approx([1.0] * 3) and uniform["mean_entropy_ratio"] == pytest.approx(1)
    assert uniform["focused_steps"] == 0 and uniform["mean_spread"] == pytest.approx(0)
    assert uniform["uniform_entropy"] == pytest.approx(math.log(81)) and uniform["locations"] == 81
    focused = describe_attention(one_hot(81, 0, 0, 80))
    assert focused["entropy_ratio"] == [0.0] * 3 and focused["peak"] == [1.0] * 3 and focused["top"] == [0, 0, 80]
    assert focused["focused_steps"] == 3 and focused["top_changes"] == 1
    assert focused["mean_top_move"] == pytest.approx(8 * math.sqrt(2) / 2)  # (0,0)->(0,0)->(8,8)
    assert describe_attention(one_hot(81, 5))["mean_top_move"] is None
    with pytest.raises(ValueError, match="T >= 1"):
        describe_attention(torch.zeros(0, 81))


def test_survey_sums_up_steps_captions_and_images():
    maps = [torch.full((4, 9), 1 / 9)] * 10 + [one_hot(9, 0, 0)] * 10 + [torch.zeros(0, 9)]
    facts = survey(maps, min_captions=15)
    assert facts["captions"] == 20 and facts["steps"] == 60 and facts["locations"] == 9
    assert facts["mean_entropy_ratio"] == pytest.approx(40 / 60)  # 40 uniform steps (ratio 1), 20 focused (0)
    assert facts["focused_share"] == pytest.approx(20 / 60)
    assert facts["top_change_share"] == 0.0  # uniform: argmax stays on location 0; the focused ones stay too
    assert facts["by_step"]["entropy_ratio"] == pytest.approx([0.5, 0.5])  # steps 3-4: 10 captions < 15
    assert facts["by_step"]["captions"] == [20, 20] and facts["by_step"]["focused_share"] == [0.5, 0.5]
    assert facts["mean_spread"] == pytest.approx(0)  # no caption looks elsewhere as it goes
    assert facts["image_spread"] == pytest.approx(4 / 9)  # (1 - 1/9) / 2: half the captions look elsewhere
    assert facts["mean_map"].shape == (9,) and facts["peaks"].shape == (60,)
    assert facts["mean_map"].sum().item() == pytest.approx(1)
    assert facts["mean_map_entropy_ratio"] == pytest.approx(float(entropy_ratio(facts["mean_map"])))
    same = survey([torch.full((3, 9), 1 / 9)] * 5, min_captions=1)
    assert same["image_spread"] == pytest.approx(0) and same["mean_entropy_ratio"] == pytest.approx(1)
    assert survey([one_hot(9, 4)] * 3)["top_change_share"] is None  # one-word captions: no moves to count
    with pytest.raises(ValueError, match="empty"):
        survey([torch.zeros(0, 9)])


def test_attention_maps_follow_the_searched_captions(vocab):
    torch.manual_seed(0)
    config = complete_config(tiny_config(len(vocab), inject="attention", attention_dim=8), len(vocab))
    model = Captioner(config, vocab).eval()
    features = torch.randn(5, *config.feature_shape())
    search = GenerationConfig(beam_size=3, max_length=7)
    maps = attention_maps(model, features, search, batch_size=2)
    best = [h[0] for h in model.caption_features(features, search)]  # the same search without attention
    assert [m.shape for m in maps] == [(len(h.tokens), config.feature_locations) for h in best]
    assert all(torch.allclose(m.sum(dim=1), torch.ones(len(m)), atol=1e-5) for m in maps)
    pooled = Captioner(complete_config(tiny_config(len(vocab)), len(vocab)), vocab).eval()
    with pytest.raises(ValueError, match="no attention"):
        attention_maps(pooled, torch.randn(2, pooled.config.encoder_dim), search)


def test_guided_captions_are_read_again_with_the_searchs_weights(vocab, caplog):
    from captioner.generation.guided import read_attention

    torch.manual_seed(1)
    config = complete_config(tiny_config(len(vocab), inject="attention", attention_dim=8), len(vocab))
    model = Captioner(config, vocab).eval()
    features = torch.randn(4, *config.feature_shape())
    plain = GenerationConfig(beam_size=3, max_length=7, return_attention=True)
    searched = model.caption_features(features, plain)
    with torch.inference_mode():
        again = read_attention(model.decoder, features, model.vocab, searched)
    for hyps, read in zip(searched, again):  # read again = as the search saw it
        assert torch.allclose(read[0].attention, hyps[0].attention.float(), atol=1e-5)
    guided = GenerationConfig(beam_size=3, max_length=7, tags=("ball",))  # constrained search: no weights kept
    captions = [h[0] for h in model.caption_features(features, guided)]
    maps = attention_maps(model, features, guided)
    assert [m.shape for m in maps] == [(len(h.tokens), config.feature_locations) for h in captions]
    unknown = GenerationConfig(beam_size=2, max_length=5, tags=("zebra",))  # a word the model never learned
    captions = [h[0] for h in model.caption_features(features, unknown)]
    maps = attention_maps(model, features, unknown)  # the search reads them with the tag word's rows
    assert [m.shape for m in maps] == [(len(h.tokens), config.feature_locations) for h in captions]


def test_attention_survey_script_writes_its_numbers_and_figure(vocab, shapes_dataset, tmp_path, caplog):
    import importlib.util
    import json
    from pathlib import Path

    pytest.importorskip("matplotlib")
    path = Path(__file__).resolve().parents[1] / "scripts" / "attention_survey.py"
    spec = importlib.util.spec_from_file_location("attention_survey", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    torch.manual_seed(0)
    config = complete_config(tiny_config(len(vocab), inject="attention", attention_dim=8), len(vocab))
    model = Captioner(config, vocab).eval()
    model.save_pretrained(tmp_path / "m")
    features = torch.randn(3, *config.feature_shape())
    with script.fixed_attention(torch.full((config.feature_locations,), 1 / config.feature_locations)):
        uniform = attention_maps(model, features, GenerationConfig(max_length=5))
    assert all(torch.allclose(m, torch.full_like(m, 1 / config.feature_locations)) for m in uniform)
    assert not all(torch.allclose(m, uniform[0][0]) for m in attention_maps(model, features, GenerationConfig()))
    script.main(["--model", str(tmp_path / "m"), "--data", str(shapes_dataset), "--images", "6", "--max-length", "5",
                 "--min-captions", "2", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "attention_survey.json").read_text())
    assert report["captions"] == report["settings"]["surveyed"] == 6 and 0 <= report["mean_entropy_ratio"] <= 1
    assert len(report["mean_map"]) == math.isqrt(config.feature_locations)
    assert report["settings"]["controls"]["learned"]["identical_to_learned"] == 1
    assert set(report["settings"]["controls"]) == {"learned", "uniform", "mean_map", "examples"}
    assert (tmp_path / "out" / "attention_survey.png").stat().st_size > 10_000
