"""Every dataset format loads real and synthetic data behind one interface, and malformed input names the entry."""

import json

import pytest

from captioner.data import DatasetError, list_splits, load_dataset
from captioner.data.base import detect_format

CAPS = {"a.jpg": ["A dog runs.", "A brown dog"], "b.jpg": ["A cat sleeps"], "c.jpg": ["Two birds"]}


def _images(root):
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name in CAPS:
        (root / "images" / name).write_bytes(b"x")
    return root / "images"


def _coco(tmp_path, images=None, annotations=None):
    images = images if images is not None else [{"id": i, "file_name": n} for i, n in enumerate(CAPS, start=1)]
    annotations = annotations if annotations is not None else [
        {"id": 100 + k, "image_id": i, "caption": c}
        for i, (n, caps) in enumerate(CAPS.items(), start=1) for k, c in enumerate(caps)]
    path = tmp_path / "annotations" / "captions_val2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    _images(tmp_path)
    return path


def test_coco_file_and_directory(tmp_path):
    path = _coco(tmp_path)
    assert detect_format(path).name == "coco" and list_splits(path) == ["all"]
    data = load_dataset(path, "all")
    assert [(i.name, i.image_id, i.captions) for i in data] == [
        ("a.jpg", 1, CAPS["a.jpg"]), ("b.jpg", 2, CAPS["b.jpg"]), ("c.jpg", 3, CAPS["c.jpg"])]
    assert data.items[0].path == (tmp_path / "images" / "a.jpg").resolve()
    assert list_splits(tmp_path) == ["val2017"] and len(load_dataset(tmp_path, "val2017")) == 3


def test_coco_mini_from_shared_data(shared_data):
    data = load_dataset(shared_data / "coco_mini" / "annotations" / "captions_mini.json", "all")
    assert len(data) == 60 and sum(len(i.captions) for i in data) == 300 and all(i.path.is_file() for i in data)


@pytest.mark.parametrize(
    "images, annotations, message",
    [
        ([{"id": 1}], [], r"images\[0\]: needs 'id' and 'file_name'"),
        ([{"id": 1, "file_name": "../../x.jpg"}], [], r"images\[0\] \(id 1\): image name '../../x.jpg'"),
        ([{"id": 1, "file_name": "a.jpg"}], [{"id": 5, "image_id": 9, "caption": "x"}],
         r"annotations\[0\] \(id 5\): image_id 9 is not in the file's images"),
        ([{"id": 1, "file_name": "a.jpg"}], [{"id": 5, "image_id": 1, "caption": 42}],
         r"annotations\[0\] \(id 5\): caption must be a string"),
        ([{"id": 1, "file_name": "a.jpg"}], [{"id": 5, "caption": "x"}], r"annotations\[0\]: needs 'image_id'"),
        ([{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}], [], "duplicate image id 1"),
    ],
)
def test_malformed_coco_names_file_and_entry(tmp_path, images, annotations, message):
    path = _coco(tmp_path, images, annotations)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(path, "all", fmt="coco")
    assert str(path) in str(info.value)


def test_bad_json_names_line_and_column(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text('{"images": [\n  {"id": 1,, }]}')
    with pytest.raises(DatasetError, match=r"not valid JSON \(line 2"):
        load_dataset(path, "all", fmt="coco")


def test_karpathy_with_restval(tmp_path):
    entries = [
        {"filepath": "train2014", "filename": "a.jpg", "split": "train", "cocoid": 1,
         "sentences": [{"raw": "A dog runs.", "tokens": ["a", "dog", "runs"]}]},
        {"filepath": "val2014", "filename": "b.jpg", "split": "restval", "cocoid": 2, "sentences": [{"tokens": ["a", "cat"]}]},
        {"filepath": "val2014", "filename": "c.jpg", "split": "test", "cocoid": 3, "sentences": [{"raw": "Two birds"}]},
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"dataset": "coco", "images": entries}))
    assert detect_format(path).name == "karpathy"
    assert list_splits(path) == ["restval", "test", "train"]
    both = load_dataset(path, "train+restval")
    assert [(i.name, i.captions, i.image_id) for i in both] == [
        ("train2014/a.jpg", ["A dog runs."], 1), ("val2014/b.jpg", ["a cat"], 2)]
    assert both.items[0].path == (tmp_path / "train2014" / "a.jpg").resolve()
    with pytest.raises(DatasetError, match="available: restval, test, train"):
        load_dataset(path, "val")


def test_flickr_official_files(tmp_path):
    text = tmp_path / "Flickr8k_text"
    text.mkdir()
    lines = [f"{n}#{k}\t{c}" for n, caps in CAPS.items() for k, c in enumerate(caps)]
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (text / "Flickr_8k.trainImages.txt").write_text("a.jpg\nb.jpg\n")
    (text / "Flickr_8k.devImages.txt").write_text("c.jpg\n")
    (tmp_path / "Flicker8k_Dataset").mkdir()
    for source in (tmp_path, text, text / "Flickr8k.token.txt"):
        assert detect_format(source).name == "flickr"
    assert list_splits(tmp_path) == ["all", "train", "val"]
    train = load_dataset(tmp_path, "train")
    assert [i.name for i in train] == ["a.jpg", "b.jpg"] and train.items[0].captions == CAPS["a.jpg"]
    assert train.items[0].path.parent == (tmp_path / "Flicker8k_Dataset").resolve()
    assert [i.name for i in load_dataset(tmp_path, "dev")] == ["c.jpg"]
    (text / "Flickr8k.token.txt").write_text("a.jpg\tno hash\n")
    with pytest.raises(DatasetError, match=r"Flickr8k.token.txt:1: expected 'NAME.jpg#N<TAB>caption'"):
        load_dataset(tmp_path, "all")


def test_csv_and_jsonl_tables(tmp_path):
    _images(tmp_path)
    csv_path = tmp_path / "caps.csv"
    csv_path.write_text('image,caption,split\nimages/a.jpg,"A dog, running",train\nimages/a.jpg,A dog,train\n'
                        "images/b.jpg,A cat,val\n")
    assert detect_format(csv_path).name == "table" and list_splits(csv_path) == ["train", "val"]
    train = load_dataset(csv_path, "train")
    assert [(i.name, i.captions) for i in train] == [("images/a.jpg", ["A dog, running", "A dog"])]
    jsonl = tmp_path / "caps.jsonl"
    jsonl.write_text('{"image": "a.jpg", "caption": "A dog"}\n\n{"image": "b.jpg", "caption": "A cat"}\n')
    data = load_dataset(jsonl, "all", images=tmp_path / "images")
    assert [i.path for i in data] == [(tmp_path / "images" / n).resolve() for n in ("a.jpg", "b.jpg")]
    jsonl.write_text('{"image": "a.jpg", "caption": ["not", "text"]}\n')
    with pytest.raises(DatasetError, match=r"caps.jsonl:1: caption must be a string"):
        load_dataset(jsonl, "all")
    csv_path.write_text("file,text\na.jpg,x\n")
    with pytest.raises(DatasetError, match="header must name the columns 'image' and 'caption'"):
        load_dataset(csv_path, "all")


def test_format_override_and_unknown_format(tmp_path):
    path = _coco(tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset format 'yaml'"):
        load_dataset(path, "all", fmt="yaml")
    with pytest.raises(DatasetError, match="--images .* no such directory"):
        load_dataset(path, "all", images=tmp_path / "nope")
