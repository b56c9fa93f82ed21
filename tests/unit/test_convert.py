"""Converters (vpg.data.convert) on the real sample files in tests/fixtures/real and on small
hand-written files for the formats whose real files are not in the repository."""

from __future__ import annotations

import gzip
import json
import pickle
import random
from pathlib import Path

import datasets
import pytest
import torch
from datasets import Dataset, Image, load_from_disk
from PIL import Image as PILImage

from vpg.data.convert import (
    ConversionError,
    apply_coop_split,
    attach_detections,
    convert_coco_captions,
    convert_coco_multilabel,
    convert_coop_split,
    convert_cub,
    convert_flickr30k_entities,
    convert_hivg,
    convert_multigrounding,
    convert_nuswide,
    convert_reclip_jsonl,
    convert_refer,
    convert_stanford_dogs,
    convert_vg_regions,
    convert_voc,
    load_detections,
    parse_sentences_file,
    read_coop_split,
    sample_few_shot,
)
from vpg.data.convert.cli import main as cli_main
from vpg.data.convert.common import output_features
from vpg.data.convert.voc import VOC_CLASSES
from vpg.data.schemas import CAPTIONS, PHRASE, REF, classification_features, multilabel_features

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real"
REFS = REAL / "refcocog" / "refs(umd).p"
INSTANCES = REAL / "refcocog" / "instances.json"
COOP = REAL / "coop" / "split_zhou_Caltech101.json.gz"

datasets.disable_progress_bars()


def assert_schema(dataset_dict, features, embedded: bool) -> None:
    expected = output_features(features, embedded)
    for split in dataset_dict.values():
        assert split.features == expected


def approx_box(box, expected):
    return box == pytest.approx(expected, abs=1e-3)


def write_image(path: Path, size=(32, 24)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.new("RGB", size, (120, 30, 200)).save(path)


# ------------------------------------------------------------------------------- refer (real umd)


def test_refer_umd_real(tmp_path):
    result = convert_refer(REFS, INSTANCES, tmp_path / "refcocog")
    ds = load_from_disk(str(tmp_path / "refcocog"))
    assert {k: len(v) for k, v in ds.items()} == {"train": 5, "val": 5, "test": 5}
    assert result.summary["rows"] == {"train": 5, "val": 5, "test": 5}
    assert_schema(ds, REF, embedded=False)

    row = next(r for r in ds["train"] if r["ref_id"] == "40373")
    # ann 251837: xywh [2.04, 78.25, 329.23, 405.6] -> xyxy
    assert approx_box(row["bbox"], [2.04, 78.25, 2.04 + 329.23, 78.25 + 405.6])
    assert row["sentences"] == [
        "a smiling woman wearing a black dress with a plaid bow on it . she is wearing ear rings and a watch",
        "a woman wearing black dress",
    ]
    assert row["image_id"] == "122469"
    assert row["category"] == "person"
    assert row["image_path"] == "train2014/COCO_train2014_000000122469.jpg"
    assert any(approx_box(c, row["bbox"]) for c in row["candidates"])

    anns = json.loads(INSTANCES.read_text())["annotations"]
    for split in ds.values():
        for r in split:
            assert len(r["candidates"]) == sum(a["image_id"] == int(r["image_id"]) for a in anns)
    assert len(row["candidates"]) == 6

    raw = convert_refer(REFS, INSTANCES, sentence_field="raw").dataset
    assert raw["train"][0]["sentences"][0].startswith("A smiling woman wearing a black dress")


def _write_refs(tmp_path, mutate) -> Path:
    refs = pickle.loads(REFS.read_bytes())
    mutate(refs)
    path = tmp_path / "refs(bad).p"
    path.write_bytes(pickle.dumps(refs))
    return path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda refs: refs[2].update(split="trainval2"), "unknown split"),
        (lambda refs: refs[2].pop("ann_id"), "missing key: 'ann_id'"),
        (lambda refs: refs[2]["sentences"][0].update(sent="  "), "empty sentence"),
        (lambda refs: refs[2].update(ann_id=-5), "unknown annotation"),
    ],
)
def test_refer_bad_refs(tmp_path, mutate, message):
    path = _write_refs(tmp_path, mutate)
    with pytest.raises(ConversionError) as err:
        convert_refer(path, INSTANCES)
    text = str(err.value)
    assert "refs(bad).p" in text and "ref 2" in text and message in text


def test_refer_zero_area_and_skip(tmp_path):
    data = json.loads(INSTANCES.read_text())
    target = next(a for a in data["annotations"] if a["id"] == 251837)
    target["bbox"] = [10, 10, 0, 30]  # zero width
    bad = tmp_path / "instances.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(
        ConversionError,
        match=r"instances\.json, annotation id 251837 \(referred by ref_id 40373\): zero-area box",
    ):
        convert_refer(REFS, bad)
    result = convert_refer(REFS, bad, on_bad_sample="skip")
    assert result.summary["rows"]["train"] == 4  # ref 40373 lost its box
    assert result.summary["skipped"] == {"zero-area box": 1}  # its image has no other ref


def test_refer_missing_image_and_embed_needs_root(tmp_path):
    with pytest.raises(ConversionError, match="missing image file"):
        convert_refer(REFS, INSTANCES, image_root=tmp_path)
    with pytest.raises(ValueError, match="image root"):
        convert_refer(REFS, INSTANCES, embed_images=True)


# --------------------------------------------------------------------------------- VG (real 1, 2)


def test_vg_regions_real_embedded(tmp_path):
    out = tmp_path / "vg"
    convert_vg_regions(
        REAL / "vg" / "region_descriptions.json", REAL / "vg" / "image_data.json", out,
        file_name_template="{image_id}.jpg", image_root=REAL / "vg" / "images", embed_images=True,
    )  # fmt: skip
    ds = load_from_disk(str(out))["train"]
    assert ds.features == PHRASE
    ids = ds["image_id"]
    assert (list(ids).count("1"), list(ids).count("2")) == (262, 256)
    row = next(r for r in ds if r["entity_ids"] == ["1390"])  # image 2: x 7, y 171, w 206, h 203
    assert row["image_id"] == "2" and row["caption"] == row["phrases"][0] == "3 green trees line street"
    assert approx_box(row["boxes"][0][0], [7, 171, 213, 374])
    assert row["image"].size == (800, 600)


def test_vg_regions_grouping_and_coco_filter(tmp_path):
    regions, image_data = REAL / "vg" / "region_descriptions.json", REAL / "vg" / "image_data.json"
    grouped = convert_vg_regions(regions, image_data, group_per_image=True).dataset["train"]
    assert [len(r["phrases"]) for r in grouped] == [262, 256]
    assert grouped[0]["image_path"] == "VG_100K_2/1.jpg"  # default: the official zip layout from the URL
    none = convert_vg_regions(regions, image_data, coco_only=True)
    assert len(none.dataset["train"]) == 0 and none.summary["images_not_in_coco"] == 2
    meta = json.loads(image_data.read_text())
    meta[0]["coco_id"] = 12345  # pretend image 1 is also a COCO image
    (tmp_path / "image_data.json").write_text(json.dumps(meta))
    only1 = convert_vg_regions(regions, tmp_path / "image_data.json", coco_only=True).dataset["train"]
    assert set(only1["image_id"]) == {"1"} and len(only1) == 262


def test_vg_regions_bad_region(tmp_path):
    data = json.loads((REAL / "vg" / "region_descriptions.json").read_text())
    data[1]["regions"][3]["width"] = 900  # x 7 + 900 > 800
    data[0]["regions"][0]["phrase"] = " "
    path = tmp_path / "regions.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConversionError, match=r"regions\.json, image 1 region 1382: empty sentence"):
        convert_vg_regions(path, REAL / "vg" / "image_data.json")
    result = convert_vg_regions(path, REAL / "vg" / "image_data.json", on_bad_sample="skip")
    assert result.summary["skipped"] == {"box outside the image": 1, "empty sentence": 1}
    assert len(result.dataset["train"]) == 518 - 2


# ------------------------------------------------------------------------------ COCO (real files)


def test_coco_captions_real_embedded(tmp_path):
    out = tmp_path / "captions"
    convert_coco_captions(
        REAL / "coco" / "captions_val2014_sample.json", out,
        file_name_template="val2014/COCO_val2014_{id:012d}.jpg", image_root=REAL / "coco", embed_images=True,
    )  # fmt: skip
    ds = load_from_disk(str(out))
    assert list(ds) == ["val"]
    assert_schema(ds, CAPTIONS, embedded=True)
    rows = {r["image_id"]: r for r in ds["val"]}
    assert sorted(rows) == ["262148", "393225"]
    assert all(len(r["captions"]) == 5 for r in rows.values())
    assert rows["393225"]["captions"][1] == "The healthy food is in the bowl and ready to eat."  # stripped
    assert rows["262148"]["image"].size == (640, 512) and rows["393225"]["image"].size == (640, 428)


def test_coco_captions_2017_names_not_found(tmp_path):
    # The fixture lists 2014 photos under 2017 names: the default path cannot find them.
    with pytest.raises(
        ConversionError, match=r"image id 262148: missing image file.*train2017/000000262148\.jpg"
    ):
        convert_coco_captions(REAL / "coco" / "captions_val2014_sample.json", image_root=REAL / "coco")


def test_coco_captions_karpathy(tmp_path):
    karpathy = {
        "images": [
            {"filepath": "val2014", "filename": "COCO_val2014_000000000001.jpg", "cocoid": 1, "split": "test",
             "sentences": [{"raw": "A cat."}, {"raw": "A small cat."}]},
            {"filepath": "train2014", "filename": "COCO_train2014_000000000002.jpg", "cocoid": 2,
             "split": "restval", "sentences": [{"raw": "A dog."}]},
        ],
        "dataset": "coco",
    }  # fmt: skip
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(karpathy))
    ds = convert_coco_captions(path).dataset
    assert {k: len(v) for k, v in ds.items()} == {"test": 1, "train": 1}
    assert ds["train"][0]["image_path"] == "train2014/COCO_train2014_000000000002.jpg"
    assert ds["test"][0]["captions"] == ["A cat.", "A small cat."]
    assert set(convert_coco_captions(path, keep_restval=True).dataset) == {"test", "restval"}


def test_coco_multilabel_real():
    result = convert_coco_multilabel(INSTANCES)
    ds = result.dataset["train"]
    data = json.loads(INSTANCES.read_text())
    assert len(data["annotations"]) == 108 and len(ds) == 15
    names = ds.features["labels"].feature.names
    assert len(names) == 80 and names[:3] == ["person", "bicycle", "car"] and names[-1] == "toothbrush"
    assert ds.features == output_features(multilabel_features(names), embed=False)
    row = next(r for r in ds if r["image_id"] == "133436")
    assert [names[i] for i in row["labels"]] == ["person", "bench", "sandwich", "dining table"]
    by_image: dict[int, set] = {}
    cat_index = {c["id"]: i for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], set()).add(cat_index[a["category_id"]])
    assert {r["image_id"]: sorted(r["labels"]) for r in ds} == {
        str(k): sorted(v) for k, v in by_image.items()
    }


def test_malformed_json_names_line(tmp_path):
    path = tmp_path / "instances_val2014.json"
    path.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(ConversionError, match=r"instances_val2014\.json, line 2 column .*malformed JSON"):
        convert_coco_multilabel(path)


# ------------------------------------------------------------------------------ Flickr30k Entities

FLICKR_ID = "6338542128"


def test_flickr_sentence_parser_real():
    sentences = parse_sentences_file(REAL / "flickr30k" / "Sentences" / f"{FLICKR_ID}.txt")
    assert len(sentences) == 5
    first = sentences[0]
    assert first["sentence"].startswith("On a sunny , dry day , wearing full football gear , a Texas A&M")
    assert [p["entity_id"] for p in first["phrases"]] == [
        "253080",
        "253081",
        "253069",
        "253070",
        "253072",
        "253078",
    ]
    assert [p["types"][0] for p in first["phrases"]] == [
        "scene",
        "other",
        "people",
        "people",
        "other",
        "other",
    ]
    assert first["phrases"][0]["phrase"] == "a sunny , dry day"
    assert first["phrases"][1]["first_word_index"] == 8  # On a sunny , dry day , wearing | full ...
    second = sentences[1]
    assert second["phrases"][3] == {
        "phrase": "him",
        "first_word_index": 14,
        "entity_id": "0",
        "types": ["notvisual"],
    }
    assert sentences[4]["phrases"][0]["phrase"] == "# 8"
    assert [p["types"] for p in sentences[3]["phrases"]][0] == ["scene"]


FLICKR_XML = """<annotation>
  <filename>6338542128.jpg</filename>
  <size><width>500</width><height>421</height><depth>3</depth></size>
  <object><name>253069</name><name>253068</name>
    <bndbox><xmin>101</xmin><ymin>51</ymin><xmax>300</xmax><ymax>400</ymax></bndbox></object>
  <object><name>253069</name>
    <bndbox><xmin>11</xmin><ymin>21</ymin><xmax>60</xmax><ymax>90</ymax></bndbox></object>
  <object><name>253070</name>
    <bndbox><xmin>250</xmin><ymin>40</ymin><xmax>480</xmax><ymax>420</ymax></bndbox></object>
  <object><name>253072</name>
    <bndbox><xmin>200</xmin><ymin>150</ymin><xmax>240</xmax><ymax>190</ymax></bndbox></object>
  <object><name>253080</name><nobndbox>0</nobndbox><scene>1</scene></object>
  <object><name>253081</name><nobndbox>1</nobndbox><scene>0</scene></object>
</annotation>
"""


def _flickr_root(tmp_path, xml=FLICKR_XML) -> Path:
    root = tmp_path / "flickr30k_entities"
    (root / "Sentences").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "Sentences" / f"{FLICKR_ID}.txt").write_bytes(
        (REAL / "flickr30k" / "Sentences" / f"{FLICKR_ID}.txt").read_bytes()
    )
    (root / "Annotations" / f"{FLICKR_ID}.xml").write_text(xml)
    (root / "test.txt").write_text(FLICKR_ID + "\n")
    return root


def test_flickr_convert_with_xml(tmp_path):
    root = _flickr_root(tmp_path)
    result = convert_flickr30k_entities(root, tmp_path / "out", splits={"test": root / "test.txt"})
    ds = load_from_disk(str(tmp_path / "out"))
    assert_schema(ds, PHRASE, embedded=False)
    rows = list(ds["test"])
    assert len(rows) == 5 and rows[0]["image_path"] == f"{FLICKR_ID}.jpg"
    first = rows[0]
    assert first["entity_ids"] == ["253069", "253070", "253072"]  # scene / nobndbox / absent are out
    assert first["phrases"] == [
        "a Texas A&M football player",
        "an Iowa State football player",
        "the football",
    ]
    assert first["phrase_types"] == ["people", "people", "other"]
    # official convention: 1-based corners minus 1; entity 253069 has two boxes
    assert [b for b in first["boxes"][0]] == [[100, 50, 299, 399], [10, 20, 59, 89]]
    assert rows[3]["entity_ids"] == ["253070", "253068", "253072"]  # 253068 via the object's second <name>
    unboxed = result.summary["phrases_without_boxes"]
    assert unboxed == {"absent from xml": 7, "nobndbox": 1, "notvisual": 3, "scene": 1}

    cont = convert_flickr30k_entities(root, box_convention="continuous").dataset["train"]
    assert cont[0]["boxes"][0][0] == [100, 50, 300, 400]


def test_flickr_bad_box_and_missing_xml(tmp_path):
    root = _flickr_root(tmp_path, FLICKR_XML.replace("<xmax>480</xmax>", "<xmax>900</xmax>"))
    with pytest.raises(
        ConversionError, match=rf"{FLICKR_ID}\.xml, entity 253070 box 0: box outside the image"
    ):
        convert_flickr30k_entities(root)
    (root / "Annotations" / f"{FLICKR_ID}.xml").unlink()
    with pytest.raises(
        ConversionError, match=rf"{FLICKR_ID}\.xml, image {FLICKR_ID}: missing annotation file"
    ):
        convert_flickr30k_entities(root)
    (root / "Sentences" / "1.txt").write_text("A [/EN#5/people man walks .\n")
    (root / "Annotations" / "1.xml").write_text(FLICKR_XML)
    with pytest.raises(ConversionError, match=r"1\.txt, sentence 0 \(line 1\): malformed phrase markup"):
        convert_flickr30k_entities(root, splits={"x": _ids(tmp_path, "1")})


def _ids(tmp_path, *ids) -> Path:
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(ids))
    return path


# -------------------------------------------------------------------------------------------- CoOp


def test_coop_split_real_json(tmp_path):
    entries, names = read_coop_split(COOP)
    assert {k: len(v) for k, v in entries.items()} == {"train": 4128, "val": 1649, "test": 2465}
    assert len(names) == 100 and names[:3] == ["face", "leopard", "motorbike"] and names[-1] == "yin_yang"
    convert_coop_split(COOP, tmp_path / "caltech")
    ds = load_from_disk(str(tmp_path / "caltech"))
    assert {k: len(v) for k, v in ds.items()} == {"train": 4128, "val": 1649, "test": 2465}
    assert_schema(ds, classification_features(names), embedded=False)
    assert ds["train"][0] == {
        "image_path": "Faces/image_0274.jpg",
        "image_id": "Faces/image_0274.jpg",
        "label": 0,
    }


def test_coop_few_shot_counts_and_determinism():
    ds = convert_coop_split(COOP).dataset
    train_counts, val_counts = {}, {}
    for label in ds["train"]["label"]:
        train_counts[label] = train_counts.get(label, 0) + 1
    for label in ds["val"]["label"]:
        val_counts[label] = val_counts.get(label, 0) + 1
    for shots in (1, 16):
        few = sample_few_shot(ds, shots, seed=1)
        got_train, got_val = {}, {}
        for label in few["train"]["label"]:
            got_train[label] = got_train.get(label, 0) + 1
        for label in few["val"]["label"]:
            got_val[label] = got_val.get(label, 0) + 1
        assert got_train == {c: min(shots, n) for c, n in train_counts.items()}
        assert got_val == {c: min(shots, 4, n) for c, n in val_counts.items()}
        assert len(few["test"]) == 2465
    a = sample_few_shot(ds, 4, seed=1)["train"]["image_id"]
    b = sample_few_shot(ds, 4, seed=1)["train"]["image_id"]
    c = sample_few_shot(ds, 4, seed=2)["train"]["image_id"]
    assert list(a) == list(b) and list(a) != list(c)
    # CoOp: random.seed(seed) then random.sample per class (first-appearance order), train first.
    rng = random.Random(1)
    first_class = [i for i, label in enumerate(ds["train"]["label"]) if label == ds["train"][0]["label"]]
    assert list(a)[:4] == [ds["train"][i]["image_id"] for i in rng.sample(first_class, 4)]


def test_coop_apply_split_to_hub_dataset(tmp_path):
    entries, names = read_coop_split(COOP)
    base = tmp_path / "hub" / "101_ObjectCategories"
    rels = [rel for items in entries.values() for rel, _, _ in items]
    for rel in rels[:3] + [entries["test"][0][0]]:  # a few real (tiny) image files
        write_image(base / rel)
    paths = [str(base / rel) for rel in rels]
    random.Random(0).shuffle(paths)
    hub = Dataset.from_dict({"image": paths, "label": [0] * len(paths)}).cast_column("image", Image())
    split = apply_coop_split(hub, COOP, "image")
    assert {k: len(v) for k, v in split.items()} == {"train": 4128, "val": 1649, "test": 2465}
    assert split["test"].features["label"].names == names
    assert split["test"]["image_id"][:5] == [rel for rel, _, _ in entries["test"][:5]]
    assert split["test"]["label"][:5] == [label for _, label, _ in entries["test"][:5]]
    assert split["test"][0]["image"].size == (32, 24)
    assert set(split["train"].column_names) == {"image", "image_id", "label"}

    # drop one row: its entry matches nothing (file names repeat across classes, so no fallback either)
    kept = [p for p in paths if not p.endswith("Faces/image_0274.jpg")]
    hub = Dataset.from_dict({"image": kept}).cast_column("image", Image())
    with pytest.raises(
        ConversionError,
        match=r"Caltech101\.json\.gz.*1 paths match no single row.*train: Faces/image_0274\.jpg",
    ):
        apply_coop_split(hub, COOP, "image")
    # plain string paths work too; without an image column the CoOp path becomes image_path
    strings = apply_coop_split(Dataset.from_dict({"file": paths}), COOP, "file")
    assert set(strings["val"].column_names) == {"image_path", "image_id", "label"}


def test_coop_convert_with_fake_images(tmp_path):
    entries, _ = read_coop_split(COOP)
    subset = {split: [list(e) for e in items[:3]] for split, items in entries.items()}
    split_file = tmp_path / "split_zhou_Small.json"
    split_file.write_text(json.dumps(subset))
    root = tmp_path / "images"
    for items in subset.values():
        for rel, _, _ in items:
            write_image(root / rel)
    ds = convert_coop_split(split_file, tmp_path / "out", image_root=root, embed_images=True).dataset
    assert {k: len(v) for k, v in ds.items()} == {"train": 3, "val": 3, "test": 3}
    assert ds["val"][0]["image"].size == (32, 24) and ds["val"][0]["image_id"] == subset["val"][0][0]
    (root / subset["val"][1][0]).unlink()
    with pytest.raises(ConversionError, match=r"split_zhou_Small\.json, val\[1\]: missing image file"):
        convert_coop_split(split_file, image_root=root)
    subset["train"][1][2] = "not-a-face"  # two class names for label 0
    split_file.write_text(json.dumps(subset))
    with pytest.raises(ConversionError, match=r"split_zhou_Small\.json, train\[1\]: label 0 is 'not-a-face'"):
        read_coop_split(split_file)


# --------------------------------------------------------------------------- HiVG / TransVG .pth


def test_hivg_refcoco_layout(tmp_path):
    import numpy as np

    items = [
        ("COCO_train2014_000000000001.jpg", 11, [10, 20, 30, 40], "left man", ["attr"]),
        ("COCO_train2014_000000000001.jpg", 11, [10, 20, 30, 40], "man on the left", []),
        ("COCO_train2014_000000000001.jpg", 12, [50, 60, 10, 10], "right cup", []),
        ("COCO_train2014_000000000002.jpg", 13, np.array([0, 0, 5, 5]), "small thing", []),
    ]
    torch.save(items, tmp_path / "refcoco_testA.pth")
    ds = convert_hivg(tmp_path / "refcoco_testA.pth", tmp_path / "out", box_format="xywh").dataset
    assert list(ds) == ["testA"]
    assert_schema(ds, REF, embedded=False)
    rows = list(ds["testA"])
    assert len(rows) == 3
    assert rows[0]["sentences"] == ["left man", "man on the left"] and rows[0]["ref_id"] == "0"
    assert rows[0]["bbox"] == [10, 20, 40, 60] and rows[0]["image_id"] == "COCO_train2014_000000000001"
    assert rows[0]["candidates"] == rows[1]["candidates"] == [[10, 20, 40, 60], [50, 60, 60, 70]]
    assert rows[2]["candidates"] == [[0, 0, 5, 5]] and rows[2]["category"] == ""


def test_hivg_flickr_layout_with_images(tmp_path):
    write_image(tmp_path / "img" / "1000.jpg")
    torch.save(
        [("1000.jpg", [1, 2, 30, 20], "a dog"), ("1000.jpg", [0, 0, 8, 8], "a ball")],
        tmp_path / "flickr_test.pth",
    )
    ds = convert_hivg(
        tmp_path / "flickr_test.pth", box_format="xyxy", image_root=tmp_path / "img", embed_images=True
    ).dataset
    assert ds["test"].features == REF and ds["test"][0]["image"].size == (32, 24)
    assert ds["test"][0]["bbox"] == [1, 2, 30, 20] and len(ds["test"][1]["candidates"]) == 2
    torch.save([("1000.jpg", [0, 0, 50, 10], "too wide")], tmp_path / "flickr_val.pth")
    with pytest.raises(
        ConversionError,
        match=r"flickr_val\.pth, item 0 \(1000\.jpg\): box outside the image: .* exceeds the 32x24 image",
    ):
        convert_hivg(tmp_path / "flickr_val.pth", box_format="xyxy", image_root=tmp_path / "img")


@pytest.mark.parametrize(
    "name, items, message",
    [
        ("refcoco_val.pth", [("x.jpg", 1, [5, 5, 0, 3], "thing", [])], r"item 0 \(x\.jpg\): zero-area box"),
        ("refcoco_val.pth", [("x.jpg", 1, [5, 5, 2, 3], "  ", [])], r"item 0 \(x\.jpg\): empty sentence"),
        ("refcoco_val.pth", [("x.jpg", [1, 2])], r"item 0: unexpected tuple layout"),
        ("refcoco_foo.pth", [("x.jpg", 1, [5, 5, 2, 3], "a", [])], r"unknown split in file name"),
    ],
)
def test_hivg_bad_items(tmp_path, name, items, message):
    torch.save(items, tmp_path / name)
    with pytest.raises(ConversionError, match=rf"{name.replace('.', '[.]')}.*{message}"):
        convert_hivg(tmp_path / name, box_format="xywh")


def test_hivg_unreadable_file(tmp_path):
    (tmp_path / "refcoco_val.pth").write_bytes(b"not a torch file")
    with pytest.raises(ConversionError, match=r"refcoco_val\.pth: unreadable file"):
        convert_hivg(tmp_path / "refcoco_val.pth", box_format="xywh")


# ------------------------------------------------------------------------ MultiGrounding pickles


def test_multigrounding_layouts(tmp_path):
    flickr = {
        "1000": {"size": (24, 32, 3), "queries": ["a dog runs on grass", "a man pets him"], "annotations": [
            {"query": "a dog", "bbox": [[1, 2, 10, 12]], "category": {"animals"}, "obj_id": "7", "source_sen": "a dog runs on grass"},
            {"query": "grass", "bbox": [[0, 15, 32, 24]], "category": {"scene"}, "obj_id": "8", "source_sen": "a dog runs on grass"},
            {"query": "a man", "bbox": [[5, 5, 20, 20], [6, 6, 21, 21]], "category": {"people"}, "obj_id": "9", "source_sen": "a man pets him"},
            {"query": "him", "bbox": [], "category": {"notvisual"}, "obj_id": "0", "source_sen": "a man pets him"},
        ]},
    }  # fmt: skip
    (tmp_path / "test.pickle").write_bytes(pickle.dumps(flickr))
    result = convert_multigrounding(tmp_path / "test.pickle", tmp_path / "out", box_format="xyxy")
    ds = load_from_disk(str(tmp_path / "out"))
    assert_schema(ds, PHRASE, embedded=False)
    rows = list(ds["test"])
    assert [r["caption"] for r in rows] == ["a dog runs on grass", "a man pets him"]
    assert rows[0]["phrases"] == ["a dog", "grass"] and rows[0]["entity_ids"] == ["7", "8"]
    assert rows[0]["phrase_types"] == ["animals", "scene"] and rows[1]["boxes"][0] == [
        [5, 5, 20, 20],
        [6, 6, 21, 21],
    ]
    assert result.summary["phrases_without_boxes"] == 1 and rows[0]["image_path"] == "1000.jpg"

    referit = {25029: {"size": (24, 32, 3), "annotations": [
        {"query": "sky", "bbox": [[0, 0, 32, 8]], "category": {1}, "ref_id": 5},
        {"query": "left rock", "bbox": [[0, 10, 8, 20]], "ref_id": 6},
    ]}}  # fmt: skip
    (tmp_path / "referit_test.pickle").write_bytes(pickle.dumps(referit))
    rows = list(
        convert_multigrounding(
            tmp_path / "referit_test.pickle",
            box_format="xyxy",
            file_name_template="{saiapr_dir}/images/{image_id}.jpg",
        ).dataset["test"]
    )
    assert [(r["caption"], r["phrases"], r["entity_ids"]) for r in rows] == [
        ("sky", ["sky"], ["5"]),
        ("left rock", ["left rock"], ["6"]),
    ]
    assert rows[0]["image_path"] == "25/images/25029.jpg"

    simple = {"7": [("red car", [1, 1, 4, 4]), ("tree", [[2, 2, 3, 3], [5, 5, 1, 1]])]}
    (tmp_path / "val.pickle").write_bytes(pickle.dumps(simple))
    rows = list(convert_multigrounding(tmp_path / "val.pickle", box_format="xywh").dataset["val"])
    assert rows[0]["boxes"] == [[[1, 1, 5, 5]]] and rows[1]["boxes"] == [[[2, 2, 5, 5], [5, 5, 6, 6]]]


def test_multigrounding_bad(tmp_path):
    (tmp_path / "test.pickle").write_bytes(
        pickle.dumps({"1": {"size": (24, 32), "annotations": [{"query": "x", "bbox": [[0, 0, 100, 10]]}]}})
    )
    with pytest.raises(ConversionError, match=r"test\.pickle, image_id 1 query 0: box outside the image"):
        convert_multigrounding(tmp_path / "test.pickle", box_format="xyxy")
    (tmp_path / "test.pickle").write_bytes(pickle.dumps({"2": {"annotations": [{"bbox": [[0, 0, 1, 1]]}]}}))
    with pytest.raises(
        ConversionError, match=r"test\.pickle, image_id 2: invalid entry: annotation 0 lacks 'query'"
    ):
        convert_multigrounding(tmp_path / "test.pickle", box_format="xyxy")


# ------------------------------------------------------------------------------------------ ReCLIP


def test_reclip_detections_attach(tmp_path):
    dets = {"122469": [[0, 0, 50, 50, 0.9], [10, 10, 20, 20, 0.5]], "133436": []}
    (tmp_path / "refcocog_dets_dict.json").write_text(json.dumps(dets))
    loaded = load_detections(tmp_path / "refcocog_dets_dict.json")
    assert loaded["122469"].tolist() == [[0, 0, 50, 50], [10, 10, 30, 30]] and loaded["133436"].shape == (
        0,
        4,
    )
    listed = [{"image_id": 1, "box": [1, 1, 2, 2]}, {"image_id": 1, "box": {"x": 0, "y": 0, "w": 4, "h": 4}}]
    (tmp_path / "list.json").write_text(json.dumps(listed))
    assert load_detections(tmp_path / "list.json")["1"].tolist() == [[1, 1, 3, 3], [0, 0, 4, 4]]

    convert_refer(REFS, INSTANCES, tmp_path / "gold")
    code = cli_main(
        [
            "reclip-dets",
            "--ref-dataset",
            str(tmp_path / "gold"),
            "--dets",
            str(tmp_path / "refcocog_dets_dict.json"),
            "--instances",
            str(INSTANCES),
            "--out",
            str(tmp_path / "dets"),
        ]
    )
    assert code == 0
    ds = load_from_disk(str(tmp_path / "dets"))
    assert_schema(ds, REF, embedded=False)
    row = next(r for r in ds["train"] if r["image_id"] == "122469")
    assert row["candidates"] == [[0, 0, 50, 50], [10, 10, 30, 30]]
    row = next(r for r in ds["train"] if r["image_id"] == "133436")
    assert row["candidates"] == [[0, 0, 640, 487]]  # no detections: the whole image
    sizes = {str(im["id"]): (im["width"], im["height"]) for im in json.loads(INSTANCES.read_text())["images"]}
    result = attach_detections(load_from_disk(str(tmp_path / "gold")), loaded, image_sizes=sizes)
    assert result.summary["fallback_whole_image"] == {"train": 4, "val": 5, "test": 5}


def test_reclip_bad_detections(tmp_path):
    (tmp_path / "refcoco_dets_dict.json").write_text(json.dumps({"5": [[1, 2, 3]]}))
    with pytest.raises(
        ConversionError, match=r"refcoco_dets_dict\.json, image_id 5 detection 0: invalid detection box"
    ):
        load_detections(tmp_path / "refcoco_dets_dict.json")
    gold = convert_refer(REFS, INSTANCES).dataset
    with pytest.raises(ConversionError, match=r"unknown image size"):
        attach_detections(gold, {})


def test_reclip_jsonl(tmp_path):
    lines = [
        {"file_name": "COCO_train2014_000000000001_11.jpg", "image_id": 1, "ref_id": 99, "width": 100, "height": 80,
         "anns": [{"id": 11, "bbox": [10, 20, 30, 40], "category_id": 1}, {"id": 12, "bbox": [50, 60, 10, 10], "category_id": 3}],
         "ann_id": 11, "sentences": [{"raw": "Left man", "sent": "left man"}, {"raw": "the man"}]},
        {"file_name": "COCO_train2014_000000000002_21.jpg", "image_id": 2, "width": 64, "height": 48,
         "anns": [{"id": 21, "bbox": [1, 1, 5, 5], "category_id": 3}], "ann_id": [21], "sentences": ["a car"]},
    ]  # fmt: skip
    path = tmp_path / "refcoco_testa.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ds = convert_reclip_jsonl(path, tmp_path / "out", category_names={1: "person", 3: "car"}).dataset
    assert list(ds) == ["testA"]
    assert_schema(ds, REF, embedded=False)
    first, second = ds["testA"]
    assert first["image_path"] == "COCO_train2014_000000000001.jpg" and first["ref_id"] == "99"
    assert first["bbox"] == [10, 20, 40, 60] and first["sentences"] == ["Left man", "the man"]
    assert first["candidates"] == [[10, 20, 40, 60], [50, 60, 60, 70]] and first["category"] == "person"
    assert second["sentences"] == ["a car"] and second["category"] == "car"
    with_dets = convert_reclip_jsonl(path, detections={"1": torch.tensor([[0.0, 0.0, 10.0, 10.0]])})
    assert with_dets.dataset["testA"]["candidates"] == [[[0, 0, 10, 10]], [[0, 0, 64, 48]]]
    assert with_dets.summary["fallback_whole_image"] == {"testA": 1}
    lines[1]["ann_id"] = 99
    path.write_text("\n".join(json.dumps(x) for x in lines))
    with pytest.raises(
        ConversionError, match=r"refcoco_testa\.jsonl, line 2 \(image_id 2\): referred annotation not in anns"
    ):
        convert_reclip_jsonl(path)


# --------------------------------------------------------------------------------------------- VOC


def _voc_xml(objects) -> str:
    objs = "".join(
        f"<object><name>{name}</name><difficult>{int(difficult)}</difficult>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>10</ymax></bndbox></object>"
        for name, difficult in objects
    )
    return f"<annotation><size><width>32</width><height>24</height><depth>3</depth></size>{objs}</annotation>"


def _voc_root(tmp_path) -> Path:
    root = tmp_path / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations" / "000001.xml").write_text(_voc_xml([("dog", False), ("person", True)]))
    (root / "Annotations" / "000002.xml").write_text(
        _voc_xml([("cat", True), ("cat", False), ("chair", True)])
    )
    (root / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000002\n")
    for image_id in ("000001", "000002"):
        write_image(root / "JPEGImages" / f"{image_id}.jpg")
    return root


def test_voc_difficult_is_negative(tmp_path):
    root = _voc_root(tmp_path)
    result = convert_voc(root, tmp_path / "out", image_root=root, embed_images=True)
    ds = load_from_disk(str(tmp_path / "out"))
    assert list(ds) == ["trainval", "test"]
    assert_schema(ds, multilabel_features(list(VOC_CLASSES)), embedded=True)
    labels = {r["image_id"]: [VOC_CLASSES[i] for i in r["labels"]] for r in ds["test"]}
    assert labels == {"000001": ["dog"], "000002": ["cat"]}  # difficult person / chair are negatives
    assert result.summary["difficult_only_labels"] == 3  # counted once per split: person; chair twice
    assert ds["test"][0]["image"].size == (32, 24)


def test_voc_bad(tmp_path):
    root = _voc_root(tmp_path)
    (root / "Annotations" / "000002.xml").write_text(_voc_xml([("unicorn", False)]))
    with pytest.raises(ConversionError, match=r"000002\.xml, object 0: unknown class: 'unicorn'"):
        convert_voc(root)
    with pytest.raises(ConversionError, match=r"val\.txt: unknown split 'val'"):
        convert_voc(root, splits=["val"])
    (root / "ImageSets" / "Main" / "test.txt").write_text("000001\n000003\n")
    with pytest.raises(ConversionError, match=r"test\.txt, line 2 \(000003\): missing annotation file"):
        convert_voc(root, splits=["test"])


# ---------------------------------------------------------------------------------------- NUS-WIDE


def _nuswide_root(tmp_path) -> Path:
    root = tmp_path / "nuswide"
    labels_dir = root / "Groundtruth" / "TrainTestLabels"
    labels_dir.mkdir(parents=True)
    (root / "ImageList").mkdir()
    (root / "Concepts81.txt").write_text("animal\nsky\nwater\n")
    (root / "ImageList" / "TrainImagelist.txt").write_text(
        "actor\\0001_1.jpg\nC:\\ImageData\\Flickr\\zebra\\0002_2.jpg\n"
    )
    (root / "ImageList" / "TestImagelist.txt").write_text("sky\\0003_3.jpg\n")
    train = {"animal": "0\n1\n", "sky": "1\n1\n", "water": "0\n0\n"}
    test = {"animal": "0\n", "sky": "0\n", "water": "0\n"}
    for concept in train:
        (labels_dir / f"Labels_{concept}_Train.txt").write_text(train[concept])
        (labels_dir / f"Labels_{concept}_Test.txt").write_text(test[concept])
    return root


def test_nuswide_lists(tmp_path):
    root = _nuswide_root(tmp_path)
    result = convert_nuswide(root, tmp_path / "out")
    ds = load_from_disk(str(tmp_path / "out"))
    assert_schema(ds, multilabel_features(["animal", "sky", "water"]), embedded=False)
    rows = list(ds["train"])
    assert [r["image_path"] for r in rows] == ["Flickr/actor/0001_1.jpg", "Flickr/zebra/0002_2.jpg"]
    assert [r["labels"] for r in rows] == [[1], [0, 1]] and rows[0]["image_id"] == "0001_1"
    assert ds["test"][0]["labels"] == [] and result.summary["unlabeled_images"] == 1
    assert len(convert_nuswide(root, drop_unlabeled=True).dataset["test"]) == 0


def test_nuswide_bad(tmp_path):
    root = _nuswide_root(tmp_path)
    labels = root / "Groundtruth" / "TrainTestLabels" / "Labels_sky_Train.txt"
    labels.write_text("1\n")
    with pytest.raises(
        ConversionError, match=r"Labels_sky_Train\.txt: 1 lines but TrainImagelist\.txt lists 2"
    ):
        convert_nuswide(root)
    labels.write_text("1\n2\n")
    with pytest.raises(ConversionError, match=r"Labels_sky_Train\.txt, line 2: expected 0 or 1"):
        convert_nuswide(root)


# -------------------------------------------------------------------------------- CUB, Stanford Dogs


def _cub_root(tmp_path, third_box="2 2 10 10") -> Path:
    root = tmp_path / "CUB_200_2011"
    root.mkdir()
    files = [
        "001.Black_footed_Albatross/Black_Footed_Albatross_0001.jpg",
        "001.Black_footed_Albatross/Black_Footed_Albatross_0002.jpg",
        "002.Laysan_Albatross/Laysan_Albatross_0003.jpg",
    ]
    (root / "images.txt").write_text("".join(f"{i + 1} {f}\n" for i, f in enumerate(files)))
    (root / "bounding_boxes.txt").write_text(f"1 1.0 2.0 10.0 12.0\n2 0.0 0.0 32.0 24.0\n3 {third_box}\n")
    (root / "image_class_labels.txt").write_text("1 1\n2 1\n3 2\n")
    (root / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    (root / "train_test_split.txt").write_text("1 1\n2 0\n3 1\n")
    for f in files:
        write_image(root / "images" / f)
    return root


def test_cub_boxes(tmp_path):
    root = _cub_root(tmp_path)
    ds = convert_cub(root, tmp_path / "out", image_root=root, embed_images=True).dataset
    names = ["Black footed Albatross", "Laysan Albatross"]
    assert_schema(ds, classification_features(names, with_box=True), embedded=True)
    assert {k: len(v) for k, v in ds.items()} == {"train": 2, "test": 1}
    first = ds["train"][0]
    assert first["bbox"] == [1, 2, 11, 14] and first["label"] == 0 and first["image_id"] == "1"
    assert ds["train"][1]["label"] == 1 and ds["test"][0]["bbox"] == [0, 0, 32, 24]
    assert ds["test"][0]["image"].size == (32, 24)


def test_cub_bad_box(tmp_path):
    root = _cub_root(tmp_path, third_box="30 2 10 10")  # x 30 + 10 > width 32
    with pytest.raises(
        ConversionError,
        match=r"bounding_boxes\.txt, image id 3: box outside the image: .* exceeds the 32x24 image",
    ):
        convert_cub(root, image_root=root)
    result = convert_cub(root, image_root=root, on_bad_sample="skip")
    assert result.summary["skipped"] == {"box outside the image": 1} and len(result.dataset["train"]) == 1


def _dog_xml(boxes) -> str:
    objs = "".join(
        f"<object><name>dog</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for a, b, c, d in boxes
    )
    return f"<annotation><size><width>32</width><height>24</height><depth>3</depth></size>{objs}</annotation>"


def test_stanford_dogs(tmp_path):
    root = tmp_path / "dogs"
    (root / "Annotation" / "n02085620-Chihuahua").mkdir(parents=True)
    (root / "Annotation" / "n02085782-Japanese_spaniel").mkdir(parents=True)
    (root / "Annotation" / "n02085620-Chihuahua" / "n02085620_1").write_text(
        _dog_xml([(1, 1, 5, 5), (2, 2, 30, 20)])
    )
    (root / "Annotation" / "n02085782-Japanese_spaniel" / "n02085782_2").write_text(
        _dog_xml([(0, 0, 10, 10)])
    )
    (root / "train.txt").write_text("n02085620-Chihuahua/n02085620_1.jpg\n")
    (root / "test.txt").write_text("n02085782-Japanese_spaniel/n02085782_2.jpg\n")
    result = convert_stanford_dogs(
        root, tmp_path / "out", splits={"train": root / "train.txt", "test": root / "test.txt"}
    )
    ds = load_from_disk(str(tmp_path / "out"))
    assert_schema(
        ds, classification_features(["Chihuahua", "Japanese spaniel"], with_box=True), embedded=False
    )
    assert ds["train"][0] == {
        "image_path": "Images/n02085620-Chihuahua/n02085620_1.jpg",
        "image_id": "n02085620_1",
        "label": 0,
        "bbox": [2, 2, 30, 20],
    }  # the largest of the two dogs
    assert ds["test"][0]["label"] == 1 and result.summary["images_with_several_dogs"] == 1
    assert len(convert_stanford_dogs(root).dataset["train"]) == 2  # no lists: every annotation
    (root / "test.txt").write_text("n02085782-Japanese_spaniel/n02085782_9.jpg\n")
    with pytest.raises(
        ConversionError,
        match=r"test\.txt, entry 0 \(n02085782-Japanese_spaniel/n02085782_9\.jpg\): missing annotation file",
    ):
        convert_stanford_dogs(root, splits={"test": root / "test.txt"})


# --------------------------------------------------------------------------------------------- CLI


def test_cli_help_for_every_format(capsys):
    from vpg.data.convert.cli import build_parser

    formats = list(build_parser()._subparsers._group_actions[0].choices)
    assert len(formats) == 17
    for name in formats:
        with pytest.raises(SystemExit) as exit_info:
            cli_main([name, "--help"])
        assert exit_info.value.code == 0
    assert "--embed-images" in capsys.readouterr().out


def test_cli_run_errors_and_skip(tmp_path, capsys):
    assert cli_main(["coco-multilabel", "--in", str(INSTANCES), "--out", str(tmp_path / "ml")]) == 0
    assert "train: 15 rows" in capsys.readouterr().out
    assert load_from_disk(str(tmp_path / "ml"))["train"].num_rows == 15

    regions = json.loads((REAL / "vg" / "region_descriptions.json").read_text())
    regions[0]["regions"][0]["width"] = 0
    (tmp_path / "regions.json").write_text(json.dumps(regions))
    args = [
        "vg-regions",
        "--in",
        str(tmp_path / "regions.json"),
        "--image-data",
        str(REAL / "vg" / "image_data.json"),
        "--out",
        str(tmp_path / "vg"),
    ]
    assert cli_main(args) == 1
    assert "regions.json, image 1 region 1382: zero-area box" in capsys.readouterr().err
    assert cli_main(args + ["--on-bad-sample", "skip"]) == 0
    assert "skipped 1 bad records: zero-area box: 1" in capsys.readouterr().err
    assert cli_main(["coop-split", "--in", str(COOP), "--out", str(tmp_path / "c"), "--embed-images"]) == 2
    assert cli_main(["coop-split", "--in", str(COOP), "--out", str(tmp_path / "c"), "--shots", "2"]) == 0
    few = load_from_disk(str(tmp_path / "c"))
    assert (len(few["train"]), len(few["val"]), len(few["test"])) == (200, 200, 2465)


def test_gz_and_unreadable_inputs(tmp_path):
    with gzip.open(tmp_path / "captions_train2014.json.gz", "wt") as f:
        json.dump(
            {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "caption": "hi"}]},
            f,
        )
    assert convert_coco_captions(tmp_path / "captions_train2014.json.gz").dataset["train"][0]["captions"] == [
        "hi"
    ]
    with pytest.raises(ConversionError, match=r"nope\.json: unreadable file"):
        convert_coco_captions(tmp_path / "nope.json")
