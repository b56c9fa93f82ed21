"""DataModules (vpg.data.datamodules): batch contracts, evaluation expansion, candidates from
detections, streaming + DDP sharding, the bad-input policy and resumable order.

Data: tiny vpg-shapes datasets (32-48 px) and the real sample files of tests/fixtures/real converted
into tmp dirs by vpg.data.convert. Tokenizer: vpg-tiny (context 16); transform: SquashResize(32).
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from functools import partial
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, load_from_disk
from PIL import Image

from vpg.data.convert import convert_coco_captions, convert_coop_split, convert_refer, convert_vg_regions
from vpg.data.convert.common import output_features
from vpg.data.convert.coop import sample_few_shot
from vpg.data.datamodules import (
    TRUNCATED,
    WHOLE_IMAGE,
    CaptionsDataModule,
    ClassificationDataModule,
    EpochSampler,
    MultiLabelDataModule,
    PhraseDataModule,
    PointCloudDataModule,
    RefDataModule,
    drop_words,
)
from vpg.data.schemas import REF
from vpg.data.shapes import PRIMITIVES_3D, SHAPES
from vpg.data.transforms import Letterbox, SquashResize
from vpg.errors import ConfigurationError, DataError

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real"
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
REF_SIZES = {"train": 6, "val": 3, "testA": 2, "testB": 2}

datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("shapes-cache"))


@pytest.fixture(scope="module")
def tok():
    from vpg.clip import get_tokenizer

    return get_tokenizer("vpg-tiny")


def shapes(name: str, cache: str, image_size: int = 32, **sizes) -> dict:
    return {"split_sizes": sizes, "image_size": image_size, "seed": 0, "cache_dir": cache}


def squash(size: int = 32) -> SquashResize:
    return SquashResize(size, MEAN, STD)


def ref_dm(cache, tok, image_size: int = 32, **kwargs) -> RefDataModule:
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("test_splits", ["testA", "testB"])
    return RefDataModule(
        "vpg-shapes/ref", options=shapes("ref", cache, image_size, **REF_SIZES), **kwargs
    ).attach(squash(), tok)


def all_batches(loader) -> list[dict]:
    return list(loader)


# ------------------------------------------------------------------------------------ REF contract


def test_ref_eval_batch_contract_and_hand_scaled_box(cache, tok):
    dm = ref_dm(cache, tok, image_size=48, eval_batch_size=64)  # 48 px images -> 32 px input: scale 2/3
    rows = dm.load("val")
    batch = next(iter(dm.val_dataloader()))
    size = sum(len(s) for s in rows["sentences"])
    k = max(len(c) for c in rows["candidates"])
    assert batch["image"].shape == (size, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["candidates"].shape == (size, k, 4) and batch["candidates"].dtype == torch.float32
    assert batch["candidate_mask"].shape == (size, k) and batch["candidate_mask"].dtype == torch.bool
    assert batch["gold"].shape == (size, 4) and batch["gold_index"].dtype == torch.long
    assert batch["text"].shape == (size, 16) and batch["text"].dtype == torch.long
    assert batch["orig_size"].dtype == torch.long and batch["orig_size"].tolist() == [[48, 48]] * size
    assert torch.allclose(batch["scale"], torch.full((size, 2), 2 / 3)) and not batch["offset"].any()
    assert len(batch["sentences"]) == len(batch["image_id"]) == size

    row = rows[0]  # sample 0 = row 0, expression 0
    x1, y1, x2, y2 = row["bbox"]
    by_hand = torch.tensor([x1 * 32 / 48, y1 * 32 / 48, x2 * 32 / 48, y2 * 32 / 48])
    assert torch.allclose(batch["gold"][0], by_hand, atol=1e-4)
    n = len(row["candidates"])
    assert batch["candidate_mask"][0].tolist() == [True] * n + [False] * (k - n)
    assert not batch["candidates"][0, n:].any()  # zero padding
    assert torch.allclose(batch["candidates"][0, :n], torch.tensor(row["candidates"]) * 32 / 48, atol=1e-4)
    assert batch["gold_index"][0] == row["candidates"].index(row["bbox"])
    assert torch.equal(batch["candidates"][0, batch["gold_index"][0]], batch["gold"][0])
    assert batch["sentences"][0] == row["sentences"][0] and batch["image_id"][0] == row["image_id"]
    assert torch.equal(batch["text"][:1], tok([row["sentences"][0]]))


def test_ref_eval_expands_every_expression(cache, tok):
    dm = ref_dm(cache, tok, eval_batch_size=3)
    rows = dm.load("val")
    pairs = [(r["image_id"], s) for r in rows for s in r["sentences"]]
    assert len(pairs) > len(rows)  # some rows have several expressions
    got = [(i, s) for b in all_batches(dm.val_dataloader()) for i, s in zip(b["image_id"], b["sentences"])]
    assert got == pairs


def test_ref_train_draws_one_expression_per_row_reproducibly(cache, tok):
    dm = ref_dm(cache, tok, batch_size=2, seed=3)
    rows = dm.load("train")
    sentences = {r["ref_id"]: r["sentences"] for r in rows}

    def epoch(loader, e):
        loader.sampler.set_epoch(e)
        return [(i, s) for b in loader for i, s in zip(b["image_id"], b["sentences"])]

    loader = dm.train_dataloader()
    first, again = epoch(loader, 1), epoch(dm.train_dataloader(), 1)
    assert first == again  # same (seed, epoch) -> same order and same drawn expressions
    assert epoch(loader, 2) != first
    assert len(first) == len(rows) // 2 * 2  # drop_last
    assert all(any(s in v for v in sentences.values()) for _, s in first)


def test_epoch_sampler_order_is_seeded():
    a, b = EpochSampler(50, seed=1), EpochSampler(50, seed=1)
    a.set_epoch(4), b.set_epoch(4)
    assert list(a) == list(b) and sorted(i for i, _ in a) == list(range(50))
    b.set_epoch(5)
    assert list(a) != list(b) and all(e == 5 for _, e in b)
    assert [i for i, _ in EpochSampler(5, 0, shuffle=False)] == [0, 1, 2, 3, 4]


def test_ref_test_splits_list_and_names(cache, tok):
    dm = ref_dm(cache, tok)
    dm.setup("test")
    loaders = dm.test_dataloader()
    assert isinstance(loaders, list) and [lo.split_name for lo in loaders] == dm.test_split_names == [
        "testA",
        "testB",
    ]
    categories = {r["category"] for r in dm.load("testA")}
    assert categories <= {"circle", "ring", "hexagon"}


def test_ref_passes_text_and_rng_to_transforms_that_take_them(cache, tok):
    seen = []

    class Recording(SquashResize):
        def __call__(self, image, boxes=None, text=None, rng=None):
            seen.append((text, rng))
            return super().__call__(image, boxes)

    dm = ref_dm(cache, tok, batch_size=2)
    dm.attach(squash(), tok, train_transform=Recording(32, MEAN, STD))
    batch = next(iter(dm.train_dataloader()))
    assert [t for t, _ in seen[:2]] == batch["sentences"]
    assert all(isinstance(r, np.random.Generator) for _, r in seen)


def test_ref_prop_candidates_from_detections_with_fallback(cache, tok, tmp_path, caplog):
    plain = ref_dm(cache, tok)
    rows = plain.load("val")
    image_ids = list(dict.fromkeys(rows["image_id"]))
    dets = {image_ids[0]: [[1, 2, 10, 8, 0.9], [4, 4, 6, 6, 0.5]]}  # ReCLIP layout: xywh + score
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    dm = ref_dm(cache, tok, candidates_file=str(path), eval_batch_size=64)
    with caplog.at_level(logging.WARNING, logger="vpg.data"):
        batch = next(iter(dm.val_dataloader()))
    assert dm.images_without_detections["val"] == len(image_ids) - 1
    first = [i for i, image_id in enumerate(batch["image_id"]) if image_id == image_ids[0]]
    others = [i for i in range(len(batch["image_id"])) if i not in first]
    assert batch["candidates"].shape[1] == 2
    assert batch["candidates"][first[0]].tolist() == [[1, 2, 11, 10], [4, 4, 10, 10]]  # xywh -> xyxy, 32 px
    assert (batch["gold_index"][first] == -1).all()
    for i in others:  # no detections: the whole image, counted
        assert batch["candidates"][i, 0].tolist() == [0, 0, 32, 32]
        assert batch["candidate_mask"][i].tolist() == [True, False]
    assert dm.events["val"][WHOLE_IMAGE] == len(others)
    assert "no detections" in caplog.text


# ------------------------------------------------------------------------------------ REF real files


@pytest.fixture(scope="module")
def refcocog(tmp_path_factory):
    """The real RefCOCOg umd sample converted; blank JPEGs of the annotated sizes stand in for COCO."""
    root = tmp_path_factory.mktemp("refcocog")
    convert_refer(REAL / "refcocog" / "refs(umd).p", REAL / "refcocog" / "instances.json", root / "ds")
    sizes = {
        im["id"]: (im["width"], im["height"])
        for im in json.loads((REAL / "refcocog" / "instances.json").read_text())["images"]
    }
    for split in load_from_disk(str(root / "ds")).values():
        for row in split:
            path = root / "coco" / row["image_path"]
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", sizes[int(row["image_id"])], (90, 90, 90)).save(path)
    return root


def test_ref_real_refcocog_letterbox(refcocog, tok):
    dm = RefDataModule(
        str(refcocog / "ds"), image_root=str(refcocog / "coco"), test_splits=["test"], eval_batch_size=32
    ).attach(Letterbox(32, MEAN, STD), tok)
    rows = dm.load("val")
    batch = next(iter(dm.val_dataloader()))
    assert len(batch["sentences"]) == sum(len(s) for s in rows["sentences"]) == 10
    row = rows[0]  # image 18473: 640 x 480 -> long edge 32: 32 x 24, scale 0.05 both ways, pad bottom
    assert batch["orig_size"][0].tolist() == [640, 480]
    assert torch.allclose(batch["scale"][0], torch.tensor([0.05, 0.05]))
    assert torch.allclose(batch["gold"][0], torch.tensor(row["bbox"]) * 0.05, atol=1e-4)
    assert batch["gold_index"][0] == 1 and batch["candidate_mask"][0].sum() == len(row["candidates"])
    assert (batch["image"][0, :, 24:] == 0).all()  # letterbox padding (mean colour) at the bottom


# ------------------------------------------------------------------------------------ phrase grounding


def test_phrase_eval_real_vg_boxes_and_expansion(tmp_path, tok):
    out = tmp_path / "vg"
    convert_vg_regions(REAL / "vg" / "region_descriptions.json", REAL / "vg" / "image_data.json", out,
                       file_name_template="{image_id}.jpg", image_root=REAL / "vg" / "images",
                       embed_images=True)  # fmt: skip
    full = load_from_disk(str(out))
    pick = [
        i for i, r in enumerate(full["train"]["entity_ids"]) if r == ["1390"]
    ]  # "3 green trees line street"
    DatasetDict({"test": full["train"].select(pick + [0])}).save_to_disk(str(tmp_path / "small"))
    dm = PhraseDataModule(
        str(tmp_path / "small"), train_split=None, val_split=None, eval_batch_size=4
    ).attach(squash(), tok)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["phrases"][0] == "3 green trees line street" and batch["entity_id"][0] == "1390"
    assert isinstance(batch["boxes"], list) and batch["boxes"][0].shape == (1, 4)
    sx, sy = 32 / 800, 32 / 600  # image 2 is 800 x 600; the region is x 7, y 171, w 206, h 203
    assert torch.allclose(
        batch["boxes"][0][0], torch.tensor([7 * sx, 171 * sy, 213 * sx, 374 * sy]), atol=1e-4
    )
    assert batch["orig_size"][0].tolist() == [800, 600]
    assert torch.allclose(batch["scale"][0], torch.tensor([sx, sy]))
    assert batch["text"].shape == (2, 16) and batch["caption"][0] == "3 green trees line street"


def test_phrase_shapes_eval_train_caption_and_phrase_modes(cache, tok):
    options = shapes("phrase", cache, train=4, val=2, test=2)
    dm = PhraseDataModule("vpg-shapes/phrase", options=options, batch_size=2, eval_batch_size=64).attach(
        squash(), tok
    )
    rows = dm.load("test")
    batch = next(iter(dm.test_dataloader()))
    expected = [(r["caption"], p, len(b)) for r in rows for p, b in zip(r["phrases"], r["boxes"])]
    assert [(c, p, len(b)) for c, p, b in zip(batch["caption"], batch["phrases"], batch["boxes"])] == expected
    assert all(b.shape[1] == 4 for b in batch["boxes"])
    assert set(batch["phrase_type"]) <= set(t for r in rows for t in r["phrase_types"])

    train = next(iter(dm.train_dataloader()))
    captions = set(dm.load("train")["caption"])
    assert set(train) == {"image", "text", "sentences", "image_id", "orig_size", "scale", "offset"}
    assert all(s in captions for s in train["sentences"]) and train["text"].shape == (2, 16)

    dropped = PhraseDataModule(
        "vpg-shapes/phrase", options=options, batch_size=2, word_dropout=0.5, train_text="phrase"
    ).attach(squash(), tok)
    batch = next(iter(dropped.train_dataloader()))
    assert isinstance(batch["boxes"], list) and len(batch["boxes"]) == 2 and batch["text"].shape == (2, 16)


def test_drop_words_keeps_order_and_a_word():
    rng = np.random.default_rng(0)
    text = "a small red circle left of a big blue square"
    for _ in range(20):
        out = drop_words(text, 0.5, rng).split()
        rest = iter(text.split())
        assert out and all(any(w == v for v in rest) for w in out)  # a subsequence of the words
    assert drop_words(text, 0.0, rng) == text
    assert len(drop_words("one two", 0.99, np.random.default_rng(1)).split()) >= 1


# ------------------------------------------------------------------------------------ other families


def test_multilabel_multi_hot_and_class_names(cache, tok):
    dm = MultiLabelDataModule(
        "vpg-shapes/multilabel",
        options=shapes("multilabel", cache, train=2, val=2, test=3),
        eval_batch_size=8,
    ).attach(squash(), tok)
    assert dm.class_names == list(SHAPES)
    batch = next(iter(dm.test_dataloader()))
    rows = dm.load("test")
    assert batch["labels"].shape == (3, len(SHAPES)) and batch["labels"].dtype == torch.float32
    for hot, row in zip(batch["labels"], rows):
        assert hot.nonzero().flatten().tolist() == sorted(row["labels"])


def test_pointcloud_resampled_and_seeded(cache):
    options = {"split_sizes": {"train": 7, "test": 7}, "seed": 0, "cache_dir": cache, "num_points": 64}
    for n in (40, 100):  # fewer and more than the stored 64 points
        dm = PointCloudDataModule(
            "vpg-shapes/3d", options=options, val_split=None, num_points=n, batch_size=4
        )
        dm.setup("fit")
        rows = dm.load("test")
        batch = next(iter(dm.test_dataloader()))
        assert batch["points"].shape == (4, n, 3) and batch["points"].dtype == torch.float32
        assert batch["label"].tolist() == list(rows["label"])[:4]
        stored = {tuple(p) for p in np.asarray(rows[0]["points"], dtype=np.float32).tolist()}
        assert {tuple(p) for p in batch["points"][0].tolist()} <= stored
        again = next(iter(dm.test_dataloader()))
        assert torch.equal(batch["points"], again["points"])  # evaluation sampling is fixed
    assert dm.class_names == list(PRIMITIVES_3D)


def test_classification_bbox_passthrough(cache, tok):
    dm = ClassificationDataModule(
        "vpg-shapes/cls", options=shapes("cls", cache, 48, train=2, val=2, test=3), eval_batch_size=8
    ).attach(squash(), tok)
    batch = next(iter(dm.test_dataloader()))
    rows = dm.load("test")
    assert set(batch) == {"image", "label", "bbox"} and batch["bbox"].shape == (3, 4)
    assert torch.allclose(batch["bbox"], torch.tensor(rows["bbox"]) * 32 / 48, atol=1e-4)


def test_classification_coop_shots_match_coop_sampler(tmp_path):
    convert_coop_split(REAL / "coop" / "split_zhou_Caltech101.json.gz", tmp_path / "caltech")
    dm = ClassificationDataModule(str(tmp_path / "caltech"), shots=2, seed=1)
    train, val, test = dm.load("train"), dm.load("val"), dm.load("test")
    assert set(Counter(train["label"]).values()) == {2} and len(train) == 200
    assert max(Counter(val["label"]).values()) == 2 and len(test) == 2465
    reference = sample_few_shot(load_from_disk(str(tmp_path / "caltech")), 2, 1)
    assert list(train["image_id"]) == list(reference["train"]["image_id"])
    assert list(val["image_id"]) == list(reference["val"]["image_id"])
    assert len(dm.class_names) == 100


def test_captions_real_coco(tmp_path, tok):
    convert_coco_captions(
        REAL / "coco" / "captions_val2014_sample.json",
        tmp_path / "coco",
        file_name_template="val2014/COCO_val2014_{id:012d}.jpg",
        image_root=REAL / "coco",
    )
    dm = CaptionsDataModule(
        str(tmp_path / "coco"),
        image_root=str(REAL / "coco"),
        train_split=None,
        val_split="val",
        eval_batch_size=2,
    ).attach(squash(), tok)
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["text"].shape == (10, 16)
    assert batch["caption_image"].tolist() == [0] * 5 + [1] * 5


@pytest.mark.parametrize("prob", [None, 0.75])
def test_captions_first_caption_prob(tmp_path, tok, prob):
    """Training draws: uniform over the captions by default; caption 0 with probability p otherwise."""
    Image.new("RGB", (8, 8), (0, 200, 0)).save(tmp_path / "a.png")
    captions = ["the first", "second", "third", "fourth"]
    Dataset.from_dict({"image_path": ["a.png"] * 400, "captions": [captions] * 400,
                       "image_id": list(range(400))}).save_to_disk(str(tmp_path / "caps"))
    dm = CaptionsDataModule(str(tmp_path / "caps"), image_root=str(tmp_path), val_split=None,
                            first_caption_prob=prob).attach(squash(), tok)
    rows = dm.load("train")
    drawn = Counter(dm.make_sample(rows[i], i, train=True)["captions"][0] for i in range(400))
    expected = 0.25 if prob is None else prob
    assert abs(drawn["the first"] / 400 - expected) < 0.07  # 3 sigma at n = 400
    assert set(drawn) == set(captions)


def test_captions_first_caption_prob_out_of_range(tmp_path):
    with pytest.raises(ConfigurationError, match="first_caption_prob must be in"):
        CaptionsDataModule(str(tmp_path / "caps"), first_caption_prob=1.5)


def test_column_mapping_and_image_path_template(tmp_path, tok):
    """A Karpathy-like layout: captions under `sentences`, the path split over two columns."""
    folder = tmp_path / "images" / "val2014"
    folder.mkdir(parents=True)
    Image.new("RGB", (20, 10), (200, 0, 0)).save(folder / "a.jpg")
    Dataset.from_dict(
        {"filepath": ["val2014"], "filename": ["a.jpg"], "sentences": [["a red picture."]], "cocoid": [7]}
    ).save_to_disk(str(tmp_path / "karpathy"))
    dm = CaptionsDataModule(
        str(tmp_path / "karpathy"),
        columns={"captions": "sentences", "image_id": "cocoid"},
        image_root=str(tmp_path / "images"),
        image_path_template="{filepath}/{filename}",
        train_split=None,
        val_split="train",
        eval_batch_size=1,
    ).attach(squash(), tok)
    batch = next(iter(dm.val_dataloader()))
    assert batch["text"].shape == (1, 16) and batch["image"].shape == (1, 3, 32, 32)


# ------------------------------------------------------------------------------------ streaming + DDP


def _ids(loader) -> list[str]:
    return [i for b in loader for i in b["image_id"]]


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_ranks_read_disjoint_rows_covering_all(cache, tok, workers):
    options = shapes("multilabel", cache, train=2, val=2, test=13)
    dm = MultiLabelDataModule(
        "vpg-shapes/multilabel", options=options, streaming=True, eval_batch_size=4, num_workers=workers
    ).attach(squash(), tok)
    everything = list(MultiLabelDataModule("vpg-shapes/multilabel", options=options).load("test")["image_id"])
    rank0, rank1 = (_ids(dm.dataloader("test", rank=r, world_size=2)) for r in (0, 1))
    assert rank0 and rank1 and not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == sorted(everything) and len(rank0) + len(rank1) == 13


def test_streaming_ref_expands_and_shuffles_by_epoch(cache, tok):
    dm = ref_dm(cache, tok, streaming=True, eval_batch_size=5, batch_size=2, shuffle_buffer=8)
    flat = ref_dm(cache, tok)
    assert sorted(b for batch in dm.dataloader("val") for b in batch["sentences"]) == sorted(
        s for r in flat.load("val") for s in r["sentences"]
    )
    first = _ids(dm.dataloader("train", train=True))  # pass 0 -> epoch 0 (no trainer)
    second = _ids(dm.dataloader("train", train=True))  # pass 1 -> epoch 1: the buffer is re-seeded
    fresh = ref_dm(cache, tok, streaming=True, batch_size=2, shuffle_buffer=8)
    assert _ids(fresh.dataloader("train", train=True)) == first != second  # same seed and epoch -> same order


# ------------------------------------------------------------------------------------ bad input


def _png(size=(24, 16), colour=(0, 120, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def _ref_rows(n=4, size=(24, 16)):
    return [
        {
            "image": {"bytes": _png(size), "path": None},
            "image_id": str(i),
            "ref_id": str(i),
            "bbox": [2.0, 2.0, 10.0, 10.0],
            "sentences": [f"object {i}", f"thing {i}"],
            "candidates": [[2.0, 2.0, 10.0, 10.0], [12.0, 4.0, 20.0, 12.0]],
            "category": "x",
        }
        for i in range(n)
    ]


def _save_ref(tmp_path, rows, features=REF, name="bad") -> str:
    path = tmp_path / name
    table = {k: [r[k] for r in rows] for k in features}
    DatasetDict({"val": Dataset.from_dict(table, features=features)}).save_to_disk(str(path))
    return str(path)


# case -> (change to row 2 of 4 rows x 2 expressions, reason, bad samples among the 8)
BAD_CASES = {
    "truncated image": (lambda r: r["image"].update(bytes=_png()[:40]), "corrupt image", 2),
    "garbage bytes": (lambda r: r["image"].update(bytes=b"not an image at all"), "corrupt image", 2),
    "box outside": (lambda r: r.update(bbox=[2.0, 2.0, 40.0, 10.0]), "box outside the image", 2),
    "zero-area box": (lambda r: r.update(bbox=[5.0, 5.0, 5.0, 9.0]), "zero-area box", 2),
    "bad candidate": (
        lambda r: r.update(candidates=[[0.0, 0.0, 99.0, 9.0]]),
        "candidate box outside the image",
        2,
    ),
    "null box": (lambda r: r.update(bbox=None), "missing value", 2),
    "empty expression": (lambda r: r.update(sentences=["object", "  "]), "empty expression", 1),
    "no expressions": (
        lambda r: r.update(sentences=[]),
        "empty expression",
        1,
    ),  # 1 sample stands for the row
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_row_raises_with_where_or_is_skipped_and_counted(case, tmp_path, tok, caplog):
    mutate, reason, bad = BAD_CASES[case]
    rows = _ref_rows()
    mutate(rows[2])
    path = _save_ref(tmp_path, rows)
    dm = RefDataModule(path, train_split=None, eval_batch_size=16).attach(squash(), tok)
    with pytest.raises(DataError) as info:
        next(iter(dm.val_dataloader()))
    message = str(info.value)
    assert path in message and "split 'val'" in message and "row 2" in message and reason in message

    skip = RefDataModule(path, train_split=None, eval_batch_size=16, on_bad_sample="skip").attach(
        squash(), tok
    )
    with caplog.at_level(logging.WARNING, logger="vpg.data"):
        batches = all_batches(skip.val_dataloader())
    kept = [i for b in batches for i in b["image_id"]]
    assert len(kept) == (8 if case == "empty expression" else 6) - (1 if case == "empty expression" else 0)
    assert kept.count("2") == (1 if case == "empty expression" else 0)
    assert skip.skipped["val"] == Counter({reason: bad})
    assert "skipped" in caplog.text and reason in caplog.text


def test_missing_image_file_raise_and_skip(tmp_path, tok):
    root = tmp_path / "images"
    root.mkdir()
    rows = _ref_rows(3)
    for r in rows:
        r["image_path"] = f"{r['image_id']}.png"
        (root / r["image_path"]).write_bytes(r.pop("image")["bytes"])
    (root / "1.png").unlink()
    path = _save_ref(tmp_path, rows, output_features(REF, embed=False))
    dm = RefDataModule(path, image_root=str(root), train_split=None).attach(squash(), tok)
    with pytest.raises(
        DataError, match=r"split 'val', row 1 \(sentences\[0\]\): missing image file: .*1\.png"
    ):
        next(iter(dm.val_dataloader()))
    skip = RefDataModule(path, image_root=str(root), train_split=None, on_bad_sample="skip").attach(
        squash(), tok
    )
    assert sum(len(b["image_id"]) for b in skip.val_dataloader()) == 4
    assert skip.skipped["val"] == Counter({"missing image file": 2})
    with pytest.raises(ConfigurationError, match="set image_root"):
        next(iter(RefDataModule(path, train_split=None).attach(squash(), tok).val_dataloader()))


def test_all_skipped_batch_is_dropped_not_yielded(tmp_path, tok):
    rows = _ref_rows(3)
    for r in rows[:2]:
        r["bbox"] = [0.0, 0.0, 0.0, 0.0]
    path = _save_ref(tmp_path, rows)
    dm = RefDataModule(path, train_split=None, eval_batch_size=2, on_bad_sample="skip").attach(squash(), tok)
    batches = all_batches(dm.val_dataloader())
    assert [len(b["sentences"]) for b in batches] == [2]  # batches of rows 0 and 1 vanished
    assert dm.skipped["val"]["zero-area box"] == 4 and dm.pass_reports[-1]["complete"]


def test_missing_column_and_unknown_split_always_raise(tmp_path, tok, cache):
    rows = _ref_rows(2)
    features = datasets.Features({k: v for k, v in REF.items() if k != "bbox"})
    path = _save_ref(tmp_path, rows, features)
    for policy in ("raise", "skip"):
        dm = RefDataModule(path, train_split=None, on_bad_sample=policy).attach(squash(), tok)
        with pytest.raises(DataError, match=r"split 'val': missing column\(s\) \['bbox'\]"):
            dm.load("val")
    mapped = RefDataModule(path, train_split=None, columns={"bbox": "box"}).attach(squash(), tok)
    with pytest.raises(DataError, match=r"missing column\(s\) \['box'\] named in `columns`"):
        mapped.load("val")
    with pytest.raises(DataError, match=r"unknown split 'testC'"):
        ref_dm(cache, tok).load("testC")
    with pytest.raises(ConfigurationError, match="on_bad_sample"):
        RefDataModule(path, on_bad_sample="ignore")


def test_long_text_truncated_and_counted(tmp_path, tok, caplog):
    rows = _ref_rows(2)
    rows[1]["sentences"] = [
        "the small green square that is to the left of the large red circle near the top"
    ] * 2
    path = _save_ref(tmp_path, rows)
    dm = RefDataModule(path, train_split=None, eval_batch_size=8).attach(squash(), tok)
    with caplog.at_level(logging.WARNING, logger="vpg.data"):
        batch = next(iter(dm.val_dataloader()))
    assert batch["text"].shape == (4, 16) and batch["text"][2, -1] == tok.eot_token_id
    assert dm.events["val"] == Counter({TRUNCATED: 2})
    assert caplog.text.count(TRUNCATED) == 1  # one line per pass, with the count


def test_exif_rotated_image_gives_rotated_size(tmp_path, tok):
    rows = _ref_rows(1, size=(16, 24))
    rows[0]["candidates"] = [[2.0, 2.0, 10.0, 10.0]]
    image = Image.new("RGB", (24, 16), (0, 0, 200))  # stored landscape, displayed portrait
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    image.save(buf, "PNG", exif=exif)
    rows[0]["image"]["bytes"] = buf.getvalue()
    dm = RefDataModule(_save_ref(tmp_path, rows), train_split=None).attach(squash(), tok)
    batch = next(iter(dm.val_dataloader()))
    assert batch["orig_size"][0].tolist() == [16, 24]
    assert torch.allclose(batch["scale"][0], torch.tensor([2.0, 32 / 24]))


def test_skip_counts_come_back_from_loader_workers(tmp_path, tok):
    rows = _ref_rows(6)
    rows[1]["bbox"] = [3.0, 3.0, 3.0, 3.0]
    rows[4]["image"]["bytes"] = b"garbage"
    path = _save_ref(tmp_path, rows)
    dm = RefDataModule(path, train_split=None, eval_batch_size=3, num_workers=2, on_bad_sample="skip")
    dm.attach(squash(), tok)
    assert sum(len(b["image_id"]) for b in dm.val_dataloader()) == 8
    assert dm.skipped["val"] == Counter({"zero-area box": 2, "corrupt image": 2})
    strict = RefDataModule(path, train_split=None, eval_batch_size=3, num_workers=2).attach(squash(), tok)
    with pytest.raises(DataError, match=r"split 'val', row 1 \(sentences\[0\]\): zero-area box"):
        list(strict.val_dataloader())


def test_phrase_trains_on_coco_style_caption_lists_with_word_dropout(cache, tok):
    """WWbL: train on captions (CAPTIONS rows, one caption drawn per image, words dropped), test on phrases."""
    dm = PhraseDataModule(
        "vpg-shapes/captions",
        options=shapes("captions", cache, train=4, val=2, test=2),
        eval_dataset="vpg-shapes/phrase",
        eval_options=shapes("phrase", cache, train=4, val=2, test=2),
        word_dropout=0.2,
        batch_size=4,
    ).attach(squash(), tok)
    batch = next(iter(dm.train_dataloader()))
    captions = [c.split() for cs in dm.load("train")["captions"] for c in cs]
    for sentence in batch["sentences"]:
        words = sentence.split()
        assert any(len(words) <= len(c) and all(w in c for w in words) for c in captions)
    assert "phrases" in next(iter(dm.val_dataloader()))


def test_xywh_box_format(tmp_path, tok):
    rows = _ref_rows(1)
    rows[0]["bbox"] = [2.0, 2.0, 8.0, 8.0]  # xywh of [2, 2, 10, 10]
    rows[0]["candidates"] = [[2.0, 2.0, 8.0, 8.0]]
    dm = RefDataModule(_save_ref(tmp_path, rows), train_split=None, box_format="xywh").attach(squash(24), tok)
    batch = next(iter(dm.val_dataloader()))
    assert (
        batch["gold"][0].tolist() == [2.0, 3.0, 10.0, 15.0] and batch["gold_index"][0] == 0
    )  # 24 x 16 -> 24


def _save(tmp_path, columns: dict, features: datasets.Features) -> str:
    DatasetDict({"test": Dataset.from_dict(columns, features=features)}).save_to_disk(str(tmp_path / "ds"))
    return str(tmp_path / "ds")


@pytest.mark.parametrize("family", ["classification", "multilabel", "pointcloud"])
def test_bad_rows_of_other_families(family, tmp_path, tok):
    from vpg.data.schemas import classification_features, pointcloud_features

    good, bad_image = {"bytes": _png(), "path": None}, {"bytes": b"junk", "path": None}
    if family == "classification":  # an unlabelled row (-1), a corrupt image, a box outside the image
        path = _save(tmp_path, {"image": [good, bad_image, good, good], "image_id": list("abcd"),
                                "label": [0, 1, -1, 1], "bbox": [[1, 1, 5, 5]] * 3 + [[1, 1, 50, 5]]},
                     classification_features(["x", "y"], with_box=True))  # fmt: skip
        cls, reasons = (
            ClassificationDataModule,
            {"corrupt image": 1, "invalid label": 1, "box outside the image": 1},
        )
    elif family == "multilabel":  # plain int labels (no ClassLabel): one beyond the classes; a null list
        features = datasets.Features(
            {"image": datasets.Image(), "image_id": datasets.Value("string"),
             "labels": datasets.List(datasets.Value("int64"))}
        )  # fmt: skip
        path = _save(tmp_path, {"image": [good, good, bad_image, good], "image_id": list("abcd"),
                                "labels": [[0], [0, 5], [1], None]}, features)  # fmt: skip
        cls, reasons = partial(MultiLabelDataModule, class_names=["x", "y"]), {
            "invalid label": 1, "corrupt image": 1, "missing value": 1}  # fmt: skip
    else:  # a cloud with a NaN, an empty cloud
        clouds = [np.ones((5, 3)), np.full((5, 3), np.nan), np.zeros((0, 3)), np.ones((7, 3))]
        path = _save(tmp_path, {"points": [c.astype(np.float32) for c in clouds], "label": [0, 1, 0, 1]},
                     pointcloud_features(["x", "y"]))  # fmt: skip
        cls, reasons = PointCloudDataModule, {"invalid points": 2}
    dm = cls(path, train_split=None, val_split=None, eval_batch_size=8).attach(squash(), tok)
    with pytest.raises(DataError, match=r"split 'test', row 1: "):
        next(iter(dm.test_dataloader()))
    skip = cls(path, train_split=None, val_split=None, eval_batch_size=8, on_bad_sample="skip").attach(
        squash(), tok
    )
    batch = next(iter(skip.test_dataloader()))
    assert len(next(iter(batch.values()))) == 4 - sum(reasons.values())
    assert skip.skipped["test"] == Counter(reasons)
