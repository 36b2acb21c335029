"""The attention decoder: shapes (B, L, C) → (B, T, L), weights that sum to 1, the context entering every step
through W_ih, teacher forcing equal to step-by-step decoding, and generation with attention weights."""

import json

import pytest
import torch
from conftest import WORDS, tiny_config

from captioner.config import ModelConfig
from captioner.generation import GenerationConfig, generate
from captioner.models.attention import AttentionContext, AttentionDecoder, SoftAttention, doubly_stochastic_penalty
from captioner.models.factory import build_decoder
from captioner.pipeline import Captioner
from captioner.vocab import Vocabulary

L, C = 9, 20  # locations and channels of the tiny feature maps


def attention_config(vocab_size: int, **overrides) -> ModelConfig:
    fields = dict(inject="attention", encoder_dim=C, feature_locations=L, attention_dim=10)
    fields.update(overrides)
    return tiny_config(vocab_size, **fields)


@pytest.fixture
def setup():
    torch.manual_seed(3)
    vocab = Vocabulary(WORDS)
    dec = AttentionDecoder(attention_config(len(vocab))).eval()
    feats = torch.randn(4, L, C) * 2
    return dec, vocab, feats


def _padded_tokens(vocab_size: int, lengths: list[int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, n in enumerate(lengths):
        tokens[row, :n] = torch.randint(4, vocab_size, (n,), generator=g)
    tokens[:, 0] = 2  # <start>
    return tokens


def test_soft_attention_weights_sum_to_one_and_the_context_is_their_mean_of_values():
    torch.manual_seed(0)
    att = SoftAttention(value_dim=6, query_dim=5, hidden_dim=4, gate=False)
    values = torch.randn(3, L, 6)
    z, alpha = att(AttentionContext(values, att.key(values)), torch.randn(3, 5))
    assert alpha.shape == (3, L) and z.shape == (3, 6)
    assert torch.allclose(alpha.sum(dim=1), torch.ones(3)) and bool((alpha >= 0).all())
    assert torch.allclose(z, (alpha.unsqueeze(2) * values).sum(dim=1), atol=1e-6)


def test_shapes_and_attention_weights_per_step(setup):
    dec, vocab, feats = setup
    tokens = _padded_tokens(len(vocab), [6, 3, 5, 1])
    logits, weights = dec(feats, tokens, return_attention=True)
    assert logits.shape == (4, 6, len(vocab)) and weights.shape == (4, 6, L)  # (B, T, V), (B, T, L)
    for row, n in enumerate([6, 3, 5, 1]):
        assert torch.allclose(weights[row, :n].sum(dim=1), torch.ones(n), atol=1e-6)  # each step sums to 1
        assert bool((weights[row, n:] == 0).all()) and bool((logits[row, n:] == 0).all())  # nothing after the end
    assert dec(feats, tokens).shape == logits.shape


def test_a_padded_batch_equals_each_caption_alone(setup):
    dec, vocab, feats = setup
    lengths = [2, 6, 4, 6]
    tokens = _padded_tokens(len(vocab), lengths, seed=1)
    together = dec(feats, tokens)
    for row, n in enumerate(lengths):
        alone = dec(feats[row : row + 1], tokens[row : row + 1, :n])
        assert torch.allclose(together[row, :n], alone[0], atol=1e-5)


def test_image_index_projects_each_image_once_with_the_same_result(setup):
    dec, vocab, feats = setup
    index = torch.tensor([2, 0, 2, 1, 1, 3])
    tokens = _padded_tokens(len(vocab), [5, 5, 3, 4, 2, 5], seed=2)
    assert torch.allclose(dec(feats, tokens, image_index=index), dec(feats[index], tokens), atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_the_context_enters_every_step_through_w_ih(cell):
    torch.manual_seed(0)
    vocab = Vocabulary(WORDS)
    dec = AttentionDecoder(attention_config(len(vocab), cell=cell, attention_init="zeros", num_layers=2)).eval()
    feats = torch.randn(2, L, C, requires_grad=True)
    tokens = _padded_tokens(len(vocab), [6, 6])
    contexts = []
    hook = dec.attention.register_forward_hook(lambda mod, inputs, out: contexts.append(out[0].detach()))
    logits = dec(feats, tokens)
    hook.remove()
    assert len(contexts) == 6 and all(z.shape == (2, dec.config.image_proj_dim) for z in contexts)
    assert not torch.allclose(contexts[0], contexts[5])  # it moves: the attention is recomputed every step
    # replay with PyTorch's own cells fed [embed(w_t) ; context_t]: the decoder computes exactly that
    hidden = torch.zeros(2, dec.config.num_layers, dec.config.hidden_dim)
    cells = torch.zeros_like(hidden)
    with torch.no_grad():
        for t, z in enumerate(contexts):
            inputs = torch.cat([dec.embed(tokens[:, t]), z], dim=1)  # (B, E + P): the input W_ih multiplies
            for layer, module in enumerate(dec.rnn):
                if cell == "lstm":
                    h, c = module(inputs, (hidden[:, layer], cells[:, layer]))
                    cells[:, layer] = c
                else:
                    h = module(inputs, hidden[:, layer])
                hidden[:, layer], inputs = h, h
            assert torch.allclose(dec.head(inputs), logits[:, t], atol=1e-5), t
    (grad,) = torch.autograd.grad(logits[:, 5].sum(), feats)
    assert grad.abs().sum() > 0  # the image reaches the last step
    with torch.no_grad():
        dec.rnn[0].weight_ih[:, dec.config.embed_dim:] = 0  # cut W_ih's image columns: with a zero state the image is gone
    assert torch.allclose(dec(feats, tokens), dec(torch.randn_like(feats), tokens))


def test_mean_init_sets_the_state_from_the_mean_of_the_map(setup):
    dec, vocab, feats = setup
    _, (h, c) = dec.start(feats)
    assert h.shape == (1, 4, dec.config.hidden_dim) and not torch.allclose(h, torch.zeros_like(h))
    shuffled = feats[:, torch.randperm(L)]  # the same locations in another order: the same mean
    assert torch.allclose(dec.start(shuffled)[1][0], h, atol=1e-6)
    zeros = AttentionDecoder(attention_config(len(vocab), attention_init="zeros"))
    assert zeros.init_state is None and bool((zeros.start(feats)[1][0] == 0).all())


def test_teacher_forced_scores_equal_beam_search_log_probs(setup):
    dec, vocab, feats = setup
    for hyps, image in zip(generate(dec, feats, vocab, GenerationConfig(beam_size=3, n_best=3, max_length=8)),
                           feats):
        for h in hyps:
            ids = [vocab.start_id, *h.tokens] + ([vocab.end_id] if h.finished else [])
            with torch.no_grad():
                logits = dec(image.unsqueeze(0), torch.tensor([ids[:-1]]))[0].clone()
            logits[:, [vocab.pad_id, vocab.start_id, vocab.unk_id]] = float("-inf")
            logp = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:]).unsqueeze(1)).sum()
            assert h.log_prob == pytest.approx(float(logp), abs=1e-4)


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_generation_returns_one_attention_map_per_word(setup, method):
    dec, vocab, feats = setup
    n_best = 2 if method != "greedy" else 1
    config = GenerationConfig(method=method, beam_size=3, n_best=n_best, max_length=7, seed=0, return_attention=True)
    results = generate(dec, feats, vocab, config)
    assert len(results) == 4
    for hyps in results:
        for h in hyps:
            assert h.attention.shape == (len(h.tokens), L)
            assert torch.allclose(h.attention.sum(dim=1), torch.ones(len(h.tokens)), atol=1e-5)
    plain = generate(dec, feats, vocab, GenerationConfig(method=method, beam_size=3, n_best=n_best, max_length=7, seed=0))
    assert [[x.tokens for x in h] for h in plain] == [[x.tokens for x in h] for h in results]  # the search is the same
    assert plain[0][0].attention is None


def test_beam_attention_follows_the_surviving_beam(setup):
    dec, vocab, feats = setup
    hyp = generate(dec, feats[:1], vocab, GenerationConfig(beam_size=4, max_length=8, return_attention=True))[0][0]
    context, state = dec.start(feats[:1])
    tokens = torch.tensor([vocab.start_id])
    for t, word in enumerate(hyp.tokens):  # replay the winning caption: the same weights at every step
        out = dec.step(tokens, context, state)
        assert torch.allclose(out.attention[0], hyp.attention[t], atol=1e-5)
        tokens, state = torch.tensor([word]), out.state


def test_return_attention_on_a_pooled_model_says_why_not(tiny_model):
    with pytest.raises(ValueError, match="inject 'attention'"):
        generate(tiny_model.decoder, torch.randn(1, tiny_model.config.encoder_dim), tiny_model.vocab,
                 GenerationConfig(return_attention=True))


def test_several_samples_per_image_are_seeded_and_grouped(setup):
    dec, vocab, feats = setup
    config = GenerationConfig(method="sample", n_best=5, seed=4, max_length=8)
    a, b = generate(dec, feats, vocab, config), generate(dec, feats, vocab, config)
    assert [len(h) for h in a] == [5] * 4
    assert [[x.tokens for x in h] for h in a] == [[x.tokens for x in h] for h in b]
    one_by_one = generate(dec, feats.repeat_interleave(5, dim=0), vocab,
                          GenerationConfig(method="sample", seed=4, max_length=8))
    assert [x.tokens for h in a for x in h] == [h[0].tokens for h in one_by_one]  # the same rows in the same order


def test_doubly_stochastic_penalty():
    weights = torch.zeros(2, 3, 4)
    weights[:, :, 0] = 1.0  # everything on location 0 at each of 3 steps
    assert float(doubly_stochastic_penalty(weights)) == pytest.approx((1 - 3) ** 2 + 3 * 1.0)
    uniform = torch.full((1, 4, 4), 0.25)  # 4 steps spread evenly over 4 locations: every location seen once
    assert float(doubly_stochastic_penalty(uniform)) == pytest.approx(0.0)


def test_attention_model_round_trip_and_old_configs_load_as_before(tmp_path, vocab):
    torch.manual_seed(0)
    model = Captioner(attention_config(len(vocab)), vocab)
    model.save_pretrained(tmp_path / "att")
    again = Captioner.from_pretrained(tmp_path / "att")
    assert again.config == model.config and isinstance(again.decoder, AttentionDecoder)
    feats = torch.randn(2, L, C)
    assert [h[0].tokens for h in again.caption_features(feats)] == [h[0].tokens for h in model.caption_features(feats)]
    # A directory written before attention existed has none of the new keys: it loads as the pooled decoder.
    plain = Captioner(tiny_config(len(vocab)), vocab)
    plain.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    for key in ("feature_locations", "attention_dim", "attention_gate", "attention_init", "num_decoders"):
        del config[key]
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    old = Captioner.from_pretrained(tmp_path / "old")
    assert old.config == plain.config and type(old.decoder) is type(build_decoder(plain.config))
    vec = torch.randn(3, plain.config.encoder_dim)
    assert [h[0].log_prob for h in old.caption_features(vec)] == [h[0].log_prob for h in plain.caption_features(vec)]


def test_bad_attention_configs():
    with pytest.raises(ValueError, match="attention_init"):
        attention_config(10, attention_init="random")
    with pytest.raises(ValueError, match="pooling"):
        attention_config(10, pooling="avgmax")
    with pytest.raises(ValueError, match="feature_locations"):
        attention_config(10, feature_locations=0).feature_shape()


def test_a_spatial_encoder_gives_the_map_row_by_row_and_its_mean_is_the_pooled_vector():
    from captioner.models import encoders

    torch.manual_seed(0)
    pooled = encoders.build_encoder("efficientnet_lite0", pretrained=False)
    spatial = encoders.build_encoder("efficientnet_lite0", pretrained=False, spatial=True)
    spatial.load_state_dict(pooled.state_dict())
    images = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        fmap, maps = pooled.trunk(images), spatial(images)  # (2, 1280, 3, 2), (2, 6, 1280)
        assert maps.shape == (2, 6, 1280) and spatial.out_dim == 1280
        assert torch.equal(maps[:, 1], fmap[:, :, 0, 1]) and torch.equal(maps[:, 2], fmap[:, :, 1, 0])
        assert torch.allclose(maps.mean(dim=1), pooled(images), atol=1e-6)
    assert encoders.feature_locations("efficientnet_lite0") == 49  # 224 px / 32, TF "same" padding
    assert encoders.feature_locations("efficientnet_lite2") == 81  # 260 px: ceil(260 / 32) = 9


def test_feature_maps_are_cached_as_float16_under_their_own_key(tmp_path, vocab):
    from PIL import Image

    from captioner.features import encoder_cache_key, image_features

    for i, colour in enumerate([(200, 20, 20), (20, 200, 20), (20, 20, 200)]):
        Image.new("RGB", (80, 60), colour).save(tmp_path / f"{i}.png")
    paths = sorted(tmp_path.glob("*.png"))
    torch.manual_seed(0)
    pooled = Captioner(tiny_config(len(vocab)), vocab)
    maps = Captioner(tiny_config(len(vocab), inject="attention", feature_locations=49), vocab)
    assert encoder_cache_key(maps) != encoder_cache_key(pooled) and "map=float16" in encoder_cache_key(maps)
    vectors, _ = image_features(pooled, paths, cache_dir=tmp_path / "cache", progress=False)
    grids, _ = image_features(maps, paths, cache_dir=tmp_path / "cache", progress=False)
    assert vectors.shape == (3, 1280) and vectors.dtype == torch.float32
    assert grids.shape == (3, 49, 1280) and grids.dtype == torch.float16
    assert torch.allclose(grids.float().mean(dim=1), vectors, atol=2e-3)  # the same encoder, unpooled
    files = sorted(p.name for d in (tmp_path / "cache").iterdir() for p in d.iterdir() if p.name.startswith("features"))
    assert files == ["features.f16", "features.f32"]
    again, _ = image_features(maps, paths, cache_dir=tmp_path / "cache", progress=False)  # read back from the cache
    assert torch.equal(again, grids)
