"""captioner finetune: vocabulary extension, freezing, encoder unfreezing, the forgetting report."""

import json

import torch

from captioner.cli import main
from captioner.pipeline import Captioner
from captioner.training.finetune import count_unknown, extend_vocabulary
from captioner.training.optim import encoder_units


def test_extending_the_vocabulary_keeps_existing_rows_bit_identical(tiny_model):
    old_itos = list(tiny_model.vocab.itos)
    embed, head_w, head_b = (t.detach().clone() for t in (tiny_model.decoder.embed.weight,
                                                           tiny_model.decoder.head.weight,
                                                           tiny_model.decoder.head.bias))
    captions = ["a zebra runs", "a zebra on the grass", "the zebra", "a lone giraffe"]
    added = extend_vocabulary(tiny_model, captions, min_count=2, seed=0)
    assert added == ["zebra"]
    assert tiny_model.vocab.itos[: len(old_itos)] == old_itos and tiny_model.vocab.stoi["zebra"] == len(old_itos)
    assert tiny_model.config.vocab_size == len(old_itos) + 1
    d = tiny_model.decoder
    assert torch.equal(d.embed.weight[: len(old_itos)], embed) and torch.equal(d.head.weight[: len(old_itos)], head_w)
    assert torch.equal(d.head.bias[: len(old_itos)], head_b)
    new_row = d.embed.weight[-1].detach()
    assert torch.allclose(new_row, embed[4:].mean(0), atol=0.1 * float(embed[4:].std()))
    assert count_unknown(tiny_model, captions) == (2, 13)  # "lone" and "giraffe": seen once, below min_count
    logits = d(torch.randn(1, tiny_model.config.encoder_dim), torch.tensor([[1, 4]]))
    assert logits.shape[-1] == len(old_itos) + 1


def test_finetune_from_a_directory_with_new_words(tiny_model, shapes_dataset, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "base")
    out = tmp_path / "ft"
    code = main(["finetune", "--from", str(tmp_path / "base"), "--data", str(shapes_dataset), "--out", str(out),
                 "--epochs", "2", "--batch-size", "16", "--lr", "1e-2", "--extend-vocab", "--min-count", "1",
                 "--also-eval", str(shapes_dataset), "--also-eval-split", "train", "--eval-max-images", "6"])
    stdout = capsys.readouterr().out
    assert code == 0 and "BLEU-4 before" in stdout and "original data" in stdout
    model = Captioner.from_pretrained(out / "model")
    assert {"circle", "square", "triangle", "green"} <= set(model.vocab.itos)
    assert model.vocab.itos[: len(tiny_model.vocab)] == tiny_model.vocab.itos
    report = json.loads((out / "finetune_report.json").read_text())
    assert set(report["before"]) == set(report["after"]) == {"new data", "original data"}
    assert "circle" in report["added_words"]
    card = (out / "model" / "README.md").read_text()
    assert "Fine-tuned from" in card and "circle" in card


def test_frozen_parts_do_not_change(tiny_model, shapes_dataset, tmp_path):
    tiny_model.save_pretrained(tmp_path / "base")
    assert main(["finetune", "--from", str(tmp_path / "base"), "--data", str(shapes_dataset), "--out",
                 str(tmp_path / "ft"), "--epochs", "1", "--batch-size", "16", "--lr", "1e-2", "--freeze",
                 "embedding,decoder", "--val-split", "none"]) == 0
    before, after = tiny_model.decoder.state_dict(), Captioner.from_pretrained(tmp_path / "ft" / "model").decoder
    after = after.state_dict()
    for name in before:
        same = torch.equal(before[name], after[name])
        assert same == (not name.startswith("head")), name


def test_default_model_dry_run_and_unknown_words_reported(shared_data, tmp_path, caplog):
    assert main(["finetune", "--data", str(shared_data / "coco_mini"), "--train-split", "mini", "--val-split",
                 "mini", "--out", str(tmp_path / "ft"), "--dry-run"]) == 0
    assert "map to <unk>" in caplog.text and "--extend-vocab" in caplog.text
    assert Captioner.from_pretrained(tmp_path / "ft" / "model").vocab.itos == Captioner.from_pretrained().vocab.itos


def test_unfreezing_the_encoder_trains_only_its_last_blocks(tiny_model, shapes_dataset, tmp_path):
    tiny_model.save_pretrained(tmp_path / "base")
    reference = Captioner.from_pretrained(tmp_path / "base").encoder.state_dict()
    assert main(["finetune", "--from", str(tmp_path / "base"), "--data", str(shapes_dataset), "--out",
                 str(tmp_path / "ft"), "--dry-run", "--unfreeze-encoder", "2", "--encoder-lr", "1e-2"]) == 0
    tuned = Captioner.from_pretrained(tmp_path / "ft" / "model")
    assert tuned.config.encoder_weights_in_file
    units = encoder_units(tuned.encoder)
    last = {id(p) for unit in units[-2:] for p in unit.parameters()}
    named = dict(tuned.encoder.named_parameters())
    changed = {n for n, p in named.items() if not torch.equal(p, reference[n])}
    assert changed and all(id(named[n]) in last for n in changed)
    bn_stats = [n for n in reference if n.endswith("running_mean")]
    assert all(torch.equal(tuned.encoder.state_dict()[n], reference[n]) for n in bn_stats)  # BN kept in eval mode


def test_bad_finetune_arguments(tmp_path, shapes_dataset, capsys):
    base = ["finetune", "--data", str(shapes_dataset), "--out", str(tmp_path / "o")]
    for extra, message in [(["--from", str(tmp_path / "nope")], "not a captioner model directory"),
                           (["--freeze", "wings"], "cannot freeze"),
                           (["--also-eval", str(tmp_path / "nope")], "no such file"),
                           (["--unfreeze-encoder", "99", "--dry-run"], "--unfreeze-encoder 99: efficientnet_lite")]:
        assert main([*base, *extra]) != 0
        err = capsys.readouterr().err
        assert message in err and err.startswith("error:"), err
