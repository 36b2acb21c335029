import dataclasses
import json
import re

import pytest
import torch
from conftest import SAMPLES, tiny_config

from captioner.cli import main
from captioner.generation import GenerationConfig, generate
from captioner.generation.constrained import constrained_search
from captioner.generation.tags import names_tag, tag_table
from captioner.models.encoders import imagenet_categories
from captioner.models.factory import complete_config
from captioner.pipeline import Captioner


def _model(vocab, seed=0, **overrides):
    torch.manual_seed(seed)
    return Captioner(complete_config(tiny_config(len(vocab), **overrides), len(vocab)), vocab).eval()


def test_every_imagenet_class_maps_to_a_caption_phrase_or_is_dropped_with_a_reason():
    from captioner.generation.tags import article

    table = tag_table()
    assert [e["category"] for e in table] == imagenet_categories() and len(table) == 1000
    for entry in table:
        assert entry["group"] in {"animal", "vehicle", "food", "plant", "place", "person", "object"}
        if not entry["word"]:  # dropped: a part, a texture, an abstraction or a misfire, and the reason says so
            assert entry["rule"].startswith("dropped: ") and len(entry["rule"]) > 12 and not entry["phrase"]
            continue
        assert re.fullmatch(r"[a-z]+( [a-z]+)?", entry["word"]), entry
        assert entry["word"] in entry["phrase"] or entry["phrase"].startswith(("a ", "an ")), entry
        if entry["kind"] == "count":  # the article a sentence gives the phrase's first noun
            first, noun = entry["phrase"].split()[:2]
            assert first == article(noun), entry
        else:
            assert entry["kind"] in ("mass", "plural") and entry["phrase"] == entry["word"], entry
    words = {e["category"]: e for e in table}
    assert words["tabby"]["phrase"] == words["Egyptian cat"]["phrase"] == "a cat"
    assert words["golden retriever"]["word"] == "dog" and words["orange"]["phrase"] == "an orange"
    assert words["espresso"]["phrase"] == "a cup of coffee" and words["broccoli"]["phrase"] == "broccoli"
    assert words["space shuttle"]["word"] == "rocket" and words["moped"]["phrase"] == "a motorcycle"
    assert not words["disk brake"]["word"] and not words["honeycomb"]["word"] and not words["web site"]["word"]


def test_ungrammatical_slots_are_caught_on_a_small_fixture():
    from captioner.generation.tags import ungrammatical_slots

    bad = {"a man is sitting on a coffee": ["a coffee"], "a white dog jumps over a envelope": ["a envelope"],
           "a man is riding on a brake": ["on a brake"], "a man is sitting on a broccoli": ["a broccoli"],
           "an dog runs": ["an dog"], "a jeans on a chair": ["a jeans"]}
    good = ["a man holds a cup of coffee", "an envelope on a table", "a dog eats broccoli", "a man in an orange shirt",
            "a boy on a unicycle", "an hour", "a man is riding a motorcycle"]
    for caption, found in bad.items():
        assert ungrammatical_slots(caption) == found, caption
    assert all(ungrammatical_slots(c) == [] for c in good)


@pytest.mark.parametrize("inject", ["every_step", "attention"])
@pytest.mark.parametrize("beam, penalty, n_best", [(1, 0.0, 1), (3, 0.0, 1), (4, 0.0, 3), (3, 0.7, 2)])
def test_without_constraints_it_is_plain_beam_search(vocab, inject, beam, penalty, n_best):
    """The same captions as PyTorch's beam search (the constrained search's log-softmax is numpy's: the scores agree
    to rounding; tests/test_onnx_export.py checks it equals numpy's beam search exactly)."""
    for seed in range(3):
        model = _model(vocab, seed, inject=inject, attention_dim=8)
        features = torch.randn(2, *model.config.feature_shape())
        config = GenerationConfig(method="beam", beam_size=beam, max_length=9, length_penalty=penalty,
                                  n_best=n_best, no_repeat_ngram=2)
        plain = generate(model.decoder, features, vocab, config)  # the whole batch, as guided decoding runs it
        guided = constrained_search(model.decoder, features, vocab, config, [[], []])
        for p, g in zip(plain, guided):
            assert [(h.tokens, h.finished) for h in g] == [(h.tokens, h.finished) for h in p]
            assert [h.log_prob for h in g] == pytest.approx([h.log_prob for h in p], abs=1e-5)


def _contains(tokens, phrase):
    return any(tokens[i : i + len(phrase)] == phrase for i in range(len(tokens) - len(phrase) + 1))


@pytest.mark.parametrize("inject", ["every_step", "init_only", "attention"])
def test_constrained_beams_contain_their_constraints_when_they_fit(vocab, inject):
    words = [w for w in vocab.itos[4:]]
    for seed in range(6):
        model = _model(vocab, seed, inject=inject, attention_dim=8)
        generator = torch.Generator().manual_seed(seed)
        picks = torch.randperm(len(words), generator=generator)[:3].tolist()
        constraints = [[vocab.stoi[words[picks[0]]]], [vocab.stoi[words[picks[1]]], vocab.stoi[words[picks[2]]]]]
        config = GenerationConfig(beam_size=3, max_length=8, no_repeat_ngram=0, n_best=2)
        hyps = constrained_search(model.decoder, torch.randn(1, *model.config.feature_shape()), vocab, config,
                                  [constraints])[0]
        for hyp in hyps:
            assert all(_contains(hyp.tokens, c) for c in constraints), (hyp.tokens, constraints)


@pytest.mark.parametrize("inject", ["every_step", "attention"])
def test_a_batched_constrained_search_gives_what_one_image_at_a_time_gives(vocab, inject):
    """Images with different numbers and lengths of constraints (and none) searched together, and alone."""
    words = [vocab.stoi[w] for w in vocab.itos[4:]]
    for seed in range(3):
        model = _model(vocab, seed, inject=inject, attention_dim=8)
        generator = torch.Generator().manual_seed(seed)
        pick = [words[i] for i in torch.randperm(len(words), generator=generator)[:6].tolist()]
        constraints = [[], [[pick[0]]], [[pick[1]], [pick[2], pick[3]]], [[pick[4], pick[5]]], [[pick[0]], [pick[1]]],
                       []]
        features = torch.randn(len(constraints), *model.config.feature_shape(), generator=generator)
        config = GenerationConfig(beam_size=3, max_length=9, no_repeat_ngram=2, n_best=2)
        together = constrained_search(model.decoder, features, vocab, config, constraints)
        for i, image in enumerate(constraints):
            alone = constrained_search(model.decoder, features[i : i + 1], vocab, config, [image])[0]
            assert [h.tokens for h in together[i]] == [h.tokens for h in alone], (seed, i)
            assert [h.log_prob for h in together[i]] == pytest.approx([h.log_prob for h in alone], abs=1e-4)



@pytest.mark.parametrize("inject", ["every_step", "attention"])
def test_rows_that_cannot_matter_are_not_decoded_and_captions_stay_the_same(vocab, inject, monkeypatch):
    """The search runs the decoder on live rows only (finished rows and -inf rows are skipped): same captions and
    scores as decoding every row, and fewer rows decoded."""
    from captioner.generation import constrained

    words = [vocab.stoi[w] for w in vocab.itos[4:]]
    model = _model(vocab, 1, inject=inject, attention_dim=8)
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(4, *model.config.feature_shape(), generator=generator)
    constraints = [[], [[words[0]]], [[words[1]], [words[2], words[3]]], [[words[4]], [words[5]]]]
    config = GenerationConfig(beam_size=3, max_length=9, no_repeat_ngram=2, n_best=2)
    rows = []
    step = model.decoder.step
    monkeypatch.setattr(model.decoder, "step", lambda tokens, *a: rows.append(len(tokens)) or step(tokens, *a))
    skipping = constrained_search(model.decoder, features, vocab, config, constraints)
    skipped = sum(rows)

    def every_row(self, plain):
        logits, self.state, _ = self.decoder.step(self.tokens, self._context(None), self.state)
        return None, logits

    monkeypatch.setattr(constrained._Batch, "_decode", every_row)
    rows.clear()
    full = constrained_search(model.decoder, features, vocab, config, constraints)
    assert skipped < sum(rows)
    for a, b in zip(skipping, full):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.log_prob for h in a] == pytest.approx([h.log_prob for h in b], abs=1e-5)

def test_a_constraint_can_forbid_the_tokens_before_it(vocab):
    """A tag phrase with its own article ('a cat') never follows an article the decoder wrote itself."""
    from captioner.generation.constrained import Constraint

    a, cat = vocab.stoi["a"], vocab.stoi["cat"] if "cat" in vocab.stoi else vocab.stoi[vocab.itos[-1]]
    for seed in range(6):
        model = _model(vocab, seed)
        features = torch.randn(1, *model.config.feature_shape())
        config = GenerationConfig(beam_size=3, max_length=10, no_repeat_ngram=0, n_best=3)
        hyps = constrained_search(model.decoder, features, vocab, config,
                                  [[Constraint((a, cat), forbid_before=(a,))]])[0]
        for hyp in hyps:
            starts = [i for i in range(len(hyp.tokens) - 1) if hyp.tokens[i : i + 2] == [a, cat]]
            assert starts and all(i == 0 or hyp.tokens[i - 1] != a for i in starts), hyp.tokens


def test_guided_captions_name_given_tags_even_unknown_words_and_leave_plain_decoding_alone(vocab):
    model = _model(vocab)
    features = torch.randn(3, *model.config.feature_shape())
    plain = GenerationConfig(beam_size=3, max_length=10)
    before = [[h.tokens for h in hyps] for hyps in model.caption_features(features, plain)]
    size = len(model.vocab)
    guided = model.caption_features(features, dataclasses.replace(plain, tags=("zebra", "square")))
    for hyps in guided:
        words = model.vocab.decode(hyps[0].tokens).split()
        assert "zebra" in words and "square" in words
    assert len(model.vocab) == size and model.config.vocab_size == size  # nothing the model saves has changed
    assert [[h.tokens for h in hyps] for hyps in model.caption_features(features, plain)] == before


def test_guided_decoding_works_with_ensembles_of_attention_decoders(vocab):
    model = _model(vocab, inject="attention", attention_dim=8, num_decoders=2)
    features = torch.randn(2, *model.config.feature_shape())
    hyps = model.caption_features(features, GenerationConfig(max_length=10, tags=("zebra",)))
    assert all("zebra" in model.vocab.decode(h[0].tokens).split() for h in hyps)


def test_tags_come_from_the_encoders_imagenet_head(tiny_model, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "m")
    assert main(["caption", str(SAMPLES / "chelsea.jpg"), "--model", str(tmp_path / "m"), "--tags", "--json",
                 "--tag-threshold", "0.05", "--guided"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["tags"] and row["tags"][0]["word"] == "cat" and row["tags"][0]["prob"] >= 0.05
    assert all(t["word"] in row["caption"].split() for t in row["tags"])


def test_plain_captions_list_the_classifiers_tags_only_when_asked(tiny_model, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "m")
    args = ["caption", str(SAMPLES / "chelsea.jpg"), "--model", str(tmp_path / "m"), "--json", "--plain",
            "--tag-threshold", "0.05"]
    assert main(args + ["--tags"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["tags"] and row["tags"][0]["word"] == "cat"
    assert main(args) == 0
    assert not json.loads(capsys.readouterr().out).get("tags")


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1", "nan", "high"])
def test_a_bad_tag_threshold_is_one_clear_error(value, capsys):
    assert main(["caption", str(SAMPLES / "chelsea.jpg"), "--guided", "--tag-threshold", value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: argument --tag-threshold: expected a probability in (0, 1]")
    assert len(err.splitlines()) == 1
    with pytest.raises(ValueError, match="tag_threshold"):
        GenerationConfig(guided=True, tag_threshold=0.0)


def test_a_models_tag_calibration_leaves_out_unreliable_words_and_is_saved_with_it(tiny_model, tmp_path):
    from captioner.generation import GenerationConfig
    from captioner.generation.tags import suppressed_words
    from captioner.images import load_image

    calibration = {"min_precision": 0.3, "min_count": 10,
                   "words": {"cat": [1, 40], "dog": [30, 40], "rare": [0, 3]}}
    assert suppressed_words(calibration) == {"cat"}  # 'rare' was tagged too seldom to judge
    features = tiny_model.encode(tiny_model.transform(load_image(SAMPLES / "chelsea.jpg")).unsqueeze(0))
    assert [t.word for t in tiny_model.image_tags(features, GenerationConfig(tag_threshold=0.05))[0]][:1] == ["cat"]
    tiny_model.tag_calibration = calibration
    assert "cat" not in [t.word for t in tiny_model.image_tags(features, GenerationConfig(tag_threshold=0.05))[0]]
    tiny_model.save_pretrained(tmp_path / "m")
    assert Captioner.from_pretrained(tmp_path / "m").tag_calibration == calibration
    (tmp_path / "m" / "tag_calibration.json").write_text("{broken")
    assert Captioner.from_pretrained(tmp_path / "m").tag_calibration is None  # ignored with a warning


def test_a_known_word_goes_bare_but_a_phrase_that_says_more_stays_whole():
    from captioner.generation.tags import tag_constraint
    from captioner.generation.tags import Tag
    from captioner.vocab import Vocabulary

    vocab = Vocabulary("a man is drinking a cup of coffee with a dog and an elephant".split())
    ids = lambda text: tuple(vocab.stoi[w] for w in text.split())  # noqa: E731
    coffee = tag_constraint(vocab, Tag("coffee", 0.9, phrase="a cup of coffee", kind="count"))
    assert coffee.tokens == ids("a cup of coffee")  # was "coffee" alone: "sitting on a coffee"
    dog = tag_constraint(vocab, Tag("dog", 0.9, phrase="a dog", kind="count"))
    assert dog.tokens == ids("dog") and dog.forbid_before == ids("an")
    elephant = tag_constraint(vocab, Tag("elephant", 0.9, phrase="an elephant", kind="count"))
    assert elephant.tokens == ids("elephant") and elephant.forbid_before == ids("a")


@pytest.mark.parametrize("inject", ["every_step", "attention"])
def test_as_a_fallback_guiding_keeps_plain_captions_that_name_their_tags_and_constrains_the_others(vocab, inject):
    from captioner.generation.guided import guided_search
    from captioner.generation.tags import Tag

    for seed in range(3):
        model = _model(vocab, seed, inject=inject, attention_dim=8)
        features = torch.randn(6, *model.config.feature_shape(), generator=torch.Generator().manual_seed(seed))
        config = GenerationConfig(beam_size=3, max_length=9, no_repeat_ngram=2, n_best=2, guided=True)
        plain = generate(model.decoder, features, vocab, dataclasses.replace(config, guided=False))
        tags = []
        for i, hyps in enumerate(plain):
            words = vocab.decode(hyps[0].tokens).split()
            missing = [w for w in vocab.itos[4:] if w not in words]
            said, unsaid = [Tag(words[0], 1.0)] if words else [], [Tag(missing[0], 1.0)]
            # a tag it names, one it misses, or both (searched again: every tag must be named)
            tags.append([said or unsaid, unsaid, said + unsaid][i % 3])
        fallback = guided_search(model.decoder, features, vocab, dataclasses.replace(config, guided_fallback=True),
                                 tags)
        always = guided_search(model.decoder, features, vocab, dataclasses.replace(config, guided_fallback=False),
                               tags)
        for i, hyps in enumerate(fallback):
            named = all(names_tag(tag, vocab.decode(plain[i][0].tokens).split()) for tag in tags[i])
            want = plain[i] if named else always[i]
            assert [h.tokens for h in hyps] == [h.tokens for h in want], (seed, i)
            if named:  # the plain search's own hypotheses
                assert [h.log_prob for h in hyps] == [h.log_prob for h in want]
            else:  # searched again in a smaller batch than `always`: the same sums up to float rounding
                assert [h.log_prob for h in hyps] == pytest.approx([h.log_prob for h in want], abs=1e-4)
            assert [h.tags for h in hyps] == [tags[i]] * len(hyps)
            assert all(tag.word in vocab.decode(hyps[0].tokens).split() for tag in tags[i])


def test_a_tag_is_named_by_its_word_plural_or_synonym_and_a_given_phrase_only_by_its_words_in_a_row():
    from captioner.generation.tags import Tag, tag_words

    dog = Tag("dog", 0.5, *(tag_words()["dog"][k] for k in ("phrase", "kind")))
    assert names_tag(dog, "two dogs play in a field".split())
    assert names_tag(dog, "a puppy runs".split())
    assert not names_tag(dog, "a cat sits on a dogged bench".split())
    given = Tag("red car", 1.0)
    assert names_tag(given, "a red car is parked".split())
    assert not names_tag(given, "a car is red".split())


def test_models_without_the_setting_guide_every_tagged_image_and_the_cli_can_ask_for_it(vocab, capsys):
    from captioner.config import ModelConfig
    from captioner.generation.config import with_model_defaults

    assert ModelConfig().guided_fallback is False
    model = _model(vocab)
    assert with_model_defaults(GenerationConfig(), model.decoder).guided_fallback is False
    model.config = dataclasses.replace(model.config, guided_fallback=True)
    assert with_model_defaults(GenerationConfig(), model.decoder).guided_fallback is True
    assert with_model_defaults(GenerationConfig(guided_fallback=False), model.decoder).guided_fallback is False
    with pytest.raises(ValueError, match="guided_fallback"):
        GenerationConfig(guided_fallback="yes")
    assert main(["caption", "--help"]) == 0
    assert "--guide-always" in capsys.readouterr().out
