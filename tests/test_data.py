import pytest
from conftest import make_caption_folder

from captioner.data import DatasetError, list_splits, load_dataset
from captioner.data.batching import bucket_batches, caption_pairs, pad_batch
from captioner.vocab import Vocabulary


def _folder(tmp_path):
    return make_caption_folder(
        tmp_path / "ds",
        {"a.jpg": ["A dog.", "A brown dog runs"], "sub/b.jpg": ["A cat"]},
        {"train": ["a.jpg", "sub/b.jpg"], "val": ["sub/b.jpg"]},
    )


def test_caption_folder_loads_splits(tmp_path):
    root = _folder(tmp_path)
    train = load_dataset(root, "train")
    assert [i.name for i in train] == ["a.jpg", "sub/b.jpg"]
    assert train.items[0].captions == ["A dog.", "A brown dog runs"]
    assert train.items[1].path == (root / "images" / "sub" / "b.jpg").resolve()
    assert list_splits(root) == ["train", "val"]


def test_shared_flickr8k_loads(shared_data):
    val = load_dataset(shared_data / "flickr8k", "val")
    assert len(val) == 1000 and all(len(i.captions) == 5 for i in val)


@pytest.mark.parametrize(
    "captions_text, match",
    [
        ("name\tcaption\na.jpg\tx\n", "header"),
        ("image\tcaption\na.jpg no tab\n", r"captions.txt:2: .*no tab"),
        ("image\tcaption\n../../etc/passwd\tx\n", "inside the images directory"),
        ("image\tcaption\nsub/b.jpg\tx\n", "no caption"),
    ],
)
def test_malformed_folders_name_file_and_line(tmp_path, captions_text, match):
    root = _folder(tmp_path)
    (root / "captions.txt").write_text(captions_text)
    with pytest.raises(DatasetError, match=match):
        load_dataset(root, "train")


def test_missing_split_and_unknown_path(tmp_path):
    root = _folder(tmp_path)
    with pytest.raises(DatasetError, match="available: train, val"):
        load_dataset(root, "test")
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "nope", "train")
    with pytest.raises(DatasetError, match="not a dataset"):
        load_dataset(tmp_path, "train")


def test_batches_cover_every_caption_once_and_pad_little():
    import torch

    lengths = [3 + (i * 7) % 11 for i in range(1000)]
    batches = bucket_batches(lengths, 32, torch.Generator().manual_seed(0))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded / sum(lengths) < 1.1  # sorted windows: under 10% padding (random batches: ~40%)
    again = bucket_batches(lengths, 32, torch.Generator().manual_seed(0))
    assert again == batches


def test_pad_batch_shifts_inputs_and_targets(tmp_path):
    vocab = Vocabulary(["a", "dog", "brown", "runs", "cat"])
    index, caps = caption_pairs(load_dataset(_folder(tmp_path), "train"), vocab, max_len=10)
    assert index == [0, 0, 1]
    inputs, targets = pad_batch(caps)
    assert inputs.shape == targets.shape == (3, 5)
    assert inputs[0].tolist() == [1, 4, 5, 2, 0] and targets[0].tolist() == [4, 5, 2, 0, 0]
