"""One scale for every score (issue 25, item 4): the tables of ``evaluate``, ``score`` and ``finetune`` print the
numbers their JSON holds (BLEU-n and ROUGE-L as fractions 0-1, CIDEr-D on coco-caption's scale 0-10), and say so."""

import json
import re

import pytest

from captioner.cli import main
from captioner.cli.evaluate import SCALES, format_table
from captioner.training.finetune import format_report

LABELS = {"BLEU-1": "bleu1", "BLEU-2": "bleu2", "BLEU-3": "bleu3", "BLEU-4": "bleu4", "CIDEr-D": "cider",
          "ROUGE-L": "rouge_l"}


def table_rows(text: str) -> dict[str, tuple[str, list[float]]]:
    """``{metric key: (scale label, numbers)}`` of the printed table's metric rows."""
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in LABELS:
            rows[LABELS[parts[0]]] = (parts[1], [float(p) for p in parts[2:]])
    return rows


def check_table_matches(text: str, report: dict) -> None:
    assert "coco-caption's scale (0-10)" in text and "fractions (0-1)" in text
    rows = table_rows(text)
    assert set(rows) == set(report["metrics"])
    for key, (scale, numbers) in rows.items():
        assert scale == SCALES[key]
        assert numbers[0] == pytest.approx(report["metrics"][key], abs=5e-5), key  # the JSON's number, 4 decimals
        if key in report["nltk_bleu"]:
            assert numbers[1] == pytest.approx(report["nltk_bleu"][key], abs=5e-5), key


@pytest.fixture
def model_dir(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_evaluate_and_score_print_the_json_reports_numbers(model_dir, shapes_dataset, tmp_path, capsys):
    report_path, preds = tmp_path / "report.json", tmp_path / "preds.json"
    assert main(["evaluate", "--model", str(model_dir), "--data", str(shapes_dataset), "--out", str(report_path),
                 "--predictions", str(preds)]) == 0
    check_table_matches(capsys.readouterr().out, json.loads(report_path.read_text()))
    scored = tmp_path / "scored.json"
    assert main(["score", "--predictions", str(preds), "--data", str(shapes_dataset), "--out", str(scored)]) == 0
    check_table_matches(capsys.readouterr().out, json.loads(scored.read_text()))


def test_a_cider_above_one_is_printed_as_it_is_not_times_100():
    report = {"data": "d", "split": "val", "n_images": 2, "decoding": {"method": "greedy"}, "warnings": [],
              "metrics": {"bleu1": 0.5, "bleu2": 0.25, "bleu3": 0.125, "bleu4": 0.0625, "cider": 2.642952,
                          "rouge_l": 0.75},
              "nltk_bleu": {"bleu1": 0.5, "bleu2": 0.25, "bleu3": 0.125, "bleu4": 0.0625},
              "unique_captions": 2, "identical_caption_rate": 0.5, "vocab_used": 3, "mean_length": 2.0}
    text = format_table(report)
    check_table_matches(text, report)
    assert "2.6430" in text and "264" not in text


def test_finetune_report_prints_finetune_report_json_numbers(tiny_model, shapes_dataset, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "base")
    out = tmp_path / "ft"
    assert main(["finetune", "--from", str(tmp_path / "base"), "--data", str(shapes_dataset), "--out", str(out),
                 "--dry-run"]) == 0
    text = capsys.readouterr().out
    report = json.loads((out / "finetune_report.json").read_text())
    assert "coco-caption's scale (0-10)" in text and "fraction (0-1)" in text
    row = next(line for line in text.splitlines() if line.startswith("new data"))
    printed = [float(x) for x in re.findall(r"\d+\.\d+", row)]
    before, after = report["before"]["new data"], report["after"]["new data"]
    assert printed == pytest.approx([before["bleu4"], after["bleu4"], before["cider"], after["cider"]], abs=5e-5)


def test_finetune_report_format_keeps_cider_on_its_scale():
    scores = {"n_images": 99, "bleu4": 0.1234, "cider": 0.2031, "identical_caption_rate": 0.1}
    text = format_report({"before": {"new data": scores}, "after": {"new data": {**scores, "cider": 0.3362}},
                          "added_words": []})
    assert "0.2031" in text and "0.3362" in text and "20.31" not in text
