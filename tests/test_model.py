import json
import re
import shlex

import pytest
import torch

from captioner.models.files import DEFAULT_MODEL_DIR, ModelLoadError
from captioner.pipeline import Captioner


def _logits(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(3, model.config.encoder_dim, generator=g)
    tokens = torch.randint(0, model.config.vocab_size, (3, 6), generator=g)
    with torch.no_grad():
        return model.decoder.eval()(feats, tokens)


def test_save_load_round_trip_gives_identical_logits(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m", card="# my card\n")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "README.md", "config.json", "model.safetensors", "vocab.json"]
    again = Captioner.from_pretrained(tmp_path / "m")
    assert torch.equal(_logits(tiny_model), _logits(again))
    assert again.config == tiny_model.config and again.vocab.itos == tiny_model.vocab.itos
    assert (tmp_path / "m" / "README.md").read_text() == "# my card\n"


def test_save_replaces_an_existing_directory_and_half_precision(tiny_model, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "stale.txt").write_text("old")
    tiny_model.save_pretrained(tmp_path / "m", half=True)
    assert not (tmp_path / "m" / "stale.txt").exists()
    again = Captioner.from_pretrained(tmp_path / "m")
    assert torch.allclose(_logits(tiny_model), _logits(again), atol=1e-2)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_a_save_killed_midway_loses_no_model(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m", card="# first\n")
    (tmp_path / "m").rename(tmp_path / ".m.old-4242")  # killed between moving the old model aside and moving in the new
    (tmp_path / ".m.x1y2z3").mkdir()  # and a half-written new one
    (tmp_path / ".m.x1y2z3" / "config.json").write_text("{")
    with pytest.raises(ModelLoadError, match=r"interrupted.*\.m\.old-4242: rename it back to m"):
        Captioner.from_pretrained(tmp_path / "m")
    tiny_model.save_pretrained(tmp_path / "other")  # saving elsewhere touches nothing of m's
    assert (tmp_path / ".m.old-4242").is_dir() and (tmp_path / ".m.x1y2z3").is_dir()
    tiny_model.save_pretrained(tmp_path / "m", card="# second\n")  # the next save of m cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "other"]
    assert (tmp_path / "m" / "README.md").read_text() == "# second\n"


def test_an_interrupted_save_is_recovered_before_the_next_one(tiny_model, tmp_path):
    from captioner.models.files import recover_interrupted_save

    tiny_model.save_pretrained(tmp_path / "m", card="# first\n")
    (tmp_path / "m").rename(tmp_path / ".m.old-4242")
    recover_interrupted_save(tmp_path / "m")
    assert (tmp_path / "m" / "README.md").read_text() == "# first\n" and not (tmp_path / ".m.old-4242").exists()
    assert torch.equal(_logits(tiny_model), _logits(Captioner.from_pretrained(tmp_path / "m")))


def test_no_pickle_in_model_directory(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    head = (tmp_path / "m" / "model.safetensors").read_bytes()[:8]
    header_len = int.from_bytes(head, "little")
    header = json.loads((tmp_path / "m" / "model.safetensors").read_bytes()[8 : 8 + header_len])
    assert all(k.startswith("decoder.") for k in header if k != "__metadata__")


def test_a_training_run_directory_loads_its_best_model(tiny_model, tmp_path):
    """``--model runs/mine`` as users type it: the run's ``model/`` is loaded; a model directory still wins."""
    run = tmp_path / "runs" / "mine"
    tiny_model.save_pretrained(run / "model")
    (run / "train_config.json").write_text("{}")
    assert torch.equal(_logits(Captioner.from_pretrained(run)), _logits(tiny_model))
    with pytest.raises(ModelLoadError, match="not a captioner model directory"):
        Captioner.from_pretrained(run / "epochs")


def test_loading_an_incomplete_directory_says_what_is_missing(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="missing model.safetensors, vocab.json"):
        Captioner.from_pretrained(tmp_path / "m")


def test_vocab_size_must_match(vocab):
    from conftest import tiny_config

    with pytest.raises(ValueError, match="vocab_size"):
        Captioner(tiny_config(len(vocab) + 1), vocab)


def test_the_embedded_default_model_loads_and_captions_images():
    from PIL import Image

    assert (DEFAULT_MODEL_DIR / "model.safetensors").is_file(), "the default model must ship in the package"
    model = Captioner.from_pretrained("default")
    # the user's design: an LSTM whose input at every step holds the image (pooled vector or attention context)
    assert model.config.inject in ("every_step", "attention") and model.config.cell == "lstm"
    red = Image.new("RGB", (300, 200), (200, 30, 30))
    captions = model.caption([red, Image.new("RGB", (64, 64), (20, 120, 20))])
    assert len(captions) == 2 and all(c.text.split() for c in captions)
    card = (DEFAULT_MODEL_DIR / "README.md").read_text()
    command = re.search(r"Command: `(captioner (-v )?train --data[^`]*)`", card)
    assert command, "the card must record the training command"
    assert not re.search(r"(^|\s)/", command.group(1)), "the command must not carry the building machine's paths"
    assert "BLEU-4" in card and "scripts/train_default.sh" in card


def _options(command: str) -> dict[str, str]:
    """``--name value`` pairs (``--flag`` → "") of a shell command line, line continuations joined."""
    words = shlex.split(command.replace("\\\n", " "))
    out = {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            nxt = words[i + 1] if i + 1 < len(words) else ""
            out[word] = "" if nxt.startswith("--") else nxt
    return out


def test_the_reproduce_script_trains_the_default_with_the_cards_settings():
    card = (DEFAULT_MODEL_DIR / "README.md").read_text()
    command = re.search(r"Command: `(captioner [^`]+)`", card)[1]
    script = (DEFAULT_MODEL_DIR.parents[2] / "scripts" / "train_default.sh").read_text()
    train_line = script[script.index("captioner -v train"): script.index("python scripts/export_default.py")]
    trained, scripted = _options(command), _options(train_line)
    for option, value in trained.items():
        if option in ("--out", "--cache-dir", "--data"):
            continue  # where things go, not what is trained
        assert option in scripted, f"scripts/train_default.sh lacks {option} {value} (the default was trained with it)"
        if value and scripted[option] and not scripted[option].startswith("$"):
            assert float(value) == float(scripted[option]) if value[0].isdigit() else value == scripted[option], option
    config = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    assert scripted["--encoder"] == config["encoder"] and int(scripted["--hidden-dim"]) == config["hidden_dim"]
