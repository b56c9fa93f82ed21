"""Caption -> multi-label pseudo-labels through per-class synonym dictionaries (TaI-DPT).

TaI-DPT (Guo et al., CVPR 2023) trains prompts on captions alone: a caption is labelled with
every class one of whose synonyms it mentions. The procedure (the paper's, reimplemented):

1. lower-case the caption and split it into words (letters and digits; hyphens and
   punctuation separate words, so "hot-dog" is "hot dog");
2. lemmatise every word (plural nouns -> singular, see :func:`lemmatize`);
3. match multi-word synonyms first, longest first ("teddy bear" is a teddy bear, not a bear;
   "hot dog" is not a dog); their words are then used up;
4. match single words among the words left. A multi-word synonym also matches written
   without spaces ("hotdog", "skateboard" for "skate board");
5. captions matching no class are dropped (and counted by :meth:`PseudoLabeler.label_corpus`).

Lemmatisation has to work offline (NLTK's WordNet data cannot be downloaded here), so it is a
rule set directed by the vocabulary: a word that is not itself a synonym word is replaced by
the first of its candidate singular forms that is one (irregular plurals, -men -> -man, -ies
-> -y, -ves -> -f/-fe, -es, -s). Only nouns matter for matching — the synonyms are nouns and
WordNet's default part of speech, which the authors used, is the noun — and a word whose
candidates are not synonym words can never match anything, so rules never over-stem into a
false match that the vocabulary does not already contain.

Built-in dictionaries (:data:`CLASS_SETS`): ``voc`` (VOC2007's 20 classes, converter names),
``coco`` (COCO's 80, instances.json names), ``nuswide`` (NUS-WIDE's 81 concepts,
``Concepts81.txt`` names) and ``shapes`` (vpg-shapes' 8 shape kinds). The first synonym of each
class is the name used in prompts ("dining table" for VOC's ``diningtable``). The dictionaries
were written for vpg from the classes' usual names; they follow the authors' idea (person =
{person, people, man, woman, ...}), not their files. A JSON file ``{class: [synonyms]}`` can
be given instead (:func:`load_class_set`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vpg.errors import ConfigurationError, DataError, MissingFileError

_WORD = re.compile(r"[a-z0-9]+")

# plural -> singular forms no suffix rule produces
IRREGULAR_PLURALS = {
    "men": "man", "children": "child", "feet": "foot", "teeth": "tooth", "geese": "goose", "mice": "mouse", "oxen": "ox",
    "knives": "knife", "wolves": "wolf", "leaves": "leaf", "shelves": "shelf", "calves": "calf",
    "halves": "half", "loaves": "loaf", "scarves": "scarf", "wives": "wife", "lives": "life",
    "cacti": "cactus", "fungi": "fungus", "dice": "die", "people": "person",
}  # fmt: skip


def tokenize(text: str) -> list[str]:
    """Lower-cased words of ``text`` (runs of letters and digits)."""
    return _WORD.findall(text.lower())


def singular_candidates(word: str) -> list[str]:
    """Candidate singular forms of a (possibly plural) noun, most specific rule first."""
    out = []
    if word in IRREGULAR_PLURALS:
        out.append(IRREGULAR_PLURALS[word])
    if word.endswith("men") and len(word) > 3:
        out.append(word[:-3] + "man")  # women, firemen, policemen
    if word.endswith("ies") and len(word) > 4:
        out.append(word[:-3] + "y")  # puppies
    if word.endswith("ves") and len(word) > 4:
        out += [word[:-3] + "f", word[:-3] + "fe"]
    if word.endswith("es") and len(word) > 3:
        out.append(word[:-2])  # buses, boxes, benches, glasses
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        out.append(word[:-1])  # dogs, ties, skis
    return out


def lemmatize(word: str, vocabulary: set[str] | frozenset[str]) -> str:
    """``word`` itself if it is in ``vocabulary``, else its first singular candidate that is,
    else ``word`` unchanged (it cannot match a synonym then anyway)."""
    if word in vocabulary:
        return word
    for candidate in singular_candidates(word):
        if candidate in vocabulary:
            return candidate
    return word


# ----------------------------------------------------------------------------- dictionaries

_PERSON = (
    "person", "people", "man", "woman", "boy", "girl", "child", "kid", "baby", "toddler", "guy", "lady",
    "gentleman", "adult", "teenager", "teen", "human", "passenger", "pedestrian", "player", "skier",
    "surfer", "skateboarder", "skate boarder", "snowboarder", "rider", "biker", "cyclist", "bicyclist",
    "motorcyclist", "crowd", "worker", "officer", "policeman", "soldier", "chef", "athlete", "batter",
    "catcher", "umpire", "bride", "groom", "student", "tourist", "spectator", "family", "couple", "cowboy",
    "fireman", "farmer", "audience",
)  # fmt: skip
_BIRD = (
    "bird", "birdie", "parrot", "pigeon", "dove", "duck", "duckling", "seagull", "gull", "goose", "swan",
    "eagle", "hawk", "owl", "sparrow", "crow", "pelican", "penguin", "flamingo", "ostrich", "heron",
    "robin", "hen", "rooster", "chick",
)  # fmt: skip
_BOAT = ("boat", "ship", "sailboat", "sail boat", "yacht", "canoe", "kayak", "ferry", "vessel", "raft",
         "steamboat", "speedboat", "rowboat", "tugboat", "catamaran", "gondola")
_CAR = ("car", "taxi", "cab", "sedan", "suv", "jeep", "automobile", "minivan", "van", "limousine", "limo")
_PLANE = ("airplane", "aeroplane", "air plane", "plane", "jet", "jetliner", "airliner", "aircraft", "airbus")
_MOTORBIKE = ("motorcycle", "motorbike", "motor bike", "motor cycle", "moped", "scooter", "dirt bike",
              "dirtbike", "chopper")
_BICYCLE = ("bicycle", "bike", "cycle", "tandem")
_BUS = ("bus", "minibus", "double decker", "coach bus", "school bus", "trolleybus")
_TRAIN = ("train", "locomotive", "tram", "streetcar", "subway", "railcar", "monorail")
_CAT = ("cat", "kitten", "kitty", "feline")
_DOG = ("dog", "pup", "puppy", "doggy", "doggie", "canine", "poodle", "terrier", "labrador", "retriever",
        "bulldog", "pug", "husky", "collie", "dachshund", "beagle", "chihuahua", "sheepdog")
_HORSE = ("horse", "pony", "foal", "stallion", "mare", "colt")
_SHEEP = ("sheep", "lamb", "ewe")
_COW = ("cow", "cattle", "bull", "calf", "ox", "heifer", "steer")
_CHAIR = ("chair", "stool", "armchair", "highchair", "high chair", "recliner", "rocking chair")
_SOFA = ("couch", "sofa", "loveseat", "love seat", "futon", "settee")
_TABLE = ("dining table", "table", "picnic table", "coffee table", "kitchen table", "desk")
_PLANT = ("potted plant", "plant", "houseplant", "house plant", "flowerpot", "flower pot", "planter",
          "bonsai")
_TV = ("tv", "television", "monitor", "tv monitor", "computer monitor", "screen", "flat screen",
       "flatscreen", "tv screen")

VOC_SYNONYMS: dict[str, tuple[str, ...]] = {
    "aeroplane": ("aeroplane", *(s for s in _PLANE if s != "aeroplane")),
    "bicycle": _BICYCLE,
    "bird": _BIRD,
    "boat": _BOAT,
    "bottle": ("bottle", "flask", "wine bottle", "water bottle"),
    "bus": _BUS,
    "car": _CAR,
    "cat": _CAT,
    "chair": _CHAIR,
    "cow": _COW,
    "diningtable": _TABLE,
    "dog": _DOG,
    "horse": _HORSE,
    "motorbike": ("motorbike", *(s for s in _MOTORBIKE if s != "motorbike")),
    "person": _PERSON,
    "pottedplant": _PLANT,
    "sheep": _SHEEP,
    "sofa": ("sofa", *(s for s in _SOFA if s != "sofa")),
    "train": _TRAIN,
    "tvmonitor": ("tv monitor", *(s for s in _TV if s != "tv monitor")),
}

COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": _PERSON,
    "bicycle": _BICYCLE,
    "car": _CAR,
    "motorcycle": _MOTORBIKE,
    "airplane": _PLANE,
    "bus": _BUS,
    "train": _TRAIN,
    "truck": ("truck", "pickup", "pickup truck", "lorry", "fire truck", "firetruck", "fire engine",
              "dump truck", "semi truck", "tow truck"),
    "boat": _BOAT,
    "traffic light": ("traffic light", "traffic signal", "stop light", "stoplight", "street light"),
    "fire hydrant": ("fire hydrant", "hydrant", "fireplug"),
    "stop sign": ("stop sign",),
    "parking meter": ("parking meter", "meter"),
    "bench": ("bench", "park bench"),
    "bird": _BIRD,
    "cat": _CAT,
    "dog": _DOG,
    "horse": _HORSE,
    "sheep": _SHEEP,
    "cow": _COW,
    "elephant": ("elephant",),
    "bear": ("bear", "polar bear", "grizzly", "grizzly bear", "brown bear", "black bear", "cub"),
    "zebra": ("zebra",),
    "giraffe": ("giraffe",),
    "backpack": ("backpack", "back pack", "knapsack", "rucksack"),
    "umbrella": ("umbrella", "parasol"),
    "handbag": ("handbag", "hand bag", "purse", "shoulder bag", "clutch bag"),
    "tie": ("tie", "necktie", "neck tie", "bow tie", "bowtie"),
    "suitcase": ("suitcase", "luggage", "baggage", "carry on bag"),
    "frisbee": ("frisbee", "flying disc"),
    "skis": ("skis", "ski"),
    "snowboard": ("snowboard", "snow board"),
    "sports ball": ("sports ball", "ball", "soccer ball", "football", "tennis ball", "basketball",
                    "volleyball", "softball", "beach ball"),
    "kite": ("kite",),
    "baseball bat": ("baseball bat", "bat"),
    "baseball glove": ("baseball glove", "glove", "mitt", "baseball mitt"),
    "skateboard": ("skateboard", "skate board"),
    "surfboard": ("surfboard", "surf board", "boogie board", "bodyboard"),
    "tennis racket": ("tennis racket", "racket", "racquet", "tennis racquet"),
    "bottle": ("bottle", "flask", "wine bottle", "water bottle"),
    "wine glass": ("wine glass", "glass", "goblet", "champagne glass"),
    "cup": ("cup", "mug", "teacup", "coffee cup", "tea cup"),
    "fork": ("fork",),
    "knife": ("knife", "blade"),
    "spoon": ("spoon", "ladle"),
    "bowl": ("bowl",),
    "banana": ("banana",),
    "apple": ("apple",),
    "sandwich": ("sandwich", "burger", "hamburger", "cheeseburger", "sub", "panini", "wrap"),
    "orange": ("orange", "tangerine", "mandarin"),
    "broccoli": ("broccoli",),
    "carrot": ("carrot",),
    "hot dog": ("hot dog", "chili dog", "corn dog", "frankfurter", "sausage"),
    "pizza": ("pizza",),
    "donut": ("donut", "doughnut"),
    "cake": ("cake", "cupcake", "cheesecake"),
    "chair": _CHAIR,
    "couch": _SOFA,
    "potted plant": _PLANT,
    "bed": ("bed", "bunk bed", "mattress"),
    "dining table": _TABLE,
    "toilet": ("toilet", "urinal", "commode", "toilet bowl"),
    "tv": _TV,
    "laptop": ("laptop", "laptop computer", "notebook computer", "macbook", "computer"),
    "mouse": ("mouse", "computer mouse"),
    "remote": ("remote", "remote control", "controller", "game controller", "wii remote", "wii controller",
               "wiimote"),
    "keyboard": ("keyboard",),
    "cell phone": ("cell phone", "phone", "smartphone", "mobile phone", "iphone", "telephone"),
    "microwave": ("microwave", "microwave oven"),
    "oven": ("oven", "stove", "stovetop", "stove top"),
    "toaster": ("toaster",),
    "sink": ("sink", "basin"),
    "refrigerator": ("refrigerator", "fridge", "freezer"),
    "book": ("book", "novel", "textbook", "bookshelf"),
    "clock": ("clock", "alarm clock", "clock tower"),
    "vase": ("vase",),
    "scissors": ("scissors", "scissor", "shears"),
    "teddy bear": ("teddy bear", "teddy", "stuffed bear", "stuffed animal", "plush bear"),
    "hair drier": ("hair drier", "hair dryer", "blow dryer", "blow drier"),
    "toothbrush": ("toothbrush", "tooth brush"),
}

NUSWIDE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "airport": ("airport", "airfield", "runway", "terminal"),
    "animal": ("animal", "wildlife", "creature", "pet"),
    "beach": ("beach", "shore", "seashore", "seaside", "coast"),
    "bear": ("bear", "polar bear", "grizzly"),
    "birds": ("birds", *_BIRD),
    "boats": ("boats", *_BOAT),
    "book": ("book", "novel", "textbook"),
    "bridge": ("bridge",),
    "buildings": ("buildings", "building", "skyscraper", "architecture"),
    "cars": ("cars", *_CAR),
    "castle": ("castle", "palace", "fortress"),
    "cat": _CAT,
    "cityscape": ("cityscape", "city", "skyline", "downtown"),
    "clouds": ("clouds", "cloud", "cloudy"),
    "computer": ("computer", "laptop", "pc", "desktop"),
    "coral": ("coral", "reef"),
    "cow": _COW,
    "dancing": ("dancing", "dance", "dancer"),
    "dog": _DOG,
    "earthquake": ("earthquake", "quake", "rubble"),
    "elk": ("elk", "deer", "moose", "reindeer", "antelope"),
    "fire": ("fire", "flame", "blaze", "campfire", "bonfire"),
    "fish": ("fish", "goldfish", "salmon", "trout"),
    "flags": ("flags", "flag", "banner"),
    "flowers": ("flowers", "flower", "blossom", "bloom", "rose", "tulip", "daisy", "sunflower", "lily"),
    "food": ("food", "meal", "dish", "dessert", "dinner", "lunch", "breakfast"),
    "fox": ("fox",),
    "frost": ("frost", "frosty", "icicle"),
    "garden": ("garden", "backyard"),
    "glacier": ("glacier", "iceberg"),
    "grass": ("grass", "lawn", "meadow"),
    "harbor": ("harbor", "harbour", "port", "marina", "dock", "pier"),
    "horses": ("horses", *_HORSE),
    "house": ("house", "home", "cottage", "cabin", "hut"),
    "lake": ("lake", "pond"),
    "leaf": ("leaf", "foliage"),
    "map": ("map",),
    "military": ("military", "army", "soldier", "troop", "tank", "navy"),
    "moon": ("moon",),
    "mountain": ("mountain", "hill", "peak", "summit"),
    "nighttime": ("nighttime", "night", "night time", "midnight"),
    "ocean": ("ocean", "sea"),
    "person": ("person", "people", "man", "woman", "boy", "girl", "child", "kid", "baby", "guy", "lady",
               "human", "portrait", "crowd", "family"),
    "plane": ("plane", "airplane", "aeroplane", "jet", "aircraft", "airliner"),
    "plants": ("plants", "plant", "shrub", "bush", "cactus", "fern"),
    "police": ("police", "policeman", "cop", "officer"),
    "protest": ("protest", "protester", "demonstration", "rally", "march"),
    "railroad": ("railroad", "railway", "rail", "train track", "track"),
    "rainbow": ("rainbow",),
    "reflection": ("reflection", "mirror"),
    "road": ("road", "highway", "freeway"),
    "rocks": ("rocks", "rock", "stone", "boulder", "cliff"),
    "running": ("running", "runner", "jogging", "jogger", "marathon"),
    "sand": ("sand", "dune", "desert"),
    "sign": ("sign", "signboard", "billboard", "signpost"),
    "sky": ("sky",),
    "snow": ("snow", "snowy", "snowfall"),
    "soccer": ("soccer", "football"),
    "sports": ("sports", "sport", "athlete", "game", "match"),
    "statue": ("statue", "sculpture", "monument"),
    "street": ("street", "alley", "avenue"),
    "sun": ("sun", "sunshine", "sunlight"),
    "sunset": ("sunset", "sunrise", "dusk", "dawn"),
    "surf": ("surf", "surfing", "surfer", "wave"),
    "swimmers": ("swimmers", "swimmer", "swimming", "swim"),
    "tattoo": ("tattoo",),
    "temple": ("temple", "shrine", "pagoda"),
    "tiger": ("tiger",),
    "tower": ("tower",),
    "town": ("town", "village"),
    "toy": ("toy", "doll", "lego"),
    "train": _TRAIN,
    "tree": ("tree", "forest", "palm", "woods"),
    "valley": ("valley", "canyon"),
    "vehicle": ("vehicle", "truck", "bus", "motorcycle", "bicycle", "bike", "van"),
    "water": ("water",),
    "waterfall": ("waterfall", "cascade"),
    "wedding": ("wedding", "bride", "groom"),
    "whales": ("whales", "whale", "dolphin"),
    "window": ("window",),
    "zebra": ("zebra",),
}
# "van" is a car in NUS-WIDE's "cars" as everywhere else; keep it in one class only
NUSWIDE_SYNONYMS["vehicle"] = tuple(s for s in NUSWIDE_SYNONYMS["vehicle"] if s != "van")

SHAPES_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "disk", "dot"),
    "ring": ("ring", "annulus", "donut", "doughnut", "hoop"),
    "hexagon": ("hexagon",),
    "square": ("square",),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus", "lozenge"),
    "star": ("star",),
    "cross": ("cross", "plus sign"),
}

CLASS_SETS: dict[str, dict[str, tuple[str, ...]]] = {
    "voc": VOC_SYNONYMS,
    "coco": COCO_SYNONYMS,
    "nuswide": NUSWIDE_SYNONYMS,
    "shapes": SHAPES_SYNONYMS,
}


def load_class_set(spec: str | Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """A built-in set name (``voc``, ``coco``, ``nuswide``, ``shapes``), a JSON file
    ``{class: [synonym, ...]}``, or such a mapping -> {class: synonyms} (class order kept)."""
    if isinstance(spec, Mapping):
        raw, where = spec, "the synonyms mapping"
    elif spec in CLASS_SETS:
        return dict(CLASS_SETS[spec])
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise MissingFileError(f"synonym dictionary {spec!r}: neither a built-in set {sorted(CLASS_SETS)} "
                                   "nor a JSON file")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON: {err}") from None
        where = str(path)
    if not isinstance(raw, Mapping) or not raw:
        raise DataError(f"{where}: expected a non-empty object {{class: [synonym, ...]}}")
    out = {}
    for name, synonyms in raw.items():
        if isinstance(synonyms, str) or not isinstance(synonyms, Sequence) or not synonyms or \
                not all(isinstance(s, str) and s.strip() for s in synonyms):
            raise DataError(f"{where}: class {name!r}: synonyms must be a non-empty list of non-empty strings")
        out[str(name)] = tuple(synonyms)
    return out


@dataclass
class CorpusLabels:
    """Result of :meth:`PseudoLabeler.label_corpus`."""

    texts: list[str]  # the captions that matched at least one class
    labels: list[list[int]]  # their classes (sorted indices)
    dropped: int  # captions that matched no class
    per_class: Counter  # class index -> captions labelled with it


class PseudoLabeler:
    """Labels captions with the classes whose synonyms they mention (module docstring).

    synonyms: {class name: synonyms}, or a spec for :func:`load_class_set`. A synonym given for
    two classes is an error (the dictionaries must say what a word means).
    """

    def __init__(self, synonyms: str | Mapping[str, Sequence[str]]):
        table = load_class_set(synonyms)
        self.class_names: list[str] = list(table)
        self.prompt_names: list[str] = [syns[0] for syns in table.values()]
        vocabulary: set[str] = set()
        for syns in table.values():
            for s in syns:
                vocabulary.update(tokenize(s))
        self.vocabulary = frozenset(vocabulary)
        self.phrases: dict[tuple[str, ...], int] = {}  # lemmatised synonym words -> class
        owner: dict[tuple[str, ...], str] = {}
        for index, (name, syns) in enumerate(table.items()):
            for s in syns:
                words = tuple(lemmatize(w, self.vocabulary) for w in tokenize(s))
                if not words:
                    raise ConfigurationError(f"class {name!r}: synonym {s!r} has no words")
                keys = [words] + ([("".join(words),)] if len(words) > 1 else [])  # also without spaces
                for key in keys:
                    if key in owner and owner[key] != name:
                        raise ConfigurationError(f"synonym {' '.join(key)!r} is given for both {owner[key]!r} "
                                                 f"and {name!r}")
                    owner[key] = name
                    self.phrases[key] = index
        self.vocabulary = frozenset(vocabulary | {k[0] for k in self.phrases if len(k) == 1})
        self.longest = max(len(k) for k in self.phrases)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def words(self, caption: str) -> list[str]:
        """Lower-cased, lemmatised words of a caption."""
        return [lemmatize(w, self.vocabulary) for w in tokenize(caption)]

    def matches(self, caption: str) -> list[tuple[str, int]]:
        """(matched phrase, class) in match order: multi-word synonyms (longest first), then words."""
        words = self.words(caption)
        used = [False] * len(words)
        found = []
        for n in range(self.longest, 0, -1):  # n = 1 is the single-word pass, after every multi-word one
            for start in range(len(words) - n + 1):
                if any(used[start : start + n]):
                    continue
                key = tuple(words[start : start + n])
                if key in self.phrases:
                    found.append((" ".join(key), self.phrases[key]))
                    used[start : start + n] = [True] * n
        return found

    def __call__(self, caption: str) -> list[int]:
        """Sorted class indices a caption mentions (empty: no class)."""
        return sorted({c for _, c in self.matches(caption)})

    def label_corpus(self, captions: Iterable[str]) -> CorpusLabels:
        texts, labels, dropped, per_class = [], [], 0, Counter()
        for caption in captions:
            classes = self(caption)
            if not classes:
                dropped += 1
                continue
            texts.append(caption)
            labels.append(classes)
            per_class.update(classes)
        return CorpusLabels(texts, labels, dropped, per_class)


__all__ = ["CLASS_SETS", "CorpusLabels", "PseudoLabeler", "lemmatize", "load_class_set", "singular_candidates",
           "tokenize"]
