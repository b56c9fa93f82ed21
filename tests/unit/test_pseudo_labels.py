"""Caption -> pseudo-labels: synonyms, multi-word first (also without spaces), lemmas, dropped captions."""

import json
from pathlib import Path

import pytest

from vpg.data.convert.voc import VOC_CLASSES
from vpg.data.pseudo_labels import CLASS_SETS, PseudoLabeler, lemmatize, load_class_set, tokenize
from vpg.data.shapes import MULTILABEL_CLASSES
from vpg.errors import ConfigurationError, DataError, MissingFileError

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real" / "coco"


@pytest.fixture(scope="module")
def coco():
    return PseudoLabeler("coco")


def names(labeler, caption):
    return [labeler.class_names[c] for c in labeler(caption)]


@pytest.mark.parametrize("caption, expected", [
    ("A puppy sleeping on a couch.", ["dog", "couch"]),  # synonyms
    ("Two women and a man.", ["person"]),  # irregular plural, several synonyms, one class
    ("Several buses parked near benches", ["bus", "bench"]),  # -es plurals
    ("knives and forks on a dining table", ["fork", "knife", "dining table"]),  # -ves, multi-word
    ("a hot dog with mustard", ["hot dog"]),  # multi-word first: not a dog
    ("two hotdogs and a dog", ["dog", "hot dog"]),  # without the space, plural; the real dog counts
    ("a hot-dog", ["hot dog"]),  # hyphen separates words
    ("A teddy bear on a bed", ["bed", "teddy bear"]),  # not a bear
    ("a teddybear", ["teddy bear"]),
    ("men on skis", ["person", "skis"]),
    ("A CELL PHONE and a cellphone", ["cell phone"]),  # case, without spaces
    ("puppies", ["dog"]),  # -ies -> -y
])
def test_fixed_captions(coco, caption, expected):
    assert sorted(names(coco, caption)) == sorted(expected)


def test_matches_are_multi_word_first_then_words(coco):
    assert coco.matches("a dog next to a hot dog") == [("hot dog", coco.class_names.index("hot dog")),
                                                       ("dog", coco.class_names.index("dog"))]
    assert coco.matches("a grizzly bear")[0][0] == "grizzly bear"  # longest phrase wins over "bear"


def test_captions_without_a_class_are_dropped_and_counted(coco):
    corpus = coco.label_corpus(["a cat", "the sky is blue", "", "two dogs", "nothing to see"])
    assert corpus.texts == ["a cat", "two dogs"]
    assert corpus.dropped == 3
    assert corpus.labels == [[coco.class_names.index("cat")], [coco.class_names.index("dog")]]
    assert corpus.per_class == {coco.class_names.index("cat"): 1, coco.class_names.index("dog"): 1}


def test_lemmatize_is_directed_by_the_vocabulary():
    vocab = {"bus", "glass", "child", "leaf", "tie", "person"}
    assert lemmatize("buses", vocab) == "bus"
    assert lemmatize("glasses", vocab) == "glass"
    assert lemmatize("children", vocab) == "child"
    assert lemmatize("leaves", vocab) == "leaf"
    assert lemmatize("ties", vocab) == "tie"  # -ies -> -y ("ty") is not a word here: next rule
    assert lemmatize("bus", vocab) == "bus"  # a vocabulary word is never stripped
    assert lemmatize("grass", vocab) == "grass"  # unknown words stay as they are
    assert tokenize("A hot-dog, 2 CATS!") == ["a", "hot", "dog", "2", "cats"]


def test_real_coco_captions():
    """The real captions of two COCO val2014 images (a skateboarder on a picnic table; a bowl of
    noodle soup with carrots): labels a reader would give, and no caption is dropped."""
    data = json.loads((REAL / "captions_val2014_sample.json").read_text())
    labeler = PseudoLabeler("coco")
    corpus = labeler.label_corpus(a["caption"] for a in data["annotations"])
    assert corpus.dropped == 0
    by_image = {}
    for a, labels in zip(data["annotations"], corpus.labels):
        by_image.setdefault(a["image_id"], []).append({labeler.class_names[c] for c in labels})
    skate, soup = by_image[262148], by_image[393225]
    assert all("person" in s and "dining table" in s for s in skate)  # skateboarder / skate boarder / man
    assert [("skateboard" in s) for s in skate] == [False, False, True, False, True]  # only where it is named
    assert all(s <= {"bowl", "carrot"} and s for s in soup)
    assert sum("carrot" in s for s in soup) == 3


def test_builtin_sets_match_the_datasets_class_lists():
    assert list(CLASS_SETS["voc"]) == list(VOC_CLASSES)
    assert list(CLASS_SETS["shapes"]) == list(MULTILABEL_CLASSES)
    assert len(CLASS_SETS["coco"]) == 80 and len(CLASS_SETS["nuswide"]) == 81
    for name in CLASS_SETS:  # every set builds (no synonym given to two classes) and labels its own names
        labeler = PseudoLabeler(name)
        for c, prompt in enumerate(labeler.prompt_names):
            assert c in labeler(f"a photo of a {prompt}."), (name, prompt)
    assert PseudoLabeler("voc").prompt_names[VOC_CLASSES.index("diningtable")] == "dining table"


def test_dictionary_errors(tmp_path):
    with pytest.raises(ConfigurationError, match="'cup' is given for both"):
        PseudoLabeler({"a": ["cup"], "b": ["mug", "cup"]})
    with pytest.raises(MissingFileError, match="neither a built-in set"):
        load_class_set("no-such-set")
    bad = tmp_path / "syn.json"
    bad.write_text(json.dumps({"cat": []}))
    with pytest.raises(DataError, match=r"syn.json: class 'cat'"):
        load_class_set(str(bad))
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"cat": ["cat", "kitten"], "dog": ["dog"]}))
    assert PseudoLabeler(str(good))("kittens and a dog") == [0, 1]
