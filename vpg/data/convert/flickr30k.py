"""Flickr30k Entities (official ``Sentences/<id>.txt`` + ``Annotations/<id>.xml``) -> PHRASE.

Sentences: one caption per line, phrases marked as ``[/EN#<entity_id>/<type1>/<type2>... words]``;
the entity (coreference chain) id ``0`` marks "notvisual" phrases that were never annotated.

Annotations: PASCAL-VOC-like XML: ``<size><width>/<height>``, and ``<object>`` elements with one or
more ``<name>`` (entity ids) and either a ``<bndbox>`` (``xmin ymin xmax ymax``) or the flags
``<nobndbox>``/``<scene>``. Box corners are **1-based pixel indices** (VOC convention). Default
(``box_convention="official"``): subtract 1 from all four, exactly as the dataset's own
``flickr30k_entities_utils.get_annotations`` does, so boxes match what published evaluation code
(MDETR, GLIP, WWbL, ...) compares against. ``"continuous"`` gives the exact pixel extent instead
(``[xmin - 1, ymin - 1, xmax, ymax]``).

Rows: one per sentence: ``caption`` = the sentence without markup, ``phrases`` = its phrases whose
entity has at least one box, with ``entity_ids``, ``phrase_types`` (first type) and ``boxes`` (all
boxes of that entity). Phrases whose entity has no box (notvisual / scene / nobndbox / absent from
the XML) are left out of ``phrases`` and counted in the summary; sentences left without phrases
are still written (counted too). ``image_path`` = ``<id>.jpg`` (relative to flickr30k-images/).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

from vpg.data.schemas import PHRASE

from .common import (
    BadSamples,
    Conversion,
    ConversionError,
    ImageSource,
    PathLike,
    add_common_arguments,
    check_box,
    common_kwargs,
    finish,
    new_parser,
    parse_split_assignments,
    read_lines,
    report_box,
)

_PHRASE = re.compile(r"\[/EN#(?P<id>\d+)(?P<types>(?:/[^\s/\]]+)+)\s+(?P<text>[^\[\]]*?)\s*\]")


def parse_sentence(line: str) -> dict[str, Any]:
    """One Sentences line -> ``{"sentence", "phrases": [{"phrase", "first_word_index", "entity_id", "types"}]}``.

    Raises ``ValueError`` on malformed markup (an unclosed or empty bracket).
    """
    words: list[str] = []
    phrases = []
    pos = 0
    for m in _PHRASE.finditer(line):
        before = line[pos : m.start()]
        if "[" in before or "]" in before:
            raise ValueError(f"malformed phrase markup near {before.strip()[:40]!r}")
        words.extend(before.split())
        phrase_words = m.group("text").split()
        if not phrase_words:
            raise ValueError(f"empty phrase in {m.group(0)!r}")
        phrases.append(
            {
                "phrase": " ".join(phrase_words),
                "first_word_index": len(words),
                "entity_id": m.group("id"),
                "types": m.group("types").strip("/").split("/"),
            }
        )
        words.extend(phrase_words)
        pos = m.end()
    rest = line[pos:]
    if "[" in rest or "]" in rest:
        raise ValueError(f"malformed phrase markup near {rest.strip()[:40]!r}")
    words.extend(rest.split())
    return {"sentence": " ".join(words), "phrases": phrases}


def parse_sentences_file(path: PathLike) -> list[dict[str, Any]]:
    """All sentences of a ``Sentences/<id>.txt`` file (see :func:`parse_sentence`)."""
    result = []
    for i, line in enumerate(read_lines(path)):
        try:
            result.append(parse_sentence(line))
        except ValueError as exc:
            raise ConversionError(path, str(exc), f"sentence {i} (line {i + 1})") from exc
    return result


def parse_annotation_xml(path: PathLike, box_convention: str = "official") -> dict[str, Any]:
    """``Annotations/<id>.xml`` -> ``{"width", "height", "boxes": {entity: [[x1, y1, x2, y2]]}, "scene", "nobox"}``.

    ``box_convention``: ``"official"`` (all corners - 1) or ``"continuous"`` (see module doc).
    """
    if box_convention not in ("official", "continuous"):
        raise ValueError(f"box_convention must be 'official' or 'continuous', got {box_convention!r}")
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ConversionError(path, f"unreadable file: {exc}") from exc
    try:
        width = float(root.findtext("size/width"))
        height = float(root.findtext("size/height"))
    except (TypeError, ValueError) as exc:
        raise ConversionError(path, "missing or invalid <size><width>/<height>") from exc
    info: dict[str, Any] = {"width": width, "height": height, "boxes": {}, "scene": set(), "nobox": set()}
    end_shift = 1.0 if box_convention == "official" else 0.0
    for k, obj in enumerate(root.findall("object")):
        names = [n.text.strip() for n in obj.findall("name") if n.text and n.text.strip()]
        if not names:
            raise ConversionError(path, "object without <name>", f"object {k}")
        bndbox = obj.find("bndbox")
        if bndbox is not None:
            try:
                xmin, ymin, xmax, ymax = (float(bndbox.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
            except (TypeError, ValueError) as exc:
                raise ConversionError(
                    path, "missing or invalid <bndbox> corner", f"object {k} ({names[0]})"
                ) from exc
            box = [xmin - 1, ymin - 1, xmax - end_shift, ymax - end_shift]
            for name in names:
                info["boxes"].setdefault(name, []).append(box)
        else:
            for name in names:
                if (obj.findtext("scene") or "0").strip() not in ("0", ""):
                    info["scene"].add(name)
                if (obj.findtext("nobndbox") or "0").strip() not in ("0", ""):
                    info["nobox"].add(name)
    return info


def convert_flickr30k_entities(
    entities_root: PathLike | None = None,
    out: PathLike | None = None,
    *,
    splits: dict[str, PathLike] | None = None,
    sentences_dir: PathLike | None = None,
    annotations_dir: PathLike | None = None,
    box_convention: str = "official",
    image_root: PathLike | None = None,
    embed_images: bool = False,
    on_bad_sample: str = "raise",
) -> Conversion:
    """Flickr30k Entities -> PHRASE (see module doc).

    ``splits`` maps a split name to an image-id list file (the dataset's ``train.txt`` /
    ``val.txt`` / ``test.txt``); without it every ``Sentences/*.txt`` goes to one ``train`` split.
    """
    root = Path(entities_root) if entities_root is not None else None
    sentences_dir = Path(sentences_dir) if sentences_dir else (root / "Sentences" if root else None)
    annotations_dir = Path(annotations_dir) if annotations_dir else (root / "Annotations" if root else None)
    if sentences_dir is None or annotations_dir is None:
        raise ValueError("give entities_root or both sentences_dir and annotations_dir")
    if not sentences_dir.is_dir():
        raise ConversionError(sentences_dir, "not a directory (expected the Sentences folder)")
    bad = BadSamples(on_bad_sample)
    images = ImageSource(image_root, embed_images)
    if splits:
        ids_by_split = {name: read_lines(p) for name, p in splits.items()}
    else:
        ids_by_split = {"train": sorted(p.stem for p in sentences_dir.glob("*.txt"))}
    unboxed: Counter[str] = Counter()
    empty_sentences = 0
    rows_by_split: dict[str, list[dict]] = {}
    for split, ids in ids_by_split.items():
        rows = rows_by_split.setdefault(split, [])
        for image_id in ids:
            sentence_file = sentences_dir / f"{image_id}.txt"
            xml_file = annotations_dir / f"{image_id}.xml"
            where = f"image {image_id}"
            if not sentence_file.is_file():
                bad(
                    splits[split] if splits else sentences_dir,
                    where,
                    "missing sentences file",
                    str(sentence_file),
                )
                continue
            if not xml_file.is_file():
                bad(xml_file, where, "missing annotation file")
                continue
            sentences = parse_sentences_file(sentence_file)
            ann = parse_annotation_xml(xml_file, box_convention)
            rel = f"{image_id}.jpg"
            if images.missing(rel):
                bad(xml_file, where, "missing image file", str(images.path(rel)))
                continue
            boxes_of = _checked_boxes(ann, xml_file, bad)
            for i, sent in enumerate(sentences):
                if not sent["sentence"]:
                    bad(sentence_file, f"sentence {i}", "empty sentence")
                    continue
                row = {
                    "image_path": rel,
                    "image_id": str(image_id),
                    "caption": sent["sentence"],
                    "phrases": [],
                    "boxes": [],
                    "entity_ids": [],
                    "phrase_types": [],
                }
                for ph in sent["phrases"]:
                    eid = ph["entity_id"]
                    if boxes_of.get(eid):
                        row["phrases"].append(ph["phrase"])
                        row["boxes"].append(boxes_of[eid])
                        row["entity_ids"].append(eid)
                        row["phrase_types"].append(ph["types"][0])
                    else:
                        unboxed[_why_unboxed(eid, ann)] += 1
                empty_sentences += not row["phrases"]
                rows.append(row)
    return finish(
        rows_by_split,
        PHRASE,
        out,
        images,
        bad,
        phrases_without_boxes=dict(sorted(unboxed.items())),
        sentences_without_grounded_phrases=empty_sentences,
    )


def _checked_boxes(ann: dict, xml_file: Path, bad: BadSamples) -> dict[str, list[list[float]]]:
    size = (ann["width"], ann["height"])
    result = {}
    for eid, boxes in ann["boxes"].items():
        good = []
        for k, box in enumerate(boxes):
            checked, kind, detail = check_box(box, size)
            if checked is None:
                report_box(bad, xml_file, f"entity {eid} box {k}", kind, detail)
            else:
                good.append(checked)
        result[eid] = good
    return result


def _why_unboxed(entity_id: str, ann: dict) -> str:
    if entity_id == "0":
        return "notvisual"
    if entity_id in ann["scene"]:
        return "scene"
    if entity_id in ann["nobox"]:
        return "nobndbox"
    if entity_id in ann["boxes"]:
        return "invalid boxes"
    return "absent from xml"


def register(subparsers) -> None:
    p = new_parser(
        subparsers, "flickr30k-entities", "Flickr30k Entities Sentences + Annotations -> PHRASE", __doc__
    )
    p.add_argument(
        "--in", dest="inp", required=True, help="flickr30k_entities root with Sentences/ and Annotations/"
    )
    p.add_argument(
        "--split",
        action="append",
        metavar="NAME=IDS.txt",
        help="a split and its image-id list (repeatable), e.g. test=test.txt; default: all -> train",
    )
    p.add_argument(
        "--box-convention",
        choices=("official", "continuous"),
        default="official",
        help="XML corner conversion (see above)",
    )
    add_common_arguments(p)
    p.set_defaults(
        run=lambda a: convert_flickr30k_entities(
            a.inp,
            splits=parse_split_assignments(a.split, "--split") or None,
            box_convention=a.box_convention,
            **common_kwargs(a),
        )
    )
