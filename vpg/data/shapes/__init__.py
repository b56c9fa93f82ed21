"""vpg-shapes: a procedurally generated world standing in for the real datasets and CLIP data.

Scenes of flat coloured 2D shapes (``scene``), their language (``language``: captions,
grounded phrases, unambiguous referring expressions with a resolver), 3D primitive point clouds
(``primitives3d``) and HF ``datasets`` builders with caching (``builders``). See
``builders`` for the dataset list, split rules (including shapes-ref testA / testB) and schemas.
"""

from vpg.data.shapes.builders import (
    CLS_CLASSES,
    DATASET_NAMES,
    DEFAULT_OPTIONS,
    DEFAULT_SPLIT_SIZES,
    GENERATOR_VERSION,
    MULTILABEL_CLASSES,
    build_dataset,
    cache_key,
    canonical_name,
    default_cache_dir,
    features_for,
    item_rng,
    load_shapes,
    make_pretrain_corpus,
)
from vpg.data.shapes.language import RefSemantics, parse_expression, resolve
from vpg.data.shapes.primitives3d import PRIMITIVES_3D, make_point_cloud
from vpg.data.shapes.scene import (
    ANGULAR_SHAPES,
    COLOUR_NAMES,
    COLOURS,
    ROUND_SHAPES,
    SHAPES,
    SIZE_RANGES,
    Scene,
    ShapeObject,
    generate_scene,
)

__all__ = [
    "ANGULAR_SHAPES",
    "CLS_CLASSES",
    "COLOURS",
    "COLOUR_NAMES",
    "DATASET_NAMES",
    "DEFAULT_OPTIONS",
    "DEFAULT_SPLIT_SIZES",
    "GENERATOR_VERSION",
    "MULTILABEL_CLASSES",
    "PRIMITIVES_3D",
    "ROUND_SHAPES",
    "SHAPES",
    "SIZE_RANGES",
    "RefSemantics",
    "Scene",
    "ShapeObject",
    "build_dataset",
    "cache_key",
    "canonical_name",
    "default_cache_dir",
    "features_for",
    "generate_scene",
    "item_rng",
    "load_shapes",
    "make_pretrain_corpus",
    "make_point_cloud",
    "parse_expression",
    "resolve",
]
