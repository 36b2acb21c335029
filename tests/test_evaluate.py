"""captioner evaluate / score: free-running captions, coco-caption metrics, reports, the degenerate alarm."""

import json

import pytest

from captioner.cli import main
from captioner.data import load_dataset
from captioner.evaluate import Prediction, build_report, from_coco_results, to_coco_results

METRICS = {"bleu1", "bleu2", "bleu3", "bleu4", "cider", "rouge_l"}


@pytest.fixture
def model_dir(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_evaluate_writes_report_and_coco_results(model_dir, shapes_dataset, tmp_path, capsys):
    report_path, preds_path = tmp_path / "report.json", tmp_path / "preds.json"
    code = main(["evaluate", "--model", str(model_dir), "--data", str(shapes_dataset), "--split", "val",
                 "--out", str(report_path), "--predictions", str(preds_path)])
    captured = capsys.readouterr()
    assert code == 0 and "BLEU-4" in captured.out and "CIDEr-D" in captured.out and "18 images" in captured.out
    assert "s per 1000 images" in captured.err
    report = json.loads(report_path.read_text())
    assert set(report["metrics"]) == METRICS and set(report["nltk_bleu"]) == {"bleu1", "bleu2", "bleu3", "bleu4"}
    assert all(0 <= report["metrics"][k] <= 1 for k in METRICS - {"cider"})
    for key in ["n_images", "identical_caption_rate", "unique_captions", "vocab_used", "mean_length", "decoding",
                "model_sha256", "data_sha256", "seed", "captioner_version", "degenerate"]:
        assert key in report, key
    assert report["decoding"]["beam_size"] == 3 and report["n_images"] == 18
    rows = json.loads(preds_path.read_text())
    assert len(rows) == 18 and set(rows[0]) == {"image_id", "file_name", "caption", "log_prob"}


def test_evaluating_twice_gives_byte_identical_metrics(model_dir, shapes_dataset, tmp_path):
    outputs = []
    for run in ("a", "b"):
        assert main(["evaluate", "--model", str(model_dir), "--data", str(shapes_dataset), "--split", "val",
                     "--out", str(tmp_path / f"{run}.json")]) == 0
        outputs.append((tmp_path / f"{run}.json").read_bytes())
    assert outputs[0] == outputs[1]


def test_collapsed_model_raises_the_degenerate_alarm(tiny_model, shapes_dataset, tmp_path, capsys):
    import torch

    with torch.no_grad():  # a collapsed model: the image no longer matters, one caption for everything
        tiny_model.decoder.head.weight.zero_()
        tiny_model.decoder.head.bias.copy_(torch.arange(len(tiny_model.vocab), dtype=torch.float) % 5)
    tiny_model.save_pretrained(tmp_path / "collapsed")
    assert main(["evaluate", "--model", str(tmp_path / "collapsed"), "--data", str(shapes_dataset), "--split",
                 "val", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["degenerate"] is True and "DEGENERATE OUTPUT" in report["warnings"][0]


def test_degenerate_thresholds(shapes_dataset):
    data = load_dataset(shapes_dataset, "val")
    varied = [Prediction(i.name, i.captions[0]) for i in data.items]
    assert build_report(varied, data)["degenerate"] is False
    same = [Prediction(i.name, "a red circle") for i in data.items]
    report = build_report(same, data)
    assert report["degenerate"] is True and report["identical_caption_rate"] == 1.0
    assert report["metrics"]["bleu1"] < build_report(varied, data)["metrics"]["bleu1"] == pytest.approx(1.0)


def test_score_reads_coco_results_and_matches_evaluate(model_dir, shapes_dataset, tmp_path, capsys):
    preds, report = tmp_path / "preds.json", tmp_path / "report.json"
    assert main(["evaluate", "--model", str(model_dir), "--data", str(shapes_dataset), "--split", "val",
                 "--predictions", str(preds), "--out", str(report)]) == 0
    scored = tmp_path / "scored.json"
    assert main(["score", "--predictions", str(preds), "--data", str(shapes_dataset), "--split", "val",
                 "--out", str(scored)]) == 0
    assert json.loads(scored.read_text())["metrics"] == json.loads(report.read_text())["metrics"]
    assert "captions made elsewhere" in capsys.readouterr().out


def test_coco_results_round_trip_by_id_and_by_file_name(shared_data):
    data = load_dataset(shared_data / "coco_mini", "mini")
    preds = [Prediction(i.name, "a picture", None, i.image_id) for i in data.items]
    rows = to_coco_results(preds)
    assert rows[0]["image_id"] == 139 and rows[0]["file_name"] == "000000000139.jpg"
    assert [p.image for p in from_coco_results(rows, data, "x.json")] == [i.name for i in data.items]
    by_name = [{"file_name": r["file_name"], "caption": r["caption"]} for r in rows]
    assert len(from_coco_results(by_name, data, "x.json")) == 60


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"image_id": 1}', "expected a JSON list"),
        ('[{"image_id": "nope.png", "caption": "a"}]', "entry 0: image 'nope.png' is not in split"),
        ('[{"image_id": "red_circle_6.png"}]', "entry 0: needs 'caption'"),
        ('[{"file_name": "red_circle_6.png", "caption": 3}]', "caption must be a string"),
        ('[{"image_id": "red_circle_6.png", "caption": "a"}, {"image_id": "red_circle_6.png", "caption": "b"}]',
         "a second caption"),
        ('[{"image_id": "red_circle_6.png", "caption": "a red circle"}]', "17 of 18 images"),
    ],
)
def test_score_bad_predictions_give_one_error_line(shapes_dataset, tmp_path, capsys, content, message):
    path = tmp_path / "preds.json"
    path.write_text(content)
    assert main(["score", "--predictions", str(path), "--data", str(shapes_dataset), "--split", "val"]) == 1
    err = capsys.readouterr().err
    assert message in err and err.startswith("error:") and len(err.strip().splitlines()) == 1, err


def test_score_allow_missing(shapes_dataset, tmp_path, capsys):
    path = tmp_path / "preds.json"
    path.write_text('[{"image_id": "red_circle_6.png", "caption": "a red circle"}]')
    assert main(["score", "--predictions", str(path), "--data", str(shapes_dataset), "--split", "val",
                 "--allow-missing", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_images"] == 1 and report["n_missing"] == 17


def test_max_images_is_the_option_and_limit_a_hidden_alias(model_dir, shapes_dataset, tmp_path, capsys):
    assert main(["evaluate", "--help"]) == 0
    evaluate_help = capsys.readouterr().out
    assert "--max-images" in evaluate_help and "--limit" not in evaluate_help
    for flag in ("--max-images", "--limit"):  # old scripts keep working
        out = tmp_path / f"{flag.strip('-')}.json"
        assert main(["evaluate", "--model", str(model_dir), "--data", str(shapes_dataset), "--split", "val", flag,
                     "5", "--out", str(out)]) == 0
        assert json.loads(out.read_text())["n_images"] == 5
    assert main(["evaluate", "--model", str(model_dir), "--data", str(shapes_dataset), "--max-images", "-1"]) == 2
    from captioner.cli.main import build_parser

    finetune = build_parser().parse_args(["finetune", "--data", "d", "--out", "o"])
    assert finetune.eval_max_images == 0 and finetune.val_max_images == 0  # two different subsets, both kept
    help_of = {a.dest: a.help for a in _subparser("finetune")._actions}
    assert "not the per-epoch validation: that is --val-max-images" in help_of["eval_max_images"]


def _subparser(command: str):
    from captioner.cli.main import build_parser

    action = next(a for a in build_parser()._actions if a.dest == "command")
    return action.choices[command]


def test_evaluate_and_score_default_to_the_same_split(model_dir, shapes_dataset, tmp_path, capsys):
    """The dataset's only split, else val: for both commands (score used to default to test)."""
    import shutil

    from conftest import make_caption_folder

    names = sorted(p.name for p in (shapes_dataset / "images").iterdir())[:6]
    only = make_caption_folder(tmp_path / "only_test", {n: ["a shape"] for n in names}, {"test": names})
    for name in names:
        shutil.copy(shapes_dataset / "images" / name, only / "images" / name)
    for data, split, count in ((shapes_dataset, "val", 18), (only, "test", 6)):
        preds, report, scored = tmp_path / "p.json", tmp_path / "r.json", tmp_path / "s.json"
        assert main(["evaluate", "--model", str(model_dir), "--data", str(data), "--predictions", str(preds),
                     "--out", str(report)]) == 0
        assert main(["score", "--predictions", str(preds), "--data", str(data), "--out", str(scored)]) == 0
        made, judged = json.loads(report.read_text()), json.loads(scored.read_text())
        assert made["split"] == judged["split"] == split and made["n_images"] == judged["n_images"] == count
        assert judged["n_missing"] == 0 and judged["metrics"] == made["metrics"]
    capsys.readouterr()
