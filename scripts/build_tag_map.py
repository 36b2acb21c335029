"""Build captioner/generation/imagenet_words.json: one short caption word for each of the 1,000 ImageNet classes.

The class names ship with torchvision (``captioner.models.encoders.imagenet_categories``). ILSVRC orders its classes by the
WordNet hierarchy, so the animals come in runs of one kind (indices 151-268 are all dog breeds); the rules, in order:

1. a hand correction (``CORRECTIONS`` below, each with its reason) when there is one;
2. the word of the run the index falls in (``RUNS``: the 118 dog breeds are "dog", the five domestic cats "cat",
   the 20 monkeys "monkey", ...) — the word a caption writer would use, not the breed;
3. otherwise the last word of the name, lower-cased ("acoustic guitar" -> "guitar", "coffee mug" -> "mug"), which
   is the head noun of an English compound.

Then the caption phrase (``scripts/tag_phrases.py``): the word with the article a sentence gives it ("a cat", "an
orange"), a container for mass nouns people write that way ("a cup of coffee", "a bowl of soup"), no article for
other mass nouns and plurals ("broccoli", "jeans"); classes that name parts, textures or abstractions ("disk brake",
"honeycomb", "web site") or that misfire on everyday photos are dropped (no tag), each with its reason. A word also
lists the synonyms references use for it ("refrigerator": "fridge"), so that a tag can be judged right or wrong.

Each class also gets a coarse group (animal, vehicle, food, plant, place, person, object), used to initialise words
the decoder's vocabulary lacks. nltk's WordNet corpus is not available offline here, so hypernyms are not used.

Usage: python scripts/build_tag_map.py [--out captioner/generation/imagenet_words.json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tag_phrases import DROP, MASS, PHRASES, PLACES, PLURAL, SYNONYMS, VEHICLES, WORDS  # noqa: E402

from captioner.generation.tags import article  # noqa: E402

# (first index, last index, word): runs of one kind of animal in the ILSVRC order
RUNS = [
    (0, 1, "fish"), (2, 4, "shark"), (5, 6, "fish"), (7, 24, "bird"), (25, 29, "salamander"), (30, 32, "frog"),
    (33, 37, "turtle"), (38, 48, "lizard"), (52, 68, "snake"), (72, 77, "spider"), (80, 100, "bird"),
    (118, 121, "crab"), (122, 123, "lobster"), (127, 146, "bird"), (147, 148, "whale"), (151, 268, "dog"),
    (269, 271, "wolf"), (273, 275, "dog"), (277, 280, "fox"), (281, 285, "cat"), (294, 297, "bear"),
    (300, 307, "beetle"), (321, 326, "butterfly"), (330, 332, "rabbit"), (341, 343, "pig"), (365, 368, "ape"),
    (369, 382, "monkey"), (383, 384, "lemur"), (385, 386, "elephant"), (387, 388, "panda"), (389, 397, "fish"),
]

# index: (word, why)
CORRECTIONS = {
    7: ("rooster", "'cock' is not what captions call it"), 8: ("chicken", "'hen' is rarer in captions"),
    9: ("ostrich", "distinct bird"), 22: ("eagle", "'bald eagle' -> the bird's name"), 24: ("owl", "'great grey owl'"),
    49: ("crocodile", "'African crocodile'"), 50: ("alligator", "'American alligator'"),
    51: ("dinosaur", "'triceratops': a model or toy dinosaur in photos"), 84: ("peacock", "distinct bird"),
    97: ("duck", "'drake'"), 98: ("duck", "'red-breasted merganser'"), 99: ("goose", "distinct bird"),
    100: ("swan", "'black swan'"), 101: ("elephant", "'tusker'"), 107: ("jellyfish", "one word"),
    113: ("snail", "one word"), 130: ("flamingo", "distinct bird"), 144: ("pelican", "distinct bird"),
    145: ("penguin", "'king penguin'"), 149: ("dugong", "one word"), 150: ("seal", "'sea lion': captions say seal"),
    272: ("coyote", "one word"), 276: ("hyena", "'hyena, hyaena'"), 291: ("lion", "one word"),
    292: ("tiger", "one word"), 308: ("fly", "one word"), 309: ("bee", "one word"), 310: ("ant", "'ant, emmet'"),
    319: ("dragonfly", "one word"), 335: ("squirrel", "'fox squirrel'"), 339: ("horse", "'sorrel' is a horse"),
    345: ("ox", "one word"), 346: ("buffalo", "'water buffalo'"), 348: ("sheep", "'ram, tup'"),
    349: ("sheep", "'bighorn' sheep"), 350: ("goat", "'ibex' is a wild goat"), 354: ("camel", "'Arabian camel'"),
    360: ("otter", "one word"), 403: ("ship", "'aircraft carrier'"), 404: ("airplane", "'airliner'"),
    412: ("trash can", "'ashcan'"), 413: ("gun", "'assault rifle'"), 417: ("balloon", "one word"),
    418: ("pen", "'ballpoint'"), 419: ("bandage", "'Band Aid'"), 423: ("chair", "'barber chair'"),
    424: ("barbershop", "one word"), 428: ("wheelbarrow", "'barrow'"), 433: ("cap", "'bathing cap'"),
    436: ("car", "'beach wagon' is an estate car"), 444: ("bicycle", "'bicycle-built-for-two'"),
    447: ("binoculars", "one word"), 449: ("boathouse", "one word"), 459: ("bra", "'brassiere'"),
    466: ("train", "'bullet train'"), 468: ("taxi", "'cab'"), 475: ("mirror", "'car mirror'"),
    479: ("wheel", "'car wheel'"), 480: ("atm", "'cash machine'"), 487: ("phone", "'cellular telephone'"),
    489: ("fence", "'chainlink fence'"), 491: ("chainsaw", "'chain saw'"), 505: ("coffeepot", "one word"),
    508: ("keyboard", "'computer keyboard'"), 510: ("ship", "'container ship'"), 511: ("car", "'convertible'"),
    517: ("crane", "a machine here"), 518: ("helmet", "'crash helmet'"), 521: ("pot", "'Crock Pot'"),
    527: ("computer", "'desktop computer'"), 528: ("phone", "'dial telephone'"), 532: ("table", "'dining table'"),
    537: ("sled", "'dogsled'"), 547: ("train", "'electric locomotive'"), 548: ("television", "'entertainment center'"),
    550: ("coffee maker", "'espresso maker'"), 555: ("fire truck", "'fire engine'"), 559: ("chair", "'folding chair'"),
    560: ("helmet", "'football helmet'"), 564: ("bed", "'four-poster'"), 565: ("train", "'freight car'"),
    566: ("horn", "'French horn'"), 567: ("pan", "'frying pan'"), 568: ("coat", "'fur coat'"),
    569: ("truck", "'garbage truck'"), 573: ("kart", "'go-kart'"), 575: ("golf cart", "'golfcart'"),
    579: ("piano", "'grand piano'"), 582: ("store", "'grocery store'"), 589: ("hair dryer", "'hand blower'"),
    590: ("computer", "'hand-held computer'"), 592: ("hard drive", "'hard disc'"), 603: ("cart", "'horse cart'"),
    605: ("ipod", "lower-case"), 607: ("pumpkin", "'jack-o'-lantern'"), 608: ("jeans", "'jean'"),
    612: ("rickshaw", "'jinrikisha'"), 620: ("laptop", "one word"), 621: ("lawn mower", "'lawn mower'"),
    627: ("limousine", "one word"), 628: ("ship", "'liner'"), 630: ("shoe", "'Loafer'"),
    632: ("speaker", "'loudspeaker'"), 638: ("swimsuit", "'maillot'"), 639: ("swimsuit", "'maillot tank suit'"),
    652: ("uniform", "'military uniform'"), 654: ("bus", "'minibus'"), 656: ("van", "'minivan'"),
    657: ("rocket", "'missile' is usually a launch vehicle in photos"), 660: ("trailer", "'mobile home'"),
    661: ("car", "'Model T'"), 665: ("scooter", "'moped'"), 667: ("cap", "'mortarboard'"),
    670: ("scooter", "'motor scooter'"), 671: ("bike", "'mountain bike'"), 672: ("tent", "'mountain tent'"),
    675: ("van", "'moving van'"), 681: ("notebook", "one word"), 697: ("pajamas", "'pajama'"),
    703: ("bench", "'park bench'"), 705: ("train", "'passenger car' is a railway carriage"),
    707: ("phone", "'pay-phone'"), 717: ("truck", "'pickup'"), 724: ("ship", "'pirate' is a pirate ship"),
    726: ("plane", "a carpenter's plane"), 734: ("van", "'police van'"), 736: ("pool table", "'pool table'"),
    737: ("bottle", "'pop bottle'"), 751: ("car", "'racer'"), 757: ("camper", "'recreational vehicle'"),
    759: ("camera", "'reflex camera'"), 760: ("fridge", "'refrigerator'"), 761: ("remote", "'remote control'"),
    765: ("chair", "'rocking chair'"), 768: ("ball", "'rugby ball'"), 769: ("ruler", "'rule'"),
    770: ("shoe", "'running shoe'"), 776: ("saxophone", "'sax'"), 779: ("bus", "'school bus'"),
    780: ("ship", "'schooner'"), 786: ("sewing machine", "'sewing machine'"), 791: ("cart", "'shopping cart'"),
    801: ("snorkel", "one word"), 805: ("soccer ball", "'soccer ball'"), 809: ("bowl", "'soup bowl'"),
    812: ("rocket", "'space shuttle': one word, shared with 'missile' and 'projectile' (they look alike)"),
    744: ("rocket", "'projectile, missile'"), 814: ("boat", "'speedboat'"), 815: ("web", "'spider web'"),
    817: ("car", "'sports car'"), 820: ("train", "'steam locomotive'"), 821: ("bridge", "'steel arch bridge'"),
    829: ("tram", "'streetcar'"), 831: ("couch", "'studio couch'"), 834: ("suit", "one word"),
    836: ("sunglasses", "'sunglass'"), 839: ("bridge", "'suspension bridge'"), 841: ("sweatshirt", "one word"),
    842: ("swimsuit", "'swimming trunks'"), 846: ("lamp", "'table lamp'"), 847: ("tank", "the vehicle"),
    850: ("teddy bear", "'teddy'"), 852: ("tennis ball", "'tennis ball'"), 853: ("roof", "'thatch'"),
    858: ("roof", "'tile roof'"), 861: ("toilet", "'toilet seat'"), 864: ("truck", "'tow truck'"),
    867: ("truck", "'trailer truck'"), 869: ("coat", "'trench coat'"), 871: ("boat", "'trimaran'"),
    873: ("arch", "'triumphal arch'"), 874: ("bus", "'trolleybus'"), 878: ("typewriter", "'typewriter keyboard'"),
    881: ("piano", "'upright' is an upright piano"), 882: ("vacuum cleaner", "'vacuum'"), 884: ("ceiling", "'vault'"),
    890: ("volleyball", "one word"), 892: ("clock", "'wall clock'"), 895: ("airplane", "'warplane'"),
    896: ("sink", "'washbasin'"), 897: ("washing machine", "'washer'"), 898: ("bottle", "'water bottle'"),
    899: ("jug", "'water jug'"), 900: ("tower", "'water tower'"), 901: ("jug", "'whiskey jug'"),
    904: ("screen", "'window screen'"), 905: ("blind", "'window shade'"), 906: ("tie", "'Windsor tie'"),
    907: ("bottle", "'wine bottle'"), 913: ("shipwreck", "'wreck'"), 914: ("boat", "'yawl'"),
    916: ("website", "'web site'"), 917: ("comic book", "'comic book'"), 918: ("crossword", "'crossword puzzle'"),
    919: ("sign", "'street sign'"), 920: ("traffic light", "'traffic light'"), 921: ("book", "'book jacket'"),
    925: ("soup", "'consomme'"), 926: ("soup", "'hot pot'"), 927: ("dessert", "'trifle'"),
    928: ("ice cream", "'ice cream'"), 929: ("popsicle", "'ice lolly'"), 930: ("bread", "'French loaf'"),
    933: ("burger", "'cheeseburger'"), 934: ("hot dog", "'hotdog'"), 935: ("potato", "'mashed potato'"),
    936: ("cabbage", "'head cabbage'"), 940: ("squash", "'spaghetti squash'"), 945: ("pepper", "'bell pepper'"),
    948: ("apple", "'Granny Smith'"), 956: ("fruit", "'custard apple'"), 959: ("pasta", "'carbonara'"),
    960: ("chocolate", "'chocolate sauce'"), 962: ("meat", "'meat loaf'"), 964: ("pie", "'potpie'"),
    966: ("wine", "'red wine'"), 967: ("coffee", "'espresso'"), 969: ("drink", "'eggnog'"),
    970: ("mountain", "'alp'"), 973: ("reef", "'coral reef'"), 975: ("lake", "'lakeside'"),
    976: ("cliff", "'promontory'"), 977: ("beach", "'sandbar'"), 978: ("beach", "'seashore'"),
    981: ("baseball player", "'ballplayer'"), 982: ("groom", "one word"), 983: ("diver", "'scuba diver'"),
    984: ("flowers", "'rapeseed' fields"), 986: ("flower", "'yellow lady's slipper' orchid"),
    989: ("rose hip", "'hip'"), 990: ("chestnut", "'buckeye'"), 991: ("fungus", "'coral fungus'"),
    992: ("mushroom", "'agaric'"), 993: ("mushroom", "'gyromitra'"), 994: ("mushroom", "'stinkhorn'"),
    995: ("mushroom", "'earthstar'"), 996: ("mushroom", "'hen-of-the-woods'"), 997: ("mushroom", "'bolete'"),
    998: ("corn", "'ear' of corn"), 999: ("toilet paper", "'toilet tissue'"),
}

GROUPS = [(0, 397, "animal"), (924, 969, "food"), (970, 980, "place"), (981, 983, "person"), (984, 998, "plant")]


def group_of(index: int, word: str) -> str:
    if word in VEHICLES:
        return "vehicle"
    if word in PLACES:
        return "place"
    return next((name for first, last, name in GROUPS if first <= index <= last), "object")


def phrase_of(word: str) -> tuple[str, str]:
    """(phrase, kind): ``count`` nouns get their article, ``mass`` nouns and ``plural`` ones none, unless
    :data:`PHRASES` gives a container phrase."""
    if word in PHRASES:
        return PHRASES[word], "count"
    if word in MASS:
        return word, "mass"
    if word in PLURAL:
        return word, "plural"
    return f"{article(word)} {word}", "count"


def word_for(index: int, category: str) -> tuple[str, str]:
    """(word, rule) for one class."""
    if index in DROP:
        return "", "dropped: " + DROP[index]
    if index in WORDS:
        return WORDS[index][0], "word: " + WORDS[index][1]
    if index in CORRECTIONS:
        return CORRECTIONS[index][0], "correction: " + CORRECTIONS[index][1]
    for first, last, word in RUNS:
        if first <= index <= last:
            return word, f"run {first}-{last}"
    words = re.findall(r"[a-z]+", category.lower())
    return words[-1], "last word"


def build() -> dict:
    from captioner.models.encoders import imagenet_categories

    categories = imagenet_categories()
    entries = []
    for index, category in enumerate(categories):
        word, rule = word_for(index, category)
        phrase, kind = phrase_of(word) if word else ("", "none")
        entries.append({"index": index, "category": category, "word": word, "phrase": phrase, "kind": kind,
                        "group": group_of(index, word), "synonyms": SYNONYMS.get(word, []), "rule": rule})
    return {"source": "scripts/build_tag_map.py", "classes": entries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / "captioner" / "generation" / "imagenet_words.json"
    parser.add_argument("--out", default=str(default))
    args = parser.parse_args()
    table = build()
    Path(args.out).write_text(json.dumps(table, indent=0, ensure_ascii=False) + "\n", encoding="utf-8")
    words = {e["word"] for e in table["classes"] if e["word"]}
    print(f"wrote {args.out}: {len(table['classes'])} classes, {len(words)} distinct words, "
          f"{len(CORRECTIONS) + len(WORDS)} corrections, {len(DROP)} classes dropped")


if __name__ == "__main__":
    main()
