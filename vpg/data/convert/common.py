"""Shared pieces of the converters: errors, bad-sample policy, boxes, images, file readers, writer.

Every converter turns raw annotation files into a local Hugging Face ``DatasetDict`` whose columns
are exactly one of the layouts in :mod:`vpg.data.schemas`. Images are referenced either by an
``image_path`` string column (relative to an image root; the default, cheap for big datasets) or
embedded as bytes in the schema's ``image`` column (``embed_images=True`` / ``--embed-images``).
"""

from __future__ import annotations

import argparse
import gzip
import inspect
import json
import math
import os
import pickle
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, Features, Value, load_from_disk
from datasets.arrow_writer import ArrowWriter

PathLike = str | os.PathLike

# Coordinates at most this many pixels outside the image are clipped rather than rejected:
# annotation tools round corners and COCO/VG boxes often end a fraction of a pixel past the border.
BOX_TOLERANCE_PX = 2.0


class ConversionError(ValueError):
    """A raw annotation file cannot be converted; names the file, the record and the problem."""

    def __init__(self, file: PathLike, problem: str, record: Any = None):
        self.file = str(file)
        self.record = record
        self.problem = problem
        where = self.file if record is None else f"{self.file}, {record}"
        super().__init__(f"{where}: {problem}")


class BadSamples:
    """What to do with a bad record: ``"raise"`` a :class:`ConversionError` (default) or ``"skip"`` it.

    Skipped records are counted per reason so that nothing disappears silently; the counts end up
    in the conversion summary and are printed by the CLI.
    """

    POLICIES = ("raise", "skip")

    def __init__(self, policy: str = "raise"):
        if policy not in self.POLICIES:
            raise ValueError(f"on_bad_sample must be one of {self.POLICIES}, got {policy!r}")
        self.policy = policy
        self.counts: Counter[str] = Counter()
        self.first_example: dict[str, str] = {}

    def __call__(self, file: PathLike, record: Any, reason: str, detail: str = "") -> None:
        """Report one bad record; raises under ``"raise"``, otherwise counts it (caller skips it)."""
        problem = f"{reason}: {detail}" if detail else reason
        if self.policy == "raise":
            raise ConversionError(file, problem, record)
        self.counts[reason] += 1
        self.first_example.setdefault(reason, str(ConversionError(file, problem, record)))

    def summary(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


@dataclass
class Conversion:
    """Result of a converter: the dataset (loaded back from ``out`` when saved) and a summary."""

    dataset: DatasetDict
    summary: dict[str, Any] = field(default_factory=dict)

    def report(self) -> str:
        lines = [f"{name}: {len(split)} rows" for name, split in self.dataset.items()]
        for key, value in self.summary.items():
            if key == "rows":
                continue
            if isinstance(value, Mapping):
                if not value:
                    continue
                lines.append(f"{key}:")
                lines.extend(f"  {k}: {v}" for k, v in value.items())
            else:
                lines.append(f"{key}: {value}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------- boxes


def to_xyxy(box: Sequence[Any], box_format: str) -> list[float]:
    """First four numbers of ``box`` as xyxy floats; ``box_format`` is ``"xywh"`` or ``"xyxy"``.

    Raises ``ValueError`` (callers turn it into a bad-sample report) when there are fewer than four
    numbers or they are not finite.
    """
    if box_format not in ("xywh", "xyxy"):
        raise ValueError(f"unknown box format {box_format!r} (expected 'xywh' or 'xyxy')")
    try:
        values = [float(v) for v in list(box)[:4]]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"box {box!r} is not a list of numbers") from exc
    if len(values) < 4:
        raise ValueError(f"box {box!r} has fewer than 4 numbers")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"box {values} has non-finite values")
    x1, y1, a, b = values
    return [x1, y1, x1 + a, y1 + b] if box_format == "xywh" else [x1, y1, a, b]


def check_box(
    box: list[float], size: tuple[float, float] | None = None
) -> tuple[list[float] | None, str, str]:
    """Validate an xyxy box; returns ``(clipped_box, "", "")`` or ``(None, kind, detail)``.

    ``kind`` is ``"outside"`` or ``"zero-area"``. With a known image ``size`` (width, height),
    corners up to :data:`BOX_TOLERANCE_PX` outside are clipped; anything further out is rejected.
    """
    x1, y1, x2, y2 = box
    shown = [round(v, 2) for v in box]
    if size is not None:
        width, height = size
        tol = BOX_TOLERANCE_PX
        if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
            return None, "outside", f"{shown} exceeds the {width:g}x{height:g} image"
        x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
        y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    if x2 <= x1 or y2 <= y1:
        return None, "zero-area", f"{shown} (xyxy) has no area"
    return [x1, y1, x2, y2], "", ""


def report_box(
    bad: BadSamples, file: PathLike, record: Any, kind: str, detail: str, what: str = "box"
) -> None:
    """Report a box rejected by :func:`check_box` as "zero-area <what>" / "<what> outside the image"."""
    bad(file, record, f"zero-area {what}" if kind == "zero-area" else f"{what} outside the image", detail)


def parse_box(
    raw: Any,
    box_format: str,
    size: tuple[float, float] | None,
    bad: BadSamples,
    file: PathLike,
    record: Any,
    what: str = "box",
) -> list[float] | None:
    """Convert + validate one box; reports problems to ``bad`` and returns None when it is bad."""
    try:
        box = to_xyxy(raw, box_format)
    except ValueError as exc:
        bad(file, record, f"invalid {what}", str(exc))
        return None
    box, kind, detail = check_box(box, size)
    if box is None:
        report_box(bad, file, record, kind, detail, what)
    return box


# ---------------------------------------------------------------------------------------- images


class ImageSource:
    """Where the images live and whether to embed them.

    ``root`` is the directory that the rows' relative ``image_path`` refers to. Without a root the
    converters still write ``image_path`` (from the annotations) but cannot check or embed files.
    """

    def __init__(self, root: PathLike | None = None, embed: bool = False):
        if embed and root is None:
            raise ValueError("embedding images needs an image root (--image-root)")
        self.root = Path(root) if root is not None else None
        self.embed = embed
        self._size_cache: dict[str, tuple[int, int] | None] = {}

    def path(self, rel: str) -> Path | None:
        return None if self.root is None else self.root / rel

    def missing(self, rel: str) -> bool:
        """True when a root is known and the file is absent (no root: nothing can be checked)."""
        p = self.path(rel)
        return p is not None and not p.is_file()

    def size(self, rel: str) -> tuple[int, int] | None:
        """(width, height) read from the file header, or None without a root / readable file."""
        if rel not in self._size_cache:
            p = self.path(rel)
            size = None
            if p is not None and p.is_file():
                from PIL import Image as PILImage

                try:
                    with PILImage.open(p) as im:  # lazy: reads the header only
                        size = im.size
                except OSError:
                    size = None
            self._size_cache[rel] = size
        return self._size_cache[rel]


def output_features(features: Features, embed: bool) -> Features:
    """The schema itself when embedding, else the schema with ``image`` replaced by ``image_path``."""
    if embed or "image" not in features:
        return features
    return Features(
        {
            ("image_path" if k == "image" else k): (Value("string") if k == "image" else v)
            for k, v in features.items()
        }
    )


def _encode_rows(rows: Iterable[dict], features: Features, images: ImageSource) -> Iterable[dict]:
    for row in rows:
        out = {k: row[k] for k in features if k not in ("image", "image_path")}
        if "image" in features:  # embedding: read the bytes now, keep the relative path as its name
            rel = row["image_path"]
            out["image"] = {"bytes": images.path(rel).read_bytes(), "path": rel}
        elif "image_path" in features:
            out["image_path"] = row["image_path"]
        yield features.encode_example(out)


def write_dataset(
    rows_by_split: Mapping[str, list[dict]],
    features: Features,
    out: PathLike | None,
    images: ImageSource,
) -> DatasetDict:
    """Write rows (dicts with ``image_path`` in place of ``image``) as a DatasetDict in ``features``.

    Rows are streamed through an ``ArrowWriter`` so embedding a large image set does not hold all
    bytes in memory. With ``out`` the result is ``save_to_disk``-ed and loaded back from there.
    """
    for split in rows_by_split:
        if not re.fullmatch(r"\w+(\.\w+)*", split):
            raise ValueError(f"invalid split name {split!r}")
    feats = output_features(features, images.embed)
    # Stage next to the output: embedded image sets can be larger than /tmp.
    staging = None
    if out is not None:
        staging = Path(out).resolve().parent
        staging.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".vpg-convert-", dir=staging) as tmp:
        parts = {}
        for split, rows in rows_by_split.items():
            path = os.path.join(tmp, f"{split}.arrow")
            writer = ArrowWriter(features=feats, path=path)
            for example in _encode_rows(rows, feats, images):
                writer.write(example)
            writer.finalize()
            parts[split] = Dataset.from_file(path, in_memory=out is None)
        dataset = DatasetDict(parts)
        if out is None:
            return dataset
        dataset.save_to_disk(str(out))
        del dataset, parts
    return load_from_disk(str(out))


def finish(
    rows_by_split: Mapping[str, list[dict]],
    features: Features,
    out: PathLike | None,
    images: ImageSource,
    bad: BadSamples,
    **extra: Any,
) -> Conversion:
    """Write the dataset and assemble the summary (rows per split, skipped per reason, extras)."""
    dataset = write_dataset(rows_by_split, features, out, images)
    summary: dict[str, Any] = {"rows": {k: len(v) for k, v in rows_by_split.items()}}
    summary.update(extra)
    summary["skipped"] = bad.summary()
    return Conversion(dataset, summary)


# ------------------------------------------------------------------------------------ file input


def _open_maybe_gz(path: Path, mode: str):
    return gzip.open(path, mode) if path.suffix == ".gz" else open(path, mode)


def load_json(path: PathLike) -> Any:
    """JSON (optionally ``.gz``); unreadable or malformed files raise :class:`ConversionError`."""
    path = Path(path)
    try:
        with _open_maybe_gz(path, "rt") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ConversionError(
            path, f"malformed JSON: {exc.msg}", f"line {exc.lineno} column {exc.colno}"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConversionError(path, f"unreadable file: {exc}") from exc


def load_jsonl(path: PathLike) -> list[Any]:
    path = Path(path)
    records = []
    try:
        with _open_maybe_gz(path, "rt") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ConversionError(path, f"malformed JSON: {exc.msg}", f"line {lineno}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConversionError(path, f"unreadable file: {exc}") from exc
    return records


def load_pickle(path: PathLike) -> Any:
    """A pickle (py2 pickles decode their ``str`` as latin-1). Only convert files you trust."""
    path = Path(path)
    try:
        with _open_maybe_gz(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as exc:
        raise ConversionError(path, f"unreadable file: {type(exc).__name__}: {exc}") from exc


def read_lines(path: PathLike) -> list[str]:
    """Non-empty stripped lines of a text file."""
    path = Path(path)
    try:
        with _open_maybe_gz(path, "rt") as f:
            return [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConversionError(path, f"unreadable file: {exc}") from exc


def require(record: Mapping, key: str, file: PathLike, where: Any, bad: BadSamples) -> bool:
    """True when ``record`` has ``key``; otherwise reports "missing key" and returns False."""
    if isinstance(record, Mapping) and key in record:
        return True
    bad(file, where, "missing key", repr(key))
    return False


def split_files(paths: PathLike | Sequence[PathLike], split: str | None, box_format: str) -> list[Path]:
    """Checks shared by converters of per-split files: the box format, and that an explicit
    split name is given for one file only (several files each name their own split)."""
    if box_format not in ("xywh", "xyxy"):
        raise ValueError(f"box_format must be 'xywh' or 'xyxy', got {box_format!r}")
    files = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if split is not None and len(files) > 1:
        raise ValueError("split can only be given for a single file")
    return files


def split_from_name(stem: str, known: Sequence[str], default: str | None = None) -> str | None:
    """Split name at the end of a file stem (``refcoco_testA`` -> ``testA``), longest match first."""
    for name in sorted(known, key=len, reverse=True):
        if stem == name or stem.lower().endswith("_" + name.lower()):
            return name
    return default


# ------------------------------------------------------------------------------------------- CLI


def new_parser(subparsers, name: str, help: str, *docs: str | None) -> argparse.ArgumentParser:
    """A subcommand parser whose ``--help`` shows the converter's docstrings verbatim."""
    description = "\n\n".join(inspect.cleandoc(d) for d in docs if d)
    return subparsers.add_parser(
        name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_common_arguments(parser: argparse.ArgumentParser, images: bool = True) -> None:
    parser.add_argument("--out", required=True, help="output directory (DatasetDict.save_to_disk)")
    if images:
        parser.add_argument(
            "--image-root",
            default=None,
            help="directory the rows' image_path is relative to; enables missing-file checks",
        )
        parser.add_argument(
            "--embed-images",
            action="store_true",
            help="embed image bytes in an `image` column instead of writing `image_path` (needs --image-root)",
        )
    parser.add_argument(
        "--on-bad-sample",
        choices=BadSamples.POLICIES,
        default="raise",
        help="raise (default) on the first bad record, or skip bad records and print counts per reason",
    )


def common_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs = {"out": args.out, "on_bad_sample": args.on_bad_sample}
    if hasattr(args, "image_root"):
        kwargs.update(image_root=args.image_root, embed_images=args.embed_images)
    return kwargs


def parse_split_assignments(values: Sequence[str] | None, option: str) -> dict[str, str]:
    """``["train=a.txt", "test=b.txt"]`` -> ``{"train": "a.txt", "test": "b.txt"}``."""
    result = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"{option} expects NAME=FILE, got {value!r}")
        result[name] = path
    return result


def eprint(*args: Any) -> None:
    print(*args, file=sys.stderr)
