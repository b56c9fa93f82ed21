"""HF ``datasets`` builders for the vpg-shapes world, with on-disk caching.

Datasets (name -> schema of ``vpg.data.schemas``; default split sizes in ``DEFAULT_SPLIT_SIZES``)
- shapes-captions   CAPTIONS     1-6 objects per image, 5-7 true captions each.
- shapes-ref        REF          one row per referred object; 1-3 unambiguous expressions.
                                 Splits train / val / testA / testB (sizes count *images*).
                                 testA: images with >= 2 objects of the round kinds
                                 (circle, ring, hexagon); only round objects are referred to.
                                 testB: likewise with the angular kinds (square, triangle,
                                 diamond, star, cross). Like RefCOCO's people / non-people
                                 split, every testA row's category is in ROUND_SHAPES and every
                                 testB row's category is in ANGULAR_SHAPES. Images never repeat
                                 across splits.
- shapes-phrase     PHRASE       ``captions_per_image`` (2) rows per image; plural phrases
                                 ("two red circles") have one box per object, type "group".
- shapes-multilabel multilabel   classes = SHAPES (8 shape kinds), present if any object is.
- shapes-cls        classification(with_box=True), classes = CLS_CLASSES ("red circle", ...,
                                 6 colours x 8 shapes = 48): one large main object plus 0-3 small
                                 clutter objects of other classes; bbox = the main object's box.
                                 Labels cycle (index % 48), so every split is class-balanced.
- shapes-3d         pointcloud   PRIMITIVES_3D (7 classes), ``num_points`` (1024) per cloud,
                                 balanced (index % 7). Splits train / test.
- shapes-pretrain   CAPTIONS     ``make_pretrain_corpus``: scenes + single objects + depth maps.

Determinism: item ``index`` of split ``split`` uses ``default_rng([seed, crc32(name),
crc32(split), index])``, so an item never depends on the other items, on generation order or
on the number of worker processes.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import uuid
import zlib
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict, Features, load_from_disk
from PIL import Image

from vpg.data.pointcloud import VIEW_NAMES, depth_to_rgb, project_depth_maps
from vpg.data.schemas import (
    CAPTIONS,
    PHRASE,
    REF,
    classification_features,
    multilabel_features,
    pointcloud_features,
)
from vpg.data.shapes.language import (
    depth_map_captions,
    grounded_caption,
    referring_expressions,
    scene_captions,
    single_object_captions,
)
from vpg.data.shapes.primitives3d import PRIMITIVES_3D, make_point_cloud
from vpg.data.shapes.scene import (
    ANGULAR_SHAPES,
    COLOUR_NAMES,
    ROUND_SHAPES,
    SHAPES,
    ObjectSpec,
    encode_png,
    generate_scene,
)

GENERATOR_VERSION = "vpg-shapes-2"  # bump whenever generated content changes: it keys the cache

MULTILABEL_CLASSES = SHAPES
CLS_CLASSES = tuple(f"{colour} {shape}" for colour in COLOUR_NAMES for shape in SHAPES)

DEFAULT_SPLIT_SIZES: dict[str, dict[str, int]] = {
    "shapes-captions": {"train": 4000, "val": 500, "test": 500},
    "shapes-ref": {"train": 2000, "val": 250, "testA": 250, "testB": 250},
    "shapes-phrase": {"train": 2000, "val": 250, "test": 250},
    "shapes-multilabel": {"train": 2000, "val": 250, "test": 500},
    "shapes-cls": {
        "train": 20 * len(CLS_CLASSES),
        "val": 5 * len(CLS_CLASSES),
        "test": 10 * len(CLS_CLASSES),
    },
    "shapes-3d": {"train": 100 * len(PRIMITIVES_3D), "test": 40 * len(PRIMITIVES_3D)},
}
DATASET_NAMES = (*DEFAULT_SPLIT_SIZES, "shapes-pretrain")

# Options each dataset accepts (with defaults); they are part of the cache key.
DEFAULT_OPTIONS: dict[str, dict[str, object]] = {
    "shapes-captions": {},
    "shapes-ref": {},
    "shapes-phrase": {"captions_per_image": 2},
    "shapes-multilabel": {},
    "shapes-cls": {},
    "shapes-3d": {"num_points": 1024, "noise": 0.01},
    "shapes-pretrain": {"num_scenes": 4000, "num_single": 4000, "num_depth": 2000, "num_points": 1024, "single_clutter": 3},
}

PARALLEL_THRESHOLD = 1000  # items; below this a worker pool costs more than it saves


def canonical_name(name: str) -> str:
    """Accept "captions" for "shapes-captions" etc."""
    return name if name.startswith("shapes-") else f"shapes-{name}"


def features_for(name: str) -> Features:
    """The schema of dataset ``name`` (one of ``DATASET_NAMES``)."""
    name = canonical_name(name)
    if name in ("shapes-captions", "shapes-pretrain"):
        return CAPTIONS
    if name == "shapes-ref":
        return REF
    if name == "shapes-phrase":
        return PHRASE
    if name == "shapes-multilabel":
        return multilabel_features(list(MULTILABEL_CLASSES))
    if name == "shapes-cls":
        return classification_features(list(CLS_CLASSES), with_box=True)
    if name == "shapes-3d":
        return pointcloud_features(list(PRIMITIVES_3D))
    raise ValueError(f"unknown dataset {name!r}; choose from {DATASET_NAMES}")


def item_rng(seed: int, name: str, split: str, index: int) -> np.random.Generator:
    """The generator of one item; crc32 because Python's str hash is salted per process."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), zlib.crc32(split.encode()), index])


def _image(png: bytes) -> dict:
    return {"bytes": png, "path": None}


# ---------------------------------------------------------------------------------------------
# One item -> rows. Each takes (split, index, rng, image_size, options) and returns a row list.


def _captions_rows(
    split: str, index: int, rng: np.random.Generator, image_size: int, options: dict
) -> list[dict]:
    scene = generate_scene(rng, image_size)
    return [
        {
            "image": _image(scene.png_bytes()),
            "image_id": f"{split}-{index:06d}",
            "captions": scene_captions(scene, rng),
        }
    ]


def _ref_rows(split: str, index: int, rng: np.random.Generator, image_size: int, options: dict) -> list[dict]:
    referable = {"testA": ROUND_SHAPES, "testB": ANGULAR_SHAPES}.get(split, SHAPES)
    if split in ("testA", "testB"):  # like RefCOCO testA: images with several objects of the kind
        for _ in range(20):  # a crowded scene can drop a forced object; redraw until 2 remain
            scene = generate_scene(
                rng, image_size, num_objects=(2, 6), specs=[ObjectSpec(shapes=referable)] * 2
            )
            if sum(obj.shape in referable for obj in scene.objects) >= 2:
                break
    else:
        scene = generate_scene(rng, image_size)
    image_id = f"{split}-{index:06d}"
    png = scene.png_bytes()
    candidates = [list(obj.box) for obj in scene.objects]
    rows = []
    for k, obj in enumerate(scene.objects):
        if obj.shape not in referable:
            continue
        expressions = referring_expressions(scene, k, rng)
        if not expressions:  # rare: look-alikes too close to tell apart; RefCOCO skips those too
            continue
        rows.append(
            {
                "image": _image(png),
                "image_id": image_id,
                "ref_id": f"{image_id}-{k}",
                "bbox": list(obj.box),
                "sentences": [text for text, _ in expressions],
                "candidates": candidates,
                "category": obj.shape,
            }
        )
    return rows


def _phrase_rows(
    split: str, index: int, rng: np.random.Generator, image_size: int, options: dict
) -> list[dict]:
    scene = generate_scene(rng, image_size)
    image_id = f"{split}-{index:06d}"
    png = scene.png_bytes()
    rows = []
    seen: set[str] = set()
    for _ in range(int(options["captions_per_image"])):
        for _ in range(5):  # prefer a caption this image does not have yet
            g = grounded_caption(scene, rng)
            if g.caption not in seen:
                break
        seen.add(g.caption)
        rows.append(
            {
                "image": _image(png),
                "image_id": image_id,
                "caption": g.caption,
                "phrases": g.phrases,
                "boxes": [[list(scene.objects[i].box) for i in ids] for ids in g.objects],
                "entity_ids": g.entity_ids,
                "phrase_types": g.phrase_types,
            }
        )
    return rows


def _multilabel_rows(
    split: str, index: int, rng: np.random.Generator, image_size: int, options: dict
) -> list[dict]:
    scene = generate_scene(rng, image_size)
    labels = sorted({SHAPES.index(obj.shape) for obj in scene.objects})
    return [{"image": _image(scene.png_bytes()), "image_id": f"{split}-{index:06d}", "labels": labels}]


def _cls_rows(split: str, index: int, rng: np.random.Generator, image_size: int, options: dict) -> list[dict]:
    label = index % len(CLS_CLASSES)
    colour, shape = COLOUR_NAMES[label // len(SHAPES)], SHAPES[label % len(SHAPES)]
    main = ObjectSpec(shapes=(shape,), colours=(colour,), sizes=("large",))
    clutter = ObjectSpec(sizes=("small",), exclude=frozenset({(colour, shape)}))
    num_clutter = int(rng.integers(0, 4))
    # the main object is placed first, so it always fits and is scene.objects[0]
    scene = generate_scene(
        rng, image_size, num_objects=1 + num_clutter, specs=[main] + [clutter] * num_clutter
    )
    return [
        {
            "image": _image(scene.png_bytes()),
            "image_id": f"{split}-{index:06d}",
            "label": label,
            "bbox": list(scene.objects[0].box),
        }
    ]


def _pointcloud_rows(
    split: str, index: int, rng: np.random.Generator, image_size: int, options: dict
) -> list[dict]:
    label = index % len(PRIMITIVES_3D)
    points = make_point_cloud(
        PRIMITIVES_3D[label], rng, int(options["num_points"]), float(options.get("noise", 0.01))
    )
    return [{"points": points, "label": label}]


def _pretrain_rows(
    split: str, index: int, rng: np.random.Generator, image_size: int, options: dict
) -> list[dict]:
    image_id = f"{split}-{index:06d}"
    if split == "scene":
        return _captions_rows(split, index, rng, image_size, options)
    if split == "single":
        # One named object, sometimes (options["single_clutter"] = max count) with small clutter
        # objects of other colours and shapes, so the prompt stays unambiguous and the model
        # learns to name the salient object in a busy image.
        num_clutter = int(rng.integers(0, int(options["single_clutter"]) + 1))
        if num_clutter:
            main_shape, main_colour = SHAPES[int(rng.integers(len(SHAPES)))], COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
            main = ObjectSpec(shapes=(main_shape,), colours=(main_colour,), sizes=("large",))
            clutter = ObjectSpec(sizes=("small",), shapes=tuple(x for x in SHAPES if x != main_shape),
                                 colours=tuple(c for c in COLOUR_NAMES if c != main_colour))
            scene = generate_scene(rng, image_size, num_objects=1 + num_clutter, specs=[main] + [clutter] * num_clutter)
        else:
            scene = generate_scene(rng, image_size, num_objects=1)
        return [{"image": _image(scene.png_bytes()), "image_id": image_id, "captions": single_object_captions(scene, rng)}]
    if split == "depth":
        kind = PRIMITIVES_3D[index % len(PRIMITIVES_3D)]
        points = torch.from_numpy(make_point_cloud(kind, rng, int(options["num_points"])))
        view = VIEW_NAMES[int(rng.integers(len(VIEW_NAMES)))]
        depth, _ = project_depth_maps(points, image_size, views=[view])  # (1, H, W)
        rgb = depth_to_rgb(depth)[0].permute(1, 2, 0)  # (H, W, 3)
        pixels = (rgb * 255).round().to(torch.uint8).numpy()  # (H, W, 3)
        png = encode_png(Image.fromarray(pixels, "RGB"))
        return [{"image": _image(png), "image_id": image_id, "captions": depth_map_captions(kind, rng)}]
    raise ValueError(f"unknown pretraining component {split!r}")


_ROW_MAKERS = {
    "shapes-captions": _captions_rows,
    "shapes-ref": _ref_rows,
    "shapes-phrase": _phrase_rows,
    "shapes-multilabel": _multilabel_rows,
    "shapes-cls": _cls_rows,
    "shapes-3d": _pointcloud_rows,
    "shapes-pretrain": _pretrain_rows,
}


# ---------------------------------------------------------------------------------------------
# Parallel generation


def _generate_chunk(task: tuple) -> list[dict]:
    name, split, start, stop, seed, image_size, options = task
    make_rows = _ROW_MAKERS[name]
    rows: list[dict] = []
    for index in range(start, stop):
        rows.extend(make_rows(split, index, item_rng(seed, name, split, index), image_size, options))
    return rows


def _init_worker() -> None:
    torch.set_num_threads(1)  # the pool already uses every core


def _default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def generate_rows(
    name: str,
    split_sizes: dict[str, int],
    image_size: int = 96,
    seed: int = 0,
    options: dict | None = None,
    num_workers: int | None = None,
) -> dict[str, list[dict]]:
    """Rows of every split, in index order; a process pool is used for large requests."""
    options = {**DEFAULT_OPTIONS[name], **(options or {})}
    total = sum(split_sizes.values())
    if num_workers is None:
        num_workers = _default_workers() if total >= PARALLEL_THRESHOLD else 1
    chunk = max(8, -(-total // (max(num_workers, 1) * 8)))
    tasks = [
        (name, split, start, min(start + chunk, count), seed, image_size, options)
        for split, count in split_sizes.items()
        for start in range(0, count, chunk)
    ]
    if num_workers <= 1 or len(tasks) <= 1:
        chunks = [_generate_chunk(task) for task in tasks]
    else:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(num_workers, initializer=_init_worker) as pool:
            chunks = pool.map(_generate_chunk, tasks, chunksize=1)
    rows: dict[str, list[dict]] = {split: [] for split in split_sizes}
    for task, chunk_rows in zip(tasks, chunks):
        rows[task[1]].extend(chunk_rows)
    return rows


def rows_to_dataset(rows: list[dict], features: Features) -> Dataset:
    return Dataset.from_dict(
        {column: [row[column] for row in rows] for column in features}, features=features
    )


# ---------------------------------------------------------------------------------------------
# Builders


def _resolve_split_sizes(
    name: str, split_sizes: dict[str, int] | None, num_images: int | None
) -> dict[str, int]:
    if split_sizes is not None:
        return {split: int(n) for split, n in split_sizes.items()}
    defaults = DEFAULT_SPLIT_SIZES[name]
    if num_images is None:
        return dict(defaults)
    # keep the default proportions; the first split absorbs the rounding remainder
    total = sum(defaults.values())
    sizes = {split: int(round(num_images * n / total)) for split, n in defaults.items()}
    first = next(iter(sizes))
    sizes[first] += num_images - sum(sizes.values())
    return sizes


def build_dataset(
    name: str,
    split_sizes: dict[str, int] | None = None,
    *,
    num_images: int | None = None,
    image_size: int = 96,
    seed: int = 0,
    num_workers: int | None = None,
    **options,
) -> DatasetDict:
    """Generate dataset ``name`` in memory (no cache); see the module docstring for names."""
    name = canonical_name(name)
    if name == "shapes-pretrain":
        corpus = make_pretrain_corpus(seed=seed, image_size=image_size, num_workers=num_workers, **options)
        return DatasetDict({"train": corpus})
    _check_options(name, options)
    sizes = _resolve_split_sizes(name, split_sizes, num_images)
    features = features_for(name)
    rows = generate_rows(name, sizes, image_size, seed, options, num_workers)
    return DatasetDict({split: rows_to_dataset(split_rows, features) for split, split_rows in rows.items()})


def _check_options(name: str, options: dict) -> None:
    if name not in DEFAULT_OPTIONS:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASET_NAMES}")
    unknown = set(options) - set(DEFAULT_OPTIONS[name])
    if unknown:
        raise TypeError(
            f"{name} does not take options {sorted(unknown)}; it takes {sorted(DEFAULT_OPTIONS[name])}"
        )


def make_pretrain_corpus(
    num_scenes: int = 4000,
    num_single: int = 4000,
    num_depth: int = 2000,
    seed: int = 0,
    image_size: int = 96,
    *,
    num_points: int = 1024,
    single_clutter: int = 3,
    num_workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = False,
) -> Dataset:
    """Image-text corpus (CAPTIONS schema) for pretraining the tiny CLIP.

    The union, in this order, of
    (a) ``num_scenes`` shapes-captions-like scenes ("scene-*" ids),
    (b) ``num_single`` single-object images with class prompts ("a photo of a red circle",
        "a photo of a small red circle", "a red circle", ...; "single-*" ids),
    (c) ``num_depth`` depth maps of shapes-3d clouds, one random view each ("a depth map of a
        cone", ...; "depth-*" ids).
    Not shuffled. With ``use_cache`` (or a ``cache_dir``) it is cached like ``load_shapes``.
    """
    options = {
        "num_scenes": num_scenes,
        "num_single": num_single,
        "num_depth": num_depth,
        "num_points": num_points,
    }
    if use_cache or cache_dir is not None:
        return load_shapes(
            "shapes-pretrain",
            image_size=image_size,
            seed=seed,
            cache_dir=cache_dir,
            num_workers=num_workers,
            **options,
        )["train"]
    sizes = {"scene": num_scenes, "single": num_single, "depth": num_depth}
    rows = generate_rows("shapes-pretrain", sizes, image_size, seed, options, num_workers)
    return rows_to_dataset([row for split in sizes for row in rows[split]], CAPTIONS)


# ---------------------------------------------------------------------------------------------
# Cache


def default_cache_dir() -> Path:
    """``$VPG_CACHE/shapes`` if VPG_CACHE is set, else ``~/.cache/vpg/shapes``."""
    root = os.environ.get("VPG_CACHE")
    return Path(root).expanduser() / "shapes" if root else Path("~/.cache/vpg/shapes").expanduser()


def cache_key(name: str, split_sizes: dict[str, int], image_size: int, seed: int, options: dict) -> str:
    """Hash of every generation parameter, including the seed and ``GENERATOR_VERSION``."""
    payload = {
        "version": GENERATOR_VERSION,
        "name": name,
        "splits": split_sizes,
        "image_size": image_size,
        "seed": seed,
        "options": options,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def load_shapes(
    name: str,
    split_sizes: dict[str, int] | None = None,
    *,
    num_images: int | None = None,
    image_size: int = 96,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    num_workers: int | None = None,
    **options,
) -> DatasetDict:
    """Dataset ``name`` (see ``DATASET_NAMES``), generated on first use and cached on disk.

    split_sizes: {split: number of images (clouds for shapes-3d)}; default
        ``DEFAULT_SPLIT_SIZES[name]``, or those proportions scaled to ``num_images`` in total.
    options: dataset-specific, see ``DEFAULT_OPTIONS`` (e.g. ``captions_per_image`` for
        shapes-phrase, ``num_points`` for shapes-3d, ``num_scenes``/``num_single``/``num_depth``
        for shapes-pretrain, which returns {"train": corpus}).
    The cache directory is ``cache_dir`` (default ``default_cache_dir()``) /
    ``<name>-<cache_key>``; writes go to a temporary directory renamed into place, so
    concurrent callers never see a half-written dataset.
    """
    name = canonical_name(name)
    _check_options(name, options)
    options = {**DEFAULT_OPTIONS[name], **options}
    if name == "shapes-pretrain":
        sizes = {
            "scene": options["num_scenes"],
            "single": options["num_single"],
            "depth": options["num_depth"],
        }
    else:
        sizes = _resolve_split_sizes(name, split_sizes, num_images)

    def build() -> DatasetDict:
        if name == "shapes-pretrain":
            return build_dataset(name, image_size=image_size, seed=seed, num_workers=num_workers, **options)
        return build_dataset(
            name, sizes, image_size=image_size, seed=seed, num_workers=num_workers, **options
        )

    if not use_cache:
        return build()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / f"{name}-{cache_key(name, sizes, image_size, seed, options)}"
    if not target.exists():
        root.mkdir(parents=True, exist_ok=True)
        staging = root / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        build().save_to_disk(str(staging))
        try:
            os.replace(staging, target)
        except OSError:  # another process finished first; its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
    return load_from_disk(str(target))


__all__ = [
    "CLS_CLASSES",
    "DATASET_NAMES",
    "DEFAULT_OPTIONS",
    "DEFAULT_SPLIT_SIZES",
    "GENERATOR_VERSION",
    "MULTILABEL_CLASSES",
    "build_dataset",
    "cache_key",
    "canonical_name",
    "default_cache_dir",
    "features_for",
    "generate_rows",
    "item_rng",
    "load_shapes",
    "make_pretrain_corpus",
]
