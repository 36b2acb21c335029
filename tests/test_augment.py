"""Mean+max pooling of the encoder's feature map and the mirrored-image augmentation of cached vectors."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from captioner.config import ModelConfig
from captioner.features import encode_files, encoder_cache_key, image_features
from captioner.models import encoders
from captioner.pipeline import Captioner
from captioner.training.config import TrainConfig
from captioner.training.splits import Split, mirror_draw


def test_avgmax_is_mean_then_max_of_the_same_feature_map():
    torch.manual_seed(0)
    avg = encoders.build_encoder("efficientnet_lite0", pretrained=False)
    both = encoders.build_encoder("efficientnet_lite0", pretrained=False, pooling="avgmax")
    both.load_state_dict(avg.state_dict())
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fmap = avg.trunk(images)  # (2, 1280, 2, 2)
        out = both(images)
        assert both.out_dim == 2560 and out.shape == (2, 2560)
        assert torch.equal(out[:, :1280], avg(images))
        assert torch.equal(out[:, 1280:], fmap.amax(dim=(2, 3)))
        assert torch.equal(both.classify(images), avg.classify(images))  # the ImageNet head still sees the mean


def test_unknown_pooling_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"pooling must be one of \('avg', 'avgmax'\)"):
        encoders.build_encoder("efficientnet_lite0", pretrained=False, pooling="max")
    with pytest.raises(ValueError, match="pooling must be one of"):
        ModelConfig(pooling="sum")


def test_pooling_survives_save_and_load_and_old_configs_mean_avg(vocab, tmp_path):
    Captioner(tiny_config(len(vocab), pooling="avgmax", encoder_dim=2560), vocab).save_pretrained(tmp_path / "new")
    loaded = Captioner.from_pretrained(tmp_path / "new")
    assert loaded.config.pooling == "avgmax" and loaded.config.encoder_dim == 2560
    Captioner(tiny_config(len(vocab)), vocab).save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["pooling"]  # as written before pooling was an option
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    assert Captioner.from_pretrained(tmp_path / "old").config.pooling == "avg"


def test_cache_keys_keep_the_old_key_for_avg_and_separate_the_new_views(vocab):
    avg = Captioner(tiny_config(len(vocab)), vocab)
    both = Captioner(tiny_config(len(vocab), pooling="avgmax", encoder_dim=2560), vocab)
    key = encoder_cache_key(avg)
    assert key == f"efficientnet_lite0|efficientnet-lite0-57934424|{avg.config.preprocess.key()}"
    keys = {key, encoder_cache_key(avg, mirror=True), encoder_cache_key(both), encoder_cache_key(both, mirror=True)}
    assert len(keys) == 4


def _asymmetric_images(tmp_path, n=3):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
        pixels[:, :30] = 255  # a white left band: the mirror image is a different picture
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(pixels).save(paths[-1])
        Image.fromarray(pixels[:, ::-1].copy()).save(tmp_path / f"mirror{i}.png")
    return paths, [tmp_path / f"mirror{i}.png" for i in range(n)]


def test_mirror_view_encodes_the_mirror_image_and_is_cached_apart(vocab, tmp_path):
    torch.manual_seed(0)
    model = Captioner(tiny_config(len(vocab)), vocab, encoder=encoders.build_encoder("efficientnet_lite0", False))
    paths, mirrored_files = _asymmetric_images(tmp_path)
    expected, _ = encode_files(model, mirrored_files, num_workers=0, progress=False)
    direct, _ = encode_files(model, paths, num_workers=2, batch_size=1, progress=False, mirror=True)  # pickled
    np.testing.assert_allclose(direct, expected, rtol=1e-5, atol=1e-6)
    cache = tmp_path / "cache"
    original, _ = image_features(model, paths, cache_dir=cache, progress=False)
    mirror, _ = image_features(model, paths, cache_dir=cache, progress=False, mirror=True)
    assert not torch.allclose(original, mirror)
    np.testing.assert_allclose(mirror.numpy(), expected, rtol=1e-5, atol=1e-6)
    again, _ = image_features(model, paths, cache_dir=cache, progress=False, mirror=True)  # from the cache
    assert torch.equal(again, mirror) and len(list(cache.iterdir())) == 2


def test_mirror_draw_is_seeded_by_step_about_half_and_off_by_default():
    first, again = mirror_draw(True, 3, 10, 1000), mirror_draw(True, 3, 10, 1000)
    assert torch.equal(first, again) and not torch.equal(first, mirror_draw(True, 3, 11, 1000))
    assert 420 < int(first.sum()) < 580
    default = TrainConfig(data="d", out="o")
    assert mirror_draw(default.flip_features, default.seed, 10, 1000) is None


def test_split_vectors_take_the_mirror_rows_where_asked():
    split = Split(data=None, features=torch.zeros(4, 2), flipped=torch.ones(4, 2))
    rows = torch.tensor([3, 0, 2])
    assert split.vectors(rows).sum() == 0
    assert split.vectors(rows, torch.tensor([True, False, True])).tolist() == [[1, 1], [0, 0], [1, 1]]


def test_split_vectors_mirror_feature_maps_per_image():
    maps = torch.arange(4 * 3 * 2, dtype=torch.float32).view(4, 3, 2)  # (N, L, C)
    split = Split(data=None, features=maps, flipped=-maps)
    rows, mirror = torch.tensor([3, 0, 2]), torch.tensor([True, False, True])
    assert torch.equal(split.vectors(rows, mirror), torch.stack([-maps[3], maps[0], -maps[2]]))


def test_training_with_flip_features_uses_both_views_and_is_repeatable(shapes_dataset, tmp_path):
    from captioner.training.loop import train

    blobs = {}
    for name, flip in (("a", True), ("b", True), ("plain", False)):
        cfg = TrainConfig(data=str(shapes_dataset), out=str(tmp_path / name), epochs=1, batch_size=8, min_count=1,
                          seed=5, flip_features=flip, cache_dir=str(tmp_path / "cache"), val_split=None)
        result = train(cfg, tiny_config(4))
        blobs[name] = (result.model_dir / "model.safetensors").read_bytes()
    assert blobs["a"] == blobs["b"] and blobs["a"] != blobs["plain"]
    assert len(list((tmp_path / "cache").iterdir())) == 2  # original and mirrored vectors
    config = json.loads((tmp_path / "a" / "train_config.json").read_text())
    assert config["flip_features"] is True
