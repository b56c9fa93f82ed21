"""Converters from raw dataset annotations to local Hugging Face datasets in the ``vpg.data.schemas`` layouts.

Command line: ``python -m vpg.data.convert <format> --in ... --out ...`` (``--help`` per format).
Every converter raises :class:`ConversionError` (file, record, problem) on bad input, or with
``on_bad_sample="skip"`` skips bad records and counts them per reason in the returned summary.
"""

from .coco import convert_coco_captions, convert_coco_multilabel
from .common import BadSamples, Conversion, ConversionError
from .coop import apply_coop_split, convert_coop_split, read_coop_split, sample_few_shot
from .cub import convert_cub
from .flickr30k import convert_flickr30k_entities, parse_annotation_xml, parse_sentence, parse_sentences_file
from .gold_candidates import convert_gold_candidates
from .hivg import convert_hivg
from .imagenet_s import convert_imagenet_s
from .modelnet40 import convert_modelnet40
from .multigrounding import convert_multigrounding
from .nuswide import convert_nuswide
from .reclip import attach_detections, convert_reclip_jsonl, load_detections
from .refer import convert_refer
from .stanford_dogs import convert_stanford_dogs
from .vg import convert_vg_regions
from .voc import convert_voc
from .waterbirds import convert_waterbirds

__all__ = [
    "BadSamples",
    "Conversion",
    "ConversionError",
    "apply_coop_split",
    "attach_detections",
    "convert_coco_captions",
    "convert_coco_multilabel",
    "convert_coop_split",
    "convert_cub",
    "convert_flickr30k_entities",
    "convert_gold_candidates",
    "convert_hivg",
    "convert_imagenet_s",
    "convert_modelnet40",
    "convert_multigrounding",
    "convert_nuswide",
    "convert_reclip_jsonl",
    "convert_refer",
    "convert_stanford_dogs",
    "convert_vg_regions",
    "convert_voc",
    "convert_waterbirds",
    "load_detections",
    "parse_annotation_xml",
    "parse_sentence",
    "parse_sentences_file",
    "read_coop_split",
    "sample_few_shot",
]
