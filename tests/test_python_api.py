"""``Captioner.caption()``: every input a user has (issue 25, item 1) goes through the CLI's loader and gives a
:class:`Caption` (text, score, n-best, attention on request); one result for one input, a list for a list; bad
settings are one ``ValueError``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.captions import Caption
from captioner.generation import GenerationConfig
from captioner.images import ImageLoadError, load_image, to_rgb
from captioner.pipeline import Captioner
from conftest import tiny_config

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "coffee.jpg"


@pytest.fixture
def model(vocab):
    torch.manual_seed(0)
    return Captioner(tiny_config(len(vocab), inject="attention", feature_locations=49, attention_dim=8), vocab).eval()


def expected(model, image: Image.Image, **settings) -> str:
    """The caption the CLI's path gives: the loaded file through caption_images."""
    hyps = model.caption_images([image], GenerationConfig(**settings))[0]
    return model.vocab.decode(hyps[0].tokens)


def test_one_path_gives_one_caption_as_the_cli_loads_it(model):
    want = expected(model, load_image(SAMPLE, min_side=model.config.preprocess.resize))
    for form in (str(SAMPLE), SAMPLE, SAMPLE.read_bytes()):
        result = model.caption(form)
        assert isinstance(result, Caption) and result.text == want and str(result) == want
        assert result.log_prob <= 0 and result.score == pytest.approx(result.log_prob)
        assert result.words == want.split() and result.n_best == [result]


def test_a_list_gives_a_list_in_order(model):
    image = load_image(SAMPLE)
    results = model.caption([SAMPLE, image, Image.new("RGB", (50, 40), (200, 30, 30))])
    assert isinstance(results, list) and len(results) == 3
    assert results[2].text == expected(model, Image.new("RGB", (50, 40), (200, 30, 30)))
    assert model.caption([]) == []


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "1", "I;16", "I", "F", "CMYK"])
def test_a_pil_image_of_any_mode_is_captioned(model, mode):
    image = Image.open(SAMPLE).convert("RGB").resize((120, 90))
    if mode == "I;16":
        converted = Image.fromarray((np.asarray(image.convert("L"), dtype=np.uint16) * 257))
    elif mode in ("I", "F"):
        converted = image.convert("L").convert(mode)
    else:
        converted = image.convert(mode)
    result = model.caption(converted)  # RGBA used to raise "shape '[...]' is invalid for input of size ..."
    assert isinstance(result, Caption) and result.text == expected(model, to_rgb(converted))


def test_an_opened_file_gets_its_exif_orientation_as_the_loader_gives_it(model, tmp_path):
    image = Image.open(SAMPLE).convert("RGB").resize((160, 80))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert model.caption(Image.open(path)).text == model.caption(path).text == expected(model, load_image(path))


def test_numpy_arrays_and_tensors_read_as_pictures(model):
    image = load_image(SAMPLE).resize((96, 64))
    want = expected(model, image)
    pixels = np.asarray(image)  # (H, W, 3) uint8
    assert model.caption(pixels).text == want
    assert model.caption(pixels.astype(np.float32) / 255).text == want
    assert model.caption(torch.from_numpy(pixels.copy()).permute(2, 0, 1)).text == want  # (C, H, W) uint8
    assert model.caption(torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255).text == want
    assert isinstance(model.caption(np.zeros((32, 32), dtype=np.uint16)), Caption)
    assert len(model.caption([pixels, torch.zeros(1, 20, 20)])) == 2


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 8, 8, 3), dtype=np.uint8), "channels last"),
    (np.full((8, 8, 3), 2.0, dtype=np.float32), r"\[0, 1\]"),
    (np.zeros((8, 8, 3), dtype=np.complex64), "uint8"),
    (torch.zeros(4, 3, 8, 8), r"\(C, H, W\)"),
    (torch.zeros(8, 8, 3), "batch"),
    (np.zeros((0, 8), dtype=np.uint8), "at least one pixel"),
])
def test_an_array_that_is_not_a_picture_is_one_value_error(model, bad, match):
    with pytest.raises(ValueError, match=match):
        model.caption(bad)


def test_other_inputs_are_one_clear_error(model, tmp_path):
    with pytest.raises(TypeError, match="give a path"):
        model.caption(42)
    with pytest.raises(ImageLoadError, match="missing.jpg: no such file"):
        model.caption(tmp_path / "missing.jpg")
    with pytest.raises(ImageLoadError, match="not an image|cannot identify"):
        model.caption(io.BytesIO(b"hello").getvalue())


def test_n_best_and_attention_are_honoured(model):
    result = model.caption(SAMPLE, beam_size=4, n_best=3, return_attention=True)
    assert len(result.n_best) == 3 and result.n_best[0] is result
    assert [c.score for c in result.n_best] == sorted((c.score for c in result.n_best), reverse=True)
    locations = result.attention.shape[1]  # the encoder's feature map (7x7 for the tiny model's Lite0)
    assert locations > 1 and all(c.attention.shape == (len(c.words), locations) for c in result.n_best)
    longest = max(result.n_best, key=lambda c: len(c.words))
    assert torch.allclose(longest.attention.sum(dim=1), torch.ones(len(longest.words)), atol=1e-5)
    assert model.caption(SAMPLE).attention is None


def test_settings_override_a_config_and_bad_ones_are_value_errors(model):
    config = GenerationConfig(beam_size=4, n_best=2)
    assert len(model.caption(SAMPLE, config).n_best) == 2
    assert len(model.caption(SAMPLE, config, n_best=1).n_best) == 1
    for settings in [dict(beam=3), dict(beam_size="3"), dict(beam_size=0), dict(n_best=5), dict(guided="yes"),
                     dict(tags=5), dict(temperature=-1.0), dict(method="nucleus"), dict(max_length=2.5)]:
        with pytest.raises(ValueError):
            model.caption(SAMPLE, **settings)
    with pytest.raises(ValueError, match="GenerationConfig"):
        model.caption(SAMPLE, {"beam_size": 3})


def test_one_tag_as_a_string_is_one_word_not_its_letters():
    assert GenerationConfig(tags="cat").tags == ("cat",)
    assert GenerationConfig(tags=["a cat", "dog"]).tags == ("a cat", "dog")
    with pytest.raises(ValueError):
        GenerationConfig(tags=[""])


def test_from_pretrained_defaults_to_the_clis_auto_device(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    loaded = Captioner.from_pretrained(tmp_path / "m")
    assert loaded.device.type == ("cuda" if torch.cuda.is_available() else loaded.device.type)
    assert Captioner.from_pretrained(tmp_path / "m", device="cpu").device.type == "cpu"


def test_guided_captions_carry_their_attention_too(model):
    result = model.caption(SAMPLE, tags=("red",), beam_size=3, n_best=2, return_attention=True)
    assert result.tags == ["red"] and "red" in result.words
    for c in result.n_best:
        assert c.attention is not None and c.attention.shape[0] == len(c.words)
        assert torch.allclose(c.attention.sum(dim=1), torch.ones(len(c.words)), atol=1e-5)


def test_attention_read_again_equals_what_the_search_recorded(model):
    from captioner.generation.guided import read_attention

    features = model.encode(model.transform(load_image(SAMPLE)).unsqueeze(0))
    hyps = model.caption_features(features, GenerationConfig(beam_size=3, n_best=3, return_attention=True,
                                                             max_length=6))
    with torch.inference_mode():
        read = read_attention(model.decoder, features, model.vocab, hyps)
    for recorded, again in zip(hyps[0], read[0]):
        assert torch.allclose(recorded.attention.float(), again.attention, atol=1e-5)
