"""The numpy searches of the ONNX Runtime path apply the same rules as the PyTorch ones (the whole searches are
compared caption for caption in tests/test_onnx_export.py): the n-gram guard, the top-k order, when an image is
settled, the length-normalised ranking."""

import numpy as np
import pytest
import torch

from captioner.generation import array_search
from captioner.generation.config import GenerationConfig
from captioner.generation.logits import block_repeats, length_score
from captioner.generation.search import collect_beams, settled_images
from captioner.vocab import Vocabulary

from conftest import WORDS


@pytest.mark.parametrize("n", [2, 3, 4])
def test_the_ngram_guard_bans_the_same_tokens(n):
    rng = np.random.default_rng(n)
    history = rng.integers(0, 4, (64, 9))  # few distinct tokens: many repeats
    logp = rng.normal(size=(64, 6)).astype(np.float32)
    want = block_repeats(torch.from_numpy(logp.copy()), torch.from_numpy(history), n).numpy()
    got = array_search.block_repeats(logp.copy(), history, n)
    assert np.array_equal(got, want)
    assert np.isinf(got).any()  # something was banned: the test can tell


def test_top_k_is_sorted_and_picks_the_largest():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(5, 40)).astype(np.float32)
    values[0, 10:] = -np.inf  # fewer finite values than asked for
    best, index = array_search.top_k(values, 12)
    want = torch.from_numpy(values).topk(12, dim=1)
    assert np.array_equal(best, want.values.numpy())
    assert np.array_equal(np.take_along_axis(values, index, axis=1), best)


def test_settled_images_are_those_torch_finds():
    rng = np.random.default_rng(1)
    for n_best in (1, 2):
        scores = -rng.exponential(size=(200, 3)).astype(np.float32)
        done = rng.random((200, 3)) < 0.5
        want = settled_images(torch.from_numpy(scores), torch.from_numpy(done), n_best).numpy()
        got = array_search.settled(scores, done, n_best)
        assert np.array_equal(got, want) and 0 < got.sum() < 200


@pytest.mark.parametrize("penalty", [0.0, 0.7])
def test_beams_are_ranked_and_scored_as_torch_ranks_them(penalty):
    vocab = Vocabulary(WORDS)
    rng = np.random.default_rng(2)
    k, batch = 4, 6
    history = rng.integers(4, len(vocab), (batch * k, 7))
    history[::3, 3] = vocab.end_id  # some beams ended early: padded after <end>
    history[::3, 4:] = vocab.pad_id
    scores = -rng.exponential(size=(batch, k)).astype(np.float32) * 5
    config = GenerationConfig(beam_size=k, n_best=3, length_penalty=penalty)
    want = collect_beams(torch.from_numpy(history), torch.from_numpy(scores), torch.zeros(batch * k, dtype=torch.bool),
                         vocab, config)
    got = array_search.collect(history, scores, vocab, config)
    assert [[h.tokens for h in image] for image in got] == [[h.tokens for h in image] for image in want]
    assert [h.score for image in got for h in image] == pytest.approx([h.score for image in want for h in image])
    lengths = np.array([3, 7, 12])
    assert np.allclose(array_search.length_score(np.float32([-3.0, -5.0, -9.0]), lengths, penalty),
                       length_score(torch.tensor([-3.0, -5.0, -9.0]), torch.from_numpy(lengths), penalty).numpy())


def test_what_it_cannot_do_is_refused():
    assert not array_search.supports(GenerationConfig(method="sample"))
    assert not array_search.supports(GenerationConfig(return_attention=True))
    assert array_search.supports(GenerationConfig(beam_size=1)) and array_search.supports(GenerationConfig())
    with pytest.raises(ValueError, match="beam and greedy"):
        array_search.array_search(None, np.zeros((1, 4), np.float32), Vocabulary(WORDS),
                                  GenerationConfig(method="sample"))
