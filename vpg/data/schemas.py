"""Column schemas shared by real datasets, converters and vpg-shapes.

Every DataModule of a task family reads exactly one of these layouts, so the same class
serves the hub datasets, the converters' local output and the embedded vpg-shapes world.
Hub datasets whose columns differ are mapped onto these names by the DataModule's
``columns`` argument (for example ``{"bbox": "box"}``).

Conventions
- Boxes stored in datasets are **xyxy pixels of the original image** (float). Converters
  translate xywh / normalised formats at the edge (``vpg.metrics.boxes``).
- An image is either bytes/PIL in an ``image`` column (HF ``Image`` feature) or a relative
  path in ``image_path`` resolved against the DataModule's ``image_root``.
"""

from __future__ import annotations

from datasets import Array2D, ClassLabel, Features, Image, Sequence, Value

BOX = Sequence(Value("float32"), length=4)  # xyxy pixels of the original image

# Referring expression comprehension (RefCOCO/+/g, ReferItGame, shapes-ref): one row per referred object.
REF = Features(
    {
        "image": Image(),
        "image_id": Value("string"),
        "ref_id": Value("string"),
        "bbox": BOX,  # the referred object
        "sentences": Sequence(Value("string")),  # >= 1 expression, each identifies the object
        "candidates": Sequence(BOX),  # boxes of all objects of the image ("gold" setting); contains bbox
        "category": Value("string"),  # object class name (RefCOCO: COCO category; shapes: shape kind)
    }
)

# Captions (COCO captions, shapes-captions): one row per image.
CAPTIONS = Features(
    {
        "image": Image(),
        "image_id": Value("string"),
        "captions": Sequence(Value("string")),
    }
)

# Phrase grounding (Flickr30k Entities, VG regions, ReferIt WSG, shapes-phrase): one row per caption.
# phrases[i] is grounded by boxes[i] (one or more boxes); entity_ids[i] groups mentions of the same
# entity (Flickr30k's unit of evaluation); phrase_types[i] is the Entities type (people, animals, ...).
PHRASE = Features(
    {
        "image": Image(),
        "image_id": Value("string"),
        "caption": Value("string"),
        "phrases": Sequence(Value("string")),
        "boxes": Sequence(Sequence(BOX)),
        "entity_ids": Sequence(Value("string")),
        "phrase_types": Sequence(Value("string")),
    }
)


def multilabel_features(class_names: list[str]) -> Features:
    """Multi-label recognition (VOC2007, COCO-80, NUS-WIDE-81, shapes-multilabel)."""
    return Features(
        {
            "image": Image(),
            "image_id": Value("string"),
            "labels": Sequence(ClassLabel(names=list(class_names))),  # classes present
        }
    )


def classification_features(class_names: list[str], with_box: bool = False) -> Features:
    """Single-label classification (few-shot sets, shapes-cls); optional object box (FALIP Table 2)."""
    cols = {
        "image": Image(),
        "image_id": Value("string"),
        "label": ClassLabel(names=list(class_names)),
    }
    if with_box:
        cols["bbox"] = BOX
    return Features(cols)


def pointcloud_features(class_names: list[str]) -> Features:
    """Point-cloud classification (ModelNet40, ScanObjectNN, shapes-3d): points (N, 3) float32."""
    return Features(
        {
            "points": Array2D(shape=(None, 3), dtype="float32"),
            "label": ClassLabel(names=list(class_names)),
        }
    )


SCHEMAS = {
    "ref": REF,
    "captions": CAPTIONS,
    "phrase": PHRASE,
}
