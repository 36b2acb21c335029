"""The curated tables scripts/build_tag_map.py turns into phrases a caption can carry (see its docstring).

Every entry says why; the choices follow what people write in image captions (COCO's wording where a class is a
COCO object: "refrigerator", "motorcycle"), not any evaluation set's scores.
"""

from __future__ import annotations

# index: (word, why) -- the caption word, replacing the one the runs, corrections and last-word rule give
WORDS = {
    760: ("refrigerator", "what captions call it (COCO's object name), not 'fridge'"),
    665: ("motorcycle", "'moped': a small motorcycle, which is what captions call it"),
    598: ("living room", "'home theater': photos of a living room with a television"),
    851: ("television", "one word"),
    487: ("cell phone", "'cellular telephone'"),
    886: ("vending machine", "'machine' alone names nothing"),
    919: ("street sign", "'sign' alone is too vague to place in a caption"),
    704: ("parking meter", "'meter' alone names nothing"),
    442: ("bell tower", "'bell cote' is a small bell tower"),
    923: ("plate", "a plate of food"),
    670: ("motorcycle", "'motor scooter': captions call these motorcycles"),
    651: ("kitchen", "'microwave' fires on whole kitchens, and captions name the room"),
    435: ("bathroom", "'bathtub' fires on whole bathrooms, and captions name the room"),
}

# word: phrase -- a caption carries these phrases, article included ("a cup of coffee", not "a coffee")
PHRASES = {
    "coffee": "a cup of coffee",
    "soup": "a bowl of soup",
    "wine": "a glass of wine",
    "plate": "a plate of food",
    "toilet paper": "a roll of toilet paper",
    "beer": "a glass of beer",
}

# mass nouns and plurals: no article ("broccoli", "jeans"); an article before them is ungrammatical
MASS = {"broccoli", "cauliflower", "pasta", "bread", "meat", "chocolate", "corn", "hay", "dough", "guacamole",
        "ice cream", "toilet paper", "coffee", "soup", "wine", "water", "food", "snow", "grass", "sand"}
PLURAL = {"jeans", "binoculars", "sunglasses", "pajamas", "flowers", "mashed potatoes", "mountains"}

# index: reason -- classes that name parts, textures, materials, abstractions or things photos of them rarely show:
# no tag (a caption never carries them)
DROP = {
    535: "part: 'disk brake' (a motorcycle's brake)", 479: "part: 'car wheel'", 475: "part: 'car mirror'",
    581: "part: 'grille'", 600: "part: 'hook'", 677: "part: 'nail'", 783: "part: 'screw'", 464: "part: 'buckle'",
    676: "part: 'muzzle'", 816: "part: 'spindle'", 800: "part: 'slot'", 844: "part: 'switch'",
    810: "part: 'space bar'", 680: "part: 'nipple'", 622: "part: 'lens cap'", 686: "part: 'oil filter'",
    908: "part: 'wing'", 455: "part: 'bottlecap'", 884: "part: 'vault' (a ceiling)", 421: "part: 'bannister'",
    599: "texture: 'honeycomb'", 885: "texture: 'velvet'", 911: "material: 'wool'", 490: "texture: 'chain mail'",
    488: "texture: 'chain'", 616: "texture: 'knot'", 506: "texture: 'coil'", 458: "'brass' (a memorial tablet)",
    916: "abstract: 'web site'", 918: "abstract: 'crossword puzzle'", 611: "abstract: 'jigsaw puzzle'",
    646: "abstract: 'maze'", 922: "abstract: 'menu'", 904: "texture: 'window screen'",
    905: "texture: 'window shade'", 556: "texture: 'fire screen'", 782: "'screen' (CRT): misfires on any display",
    539: "texture: 'doormat'", 533: "texture: 'dishrag'", 689: "'overskirt'", 601: "'hoopskirt'",
    461: "'breastplate'", 524: "'cuirass'", 439: "'bearskin' (a hat)", 715: "'pickelhaube'", 777: "'scabbard'",
    597: "'holster'", 678: "'neck brace'", 615: "'knee pad'", 443: "'bib'", 840: "'swab'", 824: "'stole'",
    552: "'feather boa' (a snake's name)", 551: "'face powder'", 631: "'lotion'", 838: "'sunscreen'",
    711: "'perfume'", 585: "'hair spray'", 584: "'hair slide'", 772: "'safety pin'", 714: "'pick'",
    769: "'rule'", 798: "'slide rule'", 477: "'carpenter's kit'", 540: "'drilling platform' ('platform')",
    729: "'plate rack' ('rack')", 666: "'mortar'", 500: "'cliff dwelling' ('dwelling')",
    640: "'manhole cover' ('cover')", 691: "'oxygen mask'", 570: "'gasmask'", 492: "'chest': misfires on furniture",
    648: "'medicine chest'", 818: "'spotlight': misfires on any lamp", 854: "'theater curtain'",
    498: "'cinema': misfires on any building front", 989: "'hip' (a rose hip)", 549: "'envelope': misfires on "
    "white surfaces", 890: "'volleyball' misfires on any ball game", 426: "'barometer': misfires on clocks",
    749: "'quill': misfires on feathers and pens", 833: "'submarine': misfires on boats in water",
    408: "'amphibian' (a vehicle, named like an animal)",
}

# words whose group is not what the index ranges of build_tag_map.GROUPS say
VEHICLES = {"airplane", "airship", "ambulance", "bicycle", "bike", "boat", "bus", "camper", "canoe", "car",
            "catamaran", "fire truck", "fireboat", "forklift", "golf cart", "gondola", "jeep", "kart", "lifeboat",
            "limousine", "motorcycle", "rickshaw", "rocket", "scooter", "ship", "snowmobile", "snowplow", "taxi",
            "tractor", "trailer", "train", "tram", "tricycle", "truck", "unicycle", "van", "bobsled", "sled",
            "harvester", "thresher", "oxcart", "cart", "wheelbarrow", "tank", "shipwreck"}
PLACES = {"living room", "kitchen", "bathroom", "bakery", "barbershop", "bookshop", "library", "restaurant", "store", "shop", "toyshop",
          "church", "mosque", "monastery", "palace", "castle", "prison", "greenhouse", "barn", "boathouse",
          "planetarium", "patio", "dock", "pier", "bridge", "viaduct", "dam", "fountain", "tower", "bell tower",
          "lumbermill", "apiary", "stage", "yurt", "tent"}

# word: other words references use for the same thing (a tag is right when a reference names it either way)
SYNONYMS = {
    "refrigerator": ["fridge"], "television": ["tv"], "bicycle": ["bike"], "bike": ["bicycle"],
    "motorcycle": ["motorbike", "scooter", "moped"], "airplane": ["plane", "jet", "aircraft", "airliner"],
    "cell phone": ["phone", "cellphone"], "phone": ["telephone", "cellphone"], "couch": ["sofa"],
    "dog": ["puppy"], "cat": ["kitten"], "laptop": ["computer"], "computer": ["laptop", "monitor"],
    "living room": ["room"], "kitchen": ["microwave", "oven", "stove"], "bathroom": ["bathtub", "tub", "bath"], "car": ["taxi", "vehicle"], "taxi": ["car", "cab"], "tram": ["trolley", "train"],
    "train": ["locomotive", "subway"], "ship": ["boat"], "boat": ["ship"], "baseball player": ["batter", "player"],
    "toilet": ["bathroom"], "sink": ["bathroom", "kitchen"], "plate": ["food", "dish", "meal"],
    "racket": ["racquet", "tennis"], "ball": ["frisbee"], "hot dog": ["hotdog"], "burger": ["hamburger", "sandwich"],
    "street sign": ["sign"], "horse": ["pony"], "ox": ["cow", "cattle", "bull"],
    "sheep": ["lamb"], "bird": ["seagull", "pigeon", "duck"], "teddy bear": ["teddy", "bear"],
}
