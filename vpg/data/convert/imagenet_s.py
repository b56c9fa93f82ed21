"""ImageNet-S (ImageNet-S50 / -S300 / -S919) semantic masks -> classification with the object's box.

The ImageNet-S release (LUSSeg/ImageNet-S) has, per subset folder ``ImageNetS50`` /
``ImageNetS300`` / ``ImageNetS919``, the images of a split under ``<split>/`` and their masks under
``<split>-segmentation/`` with the same relative path and a ``.png`` suffix (``validation`` and
``train-semi``; the test masks are held by the evaluation server). A mask is an RGB PNG whose
pixel's class id is **R + 256 * G**; 0 is "other" (background) and 1000 "ignored". Class id i
(1-based) is the i-th WordNet id in *sorted* order of ``ImageNetS_categories_im{50,300,919}.txt``
(the release's own rule: "sort the imagenet tag ids"; sorting an already sorted list changes
nothing).

Rows: one per mask. ``label`` = the image's class = the class id with the most pixels, minus 1
(images whose mask holds several classes are counted in the summary); ``bbox`` = the bounding
box of that class's pixels (xyxy pixels, pixel edges: a single pixel (x, y) gives
``[x, y, x+1, y+1]``); ``image_id`` = the relative path without suffix; ``image_path`` =
``<split>/<relative path with --image-ext>`` relative to the subset folder. Splits are named
after the folders with ``-`` -> ``_`` (``validation``, ``train_semi``).

Class names: the WordNet ids, unless ``--synset-names`` gives a ``<wnid> <name>[, synonyms]``
file (ImageNet's ``LOC_synset_mapping.txt`` layout; the first comma-separated name is used).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from vpg.data.schemas import classification_features

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
    parse_box,
    read_lines,
)

OTHER_ID = 0  # "other category" pixels
IGNORE_ID = 1000  # "ignored part" pixels
SUBSETS = ("50", "300", "919")
MASK_SPLITS = ("validation", "train-semi")


def read_categories(path: PathLike) -> list[str]:
    """WordNet ids of a ``ImageNetS_categories_im*.txt`` file in class-id order (sorted, ids 1..N)."""
    wnids = [line.split()[0] for line in read_lines(path)]
    if not wnids:
        raise ConversionError(path, "no categories")
    duplicates = sorted(w for w, n in Counter(wnids).items() if n > 1)
    if duplicates:
        raise ConversionError(path, f"duplicate WordNet id {duplicates[0]}")
    return sorted(wnids)


def read_synset_names(path: PathLike) -> dict[str, str]:
    """``<wnid> <name>[, synonyms...]`` lines -> ``{wnid: first name}``."""
    names = {}
    for i, line in enumerate(read_lines(path)):
        wnid, _, rest = line.partition(" ")
        name = rest.split(",")[0].strip()
        if not name:
            raise ConversionError(path, f"expected '<wnid> <name>', got {line!r}", f"line {i + 1}")
        names[wnid] = name
    return names


def decode_mask(path: Path) -> np.ndarray:
    """Class ids (H, W) int of an ImageNet-S mask PNG (R + 256 * G)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.int32)  # (H, W, 3)
    except OSError as exc:
        raise ConversionError(path, f"unreadable mask: {exc}") from exc
    return rgb[..., 0] + 256 * rgb[..., 1]  # (H, W)


def dominant_class_box(class_ids: np.ndarray) -> tuple[int, list[float], int] | None:
    """(class id with most pixels, xyxy box of its pixels, number of classes present), or None
    when the mask has no object pixels (only "other" / "ignored")."""
    ids, counts = np.unique(class_ids, return_counts=True)
    keep = (ids != OTHER_ID) & (ids != IGNORE_ID)
    ids, counts = ids[keep], counts[keep]
    if ids.size == 0:
        return None
    main = int(ids[np.argmax(counts)])  # ties: the smaller id (np.unique sorts)
    ys, xs = np.nonzero(class_ids == main)
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    return main, box, int(ids.size)


def convert_imagenet_s(
    root: PathLike,
    out: PathLike | None = None,
    *,
    subset: str | None = None,
    categories: PathLike | None = None,
    synset_names: PathLike | None = None,
    splits: list[str] | None = None,
    image_ext: str = ".JPEG",
    image_root: PathLike | None = None,
    embed_images: bool = False,
    on_bad_sample: str = "raise",
) -> Conversion:
    """ImageNet-S subset folder -> DatasetDict with one box per image (see module doc).

    ``subset`` (``50``/``300``/``919``) defaults to the digits of the folder name
    (``ImageNetS50``); ``categories`` defaults to ``<root>/ImageNetS_categories_im<subset>.txt``;
    ``splits`` to every ``<split>-segmentation`` folder present (``validation``, ``train-semi``).
    """
    root = Path(root)
    bad = BadSamples(on_bad_sample)
    if subset is None:
        subset = "".join(c for c in root.name if c.isdigit()) or None
    if categories is None:
        if subset not in SUBSETS:
            raise ConversionError(
                root, f"cannot tell the subset from the folder name (expected one of {SUBSETS}); pass subset"
            )
        categories = root / f"ImageNetS_categories_im{subset}.txt"
    wnids = read_categories(categories)
    if subset in SUBSETS and len(wnids) != int(subset):
        raise ConversionError(categories, f"{len(wnids)} categories, ImageNet-S{subset} has {subset}")
    names = list(wnids)
    if synset_names is not None:
        mapping = read_synset_names(synset_names)
        missing = [w for w in wnids if w not in mapping]
        if missing:
            raise ConversionError(synset_names, f"no name for {len(missing)} classes, e.g. {missing[0]}")
        names = [mapping[w] for w in wnids]
    if splits is None:
        splits = [s for s in MASK_SPLITS if (root / f"{s}-segmentation").is_dir()]
        if not splits:
            raise ConversionError(root, f"no {' or '.join(s + '-segmentation' for s in MASK_SPLITS)} folder")
    images = ImageSource(image_root, embed_images)
    several = 0
    rows_by_split = {}
    for split in splits:
        mask_dir = root / f"{split}-segmentation"
        if not mask_dir.is_dir():
            raise ConversionError(mask_dir, "not a directory")
        rows = []
        for mask_path in sorted(mask_dir.rglob("*.png")):
            rel = mask_path.relative_to(mask_dir).with_suffix("").as_posix()
            where = f"mask {rel}"
            class_ids = decode_mask(mask_path)
            found = dominant_class_box(class_ids)
            if found is None:
                bad(mask_path, where, "no object pixels", "only 'other' (0) / 'ignored' (1000) ids")
                continue
            class_id, raw_box, num_classes = found
            if not 1 <= class_id <= len(wnids):
                bad(
                    mask_path,
                    where,
                    "unknown class",
                    f"class id {class_id} (R + 256 G) not in 1..{len(wnids)}",
                )
                continue
            image_path = f"{split}/{rel}{image_ext}"
            if images.missing(image_path):
                bad(mask_path, where, "missing image file", str(images.path(image_path)))
                continue
            mask_size = (class_ids.shape[1], class_ids.shape[0])
            size = images.size(image_path)
            if size is not None and tuple(size) != mask_size:
                bad(mask_path, where, "mask size differs", f"mask {mask_size}, image {tuple(size)}")
                continue
            box = parse_box(raw_box, "xyxy", mask_size, bad, mask_path, where)
            if box is None:
                continue
            several += num_classes > 1
            rows.append({"image_path": image_path, "image_id": rel, "label": class_id - 1, "bbox": box})
        rows_by_split[split.replace("-", "_")] = rows
    return finish(
        rows_by_split,
        classification_features(names, with_box=True),
        out,
        images,
        bad,
        num_classes=len(names),
        images_with_several_classes=several,
        class_names="WordNet ids (pass --synset-names for words)" if synset_names is None else "words",
    )


def register(subparsers) -> None:
    p = new_parser(
        subparsers, "imagenet-s", "ImageNet-S segmentation masks -> classification with boxes", __doc__
    )
    p.add_argument("--in", dest="inp", required=True, help="subset folder, e.g. ImageNetS50")
    p.add_argument("--subset", choices=SUBSETS, default=None, help="default: from the folder name")
    p.add_argument(
        "--categories", default=None, help="ImageNetS_categories_im<subset>.txt (default: in --in)"
    )
    p.add_argument("--synset-names", default=None, help="'<wnid> <name>, ...' lines (LOC_synset_mapping.txt)")
    p.add_argument(
        "--split",
        action="append",
        choices=MASK_SPLITS,
        help="mask folder(s) to convert (repeatable); default every <split>-segmentation present",
    )
    p.add_argument("--image-ext", default=".JPEG", help="suffix of the image files (default .JPEG)")
    add_common_arguments(p)
    p.set_defaults(
        run=lambda a: convert_imagenet_s(
            a.inp,
            subset=a.subset,
            categories=a.categories,
            synset_names=a.synset_names,
            splits=a.split,
            image_ext=a.image_ext,
            **common_kwargs(a),
        )
    )
