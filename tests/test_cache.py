from pathlib import Path

import numpy as np
import pytest

from captioner.data.cache import FeatureCache, cached_features


class CountingEncoder:
    """Stands in for the CNN: a file's vector is derived from its bytes; counts how many files it encoded."""

    def __init__(self):
        self.calls = 0

    def __call__(self, paths):
        self.calls += len(paths)
        out = np.zeros((len(paths), 4), dtype=np.float32)
        failures = {}
        for i, p in enumerate(paths):
            data = Path(p).read_bytes()
            if data.startswith(b"BAD"):
                failures[i] = "not an image"
            else:
                out[i] = [len(data), data[0], data[-1], 1.0]
        return out, failures


def _files(tmp_path, contents):
    paths = []
    for i, c in enumerate(contents):
        p = tmp_path / f"f{i}.jpg"
        p.write_bytes(c)
        paths.append(p)
    return paths


def test_each_image_is_encoded_once_across_runs(tmp_path):
    paths = _files(tmp_path, [b"abc", b"hello", b"BADx"])
    enc = CountingEncoder()
    first, bad = cached_features(paths, FeatureCache(tmp_path / "c", "enc|w|pre", 4), enc)
    assert enc.calls == 3 and list(bad) == [2]
    again, bad = cached_features(paths, FeatureCache(tmp_path / "c", "enc|w|pre", 4), enc)  # a new run
    assert enc.calls == 4  # only the unreadable file is tried again
    np.testing.assert_array_equal(first, again)
    assert first[0].tolist() == [3, ord("a"), ord("c"), 1] and not first[2].any()


def test_renamed_file_hits_edited_file_misses(tmp_path):
    paths = _files(tmp_path, [b"abc", b"hello"])
    enc = CountingEncoder()
    cache = FeatureCache(tmp_path / "c", "k", 4)
    cached_features(paths, cache, enc)
    paths[0].rename(tmp_path / "renamed.jpg")
    cached_features([tmp_path / "renamed.jpg"], cache, enc)
    assert enc.calls == 2
    paths[1].write_bytes(b"hellO")
    out, _ = cached_features([paths[1]], cache, enc)
    assert enc.calls == 3 and out[0, 2] == ord("O")


def test_changing_encoder_or_preprocessing_invalidates(tmp_path):
    paths = _files(tmp_path, [b"abc"])
    enc = CountingEncoder()
    cached_features(paths, FeatureCache(tmp_path / "c", "lite0|w|resize=256", 4), enc)
    cached_features(paths, FeatureCache(tmp_path / "c", "lite0|w|resize=232", 4), enc)
    cached_features(paths, FeatureCache(tmp_path / "c", "resnet|w|resize=256", 4), enc)
    assert enc.calls == 3
    cached_features(paths, FeatureCache(tmp_path / "c", "lite0|w|resize=256", 4), enc)
    assert enc.calls == 3


def test_cache_is_a_memory_map_of_float32_rows(tmp_path):
    cache = FeatureCache(tmp_path / "c", "k", 4)
    cache.add(["h1", "h2"], np.arange(8, dtype=np.float32).reshape(2, 4))
    raw = np.memmap(cache.dir / "features.f32", dtype=np.float32, mode="r")
    assert raw.shape == (8,)
    assert cache.get(["h2"]).tolist() == [[4, 5, 6, 7]]


def test_model_level_cache_key_names_encoder_and_preprocessing(tiny_model):
    from captioner.features import encoder_cache_key

    key = encoder_cache_key(tiny_model)
    assert key.startswith("efficientnet_lite0|efficientnet-lite0-57934424|") and '"resize": 256' in key


def test_float16_rows_of_any_shape_and_a_row_cut_short_by_a_killed_writer(tmp_path):
    cache = FeatureCache(tmp_path / "c", "maps", (2, 3), dtype="float16")
    cache.add(["a"], np.ones((1, 2, 3)))
    with open(cache.dir / "features.f16", "ab") as handle:
        handle.write(b"\x00" * 5)  # a killed writer left half a row behind
    again = FeatureCache(tmp_path / "c", "maps", (2, 3), dtype="float16")
    again.add(["b"], np.full((1, 2, 3), 2.0))
    out = again.get(["a", "b"])
    assert out.dtype == np.float16 and out.shape == (2, 2, 3)
    assert (out[0] == 1).all() and (out[1] == 2).all()
    assert (cache.dir / "features.f16").stat().st_size == 2 * 2 * 3 * 2


def test_rows_come_back_in_the_asked_order_and_a_truncated_file_is_an_error(tmp_path):
    cache = FeatureCache(tmp_path / "c", "maps", (2, 3), dtype="float16")
    cache.add(["a", "b", "c"], np.arange(18).reshape(3, 2, 3))
    out = cache.get(["c", "a", "c", "b"])
    assert [int(row[0, 0]) for row in out] == [12, 0, 12, 6]
    with open(cache.dir / "features.f16", "r+b") as handle:
        handle.truncate(2 * 6 * 2 + 4)  # the third row cut short on disk
    with pytest.raises(OSError, match="shorter than its index says.*rebuild"):
        cache.get(["a", "c"])


def test_cached_rows_read_on_indexing_equal_the_loaded_split_and_unreadable_images_are_zeros(tmp_path):
    import torch

    from captioner.data.cache import cache_missing
    from captioner.features import CachedRows

    paths = _files(tmp_path, [b"abc", b"hello", b"BADx", b"zz"]) + [tmp_path / "missing.jpg"]
    cache = FeatureCache(tmp_path / "c", "enc|w|pre", 4)
    loaded, bad = cached_features(paths, cache, CountingEncoder())
    enc = CountingEncoder()
    hashes, failures = cache_missing(paths, cache, enc)
    assert enc.calls == 1 and failures == bad and set(bad) == {2, 4}  # only the undecodable file is tried again
    rows = CachedRows(cache, [None if i in failures else h for i, h in enumerate(hashes)])
    assert len(rows) == 5 and rows.shape == (5, 4)
    index = torch.tensor([3, 0, 2, 0, 4, 1])
    assert torch.equal(rows[index], torch.from_numpy(loaded)[index])
    assert rows[[2]].abs().sum() == 0 and rows[torch.tensor([1])].shape == (1, 4)


def test_training_splits_leave_their_features_in_the_cache(tiny_model, shapes_dataset, tmp_path):
    import torch

    from captioner.features import CachedRows
    from captioner.training.config import TrainConfig
    from captioner.training.splits import load_splits, prepare_split

    cfg = TrainConfig(data=str(shapes_dataset), out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    train_set, _ = load_splits(cfg)
    split = prepare_split(tiny_model, train_set, cfg, live=False, training=True)
    assert isinstance(split.features, CachedRows) and len(split.features) == len(train_set)
    first = split.features[torch.arange(len(train_set))]
    assert first.shape == (len(train_set), *tiny_model.config.feature_shape()) and first.abs().sum() > 0



def test_a_cold_cache_is_filled_a_chunk_at_a_time_never_the_whole_split(tmp_path):
    """Encoding asks for at most one chunk of images at once and appends it to the cache before the next, so the
    memory of filling a cold cache does not grow with the number of images."""
    import numpy as np

    from captioner.data.cache import cache_missing

    paths = []
    for i in range(23):
        path = tmp_path / f"img{i}.bin"
        path.write_bytes(f"image {i}".encode())
        paths.append(path)
    cache = FeatureCache(tmp_path / "c", "enc|w|pre", 4)
    asked, sizes_in_cache = [], []

    def encode(todo):
        asked.append(len(todo))
        sizes_in_cache.append(len(cache.index))
        return np.stack([np.full(4, float(p.name[3:-4])) for p in todo]).astype("float32"), {}

    hashes, failures = cache_missing(paths, cache, encode, chunk=5)
    assert asked == [5, 5, 5, 5, 3] and sizes_in_cache == [0, 5, 10, 15, 20] and not failures
    assert len(cache.index) == 23 and float(cache.get([hashes[7]])[0, 0]) == 7.0
