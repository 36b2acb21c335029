"""Java-free equivalent of coco-caption's tokenizer: :func:`coco_tokenize` and the lexer rules behind it.

:func:`coco_tokenize` replaces coco-caption's Java step (Stanford CoreNLP 3.4.1 ``PTBTokenizer -preserveLines
-lowerCase``, then dropping the tokens in :data:`PUNCTUATIONS`). It re-creates the lexer rules that matter for
captions, on the original casing, taking the longest match at each position as the Java lexer does, and lowercases
afterwards:


* words are runs of letters and digits and may contain ``.``/``!``/``?`` between letters (``"hello.world"``);
  hyphenated words stay whole (``"t-shirt"``, ``"10-year-old"``); numbers keep ``. , :`` between digits
  (``"3.5"``, ``"12:30"``, ``"1,000"``); ``"a/b"`` and ``"1/2"`` stay whole;
* clitics are split off: ``"man's" -> man 's``, ``"isn't" -> is n't``, ``"can't" -> ca n't``,
  ``"they're" -> they 're``; ``cannot gonna gotta lemme gimme wanna 'tis 'twas`` are split (``can not``,
  ``gon na``, ``'t is``); ``o'clock``, ``rock 'n' roll``, ``ma'am``, ``'90s`` stay whole; a possessive
  apostrophe after ``s`` is a quote and disappears (``"dogs' toys" -> dogs toys``);
* abbreviations in CoreNLP's lists keep their period (``"Mr."``, ``"St."``, ``"etc."``, ``"U.S."``, ``"e.g."``, any
  single letter: ``"P."``), except a single capital before a capitalised sentence start (``"vitamin C. The"``);
* quote characters (straight, curly, back-ticks) become PTB quote tokens and are dropped;
  ``. , ; : ? ! - -- ...`` (also en/em dashes and ``…``) are dropped, but ``!!``, ``?!`` and runs of 5+ hyphens
  are kept; brackets become ``-lrb- -rrb- -lsb- -rsb- -lcb- -rcb-`` and are **kept**, as in coco-caption (whose
  filter lists the upper-case ``-LRB-`` forms, but Java has lowercased them by then); emoticons are one token
  (``";)" -> ;-rrb-``); ``& % $ # @ + = / * < >`` and most other symbols are one-character tokens;
  ``¢ £ €`` become ``cents # $``, ``½`` becomes ``1/2``; emoji and control characters are dropped.

Every caption is treated as followed by a line break, as in coco-caption's batch (all but its last caption).
Checked against the lexer tables of the CoreNLP 3.4.1 jar that pycocoevalcap ships (``tests/test_metrics.py``): the
same tokens for all 35,000 Flickr8k captions and for random caption-like strings. Known differences, all rare in
captions: a number and a fraction or digit groups separated by a space (``"1 1/2"``, ``"12 345 678"``) are separate
tokens here but one token containing a no-break space in Java; URL and e-mail rules are simplified; characters
outside Latin-1 and the common punctuation blocks follow their Unicode category rather than Java 7's tables; a line
break inside a caption is a space (coco-caption replaces ``\n`` too, but a ``\r`` or U+2028 makes Java start a new
line and misalign all later captions).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

#: Tokens coco-caption removes after PTB tokenization (pycocoevalcap/tokenizer/ptbtokenizer.py).
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                          ".", "?", "!", ",", ":", "-", "--", "...", ";"])

# ---------------------------------------------------------------------------------------------------------------
# Tokenizer: lexer rules after Stanford CoreNLP 3.4.1's PTBLexer (the version bundled with coco-caption).
# ---------------------------------------------------------------------------------------------------------------

_NUMERIC_SYMBOLS = "\u00b2\u00b3\u00b9\u00bc-\u00be\u2070-\u209f\u2150-\u218f\u2460-\u24ff\u2776-\u2793"
_L = rf"(?:[^\W\d_{_NUMERIC_SYMBOLS}]|[\u0300-\u036f])"  # a letter (Java [:letter:] plus combining accents)
_AN = rf"(?:{_L}|\d)"
_APOS = r"(?:['\u0092\u2019]|&apos;)"
_APOSX = r"(?:['\u0092\u2019`\u0091\u2018\u201b]|&apos;)"  # apostrophes allowed inside a word
_WORD = rf"{_L}{_AN}*(?:[.!?]{_L}{_AN}*)*"
_REDAUX = rf"{_APOS}(?:[msdMSD]|(?i:re|ve|ll))"
_SREDAUX = rf"[nN]{_APOSX}[tT]"
_NUMBER = r"[-+]?(?:\d*(?:[.:,\u066b\u066c]\d+)+|\d+)"
_ACRO = r"[A-Za-z](?:\.[A-Za-z])+"
_SPNL = r"[ \t\u00a0\u2000-\u200a\u3000\n]"
_QUOTES = (r"(?:[`\u2018\u2019\u201a\u201b\u201c\u201d\u0091-\u0094\u201e\u201f\u2039\u203a\u00ab\u00bb]{1,2}"
           r"|''|['\u0092\u2019]|&apos;)")
_INSENTP = r"[,;:\u3001]"
# Abbreviations whose period stays. Those of the first group (dates, places, companies) also win over a longer
# word when two characters follow ("etc.x" -> etc. x), those of the second do not ("Mr.x" is one word).
_ABBREV1 = (
    r"(?:(?i:jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec|mon|tues?|wed|thu|thurs|fri|ala|ariz|calif|colo|conn|ct"
    r"|dak|fla|ga|ind|kans?|ky|md|mich|minn|mo|mont|neb|nev|okla|penn|tenn|va|vt|wisc?|wyo|inc|cos?|corp|ltd|plc"
    r"|rt|bancorp|bhd|assn|univ|intl|sys|tel|est|ext|sq|jr|sr|bros|esq|blvd|rd|etc|al|seq|bldg|(?:ph|ed)\.d)"
    r"|A(?i:z|rk)|D(?i:el)|I(?i:ll)|L(?i:a)|M(?i:ass|iss)|O(?i:re)|P(?i:a)|T(?i:ex)|W(?i:ash)|(?i:pp?t)[ye](?i:s)?)\."
)
_ABBREV2 = (
    r"(?:(?i:ft|ph|dept|ave|mrs?|ms|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl"
    r"|pvt|mt|capt|ste?|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det|adj|adv|asst|assoc|ens|insp|mlle|mme|msgr"
    rf"|sfc|vs|alex|wm|jos|cie|cf|treas|invt|elec|natl|a\.k\.a)|(?i:m)[ft](?i:g)|{_ACRO}|[A-Za-z])\."
)
_SENTENCE_STARTS = (r"A(?i:bout|ccording|dditionally|fter|n|s|t)?|B(?i:ut)|E(?i:arlier)|H(?i:e|er|ere|owever)"
                    r"|I(?i:f|n|t)|L(?i:ast)|M(?i:any|ore|r\.|s\.)|N(?i:ow)|O(?i:nce|ne|ther|ur)"
                    r"|S(?i:he|ince|o|ome|uch)|T(?i:hat|he|heir|hen|here|hese|hey|his)|W(?i:e|hen|hile|hat)"
                    r"|Y(?i:et|ou)")
_SGML_NAME = r"[A-Za-z][A-Za-z0-9_:.\-]*"
_SGML = (rf"<(?:[!?][A-Za-z\-][^>\r\n]*|\/?{_SGML_NAME}(?: +(?:{_SGML_NAME}(?: *= *['\"][^\r\n'\"]*['\"])?"
         rf"|['\"][^\r\n'\"]*['\"]| *\/))* *)>")
_THING_PART = rf"(?:[dDoOlL]{_APOSX}{_AN})?{_AN}+"

# (action, pattern). A named group "tok" marks the token when the rest of the match is trailing context; the
# longest total match wins and ties go to the earlier rule, as in the JFlex lexer.
_RULE_SPECS: tuple[tuple[str, str], ...] = (
    ("keep", r"(?i:c\+\+|[cf]#)"),
    ("push3", r"(?i:cannot|'twas)"),
    ("push2", r"(?i:'tis|gonna|gotta|lemme|gimme|wanna)"),
    ("keep", _SGML),
    ("dash", r"&(?:MD|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]"),
    ("amp", r"(?i:&amp;)"),
    ("keep", r"&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);"),
    ("keep", rf"(?P<tok>{_WORD}){_REDAUX}"),
    ("keep", rf"(?P<tok>[A-Za-z]*[A-MO-Za-mo-z]){_SREDAUX}"),
    ("keep", _WORD),
    ("keep", rf"{_APOS}[nN]{_APOS}?|[lLdDjJ]{_APOS}|(?i:dunkin|somethin|ol){_APOS}"),
    ("keep", rf"{_APOS}(?i:em|till?|cause)"),
    ("keep", rf"[A-HJ-XZn]{_APOSX}{_L}{{2,}}"),
    ("keep", rf"{_L}+[aeiouyAEIOUY]{_APOSX}[aeiouA-Z]{_L}*"),
    ("keep", rf"{_APOS}[2-9]0[sS]|(?i:cont'd)\.?|(?i:nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)"),
    ("keep", rf"(?P<tok>[yY]{_APOS}){_L}"),
    ("keep", r"https?://[^ \t\n\f\r\"<>|(){}]+[^ \t\n\f\r\"<>|.!?(){},-]"),
    ("keep", r"(?:www\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4}|(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+"
             r"(?:com|net|org|edu))(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?"),
    ("keep", r"(?:&lt;|<)?[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00a0{}]*@(?:[^ \t\n\f\r\"<>|(){}.\u00a0]+\.)*"
             r"[^ \t\n\f\r\"<>|(){}.\u00a0]+(?:&gt;|>)?"),
    ("keep", rf"@[a-zA-Z_][a-zA-Z_0-9]*|#{_L}+"),
    ("quote_r", rf"(?P<tok>{_REDAUX})[^A-Za-z]"),
    ("quote_r", r"(?P<tok>')[A-Za-z][^ \t\n\r\u00a0]"),
    ("quote_r", _REDAUX),
    ("quote_r", _SREDAUX),
    ("keep", r"\d{1,2}[-/]\d{1,2}[-/]\d{2,4}"),
    ("keep", _NUMBER),
    ("keep", r"[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)"),
    ("keep", r"(?:\d{1,4}-)?\d{1,4}(?:\\?/|\u2044)\d{1,4}"),
    ("map", r"[\u00bc\u00bd\u00be\u2153\u2154]"),
    ("amp", rf"(?i:-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\.D\.s|pro-|anti-|S(?:&|&amp;)P-500|S(?:&|&amp;)Ls"
            rf"|Cap{_APOS}n|c{_APOS}est)"),
    ("keep", r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"),
    ("keep", r"[A-Z]*\$|#"),
    ("map", "[\u00a2\u00a3\u00a4\u0080\u20a0\u20ac]"),
    ("keep", rf"(?P<tok>[A-Za-z])\.{_SPNL}+(?:{_SENTENCE_STARTS}|{_SGML}){_SPNL}"),
    ("keep", rf"(?P<tok>(?i:ca|figs?|prop|nos?|art|pp|op)\.){_SPNL}?\d"),
    ("keep", rf"(?P<tok>{_ABBREV1})[\s\S]{{2}}"),
    ("keep", _ABBREV1),
    ("keep", _ABBREV2),
    ("keep", rf"(?P<tok>(?:{_WORD}|{_THING_PART}(?:[-_\u058a\u2010\u2011]{_THING_PART})*"
             rf"|[A-Za-z0-9][A-Za-z0-9.,]*(?:-(?:{_ACRO}\.|[A-Za-z0-9]+))+)\.){_INSENTP}"),
    ("quote_l", r'(?P<tok>"|&quot;)[A-Za-z0-9$]'),
    ("quote_r", r'"|&quot;'),
    ("map", r"<|&lt;|>|&gt;|[(){}\[\]]"),
    ("keep", r"<<|>>"),
    ("smiley", r"(?P<tok>[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]])[^A-Za-z0-9]"),
    ("smiley", r"[\-^x=~<>']_[\-^x=~<>']|\([\-^x=~<>'][_.]?[\-^x=~<>']\)|\([\^x=~<>']-[\^x=~<>'`]\)"),
    ("hyphens", r"-+"),
    ("drop", r"\.{3,5}|(?:\.[ \u00a0]){2,4}\.|[\u0085\u2026]"),
    ("keep", r"@+|#+|_+|\*+|(?:\\\*){1,3}|[,;:\u3001]|[?!]+|=|/"),
    ("keep", r"[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]"),
    ("keep", rf"[A-Za-z0-9][A-Za-z0-9.,]*(?:-(?:{_ACRO}\.|[A-Za-z0-9]+))+"),
    ("keep", rf"{_THING_PART}(?:[-_\u058a\u2010\u2011]{_THING_PART})*"),
    ("amp", r"[A-Z]+(?:(?:[+&]|&amp;)[A-Z]+)+"),
    ("amp", r"(?P<tok>[A-Z]+(?:(?:[+&]|&amp;)[A-Z]+)+\.)[,;:\u3001]"),
    ("quote_l", rf"(?P<tok>{_QUOTES})[A-Za-z0-9$]"),
    ("quote_r", _QUOTES),
)
_RULES = tuple((action, re.compile(pattern)) for action, pattern in _RULE_SPECS)
_FAST_WORD = re.compile(r"[A-Za-z0-9\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f]+(?=\s)")
_FAST_PUNCT = re.compile(r"[.,;:?!](?=\s)(?![ \u00a0]\.)")  # a lone punctuation mark: dropped
_SPACES = re.compile(r"[\s\u200b-\u200f\u2028\u2029\u2060\ufeff]+")
_ASSIMILATIONS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])
_MAPPED = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3", "\u00a2": "cents",
           "\u00a3": "#", "\u00a4": "$", "\u0080": "$", "\u20a0": "$", "\u20ac": "$", "<": "<", "&lt;": "<",
           ">": ">", "&gt;": ">", "(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-",
           "}": "-RCB-"}
_QUOTE_MAP = str.maketrans({"\u0091": "`", "\u2018": "`", "\u201b": "`", "\u2039": "`", "\u0092": "'", "\u2019": "'",
                            "\u203a": "'", "\u0093": "``", "\u201c": "``", "\u00ab": "``", "\u0094": "''",
                            "\u201d": "''", "\u00bb": "''"})


def _latex_quotes(token: str, left: bool) -> str:
    """PTB quote normalisation: straight quotes by position (opening -> ` and ``), curly ones by shape."""
    token = re.sub(r"&apos;|'", "`" if left else "'", token)
    token = re.sub(r'"|&quot;', "``" if left else "''", token)
    return token.translate(_QUOTE_MAP)


def _finish(action: str, token: str) -> str | None:
    """Apply a rule's output transformation to the matched token text (``None``: emit nothing)."""
    if action in ("keep", "push2", "push3"):
        return token
    if action == "quote_l" or action == "quote_r":
        return _latex_quotes(token, action == "quote_l")
    if action == "amp":
        return re.sub("(?i)&amp;", "&", token)
    if action == "map":
        return _MAPPED[token]
    if action == "smiley":
        return token.replace("(", "-LRB-").replace(")", "-RRB-")
    if action == "dash":
        return "--"
    if action == "hyphens":
        return "--" if 3 <= len(token) <= 4 else token
    return None  # "drop"


def _longest_match(text: str, pos: int) -> tuple[int, str | None]:
    """Run every lexer rule at ``pos``; return (end of the token, emitted token or None) for the winning rule."""
    best_total, best = 0, None
    for action, rule in _RULES:
        m = rule.match(text, pos)
        if m is None or m.end() - pos <= best_total:
            continue
        token = m.group("tok") if "tok" in rule.groupindex else m.group()
        if action == "push3" or action == "push2":
            token = token[: -int(action[-1])]
        best_total, best = m.end() - pos, (action, token)
    if best is None:  # no rule: a lone symbol is its own token; other characters (and emoji) are dropped
        char, category = text[pos], unicodedata.category(text[pos])
        keep = category[0] in "LNPS" and category not in ("Pd", "Pi", "Pf") and ord(char) <= 0xFFFF
        return pos + 1, char if keep else None
    action, token = best
    return pos + len(token), _finish(action, token)


@lru_cache(maxsize=1 << 16)
def cached_coco_tokens(text: str) -> tuple[str, ...]:
    """Cached body of :func:`coco_tokenize` (captions repeat a lot in evaluation)."""
    text = text.replace("\u00ad", "") + "\n"  # soft hyphens vanish; a caption ends with a newline in Java's input
    tokens: list[str] = []
    pos, end = 0, len(text)
    while pos < end:
        space = _SPACES.match(text, pos)
        if space:
            pos = space.end()
            continue
        fast = _FAST_WORD.match(text, pos)
        if fast and fast.group().lower() not in _ASSIMILATIONS:
            pos, token = fast.end(), fast.group()
        elif _FAST_PUNCT.match(text, pos):
            pos, token = pos + 1, None
        else:
            pos, token = _longest_match(text, pos)
        if token is not None:  # Java lowercases before coco-caption's filter, so "-LRB-" survives as "-lrb-"
            tokens.extend(t for t in token.lower().split() if t not in PUNCTUATIONS)
    return tuple(tokens)


def coco_tokenize(text: str) -> list[str]:
    """Tokenize a caption the way coco-caption does before scoring, without Java.

    Mimics Stanford CoreNLP 3.4.1 ``PTBTokenizer -preserveLines -lowerCase`` followed by coco-caption's removal of
    the tokens in :data:`PUNCTUATIONS`; the rules and the known differences are listed in the module docstring.

    Args:
        text: one caption, any casing.

    Returns:
        Lowercase tokens, possibly empty. ``coco_tokenize("A man's dog, isn't it?")`` is
        ``["a", "man", "'s", "dog", "is", "n't", "it"]``.

    Raises:
        TypeError: if ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"coco_tokenize expects a caption string, got {type(text).__name__}: {text!r}")
    return list(cached_coco_tokens(text))
