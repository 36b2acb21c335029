"""Tests for captioner.metrics: coco-caption parity (pycocoevalcap), the Java-free tokenizer, edge cases, nltk BLEU.

pycocoevalcap is a test dependency: its ``Bleu``, ``Cider`` and ``Rouge`` scorers are pure Python and are fed text
already tokenized by :func:`coco_tokenize` (tokens joined by spaces), so no Java runs. The tokenizer itself is
checked against expected outputs (hard-coded below) and against the lexer tables of the CoreNLP 3.4.1 jar that
pycocoevalcap ships, read as data (see ``JavaPTBLexer``).

``python tests/test_metrics.py [N]`` prints the comparison table of docs/metrics.md for the first N Flickr8k val
images (default: all 1000).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import struct
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from captioner.metrics import (
    PUNCTUATIONS,
    bleu,
    caption_stats,
    cider,
    coco,
    coco_tokenize,
    corpus_bleu,
    nltk_bleu,
    rouge_l,
    score_captions,
    tokenizer,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FLICKR = DATA / "flickr8k"
N_PARITY = 300  # first val images used by the parity tests (pycocoevalcap needs ~0.5 s per 300 images and set)
METRIC_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "cider", "rouge_l")


# ---------------------------------------------------------------------------------------------------------------
# Data and prediction sets
# ---------------------------------------------------------------------------------------------------------------


def load_val_references(limit: int | None = None) -> list[list[str]]:
    """Reference captions of the first ``limit`` Flickr8k val images (split order), from ../shared/data.

    Raises:
        FileNotFoundError: if ``captions.txt`` or ``splits/val.txt`` is missing.
    """
    captions, split = FLICKR / "captions.txt", FLICKR / "splits" / "val.txt"
    for path in (captions, split):
        if not path.is_file():
            raise FileNotFoundError(f"Flickr8k file {path} not found (expected ../shared/data beside the repo)")
    by_image: dict[str, list[str]] = {}
    with captions.open(encoding="utf-8") as handle:
        next(handle)  # header: image<TAB>caption
        for line in handle:
            image, caption = line.rstrip("\n").split("\t", 1)
            by_image.setdefault(image, []).append(caption)
    images = split.read_text(encoding="utf-8").split()[:limit]
    return [by_image[image] for image in images]


def prediction_sets(references: list[list[str]]) -> dict[str, list[str]]:
    """Synthetic predictions for the references: a perfect, a wrong, a degenerate and a random set."""
    rng = random.Random(0)
    words = sorted({token for refs in references for ref in refs for token in coco_tokenize(ref)})
    count = len(references)
    return {
        "perfect (1st reference)": [refs[0] for refs in references],
        "shuffled (next image's 2nd ref.)": [references[(i + 1) % count][1] for i in range(count)],
        'one word ("a")': ["a"] * count,
        "one caption for all images": ["A dog runs through the grass ."] * count,
        "random words (3-12)": [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(count)],
    }


def pycocoevalcap_scores(predictions: list[str], references: list[list[str]]) -> tuple[dict, np.ndarray, np.ndarray]:
    """pycocoevalcap's corpus scores (and per-image CIDEr-D and ROUGE-L) on coco_tokenize tokens joined by spaces."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: [" ".join(coco_tokenize(ref)) for ref in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(coco_tokenize(pred))] for i, pred in enumerate(predictions)}
    bleus, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider_score, cider_per_image = Cider().compute_score(gts, res)
    rouge_score, rouge_per_image = Rouge().compute_score(gts, res)
    scores = {f"bleu{k + 1}": float(b) for k, b in enumerate(bleus)}
    scores.update(cider=float(cider_score), rouge_l=float(rouge_score))
    return scores, np.asarray(cider_per_image), np.asarray(rouge_per_image)


@pytest.fixture(scope="module")
def val_refs() -> list[list[str]]:
    """References of the first N_PARITY Flickr8k val images (skips when the shared data is absent)."""
    try:
        return load_val_references(N_PARITY)
    except FileNotFoundError as err:
        pytest.skip(f"Flickr8k val data not available: {err}")


@pytest.fixture(scope="module")
def val_sets(val_refs) -> dict[str, list[str]]:
    """The synthetic prediction sets for :func:`val_refs`."""
    return prediction_sets(val_refs)


# ---------------------------------------------------------------------------------------------------------------
# Parity with pycocoevalcap
# ---------------------------------------------------------------------------------------------------------------

SET_NAMES = list(prediction_sets([["a b c", "d e f"], ["g h", "i j"]]))


@pytest.mark.parametrize("name", SET_NAMES)
def test_scores_match_pycocoevalcap_on_flickr8k_val(val_refs, val_sets, name):
    pytest.importorskip("pycocoevalcap")
    predictions = val_sets[name]
    ours = score_captions(predictions, val_refs)
    theirs, cider_per_image, rouge_per_image = pycocoevalcap_scores(predictions, val_refs)
    assert set(ours) == set(METRIC_KEYS)
    for key in METRIC_KEYS:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6, rel=0), key
    hyps, refs = coco.prepare_tokens(dict(enumerate(predictions)), dict(enumerate(val_refs)))
    np.testing.assert_allclose(coco.cider_from_tokens(hyps, refs), cider_per_image, rtol=0, atol=1e-6)
    np.testing.assert_allclose(coco.rouge_from_tokens(hyps, refs), rouge_per_image, rtol=0, atol=1e-6)


def test_dict_api_agrees_with_score_captions(val_refs, val_sets):
    predictions = val_sets["shuffled (next image's 2nd ref.)"][:50]
    references = val_refs[:50]
    ids = [f"img{i}" for i in range(50)]
    preds, refs = dict(zip(ids, predictions)), dict(zip(ids, references))
    combined = score_captions(predictions, references)
    assert bleu(preds, refs) == pytest.approx({k: combined[k] for k in ("bleu1", "bleu2", "bleu3", "bleu4")})
    assert cider(preds, refs) == pytest.approx(combined["cider"])
    assert rouge_l(preds, refs) == pytest.approx(combined["rouge_l"])
    assert list(bleu(preds, refs, n=2)) == ["bleu1", "bleu2"]


TOY_REFS = [
    ["a man rides a red bike down the street", "a person on a bicycle", "someone cycling on a road ."],
    ["two dogs play in the snow", "dogs playing outside in the snow"],
    ["a child eats an ice cream cone", "a little girl with ice cream", "a kid eating dessert"],
    ["a dog", "a brown dog runs on the grass"],
]


@pytest.mark.parametrize(
    "predictions",
    [
        pytest.param(["", "two dogs play in snow", "", "a dog"], id="empty-prediction-strings"),
        pytest.param(["", "", "", ""], id="all-empty"),
        pytest.param(["a man rides a bike", "dogs dogs dogs dogs", "ice cream", "a brown dog runs fast on grass"],
                     id="repeated-words"),
    ],
)
def test_edge_cases_match_pycocoevalcap(predictions):
    pytest.importorskip("pycocoevalcap")
    ours = score_captions(predictions, TOY_REFS)
    theirs, _, _ = pycocoevalcap_scores(predictions, TOY_REFS)
    for key in METRIC_KEYS:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6, rel=0), key


def test_single_reference_per_image_matches_pycocoevalcap():
    pytest.importorskip("pycocoevalcap")
    references = [[refs[0]] for refs in TOY_REFS] + [[""]]
    predictions = ["a man on a red bike", "two dogs in the snow", "a child", "a dog", ""]
    ours = score_captions(predictions, references)
    theirs, _, _ = pycocoevalcap_scores(predictions, references)
    for key in METRIC_KEYS:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6, rel=0), key
    assert coco.rouge_from_tokens([()], [[()]])[0] == 1.0  # "" vs "": one empty token each, as pycocoevalcap


def test_empty_predictions_score_zero():
    scores = score_captions(["", "   ", "..."], [["a dog"], ["a cat", "the cat"], ["birds fly"]])
    assert scores == {key: 0.0 for key in METRIC_KEYS}


def test_single_image_cider_is_zero_and_bleu_uses_coco_constants():
    # One image: every n-gram has IDF log(1/1) = 0, so CIDEr-D is 0 even for a perfect caption.
    assert score_captions(["a dog runs"], [["a dog runs"]])["cider"] == 0.0
    # No matching 4-gram: coco-caption's constants give a tiny positive BLEU-4 (nltk would give ~1e-77).
    scores = score_captions(["a dog runs on grass"], [["a dog runs in the grass"]])
    assert 0 < scores["bleu4"] < 1e-3 and scores["bleu3"] > 0.3
    expected_bleu4 = (4 / 5 * 2 / 4 * 1 / 3 * 1e-15 / 2) ** 0.25 * math.exp(1 - 6 / 5)
    assert scores["bleu4"] == pytest.approx(expected_bleu4, rel=1e-6)


def test_lcs_length_matches_dynamic_programming():
    from pycocoevalcap.rouge.rouge import my_lcs

    rng = random.Random(1)
    for _ in range(300):
        a = tuple(rng.choice("abcde") for _ in range(rng.randint(0, 25)))
        b = tuple(rng.choice("abcde") for _ in range(rng.randint(0, 25)))
        assert coco._lcs_length(a, b) == my_lcs(list(a), list(b)), (a, b)


# ---------------------------------------------------------------------------------------------------------------
# Input errors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: score_captions(["a dog"], [[]]), ValueError, "has no reference captions"),
        (lambda: score_captions(["a dog", "a cat"], [["a dog"]]), ValueError, "2 predictions but 1 reference sets"),
        (lambda: score_captions([], []), ValueError, "nothing to score"),
        (lambda: score_captions([None], [["a dog"]]), TypeError, "use '' for an empty caption"),
        (lambda: score_captions(["a dog"], ["a dog"]), TypeError, "wrap it in a list"),
        (lambda: score_captions(["a dog"], [["a dog", 3]]), TypeError, "must be strings"),
        (lambda: bleu({"x": "a dog"}, {"y": ["a dog"]}), ValueError, "same image ids"),
        (lambda: cider({}, {}), ValueError, "nothing to score"),
        (lambda: bleu({"x": "a dog"}, {"x": ["a dog"]}, n=0), ValueError, "n must be at least 1"),
        (lambda: coco_tokenize(["a", "dog"]), TypeError, "expects a caption string"),
        (lambda: caption_stats([]), ValueError, "at least one caption"),
        (lambda: caption_stats("a dog"), TypeError, "not a single string"),
    ],
)
def test_errors_say_what_to_do(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------

# Expected outputs are those of CoreNLP 3.4.1 PTBTokenizer -preserveLines -lowerCase + coco-caption's filter.
TOKENIZER_CASES = [
    ("A man's dog, isn't it?", "a man 's dog is n't it"),
    ("I can't believe they're gonna win!", "i ca n't believe they 're gon na win"),
    ("We've got two dogs' toys; they'll play.", "we 've got two dogs toys they 'll play"),
    ("She cannot go -- wanna bet?", "she can not go wan na bet"),
    ("A black-and-white dog wearing a t-shirt.", "a black-and-white dog wearing a t-shirt"),
    ("A 10-year-old boy at 12:30 with 3.5 apples and 1,000 balls.",
     "a 10-year-old boy at 12:30 with 3.5 apples and 1,000 balls"),
    ("Rock 'n' roll at five o'clock, ma'am.", "rock 'n' roll at five o'clock ma'am"),
    ('He said "hello" to the crowd.', "he said hello to the crowd"),
    ("A \u2018curly\u2019 \u201cquoted\u201d dog\u2019s ball\u2026", "a curly quoted dog 's ball"),
    ("Two dogs (one brown) [maybe] {really}.",
     "two dogs -lrb- one brown -rrb- -lsb- maybe -rsb- -lcb- really -rcb-"),
    ("Wow!! Really?! No...", "wow !! really ?! no"),
    ("Mr. Smith lives on Main St. near the U.S. border, etc.",
     "mr. smith lives on main st. near the u.s. border etc."),
    ('The letter " P. " and vitamin C. The end.', "the letter p. and vitamin c the end"),
    ("AT&T and at&t cost $5 or \u00a33, \u00bd price & 50% off #1.",
     "at&t and at & t cost $ 5 or # 3 1/2 price & 50 % off # 1"),
    ("A dog -- running - fast --- and ----- more.", "a dog running fast and ----- more"),
    ("", ""),
    ("   ", ""),
    ("...", ""),
    ("DON'T SHOUT, SHE'S HERE", "do n't shout she 's here"),
    ("'Tis the season; 'twas fun.", "'t is the season 't was fun"),
    ("Y'all come back, y' hear?", "y' all come back y hear"),
    ("C++ and C# on an 'ATV'", "c++ and c# on an atv"),
    ("A caf\u00e9 with na\u00efve d\u00e9cor.", "a caf\u00e9 with na\u00efve d\u00e9cor"),
    ("tab\tseparated\nnew line", "tab separated new line"),
    ("a/b and x/y/z/w", "a/b and x/y/z / w"),
    ("Jones' dog and the dogs' bowls", "jones dog and the dogs bowls"),
    ("The Smiths' car ;)", "the smiths car ;-rrb-"),
    ("e.g. a.m. p.m.", "e.g. a.m. p.m."),
    ("soft\u00adhyphen and non\u00a0breaking space", "softhyphen and non breaking space"),
    ("emoji \U0001f600 and \u2122 \u00a9 \u00b0 symbols", "emoji and \u2122 \u00a9 \u00b0 symbols"),
]


@pytest.mark.parametrize(("text", "expected"), TOKENIZER_CASES, ids=[repr(t)[:40] for t, _ in TOKENIZER_CASES])
def test_coco_tokenize_tricky_strings(text, expected):
    assert coco_tokenize(text) == expected.split()


def test_coco_tokenize_keeps_flickr8k_pretokenized_text_stable(val_refs):
    """Flickr8k captions are already space-separated; re-tokenizing our output must not change it."""
    for refs in val_refs[:100]:
        for ref in refs:
            tokens = coco_tokenize(ref)
            assert coco_tokenize(" ".join(tokens)) == tokens
            assert not PUNCTUATIONS & set(tokens)


# ---------------------------------------------------------------------------------------------------------------
# Cross-check of the tokenizer against the CoreNLP 3.4.1 lexer shipped in pycocoevalcap (read as data, no Java)
# ---------------------------------------------------------------------------------------------------------------

PTBLEXER = "edu/stanford/nlp/process/PTBLexer.class"
PTBLEXER_SHA256 = "715fdfb3652cc6796f90f28442378a0c71c92b5909f1fc934f698497987b6dd0"
# Constant-pool indices of ZZ_CMAP_PACKED, ZZ_ACTION_PACKED_0, ZZ_ROWMAP_PACKED_0, ZZ_TRANS_PACKED_0..8 and
# ZZ_ATTRIBUTE_PACKED_0 in exactly that class file (the SHA-256 above pins it).
_CMAP, _ACTION, _ROWMAP, _TRANS, _ATTRIBUTE = 243, 1, 5, (8, 10, 11, 12, 13, 14, 15, 16, 17), 18
# Lexer actions (switch cases of PTBLexer.next(), read from its bytecode): general trailing context (forward and
# backward DFA start states), fixed pushback, dropped/newline tokens and output rewrites.
_LOOKAHEAD = {24: (13, 14), 30: (3, 4), 40: (5, 6), 41: (16, 17), 43: (15, 14), 44: (9, 10), 47: (7, 8), 49: (11, 12)}
_PUSHBACK = {25: 1, 26: 1, 32: 1, 34: 1, 36: 1, 46: 1, 48: 2, 51: 1, 53: 4, 42: 2, 50: 3}
_FIXED = {2: "<", 10: ">", 11: "--", 13: "...", 16: "-RCB-", 17: "-LRB-", 18: "-RRB-", 20: "-LCB-", 21: "-RSB-",
          22: "-LSB-"}


def _modified_utf8(raw: bytes) -> list[int]:
    """Decode a Java class-file string constant to UTF-16 code units."""
    units, i = [], 0
    while i < len(raw):
        if raw[i] < 0x80:
            units.append(raw[i])
            i += 1
        elif raw[i] & 0xE0 == 0xC0:
            units.append(((raw[i] & 0x1F) << 6) | (raw[i + 1] & 0x3F))
            i += 2
        else:
            units.append(((raw[i] & 0x0F) << 12) | ((raw[i + 1] & 0x3F) << 6) | (raw[i + 2] & 0x3F))
            i += 3
    return units


def _string_constants(data: bytes) -> dict[int, list[int]]:
    """String constants of a class file, by constant-pool index (only the parts needed here)."""
    count, pos, index = struct.unpack(">H", data[8:10])[0], 10, 1
    utf8, strings = {}, {}
    while index < count:
        tag = data[pos]
        if tag == 1:
            length = struct.unpack(">H", data[pos + 1 : pos + 3])[0]
            utf8[index], pos = data[pos + 3 : pos + 3 + length], pos + 3 + length
        elif tag == 8:
            strings[index], pos = struct.unpack(">H", data[pos + 1 : pos + 3])[0], pos + 3
        else:
            pos += {3: 5, 4: 5, 5: 9, 6: 9, 7: 3, 9: 5, 10: 5, 11: 5, 12: 5, 15: 4, 16: 3, 18: 5}[tag]
        index += 2 if tag in (5, 6) else 1
    return {i: _modified_utf8(utf8[ref]) for i, ref in strings.items()}


def _run_length(packed: list[int], minus: int = 0) -> list[int]:
    """Unpack JFlex's (count, value) run-length encoding."""
    out: list[int] = []
    for k in range(0, len(packed), 2):
        out.extend([packed[k + 1] - minus] * packed[k])
    return out


class JavaPTBLexer:
    """The JFlex DFA of CoreNLP 3.4.1's PTBLexer, driven from Python with its action semantics re-implemented.

    Default options plus ``tokenizeNLs`` (what ``PTBTokenizer -preserveLines`` uses); the lexical state is
    YyTraditionalTreebank3 (DFA start state 2).
    """

    def __init__(self, class_bytes: bytes) -> None:
        """Unpack the JFlex tables (character classes, actions, row map, transitions, attributes)."""
        constants = _string_constants(class_bytes)
        self.cmap = _run_length(constants[_CMAP])
        self.action = _run_length(constants[_ACTION])
        rowmap = constants[_ROWMAP]
        self.rowmap = [(rowmap[k] << 16) | rowmap[k + 1] for k in range(0, len(rowmap), 2)]
        self.trans = [v for i in _TRANS for v in _run_length(constants[i], minus=1)]
        self.attr = _run_length(constants[_ATTRIBUTE])

    def _step(self, state: int, char: str) -> int:
        """Next DFA state (-1: no transition) after reading one UTF-16 code unit."""
        return self.trans[self.rowmap[state] + self.cmap[ord(char)]]

    def match(self, text: str, pos: int) -> tuple[int, int]:
        """Longest match at ``pos``: (action number, matched length including trailing context)."""
        state, action, length = 2, -1, 0
        for i in range(pos, len(text)):
            state = self._step(state, text[i])
            if state == -1:
                break
            if self.attr[state] & 1:
                action, length = self.action[state], i + 1 - pos
                if self.attr[state] & 8:
                    break
        return action, length

    def _split_context(self, text: str, start: int, end: int, forward: int, backward: int) -> int:
        """End of the token for an r1/r2 rule: JFlex's two-automaton search for the r1/r2 boundary."""
        accepts, state, pos = set(), forward, start
        while state != -1 and pos < end:
            if self.attr[state] & 1:
                accepts.add(pos)
            state, pos = self._step(state, text[pos]), pos + 1
        if state != -1 and self.attr[state] & 1:
            accepts.add(pos)
        state, pos = backward, end
        while not (pos in accepts and self.attr[state] & 1):
            pos -= 1
            state = self._step(state, text[pos])
        return pos

    def lex(self, text: str) -> list[str]:
        """Tokens of ``text`` before lowercasing, with "*NL*" for each newline."""
        tokens, pos = [], 0
        while pos < len(text):
            action, length = self.match(text, pos)
            end = pos + length
            if action in _LOOKAHEAD:
                end = self._split_context(text, pos, end, *_LOOKAHEAD[action])
                while action in (44, 47) and end > pos and text[end - 1] in " \t\n\r\x0b\x0c\x85":
                    end -= 1
            end -= _PUSHBACK.get(action, 0)
            token, after = self._output(action, text[pos:end]), end
            if action in (33, 49) or (action == 47 and end - pos > 2):
                after = end - 1  # the abbreviation's period is also read again as a sentence end
            elif action in (35, 47):
                token, after = self._output(action, text[pos]), pos + 1
            if token is not None:
                tokens.append(token)
            pos = after
        return tokens

    @staticmethod
    def _output(action: int, text: str) -> str | None:
        """The token an action emits for the matched text (None: nothing)."""
        if action in (1, 7, 23):
            return None  # untokenizable character (deleted), white space
        if action == 5:
            return "*NL*"
        if action in (8, 26, 35, 36):
            return tokenizer._latex_quotes(text, left=action == 26)
        if action in _FIXED:
            return _FIXED[action]
        if action == 4:
            return "--" if 3 <= len(text) <= 4 else text
        if action in (14, 15):
            return tokenizer._MAPPED.get(text, text)
        if action in (27, 38, 39, 28, 54, 34):
            text = text.replace(" ", "\u00a0") if action != 34 else text
            return text.replace("(", "-LRB-").replace(")", "-RRB-") if action in (28, 54, 34) else text
        if action in (37, 51):
            return re.sub("(?i)&amp;", "&", text)
        return text.replace("\u00ad", "") or "-"

    def coco_tokenize(self, captions: list[str]) -> list[list[str]]:
        """What pycocoevalcap's PTBTokenizer.tokenize returns, per caption, as token lists."""
        text = "\n".join(c.replace("\n", " ") for c in captions)
        utf16 = "".join(c if ord(c) < 0x10000 else chr(0xD7C0 + (ord(c) >> 10)) + chr(0xDC00 + (ord(c) & 0x3FF))
                        for c in text)  # Java strings are UTF-16: characters beyond the BMP are surrogate pairs
        lines: list[list[str]] = [[]]
        for token in self.lex(utf16):
            if token == "*NL*":
                lines.append([])
            else:
                lines[-1].append(token.lower())
        joined = [" ".join(line).rstrip() for line in lines[: len(captions)]]
        return [[w for w in line.split(" ") if w not in PUNCTUATIONS and w] for line in joined]


@pytest.fixture(scope="module")
def java_lexer() -> JavaPTBLexer:
    """The CoreNLP 3.4.1 lexer from pycocoevalcap's jar (skips if the jar is missing or not the expected build)."""
    pycocoevalcap = pytest.importorskip("pycocoevalcap")
    jar = Path(list(pycocoevalcap.__path__)[0]) / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    if not jar.is_file():
        pytest.skip(f"{jar} not found")
    with zipfile.ZipFile(jar) as archive:
        class_bytes = archive.read(PTBLEXER)
    if hashlib.sha256(class_bytes).hexdigest() != PTBLEXER_SHA256:
        pytest.skip("this pycocoevalcap ships a different PTBLexer.class than the one these tables were read from")
    return JavaPTBLexer(class_bytes)


CAPTION_PIECES = (
    "a A I dog Dog DOG man's isn't can't won't they're I'm we've you'll he'd o'clock 'n' ma'am '90s t-shirt "
    "10-year-old black-and-white 3.5 12:30 1,000 ½ $5 £3 € ¢ % & @ # * + = / ( ) [ ] { } < > \" ' ` ‘ ’ “ ” « » "
    "... … . , ; : ? ! !! ?! - -- --- ----- – — _ Mr. Dr. St. etc. U.S. P. e.g. No. no. vs. Jr. Ark. ark. "
    "cannot gonna wanna 'tis 'twas dunno The He It You #tag @user AT&T at&t C++ x² ° © café naïve 2nd mp3 3d "
    "a.m. y'all goin' somethin' rock'n'roll O'Neil d'Avignon hello.world anti- &amp; &quot; <b> 5% -5 .5 a-b-c "
    "x/y 1990s 'til 'em 'cause NASA's SHE'S DON'T dogs' Jones' ain't y' :) ;-( =D"
).split(" ")


def caption_like_strings(count: int, seed: int = 0) -> list[str]:
    """Random strings of caption material glued with and without spaces (no URLs, no "1 1/2" fractions)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        glue = [" ", " ", " ", "", "", "\t"]
        parts = [rng.choice(CAPTION_PIECES) + rng.choice(glue) for _ in range(rng.randint(1, 8))]
        out.append("".join(parts).strip())
    return out


def test_coco_tokenize_agrees_with_corenlp_3_4_1_lexer(java_lexer, val_refs):
    expected = [(text, expected.split()) for text, expected in TOKENIZER_CASES]
    assert [java_lexer.coco_tokenize([text, "x"])[0] for text, _ in expected] == [tokens for _, tokens in expected]
    captions = [ref for refs in val_refs for ref in refs] + caption_like_strings(1500)
    java = java_lexer.coco_tokenize(captions + ["end"])[:-1]  # every caption followed by a newline, as in a batch
    mismatches = [(c, coco_tokenize(c), theirs) for c, theirs in zip(captions, java) if coco_tokenize(c) != theirs]
    assert mismatches == []


# ---------------------------------------------------------------------------------------------------------------
# Diversity statistics and nltk BLEU
# ---------------------------------------------------------------------------------------------------------------


def test_caption_stats():
    stats = caption_stats(["A dog runs.", "a dog runs", "A cat sleeps on the mat", "a dog runs !", "Birds"])
    assert stats == {"identical_caption_rate": 3 / 5, "unique_captions": 3, "vocab_used": 9,
                     "mean_length": (3 + 3 + 6 + 3 + 1) / 5}
    assert caption_stats(["same"] * 4)["identical_caption_rate"] == 1.0
    assert caption_stats([""])["mean_length"] == 0.0


def test_nltk_bleu_is_the_historical_corpus_bleu():
    predictions = ["a dog runs on the grass", "a cat"]
    references = [["a dog runs on grass", "the dog is running"], ["a cat sleeps"]]
    scores = nltk_bleu(predictions, references)
    assert corpus_bleu(predictions, references) == scores
    assert list(scores) == ["bleu1", "bleu2", "bleu3", "bleu4"]
    # No smoothing: no matching 4-gram gives (almost exactly) zero.
    assert nltk_bleu(["a dog runs"], [["a dog sits"]])["bleu4"] < 1e-70


def test_nltk_and_coco_bleu_agree_on_identical_tokens(val_refs, val_sets):
    """Same corpus-level formula and closest-reference-length rule; what differs is coco-caption's epsilons and
    nltk's precision denominator of at least 1 per hypothesis (it only matters for hypotheses shorter than n)."""
    from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

    pairs = [(p, r) for p, r in zip(val_sets["shuffled (next image's 2nd ref.)"], val_refs) if len(p.split()) >= 5]
    ours = score_captions([p for p, _ in pairs], [r for _, r in pairs])
    hyps = [coco_tokenize(p) for p, _ in pairs]
    refs = [[coco_tokenize(r) for r in rs] for _, rs in pairs]
    assert min(map(len, hyps)) >= 4
    for k, name in enumerate(("bleu1", "bleu2", "bleu3", "bleu4")):
        weights = tuple([1 / (k + 1)] * (k + 1))
        assert nltk_corpus_bleu(refs, hyps, weights=weights) == pytest.approx(ours[name], rel=1e-6)
    # A two-word hypothesis has no trigram: coco-caption counts 0 trigrams for it, nltk counts 1 (unmatched).
    short = (["a dog runs fast", "a cat"], [["a dog runs fast"], ["a cat"]])
    nltk_bleu3 = nltk_corpus_bleu([[r.split() for r in rs] for rs in short[1]], [p.split() for p in short[0]],
                                  weights=(1 / 3, 1 / 3, 1 / 3))
    assert score_captions(*short)["bleu3"] == pytest.approx(1.0) and nltk_bleu3 == pytest.approx((2 / 3) ** (1 / 3))


# ---------------------------------------------------------------------------------------------------------------
# Comparison table for docs/metrics.md
# ---------------------------------------------------------------------------------------------------------------


def comparison_rows(references: list[list[str]]) -> list[tuple[str, str, list[float | None]]]:
    """The same predictions scored by captioner, pycocoevalcap and nltk: (set, scorer, 6 values or None)."""
    from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

    rows = []
    refs = [[coco_tokenize(r) for r in rs] for rs in references]
    for name, predictions in prediction_sets(references).items():
        ours = score_captions(predictions, references)
        theirs, _, _ = pycocoevalcap_scores(predictions, references)
        hyps = [coco_tokenize(p) for p in predictions]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nltk warns about n-gram orders without a match
            same_tokens = [nltk_corpus_bleu(refs, hyps, weights=tuple([1 / k] * k)) for k in range(1, 5)]
        historical = nltk_bleu(predictions, references)
        rows.append((name, "captioner `score_captions`", [ours[k] for k in METRIC_KEYS]))
        rows.append((name, "pycocoevalcap, same tokens", [theirs[k] for k in METRIC_KEYS]))
        rows.append((name, "nltk `corpus_bleu`, same tokens", [*same_tokens, None, None]))
        rows.append((name, "captioner `nltk_bleu` (vocab tokens)", [*historical.values(), None, None]))
    return rows


def format_table(rows: list[tuple[str, str, list[float | None]]]) -> str:
    """Markdown table of :func:`comparison_rows` (6 decimals; "-" where a scorer has no such metric)."""
    lines = ["| predictions | scorer | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | CIDEr-D | ROUGE-L |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, scorer, values in rows:
        cells = ["-" if v is None else f"{v:.6f}" for v in values]
        lines.append(f"| {name} | {scorer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_comparison_table_renders(val_refs):
    pytest.importorskip("pycocoevalcap")
    table = format_table(comparison_rows(val_refs[:20]))
    print("\n" + table)
    assert table.count("\n") == 2 + 4 * len(SET_NAMES) - 1


if __name__ == "__main__":
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else None
    val = load_val_references(limit)
    print(f"Flickr8k val, first {len(val)} images, {sum(map(len, val))} references\n")
    print(format_table(comparison_rows(val)))
