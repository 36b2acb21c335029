import pytest

from captioner.config import ModelConfig, Preprocess, from_dict, from_json, to_json
from captioner.training.config import TrainConfig


def test_model_config_round_trip(tmp_path):
    cfg = ModelConfig(vocab_size=99, cell="gru", inject="init_only", preprocess=Preprocess(resize=232))
    to_json(cfg, tmp_path / "c.json")
    assert from_json(ModelConfig, tmp_path / "c.json") == cfg


def test_train_config_round_trip(tmp_path):
    cfg = TrainConfig(data="x", epochs=3, val_split=None)
    to_json(cfg, tmp_path / "t.json")
    assert from_json(TrainConfig, tmp_path / "t.json") == cfg


def test_unknown_keys_and_bad_values_are_rejected():
    with pytest.raises(ValueError, match="unknown keys"):
        from_dict(ModelConfig, {"vocab_size": 5, "colour": "red"})
    with pytest.raises(ValueError, match="cell"):
        ModelConfig(cell="transformer")
    with pytest.raises(ValueError, match="inject"):
        ModelConfig(inject="sometimes")
