import json

import pytest

from captioner.vocab import SPECIAL_TOKENS, Vocabulary, tokenize


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A dog's ball, 2 cats!") == ["a", "dog's", "ball", "2", "cats"]
    assert tokenize("  Two   dogs -- running .") == ["two", "dogs", "running"]
    assert tokenize("") == []
    assert tokenize("under_score") == ["under", "score"]


def test_build_keeps_words_above_min_count_in_stable_order():
    vocab = Vocabulary.build(["a dog runs", "a dog sits", "a cat"], min_count=2)
    assert vocab.itos == [*SPECIAL_TOKENS, "a", "dog"]
    assert vocab.counts == {"a": 3, "dog": 2}
    with pytest.raises(ValueError):
        Vocabulary.build([], min_count=0)


def test_encode_decode_round_trip_and_unknown_words():
    vocab = Vocabulary(["a", "dog", "runs"])
    ids = vocab.encode("A dog flies.")
    assert ids == [vocab.start_id, 4, 5, vocab.unk_id, vocab.end_id]
    assert vocab.decode(ids) == "a dog <unk>"
    assert vocab.decode([4, 5, vocab.end_id, 6]) == "a dog"  # stops at <end>
    assert vocab.encode("a dog runs", max_len=2) == [1, 4, 5, 2]


def test_save_load_round_trip(tmp_path):
    vocab = Vocabulary.build(["a dog", "a dog", "the cat"], min_count=1)
    vocab.save(tmp_path / "vocab.json")
    again = Vocabulary.load(tmp_path / "vocab.json")
    assert again.itos == vocab.itos and again.counts == vocab.counts


def test_load_rejects_foreign_json(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"itos": ["a", "b"]}))
    with pytest.raises(ValueError, match="not a captioner vocabulary"):
        Vocabulary.load(tmp_path / "vocab.json")
