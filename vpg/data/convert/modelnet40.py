"""ModelNet40 point clouds -> ``pointcloud_features`` (points (N, 3) float32, label over 40 names).

Two common releases, told apart by their name files:

- ``modelnet40_normal_resampled`` (``modelnet40_shape_names.txt``): one text file per shape,
  ``<class>/<shape id>.txt`` with ``x,y,z,nx,ny,nz`` per line (10,000 points); the splits are
  ``modelnet40_train.txt`` / ``modelnet40_test.txt`` listing shape ids (``night_stand_0001``: the
  class is the id without its trailing ``_<number>``). Normals are dropped.
- ``modelnet40_ply_hdf5_2048`` (``shape_names.txt``): ``ply_data_{train,test}<k>.h5`` with
  ``data`` (M, 2048, 3) float32 and ``label`` (M, 1) class indices; the files of a split are
  listed in ``train_files.txt`` / ``test_files.txt`` (only their file names are used; without
  the lists, ``ply_data_<split>*.h5`` in index order). Reading it needs ``h5py``.

Rows: splits ``train`` / ``test``, ``label`` = the index of the class in the name file (the
dataset's label order; class names with ``_`` -> space: ``night stand``, ``--raw-class-names``
keeps them), ``points`` = the first ``max_points`` points (all by default; the PointCloudDataModule
resamples to its ``num_points``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from vpg.data.schemas import pointcloud_features

from .common import (
    BadSamples,
    Conversion,
    ConversionError,
    ImageSource,
    PathLike,
    add_common_arguments,
    common_kwargs,
    finish,
    new_parser,
    read_lines,
)

SPLITS = ("train", "test")


def _checked_points(points: np.ndarray, max_points: int | None) -> tuple[np.ndarray | None, str]:
    """(N, >=3) array -> first ``max_points`` xyz rows as float32, or (None, why it is bad)."""
    if points.ndim != 2 or points.shape[1] < 3 or points.shape[0] == 0:
        return None, f"expected (N, >=3) values, got shape {tuple(points.shape)}"
    points = points[:max_points, :3].astype(np.float32)  # (N, 3)
    if not np.isfinite(points).all():
        return None, "non-finite coordinates"
    return points, ""


def _class_of(shape_id: str) -> str:
    """``night_stand_0001`` -> ``night_stand``."""
    return re.sub(r"_\d+$", "", shape_id)


def _normal_resampled_rows(root: Path, label_of: dict[str, int], max_points, bad: BadSamples):
    rows_by_split = {}
    for split in SPLITS:
        list_file = root / f"modelnet40_{split}.txt"
        if not list_file.is_file():
            continue
        rows = []
        for i, shape_id in enumerate(read_lines(list_file)):
            where = f"line {i + 1} ({shape_id})"
            cls = _class_of(shape_id)
            if cls not in label_of:
                bad(list_file, where, "unknown class", f"{cls!r} is not in modelnet40_shape_names.txt")
                continue
            path = root / cls / f"{shape_id}.txt"
            if not path.is_file():
                bad(list_file, where, "missing point file", str(path))
                continue
            try:
                values = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)  # (N, 6)
            except ValueError as exc:
                bad(path, where, "invalid points", str(exc).splitlines()[0])
                continue
            points, why = _checked_points(values, max_points)
            if points is None:
                bad(path, where, "invalid points", why)
                continue
            rows.append({"points": points, "label": label_of[cls]})
        rows_by_split[split] = rows
    return rows_by_split


def _h5_files(root: Path, split: str) -> list[Path]:
    list_file = root / f"{split}_files.txt"
    if list_file.is_file():
        files = []
        for i, line in enumerate(read_lines(list_file)):
            path = root / Path(line).name  # the lists hold paths like data/modelnet40_ply_hdf5_2048/<name>
            if not path.is_file():
                raise ConversionError(list_file, f"listed file {path} not found", f"line {i + 1}")
            files.append(path)
        return files
    found = root.glob(f"ply_data_{split}*.h5")
    return sorted(found, key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))


def _hdf5_rows(root: Path, num_classes: int, max_points, bad: BadSamples):
    try:
        import h5py
    except ImportError as exc:
        raise ConversionError(
            root, "reading the modelnet40_ply_hdf5_2048 release needs h5py (pip install h5py)"
        ) from exc
    rows_by_split = {}
    for split in SPLITS:
        files = _h5_files(root, split)
        if not files:
            continue
        rows = []
        for path in files:
            try:
                with h5py.File(path, "r") as f:
                    data, labels = (
                        np.asarray(f["data"]),
                        np.asarray(f["label"]).reshape(-1),
                    )  # (M, P, 3), (M,)
            except (OSError, KeyError) as exc:
                raise ConversionError(path, f"unreadable file (expected 'data' and 'label'): {exc}") from exc
            if len(data) != len(labels):
                raise ConversionError(path, f"{len(data)} clouds but {len(labels)} labels")
            for k, (cloud, label) in enumerate(zip(data, labels)):
                where = f"sample {k}"
                if not 0 <= int(label) < num_classes:
                    bad(path, where, "unknown class", f"label {int(label)} not in 0..{num_classes - 1}")
                    continue
                points, why = _checked_points(cloud, max_points)
                if points is None:
                    bad(path, where, "invalid points", why)
                    continue
                rows.append({"points": points, "label": int(label)})
        rows_by_split[split] = rows
    return rows_by_split


def convert_modelnet40(
    root: PathLike,
    out: PathLike | None = None,
    *,
    max_points: int | None = None,
    raw_class_names: bool = False,
    on_bad_sample: str = "raise",
) -> Conversion:
    """``modelnet40_normal_resampled`` or ``modelnet40_ply_hdf5_2048`` folder -> DatasetDict."""
    root = Path(root)
    if max_points is not None and max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    bad = BadSamples(on_bad_sample)
    if (root / "modelnet40_shape_names.txt").is_file():
        release, names_file = "modelnet40_normal_resampled", root / "modelnet40_shape_names.txt"
    elif (root / "shape_names.txt").is_file():
        release, names_file = "modelnet40_ply_hdf5_2048", root / "shape_names.txt"
    else:
        raise ConversionError(
            root, "neither modelnet40_shape_names.txt (normal_resampled) nor shape_names.txt (ply_hdf5_2048)"
        )
    raw_names = read_lines(names_file)
    if len(set(raw_names)) != len(raw_names):
        raise ConversionError(names_file, "duplicate class names")
    if release == "modelnet40_normal_resampled":
        rows_by_split = _normal_resampled_rows(root, {n: i for i, n in enumerate(raw_names)}, max_points, bad)
    else:
        rows_by_split = _hdf5_rows(root, len(raw_names), max_points, bad)
    if not rows_by_split:
        raise ConversionError(root, f"no split lists or files found for {', '.join(SPLITS)} ({release})")
    names = raw_names if raw_class_names else [n.replace("_", " ") for n in raw_names]
    return finish(
        rows_by_split,
        pointcloud_features(names),
        out,
        ImageSource(),
        bad,
        release=release,
        num_classes=len(names),
    )


def register(subparsers) -> None:
    p = new_parser(
        subparsers, "modelnet40", "ModelNet40 (normal_resampled or ply_hdf5_2048) -> point clouds", __doc__
    )
    p.add_argument(
        "--in", dest="inp", required=True, help="modelnet40_normal_resampled or modelnet40_ply_hdf5_2048"
    )
    p.add_argument("--max-points", type=int, default=None, help="keep the first N points of each cloud")
    p.add_argument("--raw-class-names", action="store_true", help="keep class names as in the name file")
    add_common_arguments(p, images=False)
    p.set_defaults(
        run=lambda a: convert_modelnet40(
            a.inp, max_points=a.max_points, raw_class_names=a.raw_class_names, **common_kwargs(a)
        )
    )
