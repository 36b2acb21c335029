"""captioner data subset / scripts/make_coco_subset.py."""

import json
import subprocess
import sys

import pytest
from conftest import REPO

from captioner.cli import main
from captioner.data import load_dataset


def _coco_files(tmp_path):
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 4, "height": 4} for i in range(1, 41)]
    anns = [{"id": 1000 + 5 * i + k, "image_id": i, "caption": f"picture {i} caption {k}"}
            for i in range(1, 41) for k in range(5)]
    (tmp_path / "captions.json").write_text(json.dumps({"info": {"year": 2017}, "licenses": [], "images": images,
                                                        "annotations": anns}))
    cats = [{"id": 18, "name": "dog"}, {"id": 17, "name": "cat"}, {"id": 1, "name": "person"}]
    inst = [{"id": 1, "image_id": i, "category_id": 18 if i % 4 == 0 else 1} for i in range(1, 41)]
    inst.append({"id": 2, "image_id": 7, "category_id": 17})
    (tmp_path / "instances.json").write_text(json.dumps({"images": images, "annotations": inst, "categories": cats}))
    (tmp_path / "imgs").mkdir()
    for i in range(1, 21):  # half the images "downloaded"
        (tmp_path / "imgs" / f"{i:012d}.jpg").write_bytes(bytes([i]) * 10)
    return tmp_path / "captions.json", tmp_path / "instances.json"


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_arguments_give_byte_identical_output(tmp_path):
    captions, _ = _coco_files(tmp_path)
    args = [str(captions), "--count", "30", "--seed", "3", "--split-ratios", "0.6,0.2,0.2", "--images",
            str(tmp_path / "imgs")]
    assert main(["data", "subset", args[0], str(tmp_path / "a"), *args[1:]]) == 0
    script = REPO / "scripts" / "make_coco_subset.py"
    proc = subprocess.run([sys.executable, str(script), args[0], str(tmp_path / "b"), *args[1:]],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 18, "val": 6, "test": 6}
    assert manifest["selection"]["count"] == 30 and manifest["selection"]["seed"] == 3
    assert set(manifest["sources"]) == {"captions.json"}
    present = [e for e in manifest["images"] if e["sha256"]]
    assert present and all(int(e["file_name"][:12]) <= 20 for e in present)
    assert len({e["id"] for e in manifest["images"]}) == 30
    # Both formats load, with the same images per split.
    for split in ("train", "val", "test"):
        coco = load_dataset(tmp_path / "a", split, fmt="coco")
        folder = load_dataset(tmp_path / "a", split)
        assert [i.name for i in coco] == [i.name for i in folder] and all(len(i.captions) == 5 for i in coco)
    other = [str(captions), str(tmp_path / "c"), "--count", "30", "--seed", "4"]
    assert main(["data", "subset", *other]) == 0
    ids = lambda d: {e["id"] for e in json.loads((tmp_path / d / "manifest.json").read_text())["images"]}  # noqa: E731
    assert ids("a") != ids("c")


def test_select_by_categories_and_ids(tmp_path):
    captions, instances = _coco_files(tmp_path)
    assert main(["data", "subset", str(captions), str(tmp_path / "dogs"), "--instances", str(instances),
                 "--categories", "dog,cat", "--split-ratios", "0.5,0.5"]) == 0
    manifest = json.loads((tmp_path / "dogs" / "manifest.json").read_text())
    assert sorted(e["id"] for e in manifest["images"]) == sorted([7] + list(range(4, 41, 4)))
    assert set(manifest["counts"]) == {"train", "val"}
    assert main(["data", "subset", str(captions), str(tmp_path / "ids"), "--ids", "3,5,9"]) == 0
    manifest = json.loads((tmp_path / "ids" / "manifest.json").read_text())
    assert sorted(e["id"] for e in manifest["images"]) == [3, 5, 9]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--categories", "dgo"], "needs the instances file"),
        (["--instances", "{inst}", "--categories", "dgo"], "unknown category 'dgo'; did you mean dog"),
        (["--count", "41"], "more than the 40 images"),
        (["--split-ratios", "0.5,0.6"], "summing to 1"),
        (["--split-ratios", "a,b"], "expected numbers"),
        (["--ids", "3,999"], "have no captions"),
    ],
)
def test_bad_subset_arguments(tmp_path, capsys, extra, message):
    captions, instances = _coco_files(tmp_path)
    extra = [e.format(inst=instances) for e in extra]
    assert main(["data", "subset", str(captions), str(tmp_path / "out"), *extra]) != 0
    err = capsys.readouterr().err
    assert message in err and err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_existing_output_is_never_overwritten(tmp_path, capsys):
    captions, _ = _coco_files(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["data", "subset", str(captions), str(tmp_path / "out")]) == 1
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
