import json

import pytest
from conftest import tiny_config
from torch import nn

from captioner.cli.main import main
from captioner.inspection.params import gate_formula, inspect_model, recurrent_layers, w_ih_split
from captioner.models.factory import complete_config
from captioner.pipeline import Captioner


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("inject", ["every_step", "init_only", "attention"])
@pytest.mark.parametrize("layers", [1, 2])
def test_formula_equals_the_measured_count_for_every_cell_and_injection(vocab, kind, inject, layers):
    config = complete_config(tiny_config(len(vocab), cell=kind, inject=inject, num_layers=layers,
                                         attention_dim=8), len(vocab))
    model = Captioner(config, vocab)
    found = recurrent_layers(model.decoder, "decoder")
    assert len(found) == layers
    recurrent = [m for m in model.decoder.modules() if isinstance(m, (nn.RNNBase, nn.RNNCellBase))]
    assert sum(f["measured_params"] for f in found) == sum(p.numel() for m in recurrent for p in m.parameters())
    for layer in found:
        assert layer["formula_params"] == layer["measured_params"]
        assert layer["gates"] == {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    split = w_ih_split(model)
    image = {"every_step": config.image_proj_dim, "init_only": 0, "attention": config.image_proj_dim}[inject]
    assert split["w_ih_word_columns"] == config.embed_dim and split["w_ih_image_columns"] == image
    assert split["w_ih_image_params"] == found[0]["gates"] * config.hidden_dim * image


def test_gate_formula_by_hand():
    # LSTM, h=2, x=3: 4 gates x (2*(2+3) + 2) = 48, plus the second bias 4*2 = 8
    assert gate_formula(4, 2, 3) == 56 and gate_formula(4, 2, 3, second_bias=False) == 48
    assert sum(p.numel() for p in nn.LSTM(3, 2).parameters()) == 56
    assert sum(p.numel() for p in nn.GRU(3, 2).parameters()) == gate_formula(3, 2, 3)
    assert sum(p.numel() for p in nn.RNN(3, 2).parameters()) == gate_formula(1, 2, 3)


def test_report_counts_every_decoder_weight_once_and_reads_the_card_hash(tiny_model, tmp_path):
    card = "- Training data: x; data sha256 (captions + splits): `" + "ab" * 32 + "`\n"
    tiny_model.save_pretrained(tmp_path / "m", card=card)
    report = inspect_model(tiny_model, tmp_path / "m", encoder=False)
    assert sum(row["params"] for row in report["layers"]) == sum(p.numel() for p in tiny_model.decoder.parameters())
    assert report["totals"]["decoder"] == report["totals"]["model"]
    assert report["data_sha256"] == "ab" * 32 and report["vocab_size"] == len(tiny_model.vocab)


def test_cli_json_and_table(tiny_model, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "m")
    assert main(["inspect", "--model", str(tmp_path / "m"), "--json", "--no-encoder"]) == 0
    report = json.loads(capsys.readouterr().out)
    lstm = report["recurrent"][0]
    assert lstm["formula_params"] == lstm["measured_params"]
    assert lstm["w_ih_word_columns"] == tiny_model.config.embed_dim and report["data_sha256"] is None
    assert lstm["w_ih_image_columns"] == tiny_model.config.image_proj_dim
    assert main(["inspect", "--model", str(tmp_path / "m"), "--no-encoder"]) == 0
    text = capsys.readouterr().out
    assert "decoder.rnn" in text and "(matches)" in text and "image columns" in text


def test_cli_counts_the_encoder_by_stage(tiny_model, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "m")
    assert main(["inspect", "--model", str(tmp_path / "m"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    encoder_rows = [r for r in report["layers"] if r["name"].startswith("encoder.")]
    assert sum(r["params"] for r in encoder_rows) == report["totals"]["encoder"] > 1_000_000
    assert not any(r["stored"] for r in encoder_rows)


def test_cli_bad_model_is_one_error_line(tmp_path, capsys):
    assert main(["inspect", "--model", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot load model") and err.count("\n") == 1
