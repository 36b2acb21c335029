import pytest
import torch
from conftest import WORDS, tiny_config

from captioner.generation import GenerationConfig, generate
from captioner.models.pooled import Decoder
from captioner.vocab import Vocabulary


@pytest.fixture
def setup():
    torch.manual_seed(1)
    vocab = Vocabulary(WORDS)
    dec = Decoder(tiny_config(len(vocab), hidden_dim=32)).eval()
    feats = torch.randn(5, dec.config.encoder_dim) * 3
    return dec, vocab, feats


@torch.no_grad()
def _score(dec, vocab, feats, tokens, ended):
    """Teacher-forced log-probability of a caption under the same masking as generation."""
    ids = [vocab.start_id, *tokens] + ([vocab.end_id] if ended else [])
    logits = dec(feats.unsqueeze(0), torch.tensor([ids[:-1]]))[0].clone()
    logits[:, [vocab.pad_id, vocab.start_id, vocab.unk_id]] = float("-inf")
    logp = torch.log_softmax(logits, -1)
    return float(logp.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).sum())


def test_beam_size_one_equals_greedy(setup):
    dec, vocab, feats = setup
    greedy = generate(dec, feats, vocab, GenerationConfig(method="greedy", max_length=12))
    beam1 = generate(dec, feats, vocab, GenerationConfig(method="beam", beam_size=1, max_length=12))
    for g, b in zip(greedy, beam1):
        assert g[0].tokens == b[0].tokens
        assert g[0].log_prob == pytest.approx(b[0].log_prob, abs=1e-5)


def test_beam_n_best_is_sorted_and_log_probs_are_exact(setup):
    dec, vocab, feats = setup
    hyps = generate(dec, feats, vocab, GenerationConfig(beam_size=4, n_best=4, max_length=10))
    assert len(hyps) == 5
    for image, nbest in enumerate(hyps):
        assert len(nbest) == 4
        scores = [h.score for h in nbest]
        assert scores == sorted(scores, reverse=True)
        for h in nbest:
            assert h.log_prob == pytest.approx(_score(dec, vocab, feats[image], h.tokens, h.finished), abs=1e-4)


def test_beam_finds_at_least_greedy_log_prob(setup):
    dec, vocab, feats = setup
    greedy = generate(dec, feats, vocab, GenerationConfig(method="greedy", max_length=10))
    beam = generate(dec, feats, vocab, GenerationConfig(beam_size=5, max_length=10))
    for g, b in zip(greedy, beam):
        if g[0].finished and b[0].finished:
            assert b[0].log_prob >= g[0].log_prob - 1e-5


def test_batched_beam_equals_one_image_at_a_time(setup):
    dec, vocab, feats = setup
    cfg = GenerationConfig(beam_size=3, n_best=2, max_length=10)
    together = generate(dec, feats, vocab, cfg)
    for i in range(len(feats)):
        alone = generate(dec, feats[i : i + 1], vocab, cfg)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in together[i]]


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_never_ending_model_is_cut_at_max_length(setup, method):
    dec, vocab, feats = setup
    with torch.no_grad():
        dec.head.bias[vocab.end_id] = -1e9  # <end> can never win
    hyps = generate(dec, feats, vocab, GenerationConfig(method=method, beam_size=3, n_best=1, max_length=7))
    for h in hyps:
        assert len(h[0].tokens) == 7 and not h[0].finished and torch.isfinite(torch.tensor(h[0].log_prob))


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_special_tokens_are_never_generated(setup, method):
    dec, vocab, feats = setup
    with torch.no_grad():
        dec.head.bias[[vocab.pad_id, vocab.start_id, vocab.unk_id]] = 50.0  # the model loves them
    for h in generate(dec, feats, vocab, GenerationConfig(method=method, max_length=8, seed=0)):
        assert not {vocab.pad_id, vocab.start_id, vocab.unk_id} & set(h[0].tokens)


def test_sampling_is_seeded_and_top_k_one_is_greedy(setup):
    dec, vocab, feats = setup
    a = generate(dec, feats, vocab, GenerationConfig(method="sample", seed=3, temperature=1.5, max_length=10))
    b = generate(dec, feats, vocab, GenerationConfig(method="sample", seed=3, temperature=1.5, max_length=10))
    assert [h[0].tokens for h in a] == [h[0].tokens for h in b]
    top1 = generate(dec, feats, vocab, GenerationConfig(method="sample", top_k=1, max_length=10, seed=0))
    greedy = generate(dec, feats, vocab, GenerationConfig(method="greedy", max_length=10))
    assert [h[0].tokens for h in top1] == [h[0].tokens for h in greedy]


def test_length_penalty_changes_ranking_towards_longer(setup):
    dec, vocab, feats = setup
    plain = generate(dec, feats, vocab, GenerationConfig(beam_size=5, n_best=5, max_length=10))
    longer = generate(dec, feats, vocab, GenerationConfig(beam_size=5, n_best=5, max_length=10, length_penalty=1.0))
    # Same beams, re-ranked by log_prob / length: the winner can only get longer.
    for p, lp in zip(plain, longer):
        assert sorted(h.tokens for h in p) == sorted(h.tokens for h in lp)
        assert len(lp[0].tokens) >= len(p[0].tokens)


def test_bad_generation_configs():
    with pytest.raises(ValueError):
        GenerationConfig(method="nucleus")
    with pytest.raises(ValueError):
        GenerationConfig(beam_size=2, n_best=3)
    with pytest.raises(ValueError):
        GenerationConfig(temperature=0)


def test_empty_batch(setup):
    dec, vocab, _ = setup
    assert generate(dec, torch.zeros(0, dec.config.encoder_dim), vocab) == []


def _ngrams(tokens, n):
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def test_repeat_mask_bans_what_followed_the_last_words_before():
    from captioner.generation.logits import repeat_mask

    banned = repeat_mask(torch.tensor([[5, 6, 5], [5, 6, 7]]), 2, 9)  # row 0 ends in 5, which 6 followed before
    assert banned[0].nonzero().flatten().tolist() == [6] and not banned[1].any()
    banned = repeat_mask(torch.tensor([[5, 6, 7, 5, 6], [5, 6, 7, 5, 8]]), 3, 9)  # "5 6" was followed by 7
    assert banned[0].nonzero().flatten().tolist() == [7] and not banned[1].any()
    assert repeat_mask(torch.tensor([[5]]), 3, 9) is None


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
@pytest.mark.parametrize("n", [2, 3])
def test_no_caption_repeats_an_ngram_with_the_guard(setup, method, n):
    dec, vocab, feats = setup
    feats = torch.randn(40, dec.config.encoder_dim) * 3
    config = dict(method=method, max_length=16, seed=0, n_best=3 if method != "greedy" else 1, beam_size=3)
    plain = generate(dec, feats, vocab, GenerationConfig(**config))
    guarded = generate(dec, feats, vocab, GenerationConfig(**config, no_repeat_ngram=n))
    repeats = [h.tokens for hs in plain for h in hs if len(set(_ngrams(h.tokens, n))) < len(_ngrams(h.tokens, n))]
    assert repeats, "a random tiny model repeats itself: the check below would prove nothing"
    for hs in guarded:
        for h in hs:
            assert len(set(_ngrams(h.tokens, n))) == len(_ngrams(h.tokens, n)), h.tokens
    if method == "beam":  # blocked tokens are excluded, the rest keep the model's exact log-probabilities
        for i, hs in enumerate(guarded):
            assert hs[0].log_prob == pytest.approx(_score(dec, vocab, feats[i], hs[0].tokens, hs[0].finished),
                                                   abs=1e-4)


def test_the_guard_defaults_to_the_models_own_setting(setup):
    import dataclasses

    dec, vocab, feats = setup
    config = GenerationConfig(method="greedy", max_length=16)
    before = generate(dec, feats, vocab, config)
    assert before == generate(dec, feats, vocab, dataclasses.replace(config, no_repeat_ngram=0))
    dec.config = dataclasses.replace(dec.config, no_repeat_ngram=2)
    assert generate(dec, feats, vocab, config) == generate(
        dec, feats, vocab, dataclasses.replace(config, no_repeat_ngram=2))
    with pytest.raises(ValueError, match="0 \\(off\\) or at least 2"):
        GenerationConfig(no_repeat_ngram=1)


@pytest.mark.parametrize("n_best", [1, 3])
def test_beam_search_stops_once_the_n_best_are_settled_with_the_same_result(setup, monkeypatch, n_best):
    import captioner.generation.search as gen

    dec, vocab, _ = setup
    with torch.no_grad():
        dec.head.bias[vocab.end_id] += 0.5  # some captions end early, as a trained model's do
    feats = torch.randn(30, dec.config.encoder_dim, generator=torch.Generator().manual_seed(5)) * 3
    config = GenerationConfig(beam_size=4, n_best=n_best, max_length=25)
    steps = []
    real_step = dec.step
    monkeypatch.setattr(dec, "step", lambda *a: steps.append(1) or real_step(*a))
    early = generate(dec, feats, vocab, config)
    early_steps = len(steps)
    # run until every beam has ended: no image is ever settled early
    monkeypatch.setattr(gen, "settled_images", lambda scores, done, n: torch.zeros(len(scores), dtype=torch.bool))
    steps.clear()
    full = generate(dec, feats, vocab, config)
    assert early_steps < len(steps), "the random model should settle before its last beam ends"
    for a, b in zip(early, full):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.log_prob for h in a] == pytest.approx([h.log_prob for h in b], abs=1e-6)
