"""Scene sampling and rendering for the vpg-shapes world.

A scene is 1-6 flat coloured 2D shapes on a grey background. Everything is drawn from one
``numpy.random.Generator``, so a scene is a pure function of (parameters, rng seed).

Vocabulary
- Shape kinds (``SHAPES``, 8): circle, ring, hexagon (the *round* kinds, ``ROUND_SHAPES``) and
  square, triangle, diamond, star, cross (the *angular* kinds, ``ANGULAR_SHAPES``). Shapes are
  drawn upright (no rotation), so square and diamond stay distinct.
- Colours (``COLOURS``, 6): red, green, blue, yellow, purple, orange; saturated RGB values
  >= 75 apart in some channel, with a per-object jitter of +-10 per channel. Backgrounds are
  desaturated grey, so an object never blends in.
- Sizes (``SIZE_RANGES``): the extent of the shape's nominal square is
  small = 14-19 % and large = 28-37 % of the image side (at 96 px: 13-18 px and 27-36 px),
  so any large object is >= 1.26x any small one along its longer side.
- Backgrounds: plain, noisy (Gaussian pixel noise), striped or checkered (low contrast,
  +-8..18 grey levels), each on a random grey tone.

Geometry
- Boxes are tight xyxy pixel-edge coordinates of the drawn (alpha >= ``ALPHA_MIN``) pixels:
  ``x2``/``y2`` are exclusive, so the box of a single pixel at column 3 is [3, 4).
  Every box lies inside the image.
- Placement is rejection sampling: a new object's box has IoU <= ``MAX_IOU`` (0.1) with every
  earlier box and covers <= ``MAX_COVER`` (25 %) of the smaller of the two boxes, so no object
  is hidden. An object that does not fit after ``PLACEMENT_TRIES`` tries is dropped.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

ROUND_SHAPES = ("circle", "ring", "hexagon")
ANGULAR_SHAPES = ("square", "triangle", "diamond", "star", "cross")
SHAPES = ROUND_SHAPES + ANGULAR_SHAPES

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 200),
    "orange": (245, 135, 30),
}
COLOUR_NAMES = tuple(COLOURS)

SIZES = ("small", "large")
SIZE_RANGES = {"small": (0.14, 0.19), "large": (0.28, 0.37)}  # fraction of the image side

BACKGROUNDS = ("plain", "noisy", "striped", "checkered")

MAX_IOU = 0.1
MAX_COVER = 0.25
PLACEMENT_TRIES = 60
SUPERSAMPLE = 4  # antialiasing: draw masks 4x larger, then box-filter down
ALPHA_MIN = 48  # mask values below this are dropped so boxes hug the visible pixels
COLOUR_JITTER = 10


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object; ``box`` is tight xyxy pixels (x2, y2 exclusive)."""

    shape: str
    colour: str
    size: str
    box: tuple[float, float, float, float]
    rgb: tuple[int, int, int]

    @property
    def cx(self) -> float:
        return (self.box[0] + self.box[2]) / 2

    @property
    def cy(self) -> float:
        return (self.box[1] + self.box[3]) / 2

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def scale(self) -> float:
        """Apparent size used by "biggest"/"smallest": the longer side of the box."""
        return max(self.width, self.height)

    @property
    def name(self) -> str:
        """Classification class name, e.g. "red circle"."""
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Background:
    kind: str  # one of BACKGROUNDS
    tone: str  # "dark", "grey" or "light"


@dataclass
class Scene:
    image: Image.Image
    objects: list[ShapeObject]
    background: Background
    image_size: int

    def png_bytes(self) -> bytes:
        return encode_png(self.image)


@dataclass(frozen=True)
class ObjectSpec:
    """Constraints on one object of a scene; unconstrained fields are sampled uniformly."""

    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = COLOUR_NAMES
    sizes: tuple[str, ...] = SIZES
    exclude: frozenset[tuple[str, str]] = field(default_factory=frozenset)  # (colour, shape) pairs


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes; compress_level 1 because speed matters more than size for generated data."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Shape masks


def _shape_polygons(shape: str, c: float, h: float) -> list[tuple[list[tuple[float, float]], int]]:
    """Polygons (points, fill) of a shape centred at (c, c) with half-extent h (canvas pixels)."""
    if shape == "hexagon":  # pointy left/right, flat top/bottom
        pts = [(c + h * math.cos(k * math.pi / 3), c + h * math.sin(k * math.pi / 3)) for k in range(6)]
        return [(pts, 255)]
    if shape == "square":
        a = 0.86 * h  # side 0.86 of the extent: same area as the circle, roughly
        return [([(c - a, c - a), (c + a, c - a), (c + a, c + a), (c - a, c + a)], 255)]
    if shape == "triangle":  # equilateral, pointing up
        dy = h * math.sqrt(3) / 2
        return [([(c, c - dy), (c + h, c + dy), (c - h, c + dy)], 255)]
    if shape == "diamond":  # taller than wide so it never reads as a rotated square
        w = 0.72 * h
        return [([(c, c - h), (c + w, c), (c, c + h), (c - w, c)], 255)]
    if shape == "star":  # 5 points; shifted down so its vertical extent is centred
        inner = 0.45 * h
        shift = h * (1 - math.cos(math.pi / 5)) / 2
        pts = []
        for k in range(10):
            radius = h if k % 2 == 0 else inner
            angle = -math.pi / 2 + k * math.pi / 5
            pts.append((c + radius * math.cos(angle), c + shift + radius * math.sin(angle)))
        return [(pts, 255)]
    if shape == "cross":  # plus sign with thick arms so it survives small sizes
        t = 0.34 * h
        return [
            ([(c - h, c - t), (c + h, c - t), (c + h, c + t), (c - h, c + t)], 255),
            ([(c - t, c - h), (c + t, c - h), (c + t, c + h), (c - t, c + h)], 255),
        ]
    raise ValueError(f"unknown shape {shape!r}")


_ALPHA_LUT = [0 if v < ALPHA_MIN else v for v in range(256)]


def render_mask(shape: str, extent: float, jitter: tuple[float, float] = (0.0, 0.0)) -> Image.Image:
    """Antialiased 'L' mask of one shape on a small square canvas (side ceil(extent) + 2).

    ``jitter`` moves the centre by a sub-pixel amount so edges are not always aligned alike.
    """
    side = int(math.ceil(extent)) + 2
    ss = SUPERSAMPLE
    canvas = Image.new("L", (side * ss, side * ss), 0)
    draw = ImageDraw.Draw(canvas)
    c = side * ss / 2
    h = extent * ss / 2
    cx, cy = c + jitter[0] * ss, c + jitter[1] * ss
    if shape in ("circle", "ring"):
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=255)
        if shape == "ring":
            r = 0.55 * h
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=0)
    else:
        for points, fill in _shape_polygons(shape, c, h):
            shifted = [(x + cx - c, y + cy - c) for x, y in points]
            draw.polygon(shifted, fill=fill)
    mask = canvas.reduce(ss)  # box filter: coverage -> alpha
    return mask.point(_ALPHA_LUT)


# ---------------------------------------------------------------------------------------------
# Backgrounds


def render_background(
    rng: np.random.Generator, image_size: int, kind: str | None = None
) -> tuple[np.ndarray, Background]:
    """Grey background array (H, W, 3) uint8 plus its description."""
    if kind is None:
        kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    base = float(rng.uniform(60, 200))
    tint = rng.uniform(-10, 10, size=3)  # (3,) keeps the tone grey, never saturated
    tone = "dark" if base < 100 else "light" if base > 160 else "grey"
    canvas = np.empty((image_size, image_size, 3), dtype=np.float32)  # (H, W, 3)
    canvas[...] = base + tint
    if kind == "noisy":
        sigma = float(rng.uniform(6, 16))
        canvas += rng.normal(0.0, sigma, size=canvas.shape).astype(np.float32)  # (H, W, 3)
    elif kind in ("striped", "checkered"):
        contrast = float(rng.uniform(8, 18))
        period = float(rng.uniform(0.06, 0.16)) * image_size
        ys, xs = np.mgrid[0:image_size, 0:image_size]  # (H, W) each
        if kind == "striped":
            orientation = int(rng.integers(3))
            coord = (ys, xs, xs + ys)[orientation]  # horizontal, vertical or diagonal stripes
            pattern = np.floor(coord / (period / 2)) % 2  # (H, W) in {0, 1}
        else:
            pattern = (np.floor(xs / period) + np.floor(ys / period)) % 2  # (H, W)
        canvas += ((pattern * 2 - 1) * contrast)[..., None].astype(np.float32)  # (H, W, 1)
    return np.clip(canvas, 0, 255).astype(np.uint8), Background(kind, tone)


# ---------------------------------------------------------------------------------------------
# Scenes


def _iou_and_cover(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, float]:
    """IoU and intersection / smaller area of two xyxy boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0, 0.0
    inter = iw * ih
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter), inter / min(area_a, area_b)


def _choice(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _sample_attributes(
    rng: np.random.Generator,
    spec: ObjectSpec,
    previous: list[tuple[str, str]],
    distractor_prob: float,
    large_prob: float,
) -> tuple[str, str, str]:
    """(shape, colour, size); sometimes copies an earlier object's shape/colour so that
    scenes contain look-alikes that referring expressions must tell apart."""
    for _ in range(100):
        shape = _choice(rng, spec.shapes)
        colour = _choice(rng, spec.colours)
        if previous and rng.random() < distractor_prob:
            ref_colour, ref_shape = previous[int(rng.integers(len(previous)))]
            mode = rng.random()
            if mode < 0.5 and ref_shape in spec.shapes:
                shape = ref_shape
            elif mode < 0.8 and ref_colour in spec.colours:
                colour = ref_colour
            elif ref_shape in spec.shapes and ref_colour in spec.colours:
                shape, colour = ref_shape, ref_colour
        if (colour, shape) not in spec.exclude:
            break
    if len(spec.sizes) == 1:
        size = spec.sizes[0]
    else:
        size = "large" if rng.random() < large_prob else "small"
    return shape, colour, size


def generate_scene(
    rng: np.random.Generator,
    image_size: int = 96,
    num_objects: int | tuple[int, int] = (1, 6),
    specs: list[ObjectSpec] | None = None,
    background: str | None = None,
    distractor_prob: float = 0.35,
    large_prob: float = 0.4,
) -> Scene:
    """Sample and render one scene.

    num_objects: an exact count or an inclusive (min, max) range.
    specs: constraints for the first ``len(specs)`` objects (later ones are unconstrained);
        constrained objects are placed first, so they are the least likely to be dropped.
    background: force a background kind (default: uniform over ``BACKGROUNDS``).
    """
    if isinstance(num_objects, int):
        count = num_objects
    else:
        count = int(rng.integers(num_objects[0], num_objects[1] + 1))
    specs = list(specs or [])
    canvas, bg = render_background(rng, image_size, background)
    image = Image.fromarray(canvas, "RGB")

    objects: list[ShapeObject] = []
    previous: list[tuple[str, str]] = []
    for k in range(count):
        spec = specs[k] if k < len(specs) else ObjectSpec()
        shape, colour, size = _sample_attributes(rng, spec, previous, distractor_prob, large_prob)
        lo, hi = SIZE_RANGES[size]
        extent = float(rng.uniform(lo, hi)) * image_size
        jitter = (float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.5, 0.5)))
        mask = render_mask(shape, extent, jitter)
        lx1, ly1, lx2, ly2 = mask.getbbox()  # tight box inside the local canvas
        mask = mask.crop((lx1, ly1, lx2, ly2))
        w, h = lx2 - lx1, ly2 - ly1
        rgb = tuple(
            int(v)
            for v in np.clip(
                np.array(COLOURS[colour]) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3), 0, 255
            )
        )
        placed = None
        for _ in range(PLACEMENT_TRIES):
            x1 = int(rng.integers(0, image_size - w + 1))
            y1 = int(rng.integers(0, image_size - h + 1))
            box = (float(x1), float(y1), float(x1 + w), float(y1 + h))
            ok = True
            for other in objects:
                iou, cover = _iou_and_cover(box, other.box)
                if iou > MAX_IOU or cover > MAX_COVER:
                    ok = False
                    break
            if ok:
                placed = box
                break
        if placed is None:
            continue  # dropped: the scene is too crowded for this object
        image.paste(rgb, (int(placed[0]), int(placed[1]), int(placed[2]), int(placed[3])), mask)
        objects.append(ShapeObject(shape, colour, size, placed, rgb))
        previous.append((colour, shape))
    return Scene(image=image, objects=objects, background=bg, image_size=image_size)
