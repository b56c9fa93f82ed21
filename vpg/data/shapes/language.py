"""Language for vpg-shapes: captions, phrase-grounded captions and referring expressions.

Referring expressions are generated from explicit semantics (``RefSemantics``) and are only
emitted when the resolver finds exactly one referent, so they are never ambiguous.

Resolver semantics (``resolve``) are *lenient*: every object a reasonable reader could take an
expression to mean is returned. An expression is emitted for object t only when the lenient
set is exactly {t} **and** t also satisfies the *strict* reading (``resolve(..., strict=True)``).
So the referent clearly fits and nothing else even arguably fits.

=================  ===========================================  ======================================
construct          strict (the target must satisfy)             lenient (no other object may satisfy)
=================  ===========================================  ======================================
"on the left"      cx < W/3                                     cx < W/2   (right/top/bottom alike)
"A left of B"      A.cx < B.x1 and A.x2 < B.cx                  A.cx < B.cx (right of/above/below alike)
"leftmost"         cx == min cx of the described objects        cx <= min cx + 0.08 W
"biggest"          scale == max scale                           scale >= max scale / 1.25
=================  ===========================================  ======================================

The anchor of a relation ("... left of the blue square") is described by attributes only and
must itself resolve to exactly one object; otherwise the expression resolves to nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vpg.data.shapes.scene import COLOUR_NAMES, SHAPES, Scene, ShapeObject

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PLURALS = {shape: ("crosses" if shape == "cross" else shape + "s") for shape in SHAPES}

SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
SUPERLATIVE_WORDS = {
    "leftmost": ("leftmost",),
    "rightmost": ("rightmost",),
    "topmost": ("topmost", "highest"),
    "bottommost": ("bottommost", "lowest"),
    "biggest": ("biggest", "largest"),
    "smallest": ("smallest",),
}
REGION_WORDS = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
RELATION_WORDS = {
    "left_of": ("left of", "to the left of"),
    "right_of": ("right of", "to the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
GENERIC_NOUNS = ("shape", "object", "one")
ARTICLES = ("the", "a", "an")

POSITION_MARGIN = 0.08  # lenient superlatives: within 8 % of the image side of the extreme
SIZE_RATIO = 1.25  # lenient biggest/smallest: within 25 % of the extreme scale

_WORD_TO_SIZE = {w: s for s, words in SIZE_WORDS.items() for w in words}
_WORD_TO_SUPERLATIVE = {w: s for s, words in SUPERLATIVE_WORDS.items() for w in words}
_PHRASE_TO_RELATION = {w: r for r, words in RELATION_WORDS.items() for w in words}
_PHRASE_TO_REGION = {w: r for r, w in REGION_WORDS.items()}


# ---------------------------------------------------------------------------------------------
# Semantics and resolver


@dataclass(frozen=True)
class Description:
    """Attribute filter; None means "any"."""

    size: str | None = None
    colour: str | None = None
    shape: str | None = None

    def matches(self, obj: ShapeObject) -> bool:
        return (
            (self.size is None or obj.size == self.size)
            and (self.colour is None or obj.colour == self.colour)
            and (self.shape is None or obj.shape == self.shape)
        )

    @property
    def num_attributes(self) -> int:
        return sum(v is not None for v in (self.size, self.colour, self.shape))


@dataclass(frozen=True)
class RefSemantics:
    """Parsed meaning of a referring expression; at most one of region/superlative/relation."""

    target: Description
    region: str | None = None  # left, right, top, bottom
    superlative: str | None = None  # leftmost, rightmost, topmost, bottommost, biggest, smallest
    relation: str | None = None  # left_of, right_of, above, below
    anchor: Description | None = None  # the object of the relation

    @property
    def cost(self) -> float:
        """Amount of information, used to prefer short expressions; spatial words cost more
        than an attribute so "the cross" is preferred over "the leftmost object"."""
        spatial = 1.5 * ((self.region is not None) + (self.superlative is not None))
        relational = 2.0 + self.anchor.num_attributes if self.anchor is not None else 0.0
        return self.target.num_attributes + spatial + relational


def region_holds(region: str, obj: ShapeObject, image_size: int, strict: bool) -> bool:
    edge = image_size / 3 if strict else image_size / 2
    if region == "left":
        return obj.cx < edge
    if region == "right":
        return obj.cx > image_size - edge
    if region == "top":
        return obj.cy < edge
    if region == "bottom":
        return obj.cy > image_size - edge
    raise ValueError(region)


def relation_holds(relation: str, a: ShapeObject, b: ShapeObject, strict: bool) -> bool:
    """Whether "a <relation> b" holds, e.g. relation_holds("left_of", a, b) for "a left of b"."""
    ax1, ay1, ax2, ay2 = a.box
    bx1, by1, bx2, by2 = b.box
    if relation == "left_of":
        return (a.cx < bx1 and ax2 < b.cx) if strict else a.cx < b.cx
    if relation == "right_of":
        return (a.cx > bx2 and ax1 > b.cx) if strict else a.cx > b.cx
    if relation == "above":
        return (a.cy < by1 and ay2 < b.cy) if strict else a.cy < b.cy
    if relation == "below":
        return (a.cy > by2 and ay1 > b.cy) if strict else a.cy > b.cy
    raise ValueError(relation)


def _extremes(
    indices: list[int], objects: Sequence[ShapeObject], superlative: str, image_size: int, strict: bool
) -> list[int]:
    if not indices:
        return []
    if superlative in ("biggest", "smallest"):
        values = [objects[i].scale for i in indices]
        if superlative == "biggest":
            best = max(values)
            limit = best if strict else best / SIZE_RATIO
            return [i for i, v in zip(indices, values) if v >= limit]
        best = min(values)
        limit = best if strict else best * SIZE_RATIO
        return [i for i, v in zip(indices, values) if v <= limit]
    horizontal = superlative in ("leftmost", "rightmost")
    sign = 1.0 if superlative in ("leftmost", "topmost") else -1.0  # minimise sign * coordinate
    values = [sign * (objects[i].cx if horizontal else objects[i].cy) for i in indices]
    best = min(values)
    limit = best if strict else best + POSITION_MARGIN * image_size
    return [i for i, v in zip(indices, values) if v <= limit]


def resolve(sem: RefSemantics, scene: Scene, strict: bool = False) -> list[int]:
    """Indices of the scene objects that ``sem`` refers to (lenient or strict reading)."""
    objects = scene.objects
    found = [i for i, obj in enumerate(objects) if sem.target.matches(obj)]
    if sem.region is not None:
        found = [i for i in found if region_holds(sem.region, objects[i], scene.image_size, strict)]
    if sem.relation is not None:
        anchors = [j for j, obj in enumerate(objects) if sem.anchor.matches(obj)]
        if len(anchors) != 1:
            return []  # "the X left of the Y" presupposes a unique Y
        anchor = anchors[0]
        found = [
            i
            for i in found
            if i != anchor and relation_holds(sem.relation, objects[i], objects[anchor], strict)
        ]
    if sem.superlative is not None:
        found = _extremes(found, objects, sem.superlative, scene.image_size, strict)
    return found


def is_unique_reference(sem: RefSemantics, scene: Scene, target: int) -> bool:
    """The emission rule: only ``target`` fits leniently, and it fits strictly."""
    return resolve(sem, scene) == [target] and target in resolve(sem, scene, strict=True)


# ---------------------------------------------------------------------------------------------
# Surface forms of referring expressions


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _noun_phrase(
    desc: Description, rng: np.random.Generator, article: str | None = "the", superlative: str | None = None
) -> str:
    words = [article] if article else []
    if superlative is not None:
        words.append(_pick(rng, SUPERLATIVE_WORDS[superlative]))
    if desc.size is not None:
        words.append(_pick(rng, SIZE_WORDS[desc.size]))
    if desc.colour is not None:
        words.append(desc.colour)
    if desc.shape is not None:
        words.append(desc.shape)
    else:  # "one" reads badly without an adjective before it
        has_adjective = len(words) > (1 if article else 0)
        words.append(_pick(rng, GENERIC_NOUNS if has_adjective else GENERIC_NOUNS[:2]))
    return " ".join(words)


def render_expression(sem: RefSemantics, rng: np.random.Generator) -> str:
    """Text of ``sem`` with randomly chosen synonyms; ``parse_expression`` inverts it."""
    article = "the" if rng.random() < 0.85 else None  # RefCOCO-style expressions often drop it
    text = _noun_phrase(sem.target, rng, article, sem.superlative)
    if sem.region is not None:
        text += " " + REGION_WORDS[sem.region]
    if sem.relation is not None:
        link = "that is " if rng.random() < 0.2 else ""
        text += f" {link}{_pick(rng, RELATION_WORDS[sem.relation])} {_noun_phrase(sem.anchor, rng, 'the')}"
    return text


_RELATION_RE = re.compile(
    r"^(?P<target>.+?)\s+(?:(?:that|which) is\s+)?"
    r"(?P<rel>to the left of|left of|to the right of|right of|above|over|below|under|beneath)\s+(?P<anchor>.+)$"
)
_REGION_RE = re.compile(r"^(?P<np>.+?)\s+(?P<region>on the left|on the right|at the top|at the bottom)$")


def _parse_noun_phrase(text: str) -> tuple[Description, str | None]:
    size = colour = shape = superlative = None
    tokens = text.split()
    if tokens and tokens[0] in ARTICLES:
        tokens = tokens[1:]
    if not tokens:
        raise ValueError(f"empty noun phrase in {text!r}")
    for token in tokens:
        if token in _WORD_TO_SUPERLATIVE:
            superlative = _WORD_TO_SUPERLATIVE[token]
        elif token in _WORD_TO_SIZE:
            size = _WORD_TO_SIZE[token]
        elif token in COLOUR_NAMES:
            colour = token
        elif token in SHAPES:
            shape = token
        elif token not in GENERIC_NOUNS:
            raise ValueError(f"unknown word {token!r} in {text!r}")
    return Description(size, colour, shape), superlative


def parse_expression(text: str) -> RefSemantics:
    """Semantics of an expression produced by ``render_expression``; raises ValueError otherwise."""
    text = " ".join(text.lower().split())
    relation = anchor = region = None
    match = _RELATION_RE.match(text)
    if match:
        text = match["target"]
        relation = _PHRASE_TO_RELATION[match["rel"]]
        anchor, anchor_superlative = _parse_noun_phrase(match["anchor"])
        if anchor_superlative is not None:
            raise ValueError("superlative anchors are not part of the grammar")
    match = _REGION_RE.match(text)
    if match:
        text = match["np"]
        region = _PHRASE_TO_REGION[match["region"]]
    target, superlative = _parse_noun_phrase(text)
    return RefSemantics(target, region, superlative, relation, anchor)


# ---------------------------------------------------------------------------------------------
# Generating referring expressions

# Attribute subsets in order of preference (shape first: "the star" beats "the red one").
_ATTRIBUTE_SUBSETS = (
    ("shape",),
    ("colour", "shape"),
    ("size", "shape"),
    ("size", "colour", "shape"),
    ("colour",),
    ("size", "colour"),
    ("size",),
    (),
)


def _describe(obj: ShapeObject, attributes: Sequence[str]) -> Description:
    return Description(
        obj.size if "size" in attributes else None,
        obj.colour if "colour" in attributes else None,
        obj.shape if "shape" in attributes else None,
    )


def minimal_description(scene: Scene, index: int) -> Description | None:
    """Shortest attribute-only description that picks out object ``index``, if any."""
    obj = scene.objects[index]
    for attributes in _ATTRIBUTE_SUBSETS:
        desc = _describe(obj, attributes)
        if [i for i, o in enumerate(scene.objects) if desc.matches(o)] == [index]:
            return desc
    return None


def candidate_semantics(scene: Scene, index: int) -> list[RefSemantics]:
    """Every unambiguous semantics for object ``index`` that the grammar can express.

    Attribute-only descriptions come first; spatial words are only added to attribute sets
    that are not unique on their own (a human adds "on the left" only when it is needed).
    """
    objects = scene.objects
    target = objects[index]
    anchors = [(j, minimal_description(scene, j)) for j in range(len(objects)) if j != index]
    anchors = [(j, desc) for j, desc in anchors if desc is not None]
    found: list[RefSemantics] = []
    for attributes in _ATTRIBUTE_SUBSETS:
        desc = _describe(target, attributes)
        matching = [i for i, o in enumerate(objects) if desc.matches(o)]
        if matching == [index]:
            found.append(RefSemantics(desc))
            continue
        options = [RefSemantics(desc, region=region) for region in REGION_WORDS]
        options += [
            RefSemantics(desc, superlative=sup)
            for sup in SUPERLATIVE_WORDS
            if not (desc.size is not None and sup in ("biggest", "smallest"))
        ]
        for j, anchor_desc in anchors:
            for relation in RELATION_WORDS:
                if relation_holds(relation, target, objects[j], strict=True):
                    options.append(RefSemantics(desc, relation=relation, anchor=anchor_desc))
        found.extend(sem for sem in options if is_unique_reference(sem, scene, index))
    return found


def referring_expressions(
    scene: Scene, index: int, rng: np.random.Generator, max_expressions: int = 3
) -> list[tuple[str, RefSemantics]]:
    """1..max_expressions distinct (text, semantics) pairs for object ``index``; [] if none exist.

    The cheapest semantics always comes first; the rest are random extra ones (longer
    attribute lists, spatial words).
    """
    pool = candidate_semantics(scene, index)
    if not pool:
        return []
    cheapest = min(sem.cost for sem in pool)
    first_choices = [sem for sem in pool if sem.cost == cheapest]
    chosen = [first_choices[int(rng.integers(len(first_choices)))]]
    rest = [sem for sem in pool if sem != chosen[0]]
    want = int(rng.integers(1, max_expressions + 1))
    for k in rng.permutation(len(rest))[: want - 1]:
        chosen.append(rest[int(k)])
    results: list[tuple[str, RefSemantics]] = []
    seen: set[str] = set()
    for sem in chosen:
        text = render_expression(sem, rng)
        if text not in seen:
            seen.add(text)
            results.append((text, sem))
    return results


# ---------------------------------------------------------------------------------------------
# Captions


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def describe(obj: ShapeObject, size: bool = True, colour: bool = True) -> str:
    """ "small red circle" without an article."""
    words = ([obj.size] if size else []) + ([obj.colour] if colour else []) + [obj.shape]
    return " ".join(words)


def join_list(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def count_phrase(count: int, singular: str, plural: str) -> str:
    return with_article(singular) if count == 1 else f"{NUMBER_WORDS[count]} {plural}"


def location_phrase(obj: ShapeObject, image_size: int) -> str:
    """Absolute location by image thirds: "on the left", "in the top right corner", ..."""
    third = image_size / 3
    h = "left" if obj.cx < third else "right" if obj.cx > 2 * third else None
    v = "top" if obj.cy < third else "bottom" if obj.cy > 2 * third else None
    if h and v:
        return f"in the {v} {h} corner"
    if h:
        return f"on the {h}"
    if v:
        return f"at the {v}"
    return "in the middle"


def background_phrase(scene: Scene) -> str:
    kind = scene.background.kind
    tone = scene.background.tone
    return f"a {tone} {kind} background" if kind != "plain" else f"a plain {tone} background"


def relation_sentence(a: ShapeObject, b: ShapeObject, rng: np.random.Generator) -> str | None:
    """ "a red circle above a blue square" if some relation clearly holds, else None."""
    relations = [r for r in RELATION_WORDS if relation_holds(r, a, b, strict=True)]
    if not relations:
        return None
    relation = relations[int(rng.integers(len(relations)))]
    words = {"left_of": "to the left of", "right_of": "to the right of", "above": "above", "below": "below"}[
        relation
    ]
    use_size = rng.random() < 0.5
    return f"{with_article(describe(a, use_size))} {words} {with_article(describe(b, use_size))}"


def _groups(objects: Sequence[ShapeObject], key) -> list[tuple[object, list[int]]]:
    """Indices grouped by ``key`` in first-appearance order."""
    groups: dict[object, list[int]] = {}
    for i, obj in enumerate(objects):
        groups.setdefault(key(obj), []).append(i)
    return list(groups.items())


def scene_captions(
    scene: Scene, rng: np.random.Generator, min_captions: int = 5, max_captions: int = 7
) -> list[str]:
    """min..max distinct true captions describing some or all objects of the scene."""
    objects = scene.objects
    n = len(objects)
    order = [int(i) for i in rng.permutation(n)]
    listed = [with_article(describe(objects[i], size=rng.random() < 0.6)) for i in order]
    background = background_phrase(scene)
    focus = objects[order[0]]
    candidates: list[str | None] = [
        f"{with_article(describe(focus))} {location_phrase(focus, scene.image_size)}",
        f"there is {with_article(describe(focus, size=False))} {location_phrase(focus, scene.image_size)}",
        f"{join_list(listed)} on {background}",
        f"{count_phrase(n, 'shape', 'shapes')} on {background}",
    ]
    if n == 1:
        candidates += [
            with_article(describe(focus)),
            f"a photo of {with_article(describe(focus))}",
            f"a single {describe(focus, size=False)}",
            f"{with_article(focus.colour + ' shape')} on {background}",
        ]
    else:
        candidates += [
            f"{NUMBER_WORDS[n]} shapes: {join_list(listed)}",
            relation_sentence(objects[order[0]], objects[order[1]], rng),
            relation_sentence(objects[order[-1]], objects[order[0]], rng),
            f"{with_article(describe(focus))} and {count_phrase(n - 1, 'other shape', 'other shapes')}",
            join_list(
                [
                    count_phrase(len(ids), f"{c} {s}", f"{c} {PLURALS[s]}")
                    for (c, s), ids in _groups(objects, lambda o: (o.colour, o.shape))
                ]
            ),
            join_list(
                [count_phrase(len(ids), s, PLURALS[s]) for s, ids in _groups(objects, lambda o: o.shape)]
            ),
            join_list(
                [
                    count_phrase(len(ids), f"{c} shape", f"{c} shapes")
                    for c, ids in _groups(objects, lambda o: o.colour)
                ]
            ),
        ]
    unique = list(dict.fromkeys(c for c in candidates if c))
    keep = min(len(unique), int(rng.integers(min_captions, max_captions + 1)))
    return [unique[int(k)] for k in rng.permutation(len(unique))[:keep]]


@dataclass(frozen=True)
class GroundedCaption:
    """A caption whose phrases are substrings grounded by one or more object indices."""

    caption: str
    phrases: list[str]
    objects: list[list[int]]
    entity_ids: list[str]
    phrase_types: list[str]


def grounded_caption(scene: Scene, rng: np.random.Generator) -> GroundedCaption:
    """Flickr30k-Entities-like caption: 1-3 entity phrases, a plural phrase for same-looking objects.

    Entities are objects grouped by (colour, shape): a group of k >= 2 is one plural phrase
    ("two red circles", type "group", id "g<i>_<j>") grounded by k boxes; a single object
    is a singular phrase ("a small red circle", type = its shape kind, id "o<i>").
    """
    objects = scene.objects
    entities = []  # (phrase, indices, entity_id, type)
    for (colour, shape), ids in _groups(objects, lambda o: (o.colour, o.shape)):
        if len(ids) > 1:
            entities.append(
                (
                    f"{NUMBER_WORDS[len(ids)]} {colour} {PLURALS[shape]}",
                    ids,
                    "g" + "_".join(map(str, ids)),
                    "group",
                )
            )
        else:
            obj = objects[ids[0]]
            entities.append((with_article(describe(obj, size=rng.random() < 0.5)), ids, f"o{ids[0]}", shape))
    count = int(rng.integers(1, min(3, len(entities)) + 1))
    picked = [entities[int(k)] for k in rng.permutation(len(entities))[:count]]
    phrases = [p[0] for p in picked]
    background = background_phrase(scene)
    templates = [f"{join_list(phrases)} on {background}", f"an image of {join_list(phrases)}"]
    if count == 2 and len(picked[0][1]) == 1 and len(picked[1][1]) == 1:
        a, b = objects[picked[0][1][0]], objects[picked[1][1][0]]
        relations = [r for r in RELATION_WORDS if relation_holds(r, a, b, strict=True)]
        for relation in relations:
            words = {
                "left_of": "to the left of",
                "right_of": "to the right of",
                "above": "above",
                "below": "below",
            }[relation]
            templates.append(f"{phrases[0]} {words} {phrases[1]}")
    else:
        verb = "is" if len(picked[0][1]) == 1 and count == 1 else "are"
        templates.append(f"there {verb} {join_list(phrases)}")
    caption = templates[int(rng.integers(len(templates)))]
    return GroundedCaption(
        caption=caption,
        phrases=phrases,
        objects=[list(p[1]) for p in picked],
        entity_ids=[p[2] for p in picked],
        phrase_types=[p[3] for p in picked],
    )


# ---------------------------------------------------------------------------------------------
# Prompts for the pretraining corpus


def single_object_captions(scene: Scene, rng: np.random.Generator, count: int = 6) -> list[str]:
    """CLIP-style class prompts for a one-object image ("a photo of a red circle", ...)."""
    obj = scene.objects[0]
    name = f"{obj.colour} {obj.shape}"
    sized = f"{obj.size} {name}"
    options = [
        f"a photo of {with_article(name)}",
        f"a photo of {with_article(sized)}",
        with_article(name),
        with_article(sized),
        f"{with_article(name)} on {background_phrase(scene)}",
        f"a drawing of {with_article(name)}",
        f"a photo of {with_article(obj.shape)}",
        f"{with_article(obj.colour)} shape",
        f"{with_article(name)} {location_phrase(obj, scene.image_size)}",
    ]
    # the canonical zero-shot prompt is always present; the rest add variety
    return [options[0]] + [options[1 + int(k)] for k in rng.permutation(len(options) - 1)[: count - 1]]


def depth_map_captions(kind: str, rng: np.random.Generator, count: int = 5) -> list[str]:
    """Prompts for a depth render of a 3D primitive ("a depth map of a cone", ...)."""
    options = [
        f"a depth map of {with_article(kind)}",
        f"a depth image of {with_article(kind)}",
        f"a grayscale depth map of {with_article(kind)}",
        f"a rendered depth map of {with_article(kind)}",
        f"a point cloud of {with_article(kind)}",
        f"a 3d {kind}",
        with_article(kind),
    ]
    # the canonical zero-shot prompt is always present; the rest add variety
    return [options[0]] + [options[1 + int(k)] for k in rng.permutation(len(options) - 1)[: count - 1]]
