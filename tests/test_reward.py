"""CIDEr-D with fixed document frequencies (the self-critical reward): parity with coco-caption, independence
from the batch a caption is scored in, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from test_metrics import load_val_references, prediction_sets

from captioner.metrics import cider, coco_tokenize
from captioner.metrics.reward import CiderD


@pytest.fixture(scope="module")
def refs() -> list[list[str]]:
    try:
        return load_val_references(200)
    except FileNotFoundError as err:
        pytest.skip(f"Flickr8k val data not available: {err}")


def _tokens(texts):
    return [coco_tokenize(t) for t in texts]


@pytest.mark.parametrize("name", ["perfect (1st reference)", "shuffled (next image's 2nd ref.)", 'one word ("a")',
                                  "random words (3-12)"])
def test_scored_on_its_own_corpus_it_equals_coco_caption_cider(refs, name):
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.cider.cider import Cider

    predictions = prediction_sets(refs)[name]
    scorer = CiderD([_tokens(r) for r in refs])
    ours = scorer.score(list(range(len(refs))), _tokens(predictions))
    gts = {i: [" ".join(coco_tokenize(x)) for x in r] for i, r in enumerate(refs)}
    res = {i: [" ".join(coco_tokenize(p))] for i, p in enumerate(predictions)}
    theirs_mean, theirs = Cider().compute_score(gts, res)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
    assert ours.mean() == pytest.approx(theirs_mean, abs=1e-9)
    assert ours.mean() == pytest.approx(cider(dict(enumerate(predictions)), dict(enumerate(refs))), abs=1e-9)


def test_a_caption_scores_the_same_whatever_it_is_scored_with(refs):
    scorer = CiderD([_tokens(r) for r in refs])
    caption = coco_tokenize("a dog runs through the grass")
    alone = scorer.score([5], [caption])[0]
    batch = scorer.score([0, 5, 9, 5], [coco_tokenize("a man"), caption, caption, caption])
    assert batch[1] == batch[3] == alone and batch[2] != alone  # image 9's references differ from image 5's
    assert scorer.score([5], [_tokens(refs[5])[0]])[0] > alone > scorer.score([5], [["zebra"]])[0] == 0.0


def test_bad_input_says_what_is_wrong():
    with pytest.raises(ValueError, match="at least one image"):
        CiderD([])
    with pytest.raises(ValueError, match="image 1 has no reference"):
        CiderD([[["a", "dog"]], []])
    with pytest.raises(ValueError, match="sigma"):
        CiderD([[["a"]]], sigma=0)
    with pytest.raises(ValueError, match="one each"):
        CiderD([[["a"]]]).score([0, 0], [["a"]])
