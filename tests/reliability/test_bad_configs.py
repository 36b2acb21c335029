"""Hostile or mistyped ``config.json`` files (issue 26, item 4): refused in one line naming the file and the field,
before a tensor is built, in bounded memory; the tensor shapes in the safetensors header are checked against the
config without loading them."""

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from badfiles import photo
from conftest import tiny_config

from captioner.cli import main
from captioner.config import ModelConfig, Preprocess, from_dict
from captioner.models.factory import build_decoder
from captioner.models.files import ModelLoadError, decoder_shapes, weights_header
from captioner.pipeline import Captioner

OLD_MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "old_models"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    from captioner.vocab import Vocabulary
    from conftest import WORDS

    root = tmp_path_factory.mktemp("configs")
    torch.manual_seed(0)
    vocab = Vocabulary(WORDS)
    Captioner(tiny_config(len(vocab)), vocab).save_pretrained(root / "good")
    photo().save(root / "p.jpg")
    return root / "good"


def _hostile(good: Path, where: Path, change: dict) -> Path:
    """A copy of ``good`` whose config.json has ``change`` applied (``preprocess`` entries merged)."""
    model = where / "model"
    shutil.copytree(good, model)
    config = json.loads((model / "config.json").read_text())
    for key, value in change.items():
        if key == "preprocess" and isinstance(value, dict):
            config["preprocess"].update(value)
        elif value is None:
            config.pop(key)
        else:
            config[key] = value
    (model / "config.json").write_text(json.dumps(config))
    return model


# The issue's five findings first, then the other fields: (change, what the one-line error must say).
CASES = {
    "num_decoders_300": ({"num_decoders": 300}, "config.json: num_decoders must be a whole number from 1 to 64, got 300"),
    "hidden_dim_8000": ({"hidden_dim": 8000}, "model.safetensors does not fit config.json and vocab.json "
                        "(decoder.head.weight is (14, 24), config.json makes it (14, 8000) from vocab_size, hidden_dim)"),
    "crop_1000000": ({"preprocess": {"crop": 1000000}},
                     "config.json: preprocess.crop must be a whole number from 16 to 4096, got 1000000"),
    "hidden_dim_string": ({"hidden_dim": "512"}, 'config.json: hidden_dim must be a whole number from 1 to 16384, '
                          'got "512"'),
    "std_zero": ({"preprocess": {"std": [0, 0, 0]}}, "config.json: preprocess.std must be three positive finite "
                 "numbers (one per RGB channel), got [0, 0, 0]"),
    "crop_over_resize": ({"preprocess": {"crop": 300}}, "preprocess.crop (300) must not exceed preprocess.resize"),
    "mean_nan": ({"preprocess": {"mean": [0.5, float("nan"), 0.5]}}, "preprocess.mean must be three finite numbers"),
    "std_two_channels": ({"preprocess": {"std": [0.5, 0.5]}}, "preprocess.std must be three positive finite"),
    "interpolation": ({"preprocess": {"interpolation": "nearest"}},
                      'preprocess.interpolation must be one of bicubic, bilinear, got "nearest"'),
    "preprocess_unknown_key": ({"preprocess": {"gamma": 2.2}}, "preprocess: unknown keys ['gamma']"),
    "preprocess_not_an_object": ({"preprocess": [256, 224]}, "preprocess must be an object"),
    "dropout": ({"dropout": 1.0}, "dropout must be a number in [0, 1), got 1.0"),
    "num_layers_zero": ({"num_layers": 0}, "num_layers must be a whole number from 1 to 16, got 0"),
    "num_layers_float": ({"num_layers": 1.0}, "num_layers must be a whole number from 1 to 16, got 1.0"),
    "negative_width": ({"embed_dim": -3}, "embed_dim must be a whole number from 1 to 16384, got -3"),
    "bool_width": ({"encoder_dim": True}, "encoder_dim must be a whole number from 1 to 16384, got true"),
    "cell": ({"cell": "transformer"}, 'cell must be one of lstm, gru, rnn, got "transformer"'),
    "inject": ({"inject": 3}, "inject must be one of every_step, init_only, attention, got 3"),
    "flag": ({"encoder_weights_in_file": "no"}, 'encoder_weights_in_file must be true or false, got "no"'),
    "feature_locations": ({"feature_locations": 10**9}, "feature_locations must be a whole number from 0 to 65536"),
    "attention_without_locations": ({"inject": "attention"}, "an attention model needs feature_locations"),
    "encoder_not_a_string": ({"encoder": ["efficientnet_lite0"]}, "encoder must be the name of an encoder"),
    "vocab_size_mismatch": ({"vocab_size": 15}, "vocab.json: vocabulary has 14 tokens but config.json's vocab_size "
                            "is 15"),
    "ensemble_of_one_file": ({"num_decoders": 2}, "tensor(s) config.json implies are missing, e.g. "
                             "decoder.members.0.embed.weight"),
    "other_cell": ({"cell": "gru"}, "decoder.rnn.weight_ih_l0 is (96, 28), config.json makes it (72, 28) from cell, hidden_dim"),
    "encoder_weights_claimed": ({"encoder_weights_in_file": True}, "encoder_weights_in_file is true but the file "
                                "lacks encoder weights"),
    "not_json": ({}, "config.json: not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_config_is_refused_in_one_line_before_anything_is_built(case, good, tmp_path, monkeypatch, capsys):
    change, message = CASES[case]
    model = _hostile(good, tmp_path, change)
    if case == "not_json":
        (model / "config.json").write_text('{"hidden_dim": 24,')
    built = []
    monkeypatch.setattr("captioner.pipeline.build_decoder", lambda config: built.append(config))
    with pytest.raises(ModelLoadError) as caught:
        Captioner.from_pretrained(model)
    assert not built, "a decoder was built before the config was refused"
    assert message in str(caught.value) and len(str(caught.value).splitlines()) == 1, str(caught.value)
    assert str(model) in str(caught.value)
    assert main(["caption", str(good.parent / "p.jpg"), "--model", str(model), "--backend", "torch"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot load model {model}") and message in err and len(err.splitlines()) == 1, err


LOAD_ALL = """
import resource, sys
from captioner.pipeline import Captioner
from captioner.models.files import ModelLoadError
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print("baseline", peak(), flush=True)
for path in sys.argv[1:]:
    try:
        Captioner.from_pretrained(path)
        print("loaded", path, peak(), flush=True)
    except ModelLoadError as err:
        print("refused", peak(), str(err)[:60], flush=True)
"""

ISSUE_CASES = ["num_decoders_300", "hidden_dim_8000", "crop_1000000", "hidden_dim_string", "std_zero"]


def test_the_issues_hostile_configs_are_refused_in_bounded_memory(good, tmp_path):
    """Before: num_decoders 300 on the default model climbed to 7.4 GB (46 s), hidden_dim 8000 to 1.8 GB (1 GB on
    this tiny model); now each is refused from the config and the header, adding no more than a few MB."""
    models = []
    for case in ISSUE_CASES + ["num_decoders_64_wide"]:
        change = CASES[case][0] if case in CASES else {"num_decoders": 64, "hidden_dim": 8192, "embed_dim": 8192}
        (tmp_path / case).mkdir()
        models.append(str(_hostile(good, tmp_path / case, change)))
    done = subprocess.run([sys.executable, "-c", LOAD_ALL, *models], capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == len(models) + 1 and all(
        line.startswith("refused") for line in lines[1:]), done.stdout + done.stderr
    baseline, peak = int(lines[0].split()[1]), max(int(line.split()[1]) for line in lines[1:])
    print(f"peak RSS {baseline} MB after imports, {peak} MB after the hostile loads")
    assert peak - baseline < 50, f"loading the hostile models raised the peak RSS from {baseline} to {peak} MB"


@pytest.mark.parametrize("cell,inject,layers,gate,init,members", [
    *itertools.product(["lstm", "gru", "rnn"], ["every_step", "init_only"], [1, 3], [True], ["mean"], [1, 2]),
    *itertools.product(["lstm", "gru"], ["attention"], [1, 2], [True, False], ["mean", "zeros"], [1, 2])])
def test_the_shapes_a_config_implies_are_those_of_the_decoder_it_builds(cell, inject, layers, gate, init, members):
    config = ModelConfig(vocab_size=11, encoder_dim=7, embed_dim=5, image_proj_dim=6, hidden_dim=9, attention_dim=4,
                         cell=cell, inject=inject, num_layers=layers, attention_gate=gate, attention_init=init,
                         num_decoders=members, feature_locations=3, dropout=0.0)
    built = {name: tuple(t.shape) for name, t in build_decoder(config).state_dict().items()}
    assert {name: shape for name, (shape, _) in decoder_shapes(config).items()} == built


@pytest.mark.parametrize("name", sorted(p.name for p in OLD_MODELS.iterdir() if p.is_dir()))
def test_old_model_directories_pass_the_validation(name):
    from captioner.models.files import validate_model_dir

    config, vocab = validate_model_dir(OLD_MODELS / name)
    assert len(vocab) == config.vocab_size


def test_a_header_promising_more_than_the_file_holds_is_refused(good, tmp_path):
    weights = shutil.copytree(good, tmp_path / "model") / "model.safetensors"
    raw = weights.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    header["decoder.head.weight"]["shape"] = [10, 8000]  # the byte range still holds (10, 24)
    text = json.dumps(header).encode()
    weights.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + length :])
    with pytest.raises(ModelLoadError, match="its byte range does not hold a F32 tensor of shape .10, 8000."):
        weights_header(weights)
    weights.write_bytes(raw[: len(raw) - 40])  # cut short
    with pytest.raises(ModelLoadError, match="its tensors need .* bytes after the header, the file holds"):
        weights_header(weights)
    weights.write_bytes((10**12).to_bytes(8, "little") + raw[8:])
    with pytest.raises(ModelLoadError, match="its header says 1,000,000,000,000 bytes"):
        weights_header(weights)


def test_configs_built_in_code_obey_the_same_rules_and_from_dict_names_the_file():
    with pytest.raises(ValueError, match="hidden_dim must be a whole number from 1 to 16384, got 0"):
        ModelConfig(hidden_dim=0)
    with pytest.raises(ValueError, match="preprocess.std must be three positive finite numbers"):
        Preprocess(std=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match=r"^runs/x/config.json: num_decoders must be a whole number"):
        from_dict(ModelConfig, {"num_decoders": "2"}, source="runs/x/config.json")
    assert ModelConfig(preprocess={"resize": 256, "crop": 224, "mean": [0.5] * 3, "std": [0.5] * 3,
                                   "interpolation": "bilinear"}).preprocess.mean == (0.5, 0.5, 0.5)
