"""Decoder ensembles and checkpoint averaging: one decoder is the plain model exactly, the search runs over the mean
of the members' log-probabilities, and models that cannot share an encoder are refused with one line."""

import json

import pytest
import torch
from conftest import tiny_config
from test_attention import attention_config

from captioner.cli import main
from captioner.combine import combine
from captioner.generation import GenerationConfig, generate
from captioner.generation.logits import masked_log_probs
from captioner.models.ensemble import DecoderEnsemble, EnsembleError, average_states
from captioner.models.factory import build_decoder
from captioner.pipeline import Captioner

CONFIGS = {"pooled": lambda n: tiny_config(n), "attention": lambda n: attention_config(n)}


def _models(vocab, kind: str, count: int, seed: int = 0) -> list[Captioner]:
    models = []
    for i in range(count):
        torch.manual_seed(seed + i)
        models.append(Captioner(CONFIGS[kind](len(vocab)), vocab).eval())
    return models


def _features(model, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *model.config.feature_shape(), generator=g) * 2


def _search(model, feats, **kw):
    config = GenerationConfig(**{"beam_size": 3, "n_best": 2, "max_length": 9, **kw})
    return [[(h.tokens, h.log_prob, h.score) for h in hyps] for hyps in model.caption_features(feats, config)]


@pytest.mark.parametrize("kind", ["pooled", "attention"])
def test_a_one_decoder_ensemble_is_the_plain_model_exactly(vocab, kind, tmp_path):
    (model,) = _models(vocab, kind, 1)
    feats = _features(model)
    wrapped = Captioner(model.config, vocab)
    wrapped.decoder = DecoderEnsemble(model.config, [build_decoder(model.config)])
    wrapped.decoder.members[0].load_state_dict(model.decoder.state_dict())
    for method in ("greedy", "beam"):
        assert _search(wrapped.eval(), feats, method=method) == _search(model, feats, method=method)
    model.save_pretrained(tmp_path / "a")
    assert main(["ensemble", "--models", str(tmp_path / "a"), "--out", str(tmp_path / "e")]) == 0
    again = Captioner.from_pretrained(tmp_path / "e")
    assert again.config.num_decoders == 1
    assert _search(again, feats) == _search(model, feats)


@pytest.mark.parametrize("kind", ["pooled", "attention"])
def test_the_ensemble_searches_the_mean_of_its_members_log_probs(vocab, kind):
    models = _models(vocab, kind, 3)
    combined = combine(models, ["a", "b", "c"])
    assert combined.config.num_decoders == 3 and len(combined.decoder.members) == 3
    feats = _features(models[0], n=2)
    tokens = torch.tensor([vocab.start_id, vocab.stoi["a"]])
    context, state = combined.decoder.start(feats)
    out = combined.decoder.step(tokens, context, state)
    expected = []
    for m in models:
        c, s = m.decoder.start(feats)
        expected.append(torch.log_softmax(m.decoder.step(tokens, c, s).logits, dim=-1))
    mean = torch.stack(expected).mean(dim=0)
    assert torch.allclose(masked_log_probs(out.logits, vocab), masked_log_probs(mean, vocab), atol=1e-6)
    assert not torch.allclose(masked_log_probs(out.logits, vocab), masked_log_probs(expected[0], vocab), atol=1e-3)
    if kind == "attention":  # the attention of an ensemble is the mean of its members' weights
        assert torch.allclose(out.attention.sum(dim=1), torch.ones(2), atol=1e-5)
    # Beam search log-probabilities are those of the averaged distribution, token by token.
    hyp = generate(combined.decoder, feats[:1], vocab, GenerationConfig(beam_size=3, max_length=8))[0][0]
    ids = [vocab.start_id, *hyp.tokens] + ([vocab.end_id] if hyp.finished else [])
    with torch.no_grad():
        logp = masked_log_probs(combined.decoder(feats[:1], torch.tensor([ids[:-1]]))[0], vocab)
    assert hyp.log_prob == pytest.approx(float(logp.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).sum()), abs=1e-4)


def test_identical_members_caption_like_one_model(vocab):
    (model,) = _models(vocab, "attention", 1)
    twice = combine([model, model], ["a", "a"])
    feats = _features(model)
    tokens = [[t for t, _, _ in hyps] for hyps in _search(model, feats)]
    assert [[t for t, _, _ in hyps] for hyps in _search(twice, feats)] == tokens


def test_ensembles_save_in_one_file_and_load(vocab, tmp_path):
    combined = combine(_models(vocab, "attention", 3), ["a", "b", "c"])
    combined.save_pretrained(tmp_path / "e")
    config = json.loads((tmp_path / "e" / "config.json").read_text())
    assert config["num_decoders"] == 3
    again = Captioner.from_pretrained(tmp_path / "e")
    feats = _features(combined)
    assert _search(again, feats) == _search(combined, feats)
    # An ensemble of ensembles is one flat ensemble.
    assert combine([again, _models(vocab, "attention", 1, seed=9)[0]], ["e", "d"]).config.num_decoders == 4


def test_averaging_gives_the_mean_of_the_weights(vocab):
    models = _models(vocab, "pooled", 2)
    averaged = combine(models, ["a", "b"], average=True)
    assert averaged.config.num_decoders == 1
    state = averaged.decoder.state_dict()
    for key, value in state.items():
        assert torch.allclose(value, (models[0].decoder.state_dict()[key] + models[1].decoder.state_dict()[key]) / 2)
    same = average_states([models[0].decoder.state_dict()] * 3)
    assert all(torch.allclose(same[k], v) for k, v in models[0].decoder.state_dict().items())


def test_mismatched_models_are_refused(vocab, tmp_path, capsys):
    from captioner.vocab import Vocabulary

    pooled, = _models(vocab, "pooled", 1)
    wider = Captioner(tiny_config(len(vocab), hidden_dim=40), vocab)
    other_vocab = Vocabulary(["x", "y", "z", "w", "v", "u", "t", "s", "r", "q"])
    stranger = Captioner(tiny_config(len(other_vocab)), other_vocab)
    attention = Captioner(attention_config(len(vocab), encoder_dim=pooled.config.encoder_dim), vocab)
    with pytest.raises(EnsembleError, match="hidden_dim"):
        combine([pooled, wider], ["p", "w"])
    with pytest.raises(EnsembleError, match="vocabulary"):
        combine([pooled, stranger], ["p", "s"])
    with pytest.raises(EnsembleError, match="inject"):
        combine([pooled, attention], ["p", "a"])
    for name, model in [("p", pooled), ("s", stranger)]:
        model.save_pretrained(tmp_path / name)
    assert main(["ensemble", "--models", str(tmp_path / "p"), str(tmp_path / "s"), "--out", str(tmp_path / "e")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and "vocabulary" in err
    assert not (tmp_path / "e").exists()


def test_the_ensemble_command_never_replaces_other_data(vocab, tmp_path, capsys):
    pooled, = _models(vocab, "pooled", 1)
    pooled.save_pretrained(tmp_path / "p")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "log.csv").write_text("precious")
    args = ["ensemble", "--models", str(tmp_path / "p"), "--out"]
    assert main([*args, str(tmp_path / "runs"), "--overwrite"]) == 1
    assert "holds other files" in capsys.readouterr().err and (tmp_path / "runs" / "log.csv").exists()
    assert main([*args, str(tmp_path / "p"), "--overwrite"]) == 1
    assert "is one of the --models" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "e")]) == 0
    assert main([*args, str(tmp_path / "e")]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "e"), "--overwrite", "--average"]) == 0
    assert main(["ensemble", "--models", str(tmp_path / "nowhere"), "--out", str(tmp_path / "f")]) == 1
    assert "cannot load model" in capsys.readouterr().err


def test_an_ensemble_cannot_be_trained(vocab, tmp_path):
    from captioner.training.config import TrainConfig
    from captioner.training.loop import fit

    combined = combine(_models(vocab, "pooled", 2), ["a", "b"])
    with pytest.raises(ValueError, match="ensemble of 2 decoders"):
        fit(combined, TrainConfig(data="x", out=str(tmp_path / "r")), None, None)


def test_an_ensemble_cannot_be_fine_tuned(vocab, tmp_path, shapes_dataset, capsys):
    combine(_models(vocab, "pooled", 2), ["a", "b"]).save_pretrained(tmp_path / "e")
    code = main(["finetune", "--from", str(tmp_path / "e"), "--data", str(shapes_dataset), "--out",
                 str(tmp_path / "ft"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "ensemble of 2 decoders" in err
