"""vpg-shapes: determinism, geometry, unambiguous referring expressions, schemas, splits, cache."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
from datasets import DatasetDict
from datasets import Image as ImageFeature
from PIL import Image

from vpg.data import schemas
from vpg.data.shapes import (
    ANGULAR_SHAPES,
    CLS_CLASSES,
    COLOURS,
    DEFAULT_SPLIT_SIZES,
    PRIMITIVES_3D,
    ROUND_SHAPES,
    SHAPES,
    SIZE_RANGES,
    build_dataset,
    builders,
    features_for,
    generate_scene,
    load_shapes,
    make_pretrain_corpus,
    parse_expression,
    resolve,
)
from vpg.data.shapes.language import (
    Description,
    RefSemantics,
    grounded_caption,
    is_unique_reference,
    referring_expressions,
    scene_captions,
)
from vpg.data.shapes.scene import Background, Scene, ShapeObject, _iou_and_cover


def _image_bytes(dataset) -> list[bytes]:
    return [row["bytes"] for row in list(dataset.cast_column("image", ImageFeature(decode=False))["image"])]


def _scene(seed: int, index: int, **kwargs) -> Scene:
    return generate_scene(np.random.default_rng([seed, index]), **kwargs)


# ---------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_same_bytes_and_annotations_different_seed_differs():
    a = build_dataset("shapes-captions", {"train": 6}, seed=3, num_workers=1)["train"]
    b = build_dataset("shapes-captions", {"train": 6}, seed=3, num_workers=1)["train"]
    c = build_dataset("shapes-captions", {"train": 6}, seed=4, num_workers=1)["train"]
    assert _image_bytes(a) == _image_bytes(b)
    assert list(a["captions"]) == list(b["captions"])
    assert set(_image_bytes(a)).isdisjoint(_image_bytes(c))


def test_items_do_not_depend_on_workers_or_split_size():
    sizes = {"train": 20, "val": 4}
    serial = builders.generate_rows("shapes-ref", sizes, seed=1, num_workers=1)
    parallel = builders.generate_rows("shapes-ref", sizes, seed=1, num_workers=2)
    assert serial == parallel
    # item i of a split is the same whether the split has 20 or 5 items
    shorter = builders.generate_rows("shapes-ref", {"train": 5}, seed=1, num_workers=1)
    ids = {row["image_id"] for row in shorter["train"]}
    assert shorter["train"] == [row for row in serial["train"] if row["image_id"] in ids]


# ---------------------------------------------------------------------------------------------
# Scene geometry


def test_boxes_inside_image_and_respect_overlap_limits():
    for i in range(150):
        scene = _scene(0, i)
        assert 1 <= len(scene.objects) <= 6
        for obj in scene.objects:
            x1, y1, x2, y2 = obj.box
            assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
            assert obj.shape in SHAPES and obj.colour in COLOURS and obj.size in SIZE_RANGES
        boxes = [o.box for o in scene.objects]
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                iou, cover = _iou_and_cover(boxes[a], boxes[b])
                assert iou <= 0.1 + 1e-9 and cover <= 0.25 + 1e-9


@pytest.mark.parametrize("image_size", [96, 224])
def test_box_is_tight_around_drawn_pixels(image_size):
    for i in range(40):
        scene = _scene(1, i, image_size=image_size, num_objects=1, background="plain")
        pixels = np.asarray(scene.image).astype(int)  # (H, W, 3)
        x1, y1, x2, y2 = (int(v) for v in scene.objects[0].box)
        corner = next(
            (r, c)
            for r in (0, image_size - 1)
            for c in (0, image_size - 1)
            if not (y1 <= r < y2 and x1 <= c < x2)
        )
        background = pixels[corner]  # a plain background is one uniform colour
        drawn = np.abs(pixels - background).sum(-1) > 0  # (H, W)
        ys, xs = np.nonzero(drawn)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == scene.objects[0].box


def test_sizes_scale_with_image_size():
    for image_size in (96, 224):
        scales = [
            o.scale / image_size for i in range(60) for o in _scene(2, i, image_size=image_size).objects
        ]
        assert 0.1 < min(scales) and max(scales) <= SIZE_RANGES["large"][1] + 2 / image_size


def test_224_datasets_work():
    ds = build_dataset("shapes-ref", {"train": 3}, image_size=224, num_workers=1)["train"]
    assert ds[0]["image"].size == (224, 224)
    assert all(0 <= v <= 224 for row in ds for v in row["bbox"])


# ---------------------------------------------------------------------------------------------
# Referring expressions and the resolver


def _obj(shape, colour, size, box):
    return ShapeObject(shape, colour, size, tuple(float(v) for v in box), (0, 0, 0))


def _hand_scene(objects):
    return Scene(
        image=Image.new("RGB", (96, 96)),
        objects=objects,
        background=Background("plain", "grey"),
        image_size=96,
    )


def test_resolver_semantics_on_a_hand_built_scene():
    scene = _hand_scene(
        [
            _obj("circle", "red", "small", (5, 40, 20, 55)),  # 0: left
            _obj("circle", "red", "large", (60, 40, 90, 70)),  # 1: right, big
            _obj("square", "blue", "small", (35, 5, 50, 20)),  # 2: top middle
        ]
    )
    red_circle = Description(colour="red", shape="circle")
    assert resolve(RefSemantics(red_circle), scene) == [0, 1]
    assert resolve(RefSemantics(red_circle, superlative="leftmost"), scene) == [0]
    assert resolve(RefSemantics(red_circle, superlative="biggest"), scene) == [1]
    assert resolve(RefSemantics(red_circle, region="right"), scene) == [1]
    assert resolve(RefSemantics(Description(shape="square"), region="top"), scene) == [2]
    left_of_square = RefSemantics(
        Description(shape="circle"), relation="left_of", anchor=Description(shape="square")
    )
    assert resolve(left_of_square, scene) == [0]
    below = RefSemantics(Description(shape="circle"), relation="below", anchor=Description(shape="square"))
    assert resolve(below, scene) == [0, 1]  # both circles are below the square: ambiguous
    assert not is_unique_reference(below, scene, 0)
    # an ambiguous anchor makes the whole expression refer to nothing
    assert (
        resolve(RefSemantics(Description(shape="square"), relation="above", anchor=red_circle), scene) == []
    )
    assert parse_expression("the little red circle that is to the left of the blue square") == RefSemantics(
        Description("small", "red", "circle"), relation="left_of", anchor=Description(None, "blue", "square")
    )
    assert parse_expression("highest one on the left") == RefSemantics(
        Description(), region="left", superlative="topmost"
    )
    with pytest.raises(ValueError):
        parse_expression("the green elephant")


def test_every_expression_refers_to_exactly_one_object_over_many_scenes():
    objects = referred = 0
    for i in range(250):
        scene = _scene(5, i)
        rng = np.random.default_rng([6, i])
        for k in range(len(scene.objects)):
            objects += 1
            expressions = referring_expressions(scene, k, rng)
            referred += bool(expressions)
            for text, sem in expressions:
                parsed = parse_expression(text)
                assert parsed == sem, text
                assert resolve(parsed, scene) == [k], text
                assert k in resolve(parsed, scene, strict=True), text
    assert referred >= 0.97 * objects


def test_ref_rows_are_consistent_and_test_splits_follow_the_round_angular_rule():
    sizes = {"train": 12, "val": 6, "testA": 25, "testB": 25}
    dd = build_dataset("shapes-ref", sizes, seed=2, num_workers=1)
    for ds in dd.values():
        for row in ds:
            assert row["bbox"] in row["candidates"]
            assert 1 <= len(row["sentences"]) <= 3
            assert row["category"] in SHAPES
            assert row["ref_id"].startswith(row["image_id"])
    assert set(dd["testA"]["category"]) <= set(ROUND_SHAPES)
    assert set(dd["testB"]["category"]) <= set(ANGULAR_SHAPES)
    assert len(set(dd["testA"]["image_id"])) >= 20 and len(set(dd["testB"]["image_id"])) >= 20
    # testA/testB images hold >= 2 objects; images never repeat across splits
    assert all(len(c) >= 2 for c in list(dd["testA"]["candidates"]) + list(dd["testB"]["candidates"]))
    per_split = [set(_image_bytes(ds)) for ds in dd.values()]
    for a in range(len(per_split)):
        for b in range(a + 1, len(per_split)):
            assert per_split[a].isdisjoint(per_split[b])


# ---------------------------------------------------------------------------------------------
# Captions and phrases


def test_captions_are_varied_and_mention_present_things():
    for i in range(40):
        scene = _scene(7, i)
        captions = scene_captions(scene, np.random.default_rng(i))
        assert len(captions) >= 5 and len(set(captions)) == len(captions)
        words = {w for c in captions for w in c.replace(",", " ").replace(":", " ").split()}
        shape_words = {s for s in SHAPES if s in words}
        assert shape_words <= {o.shape for o in scene.objects}


def test_grounded_captions_phrases_and_boxes():
    for i in range(60):
        scene = _scene(8, i)
        g = grounded_caption(scene, np.random.default_rng(i))
        assert len(g.phrases) == len(g.objects) == len(g.entity_ids) == len(g.phrase_types) >= 1
        for phrase, ids, kind in zip(g.phrases, g.objects, g.phrase_types):
            assert phrase in g.caption
            if kind == "group":
                assert (
                    len(ids) >= 2
                    and len({(scene.objects[j].colour, scene.objects[j].shape) for j in ids}) == 1
                )
            else:
                assert len(ids) == 1 and scene.objects[ids[0]].shape == kind
    ds = build_dataset("shapes-phrase", {"train": 5}, num_workers=1)["train"]
    assert len(ds) == 10  # two captions per image by default
    assert all(len(b) >= 1 for row in ds for b in row["boxes"])


# ---------------------------------------------------------------------------------------------
# Schemas and datasets


def test_features_equal_the_shared_schemas():
    expected = {
        "shapes-captions": schemas.CAPTIONS,
        "shapes-ref": schemas.REF,
        "shapes-phrase": schemas.PHRASE,
        "shapes-multilabel": schemas.multilabel_features(list(SHAPES)),
        "shapes-cls": schemas.classification_features(list(CLS_CLASSES), with_box=True),
        "shapes-3d": schemas.pointcloud_features(list(PRIMITIVES_3D)),
    }
    for name, features in expected.items():
        dd = build_dataset(name, {split: 2 for split in DEFAULT_SPLIT_SIZES[name]}, num_workers=1)
        assert list(dd) == list(DEFAULT_SPLIT_SIZES[name])
        for ds in dd.values():
            assert ds.features == features, name
        assert features_for(name) == features
    assert make_pretrain_corpus(1, 1, 1, num_workers=1).features == schemas.CAPTIONS
    assert features_for("ref") == schemas.REF  # the "shapes-" prefix is optional


def test_multilabel_cls_and_3d_contents():
    ml = build_dataset("shapes-multilabel", {"train": 10}, num_workers=1)["train"]
    assert all(labels and labels == sorted(set(labels)) for labels in list(ml["labels"]))
    assert len(SHAPES) >= 5 and len(COLOURS) >= 6 and len(CLS_CLASSES) == len(SHAPES) * len(COLOURS) >= 20
    cls = build_dataset("shapes-cls", {"train": 2 * len(CLS_CLASSES)}, num_workers=1)["train"]
    assert Counter(list(cls["label"])) == {c: 2 for c in range(len(CLS_CLASSES))}
    row = cls[5]
    x1, y1, x2, y2 = row["bbox"]
    assert max(x2 - x1, y2 - y1) >= SIZE_RANGES["large"][0] * 96 * 0.8  # the main object is large
    pc = build_dataset("shapes-3d", {"train": 14}, num_points=256, num_workers=1)["train"].with_format(
        "numpy"
    )
    assert len(PRIMITIVES_3D) >= 6 and pc[0]["points"].shape == (256, 3)
    assert Counter(int(v) for v in pc["label"]) == {c: 2 for c in range(len(PRIMITIVES_3D))}


def test_pretrain_corpus_union():
    corpus = make_pretrain_corpus(num_scenes=3, num_single=2, num_depth=2, seed=0, num_workers=1)
    ids = list(corpus["image_id"])
    assert [i.split("-")[0] for i in ids] == ["scene"] * 3 + ["single"] * 2 + ["depth"] * 2
    assert all(len(c) >= 5 for c in list(corpus["captions"]))
    assert corpus[3]["captions"][0].startswith("a photo of a")
    assert corpus[5]["captions"][0].startswith("a depth map of a")
    assert corpus[5]["image"].size == (96, 96)


def test_num_images_keeps_default_proportions():
    assert builders._resolve_split_sizes("shapes-captions", None, 100) == {"train": 80, "val": 10, "test": 10}


# ---------------------------------------------------------------------------------------------
# Few-shot


def test_shapes_cls_takes_coop_few_shot_sampling():
    from vpg.data.convert.coop import sample_few_shot

    n = len(CLS_CLASSES)
    dd = build_dataset("shapes-cls", {"train": 3 * n, "val": 5 * n, "test": n}, num_workers=1)
    few = sample_few_shot(dd, shots=2, seed=0)
    assert Counter(list(few["train"]["label"])) == {c: 2 for c in range(n)}
    assert Counter(list(few["val"]["label"])) == {c: 2 for c in range(n)}
    assert len(few["test"]) == n
    eight = sample_few_shot(dd, shots=8, seed=0)
    assert Counter(list(eight["train"]["label"])) == {c: 3 for c in range(n)}  # only 3 available
    assert Counter(list(eight["val"]["label"])) == {c: 4 for c in range(n)}  # min(K, 4)
    assert list(sample_few_shot(dd, shots=2, seed=0)["train"]["image_id"]) == list(few["train"]["image_id"])


# ---------------------------------------------------------------------------------------------
# Cache


def test_cache_round_trip(tmp_path, monkeypatch):
    first = load_shapes("shapes-multilabel", {"train": 4, "test": 2}, seed=5, cache_dir=tmp_path)
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 1

    def fail(*args, **kwargs):
        raise AssertionError("should have loaded from the cache")

    monkeypatch.setattr(builders, "build_dataset", fail)
    second = load_shapes("shapes-multilabel", {"train": 4, "test": 2}, seed=5, cache_dir=tmp_path)
    assert isinstance(second, DatasetDict) and list(second) == ["train", "test"]
    for split in first:
        assert list(first[split]["labels"]) == list(second[split]["labels"])
        assert _image_bytes(first[split]) == _image_bytes(second[split])
    monkeypatch.undo()
    load_shapes("shapes-multilabel", {"train": 4, "test": 2}, seed=6, cache_dir=tmp_path)  # new key
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 2


def test_png_bytes_decode_to_the_rendered_scene():
    scene = _scene(9, 0)
    decoded = Image.open(io.BytesIO(scene.png_bytes()))
    assert np.array_equal(np.asarray(decoded), np.asarray(scene.image))
