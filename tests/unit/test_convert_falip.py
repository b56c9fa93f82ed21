"""Converters behind FALIP's real-data configs (paper Tables 1-3): ImageNet-S masks, Waterbirds,
ModelNet40 and the gold REC candidates, on tiny files written in the released formats."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from datasets import load_from_disk
from PIL import Image as PILImage

from vpg.data.convert import (
    ConversionError,
    convert_gold_candidates,
    convert_imagenet_s,
    convert_modelnet40,
    convert_waterbirds,
    load_detections,
)
from vpg.data.convert.cli import main as cli_main
from vpg.data.convert.common import output_features
from vpg.data.datamodules import ClassificationDataModule, PointCloudDataModule
from vpg.data.schemas import classification_features, pointcloud_features
from vpg.data.transforms import SquashResize

datasets.disable_progress_bars()


def write_image(path: Path, size=(32, 24)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.new("RGB", size, (120, 30, 200)).save(path)


def assert_schema(dataset_dict, features, embedded: bool = False) -> None:
    for split in dataset_dict.values():
        assert split.features == output_features(features, embedded)


# ------------------------------------------------------------------------------------- ImageNet-S


def class_rgb(class_id: int) -> tuple[int, int, int]:
    """The release's encoding: class id = R + 256 * G."""
    return class_id % 256, class_id // 256, 0


def write_mask(path: Path, regions, size=(8, 6)) -> None:
    """regions: [(class_id, x1, y1, x2, y2)] painted in order on an 'other' (0) background."""
    mask = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    for class_id, x1, y1, x2, y2 in regions:
        mask[y1:y2, x1:x2] = class_rgb(class_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(mask).save(path)


@pytest.fixture
def imagenet_s(tmp_path):
    root = tmp_path / "ImageNetS300"
    wnids = [f"n{90000000 - i:08d}" for i in range(300)]  # written in descending order
    root.mkdir()
    (root / "ImageNetS_categories_im300.txt").write_text("\n".join(wnids) + "\n")
    ordered = sorted(wnids)  # class id i (1-based) = ordered[i - 1]
    # class 258 (R=2, G=1) dominates; one pixel of class 7; an 'ignored' (1000) strip
    write_mask(
        root / "validation-segmentation" / ordered[257] / "ILSVRC2012_val_00000001.png",
        [(1000, 0, 5, 8, 6), (258, 2, 1, 6, 4), (7, 7, 0, 8, 1)],
    )
    write_mask(root / "train-semi-segmentation" / ordered[0] / "n1_5.png", [(1, 0, 0, 1, 1)])
    for rel in (f"validation/{ordered[257]}/ILSVRC2012_val_00000001", f"train-semi/{ordered[0]}/n1_5"):
        write_image(root / f"{rel}.JPEG", size=(8, 6))
    return root, ordered


def test_imagenet_s_boxes_from_masks(imagenet_s, tmp_path):
    root, ordered = imagenet_s
    result = convert_imagenet_s(root, tmp_path / "out", image_root=root)
    ds = load_from_disk(str(tmp_path / "out"))
    assert_schema(ds, classification_features(ordered, with_box=True))
    assert ds["validation"][0] == {
        "image_path": f"validation/{ordered[257]}/ILSVRC2012_val_00000001.JPEG",
        "image_id": f"{ordered[257]}/ILSVRC2012_val_00000001",
        "label": 257,  # class id 258 = R 2 + 256 * G 1, minus 1
        "bbox": [2, 1, 6, 4],  # pixel edges of columns 2..5, rows 1..3
    }
    assert ds["train_semi"][0]["bbox"] == [0, 0, 1, 1] and ds["train_semi"][0]["label"] == 0
    assert result.summary["images_with_several_classes"] == 1
    assert result.summary["rows"] == {"validation": 1, "train_semi": 1}


def test_imagenet_s_synset_names_and_split_choice(imagenet_s, tmp_path):
    root, ordered = imagenet_s
    (tmp_path / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} word {i}, synonym\n" for i, w in enumerate(reversed(ordered)))
    )
    ds = convert_imagenet_s(
        root, synset_names=tmp_path / "LOC_synset_mapping.txt", splits=["validation"]
    ).dataset
    assert list(ds) == ["validation"]
    assert ds["validation"].features["label"].names[257] == f"word {299 - 257}"


def test_imagenet_s_bad_masks(imagenet_s, tmp_path):
    root, ordered = imagenet_s
    empty = root / "validation-segmentation" / ordered[3] / "empty.png"
    write_mask(empty, [(1000, 0, 0, 8, 6)])  # only 'ignored' pixels
    write_image(root / "validation" / ordered[3] / "empty.JPEG", size=(8, 6))
    with pytest.raises(ConversionError, match=r"empty\.png, mask n\d+/empty: no object pixels"):
        convert_imagenet_s(root)
    result = convert_imagenet_s(root, on_bad_sample="skip")
    assert result.summary["skipped"] == {"no object pixels": 1}
    write_mask(empty, [(301, 0, 0, 2, 2)])  # beyond the 300 classes
    with pytest.raises(ConversionError, match=r"unknown class: class id 301 .* not in 1\.\.300"):
        convert_imagenet_s(root)
    write_mask(empty, [(5, 0, 0, 2, 2)], size=(9, 6))  # mask larger than its image
    with pytest.raises(ConversionError, match=r"mask size differs: mask \(9, 6\), image \(8, 6\)"):
        convert_imagenet_s(root, image_root=root)
    (root / "ImageNetS_categories_im300.txt").write_text("n1\nn2\n")
    with pytest.raises(ConversionError, match=r"im300\.txt: 2 categories, ImageNet-S300 has 300"):
        convert_imagenet_s(root)


# ------------------------------------------------------------------------------------- Waterbirds

CUB_FILES = [
    "001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg",
    "002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg",
    "100.Brown_Pelican/Brown_Pelican_0003_94.jpg",
    "013.Bobolink/Bobolink_0004_9289.jpg",
]


def waterbirds_files(tmp_path, rows=None, header="img_id,img_filename,y,split,place,place_filename"):
    cub = tmp_path / "CUB_200_2011"
    cub.mkdir(exist_ok=True)
    (cub / "images.txt").write_text("".join(f"{i + 1} {f}\n" for i, f in enumerate(CUB_FILES)))
    (cub / "bounding_boxes.txt").write_text(
        "1 1.0 2.0 10.0 12.0\n2 0.0 0.0 32.0 24.0\n3 4.0 4.0 8.0 8.0\n4 30.0 2.0 10.0 10.0\n"
    )
    wb = tmp_path / "waterbird_complete95_forest2water2"
    rows = rows or [
        f"1,{CUB_FILES[0]},1,0,1,/o/ocean/00001.jpg",
        f"2,{CUB_FILES[1]},1,1,0,/b/bamboo_forest/00002.jpg",
        f"3,{CUB_FILES[2]},1,2,1,/l/lake/natural/00003.jpg",
    ]
    wb.mkdir(exist_ok=True)
    (wb / "metadata.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    for f in CUB_FILES:
        write_image(wb / f)
    return wb, cub


def test_waterbirds_rows_and_boxes(tmp_path):
    wb, cub = waterbirds_files(tmp_path)
    result = convert_waterbirds(wb, cub, tmp_path / "out", image_root=wb)
    ds = load_from_disk(str(tmp_path / "out"))
    assert_schema(ds, classification_features(["landbird", "waterbird"], with_box=True))
    assert {k: len(v) for k, v in ds.items()} == {"train": 1, "val": 1, "test": 1}
    assert ds["train"][0] == {"image_path": CUB_FILES[0], "image_id": "1", "label": 1, "bbox": [1, 2, 11, 14]}
    assert ds["val"][0]["bbox"] == [0, 0, 32, 24] and ds["test"][0]["bbox"] == [4, 4, 12, 12]
    assert result.summary["groups"] == {
        "train waterbird on water": 1,
        "val waterbird on land": 1,
        "test waterbird on water": 1,
    }
    # what falip_cls_waterbirds.yaml reads: boxes come out in model-input pixels
    dm = ClassificationDataModule(
        str(tmp_path / "out"), image_root=str(wb), train_split=None, val_split=None, test_splits=["val"]
    )
    from vpg.clip import get_tokenizer

    dm.attach(SquashResize(16, (0.5,) * 3, (0.5,) * 3), get_tokenizer("vpg-tiny"))
    batch = next(iter(dm.test_dataloader()))
    assert torch.allclose(batch["bbox"], torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    assert batch["label"].tolist() == [1]


def test_waterbirds_ids_from_file_names(tmp_path):
    rows = [f"{CUB_FILES[3]},0,2,0,/b/bamboo_forest/1.jpg", f"{CUB_FILES[2]},1,2,1,/o/ocean/2.jpg"]
    wb, cub = waterbirds_files(tmp_path, rows, header="img_filename,y,split,place,place_filename")
    ds = convert_waterbirds(wb / "metadata.csv", cub).dataset  # no image root: box not size-checked
    assert [r["image_id"] for r in ds["test"]] == ["4", "3"] and ds["test"]["label"] == [0, 1]
    assert ds["test"][0]["bbox"] == [30, 2, 40, 12]


def test_waterbirds_bad_input(tmp_path):
    wb, cub = waterbirds_files(tmp_path, [f"2,{CUB_FILES[0]},1,0,1,x.jpg", f"3,{CUB_FILES[2]},1,5,1,y.jpg"])
    with pytest.raises(
        ConversionError,
        match=r"metadata\.csv, row 1 \(001\.Black_footed_Albatross/.*\): image id mismatch: CUB images\.txt has "
        r"'002\.Laysan",
    ):
        convert_waterbirds(wb, cub)
    skipped = convert_waterbirds(wb, cub, on_bad_sample="skip").summary["skipped"]
    assert skipped == {"image id mismatch": 1, "unknown split": 1}
    wb, cub = waterbirds_files(tmp_path, [f"4,{CUB_FILES[3]},0,0,0,z.jpg"])
    with pytest.raises(ConversionError, match=r"bounding_boxes\.txt, image id 4: box outside the image"):
        convert_waterbirds(wb, cub, image_root=wb)  # x 30 + w 10 > width 32
    (wb / "metadata.csv").write_text("img_id,img_filename,split\n1,a.jpg,0\n")
    with pytest.raises(ConversionError, match=r"metadata\.csv: missing column 'y'"):
        convert_waterbirds(wb, cub)


# ------------------------------------------------------------------------------------- ModelNet40


def normal_resampled(tmp_path) -> Path:
    root = tmp_path / "modelnet40_normal_resampled"
    root.mkdir()
    (root / "modelnet40_shape_names.txt").write_text("airplane\nnight_stand\n")
    (root / "modelnet40_train.txt").write_text("airplane_0001\nnight_stand_0001\n")
    (root / "modelnet40_test.txt").write_text("night_stand_0002\n")
    for shape_id, offset in (("airplane_0001", 0), ("night_stand_0001", 10), ("night_stand_0002", 20)):
        cls = shape_id.rsplit("_", 1)[0]
        (root / cls).mkdir(exist_ok=True)
        lines = [",".join(f"{v:.6f}" for v in (offset + k, k, -k, 0, 0, 1)) for k in range(4)]
        (root / cls / f"{shape_id}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_modelnet40_normal_resampled(tmp_path):
    root = normal_resampled(tmp_path)
    result = convert_modelnet40(root, tmp_path / "out", max_points=3)
    ds = load_from_disk(str(tmp_path / "out"))
    assert_schema(ds, pointcloud_features(["airplane", "night stand"]))
    assert ds["train"]["label"] == [0, 1] and ds["test"]["label"] == [1]
    expected = np.array([[20 + k, k, -k] for k in range(3)], dtype=np.float32)  # xyz of the first 3
    assert np.array_equal(np.asarray(ds["test"][0]["points"], dtype=np.float32), expected)
    assert result.summary["release"] == "modelnet40_normal_resampled"
    dm = PointCloudDataModule(str(tmp_path / "out"), train_split=None, val_split=None, num_points=3)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["points"].shape == (1, 3, 3) and dm.class_names == ["airplane", "night stand"]
    assert {tuple(p) for p in batch["points"][0].tolist()} == {tuple(p) for p in expected.tolist()}


def test_modelnet40_bad_files(tmp_path):
    root = normal_resampled(tmp_path)
    (root / "night_stand" / "night_stand_0002.txt").write_text("1,2,3,0,0,1\n4,5\n")
    with pytest.raises(
        ConversionError, match=r"night_stand_0002\.txt, line 1 \(night_stand_0002\): invalid points"
    ):
        convert_modelnet40(root)
    (root / "modelnet40_test.txt").write_text("night_stand_0009\nsofa_0001\n")
    with pytest.raises(ConversionError, match=r"modelnet40_test\.txt, line 1 .*: missing point file"):
        convert_modelnet40(root)
    result = convert_modelnet40(root, on_bad_sample="skip")
    assert result.summary["skipped"] == {"missing point file": 1, "unknown class": 1}
    assert len(result.dataset["test"]) == 0 and len(result.dataset["train"]) == 2


def hdf5_release(tmp_path, h5py) -> Path:
    root = tmp_path / "modelnet40_ply_hdf5_2048"
    root.mkdir()
    (root / "shape_names.txt").write_text("airplane\nbathtub\nbed\n")
    clouds = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    for name, labels in (("ply_data_train0.h5", [[2], [0]]), ("ply_data_test0.h5", [[1], [7]])):
        with h5py.File(root / name, "w") as f:
            f["data"], f["label"] = clouds, np.array(labels, dtype=np.uint8)
    (root / "train_files.txt").write_text("data/modelnet40_ply_hdf5_2048/ply_data_train0.h5\n")
    return root


def test_modelnet40_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")
    root = hdf5_release(tmp_path, h5py)
    with pytest.raises(
        ConversionError, match=r"ply_data_test0\.h5, sample 1: unknown class: label 7 not in 0\.\.2"
    ):
        convert_modelnet40(root)
    ds = convert_modelnet40(root, on_bad_sample="skip").dataset
    assert ds["train"]["label"] == [2, 0] and ds["test"]["label"] == [1]
    assert np.array_equal(np.asarray(ds["train"][1]["points"]), np.arange(15, 30).reshape(5, 3))


def test_modelnet40_hdf5_without_h5py(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py -> ImportError
    root = tmp_path / "modelnet40_ply_hdf5_2048"
    root.mkdir()
    (root / "shape_names.txt").write_text("airplane\n")
    with pytest.raises(ConversionError, match=r"modelnet40_ply_hdf5_2048: .*needs h5py"):
        convert_modelnet40(root)


# -------------------------------------------------------------------------------- gold candidates


def instances_file(tmp_path, third_box=(0, 0, 5, 5)) -> Path:
    data = {
        "images": [{"id": 7, "width": 32, "height": 24}, {"id": 9, "width": 10, "height": 10}],
        "annotations": [
            {"id": 1, "image_id": 7, "bbox": [1, 2, 10, 12], "iscrowd": 0},
            {"id": 2, "image_id": 9, "bbox": [0, 0, 10, 10], "iscrowd": 0},
            {"id": 3, "image_id": 7, "bbox": list(third_box), "iscrowd": 1},
        ],
        "categories": [{"id": 1, "name": "dog"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_gold_candidates(tmp_path):
    path = instances_file(tmp_path)
    result = convert_gold_candidates(path, tmp_path / "refcoco" / "gold.json")
    written = json.loads((tmp_path / "refcoco" / "gold.json").read_text())
    assert written == {"7": [[1, 2, 10, 12], [0, 0, 5, 5]], "9": [[0, 0, 10, 10]]} == result.candidates
    assert result.summary["boxes"] == 3 and result.summary["crowd annotations"] == 1
    loaded = load_detections(tmp_path / "refcoco" / "gold.json")  # what RefDataModule(candidates_file=) reads
    assert loaded["7"].tolist() == [[1, 2, 11, 14], [0, 0, 5, 5]]
    assert convert_gold_candidates(path, include_crowd=False).candidates["7"] == [[1, 2, 10, 12]]


def test_gold_candidates_bad_box_and_cli(tmp_path, capsys):
    path = instances_file(tmp_path, third_box=(30, 0, 10, 5))  # x 30 + 10 > width 32
    with pytest.raises(
        ConversionError, match=r"instances\.json, annotations\[2\] \(id 3, image 7\): box outside"
    ):
        convert_gold_candidates(path)
    out = tmp_path / "gold.json"
    assert cli_main(["gold-candidates", "--in", str(path), "--out", str(out)]) == 1
    assert "box outside the image" in capsys.readouterr().err and not out.exists()
    assert cli_main(["gold-candidates", "--in", str(path), "--out", str(out), "--on-bad-sample", "skip"]) == 0
    assert json.loads(out.read_text())["7"] == [[1, 2, 10, 12]]
    assert "skipped 1 bad records: box outside the image: 1" in capsys.readouterr().err


def test_cli_new_formats(tmp_path, imagenet_s):
    root, _ = imagenet_s
    assert (
        cli_main(["imagenet-s", "--in", str(root), "--out", str(tmp_path / "ims"), "--split", "validation"])
        == 0
    )
    assert len(load_from_disk(str(tmp_path / "ims"))["validation"]) == 1
    mn = normal_resampled(tmp_path)
    assert cli_main(["modelnet40", "--in", str(mn), "--out", str(tmp_path / "mn"), "--max-points", "2"]) == 0
    assert np.asarray(load_from_disk(str(tmp_path / "mn"))["train"][0]["points"]).shape == (2, 3)
    wb, cub = waterbirds_files(tmp_path)
    args = ["waterbirds", "--in", str(wb), "--cub", str(cub), "--out", str(tmp_path / "wb")]
    assert cli_main(args + ["--class-names", "land bird", "water bird"]) == 0
    assert load_from_disk(str(tmp_path / "wb"))["test"].features["label"].names == ["land bird", "water bird"]
