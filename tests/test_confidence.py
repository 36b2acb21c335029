"""Caption confidence (issue 28): fit, monotone where it should be, low on blank images, saved with the model and
carried by every hypothesis and every results row."""

from __future__ import annotations

import torch
from PIL import Image

from captioner.generation import GenerationConfig
from captioner.generation.confidence import SIGNALS, ConfidenceModel, fit, signals
from captioner.pipeline import Captioner
from conftest import SAMPLES


def _synthetic(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions are right more often when the decoder is surer and the image has content."""
    g = torch.Generator().manual_seed(seed)
    mean_lp = -torch.rand(n, generator=g) * 3  # -3 .. 0
    length = 6 + torch.randint(0, 8, (n,), generator=g).float()
    top = torch.rand(n, generator=g)
    spread = torch.rand(n, generator=g) * 2
    logit = 2.5 * (mean_lp + 1.5) + 1.5 * (spread - 1.0)
    right = torch.rand(n, generator=g) < torch.sigmoid(logit)
    return torch.stack([mean_lp, length, top, spread], dim=1), right


def test_the_fit_is_calibrated_and_monotone_in_the_decoders_certainty():
    rows, right = _synthetic()
    weights, mean, scale, bias = fit(rows, right)
    model = ConfidenceModel(weights, mean, scale, bias)
    confidence = model(rows)
    assert abs(float(confidence.mean()) - float(right.float().mean())) < 0.02  # calibrated in the large
    probe = rows[:1].repeat(20, 1)
    probe[:, 0] = torch.linspace(-3, 0, 20)  # only the mean log-probability changes
    assert bool((model(probe).diff() > 0).all())
    probe = rows[:1].repeat(20, 1)
    probe[:, 3] = torch.linspace(0, 2, 20)  # only the image's spread changes
    assert bool((model(probe).diff() > 0).all())


def test_a_model_with_a_confidence_model_gives_every_caption_one_and_saves_it(tiny_model, tmp_path):
    rows, right = _synthetic()
    rows[:, 3] = rows[:, 3] * 0.01  # the tiny model's features spread little: keep the scale comparable
    tiny_model.confidence_model = ConfidenceModel(*fit(rows, right))
    images = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.radial_gradient("L").convert("RGB")]
    hyps = tiny_model.caption_images(images, GenerationConfig(beam_size=3, n_best=2, guided=False))
    assert all(0 <= h.confidence <= 1 for image in hyps for h in image)
    tiny_model.save_pretrained(tmp_path / "m")
    again = Captioner.from_pretrained(tmp_path / "m")
    assert again.confidence_model == tiny_model.confidence_model
    (tmp_path / "m" / "confidence.json").write_text('{"weights": [1]}')
    assert Captioner.from_pretrained(tmp_path / "m").confidence_model is None  # ignored with a warning


def test_signals_read_the_best_hypothesis_the_head_and_the_feature_map(tiny_model):
    features = torch.randn(2, 81, 8)
    flat = torch.zeros(1, 81, 8)
    logits = torch.randn(3, 1000)
    from captioner.generation.config import Hypothesis

    hyps = [Hypothesis([4, 5, 6], -3.0, -3.0, True), Hypothesis([4], -1.0, -1.0, True),
            Hypothesis([4, 5], -2.0, -2.0, True)]
    rows = signals(hyps, logits, torch.cat([features, flat]))
    assert rows.shape == (3, len(SIGNALS))
    assert torch.allclose(rows[:, 0], torch.tensor([-0.75, -0.5, -2.0 / 3]))  # per token, <end> included
    assert float(rows[2, 3]) == 0.0 and float(rows[0, 3]) > 0  # a uniform map has no spread


def test_the_default_gives_blank_tiny_and_uniform_images_a_low_confidence():
    model = Captioner.from_pretrained("default", device="cpu")
    assert model.confidence_model is not None
    blank = [Image.new("RGB", (320, 240), colour) for colour in ((0, 0, 0), (255, 255, 255), (128, 128, 128),
                                                                  (200, 30, 30))]
    results = model.caption(blank + [Image.new("RGB", (1, 1), (90, 90, 90))])
    assert all(r.confidence < 0.5 for r in results), [(r.text, r.confidence) for r in results]
    photo = model.caption(SAMPLES / "chelsea.jpg")
    assert photo.confidence > max(r.confidence for r in results)
