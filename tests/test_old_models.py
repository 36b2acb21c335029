"""Model directories written before attention and ensembles existed load and caption exactly as they did.

The fixtures in ``tests/fixtures/old_models`` were written by the code of commit 4b46cdd (pooled-vector decoders
only): three tiny models (LSTM every step, GRU init-only, 2-layer LSTM), the image vectors they were run on and the
captions that code generated with greedy search, beam search (3 beams, n-best 3) and seeded sampling.
"""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from captioner.generation import GenerationConfig
from captioner.pipeline import Captioner

FIXTURES = Path(__file__).parent / "fixtures" / "old_models"
SEARCHES = {"greedy": GenerationConfig(method="greedy", max_length=12),
            "beam3": GenerationConfig(beam_size=3, n_best=3, max_length=12),
            "sample": GenerationConfig(method="sample", max_length=12, seed=5, temperature=1.5)}
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("search", sorted(SEARCHES))
def test_an_old_model_directory_captions_as_it_did(name, search):
    model = Captioner.from_pretrained(FIXTURES / name)
    assert model.config.inject != "attention" and model.config.num_decoders == 1  # old configs load as before
    features = load_file(str(FIXTURES / "features.safetensors"))["features"]  # (4, 12)
    got = model.caption_features(features, SEARCHES[search])
    want = EXPECTED[name][search]
    assert [[h.tokens for h in hyps] for hyps in got] == [[h["tokens"] for h in hyps] for hyps in want]
    for hyps, old in zip(got, want):
        for h, o in zip(hyps, old):
            assert h.log_prob == pytest.approx(o["log_prob"], abs=1e-5)


def test_old_configs_have_none_of_the_new_fields():
    config = json.loads((FIXTURES / "lstm_every_step" / "config.json").read_text())
    assert "num_decoders" not in config and "attention_dim" not in config
