"""Built-in captioned data: procedurally rendered shapes with exact captions, plus the analytic judge.

A scene is one object with an absolute position ("a large red circle at the top") or two objects and a
relation ("a large red circle to the left of a small blue square"). Scenes are discrete (`Scene`); `render`
draws one with jittered size and placement, anti-aliased by 4x4 supersampling inside each object's window.
The judge (`judge_image`, `score`) reads an image back with no learning: nearest-palette pixel labels (each
palette colour is a line from the background, so anti-aliased edges stay on their colour), connected
components, shape by best soft-IoU against ideal templates, size by area, position by centroid.

Coordinates: x to the right, y down; normalised positions are in [0, 1] of the image width / height, and an
object's placement point is its area centroid.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from imagen_jax.errors import UserError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 35),
    "green": (40, 190, 60),
    "blue": (40, 80, 240),
    "yellow": (245, 240, 50),
    "purple": (155, 45, 220),
    "cyan": (40, 215, 225),
    "white": (240, 240, 240),
    "orange": (255, 135, 0),
}
BACKGROUND: tuple[int, int, int] = (24, 24, 24)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "centre")
# An object's attributes and the values each takes (the feature network's heads, the probes' classes).
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "size": SIZES,
    "position": POSITIONS,
}
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
POSITION_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
SPLITS: tuple[str, ...] = ("train", "holdout")

# (colour, shape) pairs never seen in training when holdout_combinations=True: 6 of 24, each shape twice,
# each colour at most once (white and orange keep all three shapes), disjoint from the quickstart prompts.
HOLDOUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "square"),
    ("green", "circle"),
    ("blue", "triangle"),
    ("yellow", "square"),
    ("purple", "triangle"),
    ("cyan", "circle"),
)
# data.num_holdout_pairs = n holds out the first n of this order (6: HOLDOUT_PAIRS, the default). Every prefix
# leaves each colour and each shape in training: 8 gives every colour one held-out pair, 12 holds out four colours
# of each shape, 16 (the most) leaves each colour one shape. More held out means more of the colour-shape grid is
# learnt only from its parts: a harder test of composition at the same image size.
HOLDOUT_ORDER: tuple[tuple[str, str], ...] = HOLDOUT_PAIRS + (
    ("white", "square"),
    ("orange", "triangle"),
    ("red", "triangle"),
    ("green", "square"),
    ("blue", "circle"),
    ("yellow", "circle"),
    ("purple", "square"),
    ("cyan", "triangle"),
    ("white", "circle"),
    ("orange", "circle"),
)
ALL_PAIRS: tuple[tuple[str, str], ...] = tuple(itertools.product(COLOURS, SHAPES))

# Geometry, in units of the image side. An object's extent s is its bounding-box side: circle diameter,
# square side, upright isosceles triangle with base s and height s (centroid s/3 above the base).
SIZE_EXTENT: dict[str, float] = {"small": 0.22, "large": 0.38}
SIZE_JITTER = 0.08  # extent scaled by U(1 - j, 1 + j)
SIZE_THRESHOLD = float(np.sqrt(SIZE_EXTENT["small"] * SIZE_EXTENT["large"]))
FILL: dict[str, float] = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}  # area / s^2
FRAME_MARGIN = 0.03  # objects stay this far inside the frame
CENTRE_JITTER = 0.05  # centre: centroid within +-this of the image centre on both axes
REGION_OFFSET = (0.17, 0.27)  # left/right/top/bottom: centroid this far from the centre along the axis
CROSS_JITTER = 0.06  # ... and within +-this across it
CENTRE_RADIUS = 0.11  # judge: max(|dx|, |dy|) below this reads as centre
RELATION_GAP = 0.06  # two objects: at least this gap between bounding boxes along the relation axis
RELATION_SLOPE = 0.3  # ... and |cross offset| <= this * |offset along the axis|
SUPERSAMPLE = 4
MIN_IMAGE_SIZE = 16

# Judge thresholds: colour-line residual (0-255 units), coverage along the line for a core pixel, and the
# smallest component kept, as a fraction of the smallest object the dataset draws.
COLOUR_RESIDUAL = 70.0
CORE_COVERAGE = 0.5
LINE_COVERAGE = 0.2  # colour lines a pixel may be assigned to (so an edge pixel keeps its own colour)
SPECK_FRACTION = 0.3
TEMPLATE_BLURS = (0.0, 0.7)  # Gaussian sigmas (pixels) of the shape templates: samples may be slightly soft
MIN_FIT = 0.65  # a component whose best template soft IoU is below this has shape UNKNOWN_SHAPE
UNKNOWN_SHAPE = "unknown"


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
    """One object: shape, colour and size names; position name for one-object scenes, else None."""

    shape: str
    colour: str
    size: str
    position: str | None = None

    def __post_init__(self) -> None:
        for field, value, allowed in (
            ("shape", self.shape, SHAPES),
            ("colour", self.colour, tuple(COLOURS)),
            ("size", self.size, SIZES),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {field} {value!r}; expected one of {', '.join(allowed)}")
        if self.position is not None and self.position not in POSITIONS:
            raise ValueError(f"unknown position {self.position!r}; expected one of {', '.join(POSITIONS)}")


@dataclasses.dataclass(frozen=True)
class Scene:
    """One object with a position (relation None), or two objects (no positions) and the first's relation
    to the second."""

    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    def __post_init__(self) -> None:
        if len(self.objects) == 1:
            if self.relation is not None or self.objects[0].position is None:
                raise ValueError("a one-object scene needs a position and no relation")
        elif len(self.objects) == 2:
            if self.relation not in RELATIONS or any(o.position is not None for o in self.objects):
                raise ValueError(f"a two-object scene needs a relation in {RELATIONS} and no positions")
        else:
            raise ValueError(f"a scene has 1 or 2 objects, got {len(self.objects)}")


@dataclasses.dataclass(frozen=True)
class DetectedObject:
    """An object read from an image; centroid (x, y) and extent are normalised to the image size."""

    shape: str  # one of SHAPES, or UNKNOWN_SHAPE when no template fits
    colour: str
    size: str
    position: str
    centroid: tuple[float, float]
    extent: float
    area: float  # fraction of the image
    fit: float  # soft IoU with the ideal template of `shape`, in [0, 1]


# ----------------------------------------------------------------------------------------------- captions


def _describe(obj: ObjectSpec) -> str:
    return f"a {obj.size} {obj.colour} {obj.shape}"


def caption(scene: Scene) -> str:
    """The English caption stating every attribute of `scene`."""
    if len(scene.objects) == 1:
        obj = scene.objects[0]
        return f"{_describe(obj)} {POSITION_PHRASES[obj.position]}"
    first, second = scene.objects
    return f"{_describe(first)} {scene.relation} {_describe(second)}"


_OBJECT_RE = rf"an? ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})"
_ONE_RE = re.compile(rf"{_OBJECT_RE} ({'|'.join(POSITION_PHRASES.values())})")
_TWO_RE = re.compile(rf"{_OBJECT_RE} ({'|'.join(RELATIONS)}) {_OBJECT_RE}")
_PHRASE_TO_POSITION = {phrase: name for name, phrase in POSITION_PHRASES.items()}


def parse_caption(text: str) -> Scene:
    """The scene a caption states (case, surrounding spaces and a final full stop are ignored).

    Raises ValueError naming the grammar when `text` is not a caption of this dataset."""
    normal = " ".join(str(text).lower().split()).rstrip(".").strip()
    if m := _ONE_RE.fullmatch(normal):
        size, colour, shape, phrase = m.groups()
        return Scene((ObjectSpec(shape, colour, size, _PHRASE_TO_POSITION[phrase]),), None)
    if m := _TWO_RE.fullmatch(normal):
        s1, c1, h1, relation, s2, c2, h2 = m.groups()
        return Scene((ObjectSpec(h1, c1, s1), ObjectSpec(h2, c2, s2)), relation)
    raise ValueError(
        f"caption {text!r} is not in the shapes grammar: expected 'a <size> <colour> <shape> <position>' "
        f"(e.g. 'a large red circle at the top') or 'a <size> <colour> <shape> <relation> a <size> <colour> "
        f"<shape>' (e.g. 'a large red circle to the left of a small blue square'); "
        f"sizes: {', '.join(SIZES)}; colours: {', '.join(COLOURS)}; shapes: {', '.join(SHAPES)}; positions: "
        f"{', '.join(POSITION_PHRASES.values())}; relations: {', '.join(RELATIONS)}"
    )


def all_scenes(num_objects: int) -> list[Scene]:
    """Every scene of the grammar with `num_objects` objects (two-object scenes: different colours)."""
    objs = [ObjectSpec(h, c, s) for s, c, h in itertools.product(SIZES, COLOURS, SHAPES)]
    if num_objects == 1:
        return [Scene((dataclasses.replace(o, position=p),)) for o in objs for p in POSITIONS]
    if num_objects == 2:
        return [
            Scene((a, b), r)
            for a, b in itertools.product(objs, objs)
            if a.colour != b.colour
            for r in RELATIONS
        ]
    raise ValueError(f"num_objects must be 1 or 2, got {num_objects}")


# ---------------------------------------------------------------------------------------------- rendering


def _extents(shape: str, s: float) -> tuple[float, float, float, float]:
    """(left, right, up, down) distances from the centroid to the bounding box, for extent s."""
    if shape == "triangle":
        return s / 2, s / 2, 2 * s / 3, s / 3
    return s / 2, s / 2, s / 2, s / 2


def coverage(shape: str, cx: float, cy: float, s: float, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Fraction of each pixel of the window [y0:y0+h, x0:x0+w] inside the shape: float32 [h, w].

    cx, cy (centroid) and s (extent) are in pixels; pixel (i, j) covers [j, j+1] x [i, i+1]."""
    xs = x0 + (np.arange(w * SUPERSAMPLE, dtype=np.float32) + 0.5) / SUPERSAMPLE - cx
    ys = y0 + (np.arange(h * SUPERSAMPLE, dtype=np.float32) + 0.5) / SUPERSAMPLE - cy
    if shape == "circle":
        inside = xs[None, :] ** 2 + ys[:, None] ** 2 <= (s / 2) ** 2
    elif shape == "square":
        inside = (np.abs(ys[:, None]) <= s / 2) & (np.abs(xs[None, :]) <= s / 2)
    elif shape == "triangle":
        inside = (ys[:, None] <= s / 3) & (2 * np.abs(xs[None, :]) <= ys[:, None] + 2 * s / 3)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    counts = inside.reshape(h, SUPERSAMPLE, w, SUPERSAMPLE).sum(axis=(1, 3), dtype=np.int32)
    return counts.astype(np.float32) * np.float32(1 / SUPERSAMPLE**2)


def _extent(size: str, rng: np.random.Generator) -> float:
    return SIZE_EXTENT[size] * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER)


def _place_one(obj: ObjectSpec, rng: np.random.Generator) -> tuple[float, float, float]:
    """Normalised (cx, cy, s) for a one-object scene: centroid in the region of obj.position."""
    s = _extent(obj.size, rng)
    if obj.position == "centre":
        dx, dy = rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, size=2)
        return 0.5 + dx, 0.5 + dy, s
    left, right, up, down = _extents(obj.shape, s)
    toward = {"left": left, "right": right, "top": up, "bottom": down}[obj.position]
    hi = max(REGION_OFFSET[0], min(REGION_OFFSET[1], 0.5 - toward - FRAME_MARGIN))
    along = rng.uniform(REGION_OFFSET[0], hi) * (-1 if obj.position in ("left", "top") else 1)
    cross = rng.uniform(-CROSS_JITTER, CROSS_JITTER)
    if obj.position in ("left", "right"):
        return 0.5 + along, 0.5 + cross, s
    return 0.5 + cross, 0.5 + along, s


def _place_two(scene: Scene, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """Normalised (cx, cy, s) per object of a two-object scene: no overlap, relation unambiguous."""
    sizes = [_extent(o.size, rng) for o in scene.objects]
    ext = [_extents(o.shape, s) for o, s in zip(scene.objects, sizes, strict=True)]
    horizontal = scene.relation in ("to the left of", "to the right of")
    # Order along the axis (first = smaller coordinate) and each object's (before, after, cross-lo, cross-hi).
    order = [0, 1] if scene.relation in ("to the left of", "above") else [1, 0]
    axis_ext = [(e[0], e[1], e[2], e[3]) if horizontal else (e[2], e[3], e[0], e[1]) for e in ext]
    a, b = (axis_ext[i] for i in order)
    slack = 1 - 2 * FRAME_MARGIN - (a[0] + a[1]) - (b[0] + b[1]) - RELATION_GAP
    parts = rng.dirichlet(np.ones(3)) * max(slack, 0.0)
    along_a = FRAME_MARGIN + parts[0] + a[0]
    along_b = along_a + a[1] + RELATION_GAP + parts[1] + b[0]
    delta = rng.uniform(-RELATION_SLOPE, RELATION_SLOPE) * (along_b - along_a)
    lo = max(FRAME_MARGIN + a[2] + delta / 2, FRAME_MARGIN + b[2] - delta / 2)
    hi = min(1 - FRAME_MARGIN - a[3] + delta / 2, 1 - FRAME_MARGIN - b[3] - delta / 2)
    if lo > hi:  # rare: the cross offset does not fit; align the two objects instead
        delta = 0.0
        lo = FRAME_MARGIN + max(a[2], b[2])
        hi = 1 - FRAME_MARGIN - max(a[3], b[3])
    mid = rng.uniform(lo, hi)
    along = {order[0]: along_a, order[1]: along_b}
    cross = {order[0]: mid - delta / 2, order[1]: mid + delta / 2}
    return [
        (along[i], cross[i], sizes[i]) if horizontal else (cross[i], along[i], sizes[i]) for i in range(2)
    ]


_BACKGROUND = np.asarray(BACKGROUND, np.float32)
_COLOUR_OFFSETS = {name: np.asarray(rgb, np.float32) - _BACKGROUND for name, rgb in COLOURS.items()}


def render(scene: Scene, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """The scene drawn on the background with jittered size and placement: uint8 [S, S, 3]."""
    if int(image_size) != image_size or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size}")
    size = int(image_size)
    if len(scene.objects) == 1:
        placements = [_place_one(scene.objects[0], rng)]
    else:
        placements = _place_two(scene, rng)
    image = np.empty((size, size, 3), np.float32)
    image[...] = _BACKGROUND
    for obj, (cx, cy, s) in zip(scene.objects, placements, strict=True):
        cx, cy, s = cx * size, cy * size, s * size
        left, right, up, down = _extents(obj.shape, s)
        x0, x1 = max(int(np.floor(cx - left)), 0), min(int(np.ceil(cx + right)), size)
        y0, y1 = max(int(np.floor(cy - up)), 0), min(int(np.ceil(cy + down)), size)
        cov = coverage(obj.shape, cx, cy, s, y0, x0, y1 - y0, x1 - x0)
        image[y0:y1, x0:x1] += cov[..., None] * _COLOUR_OFFSETS[obj.colour]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ dataset


def _split_code(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return SPLITS.index(split)


class ShapesDataset:
    """Endless, deterministic captioned shapes. max_objects=1: one object with a position per scene;
    max_objects=2: one or two objects (two with probability two_object_fraction)."""

    def __init__(
        self,
        image_size: int,
        max_objects: int = 1,
        holdout_combinations: bool = True,
        seed: int = 0,
        two_object_fraction: float = 0.5,
        num_holdout_pairs: int = len(HOLDOUT_PAIRS),
    ):
        if int(image_size) != image_size or image_size < MIN_IMAGE_SIZE:
            raise UserError(f"data.image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size}")
        if max_objects not in (1, 2):
            raise UserError(f"data.max_objects must be 1 or 2, got {max_objects}")
        if not 0.0 <= two_object_fraction <= 1.0:
            raise ValueError(f"two_object_fraction must be in [0, 1], got {two_object_fraction}")
        if int(num_holdout_pairs) != num_holdout_pairs or not 1 <= num_holdout_pairs <= len(HOLDOUT_ORDER):
            raise UserError(
                f"data.num_holdout_pairs must be an integer from 1 to {len(HOLDOUT_ORDER)} (the most that leaves "
                f"every colour and shape in training), got {num_holdout_pairs}; "
                f"{len(HOLDOUT_PAIRS)} is the default."
            )
        self.image_size = int(image_size)
        self.max_objects = int(max_objects)
        self.holdout_combinations = bool(holdout_combinations)
        self.num_holdout_pairs = int(num_holdout_pairs)
        self.seed = int(seed)
        self.two_object_fraction = float(two_object_fraction) if max_objects == 2 else 0.0

    @property
    def holdout_pairs(self) -> tuple[tuple[str, str], ...]:
        """(colour, shape) pairs reserved for the holdout split (the first num_holdout_pairs of HOLDOUT_ORDER);
        empty when holdout_combinations is off."""
        return HOLDOUT_ORDER[: self.num_holdout_pairs] if self.holdout_combinations else ()

    def _pairs(self, split: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(pairs every scene must include one of, pairs the other object may be) for a split."""
        _split_code(split)
        if not self.holdout_combinations:
            return list(ALL_PAIRS), list(ALL_PAIRS)
        held = self.holdout_pairs
        if split == "train":
            train = [p for p in ALL_PAIRS if p not in held]
            return train, train
        return list(held), list(ALL_PAIRS)

    def sample_scenes(self, rng: np.random.Generator, n: int, split: str = "train") -> list[Scene]:
        """n scenes of the split (holdout: each has at least one held-out (colour, shape) pair)."""
        required, others = self._pairs(split)
        scenes = []
        for _ in range(n):
            size_a = SIZES[rng.integers(len(SIZES))]
            colour, shape = required[rng.integers(len(required))]
            first = ObjectSpec(shape, colour, size_a)
            if rng.random() >= self.two_object_fraction:
                position = POSITIONS[rng.integers(len(POSITIONS))]
                scenes.append(Scene((dataclasses.replace(first, position=position),)))
                continue
            candidates = [p for p in others if p[0] != colour]
            colour_b, shape_b = candidates[rng.integers(len(candidates))]
            second = ObjectSpec(shape_b, colour_b, SIZES[rng.integers(len(SIZES))])
            pair = (first, second) if rng.random() < 0.5 else (second, first)
            scenes.append(Scene(pair, RELATIONS[rng.integers(len(RELATIONS))]))
        return scenes

    def batch(
        self, step: int, batch_size: int, process_index: int = 0, split: str = "train"
    ) -> dict[str, np.ndarray | list[str]]:
        """The batch for (seed, step, process_index, split): images float32 [B, S, S, 3] in [-1, 1] and
        B captions."""
        if batch_size < 1 or step < 0 or process_index < 0:
            raise ValueError(
                "need batch_size >= 1, step >= 0, process_index >= 0; "
                f"got {batch_size}, {step}, {process_index}"
            )
        rng = np.random.default_rng([self.seed, step, process_index, _split_code(split)])
        scenes = self.sample_scenes(rng, batch_size, split)
        images = np.stack([render(s, self.image_size, rng) for s in scenes])
        images = images.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)
        return {"images": images, "captions": [caption(s) for s in scenes]}

    def prompts(self, n: int, split: str = "holdout", seed: int = 0) -> list[str]:
        """A fixed evaluation prompt set: n captions of the split, distinct while the split has enough."""
        rng = np.random.default_rng([seed, 0x9E37, _split_code(split)])
        unique: dict[str, None] = {}
        for _ in range(50):
            for s in self.sample_scenes(rng, max(n, 1), split):
                unique.setdefault(caption(s), None)
            if len(unique) >= n:
                break
        pool = list(unique)
        return [pool[i % len(pool)] for i in range(n)]

    def caption_corpus(self, n: int = 20000) -> list[str]:
        """n captions from both splits, starting with a few that use every word of the grammar."""
        cover = [
            caption(Scene((ObjectSpec(SHAPES[i % 3], c, SIZES[i % 2], POSITIONS[i % 5]),)))
            for i, c in enumerate(COLOURS)
        ]
        cover += [
            caption(
                Scene(
                    (ObjectSpec(SHAPES[i % 3], "red", SIZES[i % 2]), ObjectSpec("square", "blue", "small")), r
                )
            )
            for i, r in enumerate(RELATIONS)
        ]
        if n < len(cover):
            raise ValueError(f"caption_corpus needs n >= {len(cover)} to cover the grammar, got {n}")
        everything = ShapesDataset(
            self.image_size, self.max_objects, False, self.seed, self.two_object_fraction
        )
        rng = np.random.default_rng([self.seed, 0xC0C0])
        return cover + [caption(s) for s in everything.sample_scenes(rng, n - len(cover))]


# -------------------------------------------------------------------------------------------------- judge

_PALETTE_NAMES = tuple(COLOURS)
_DIRECTIONS = np.asarray([COLOURS[c] for c in _PALETTE_NAMES], np.float32) - np.asarray(
    BACKGROUND, np.float32
)
_DIRECTION_SQ = (_DIRECTIONS**2).sum(axis=1)
_STRUCTURE = np.ones((3, 3), bool)


def to_uint8_scale(image: np.ndarray) -> np.ndarray:
    """float32 [H, W, 3] in 0..255 from uint8, or from float in [-1, 1]."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an image [H, W, 3], got shape {image.shape}")
    if np.issubdtype(image.dtype, np.floating):
        return (np.clip(image.astype(np.float32), -1.0, 1.0) + 1.0) * np.float32(127.5)
    return image.astype(np.float32)


def _colour_lines(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel and palette colour: coverage alpha along background->colour and the distance to that line.

    pixels: float32 [N, 3] in 0..255. Returns (alpha [N, C], residual [N, C])."""
    offset = pixels - _BACKGROUND
    dots = offset @ _DIRECTIONS.T
    alpha = dots / _DIRECTION_SQ
    residual_sq = (offset**2).sum(axis=1, keepdims=True) - dots * alpha
    return alpha, np.sqrt(np.maximum(residual_sq, 0.0))


def position_name(cx: float, cy: float) -> str:
    """The absolute position region of a normalised centroid."""
    dx, dy = cx - 0.5, cy - 0.5
    if max(abs(dx), abs(dy)) < CENTRE_RADIUS:
        return "centre"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def relation_between(a: tuple[float, float], b: tuple[float, float]) -> str:
    """The relation of centroid a to centroid b (normalised (x, y)), along the dominant axis."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def _fit_shape(soft: np.ndarray, cx: float, cy: float, area: float, y0: int, x0: int) -> tuple[str, float]:
    """The template shape with the best soft IoU against `soft` (window at y0, x0; pixel units)."""
    best, best_iou = SHAPES[0], -1.0
    h, w = soft.shape
    for shape in SHAPES:
        s = float(np.sqrt(area / FILL[shape]))
        sharp = coverage(shape, cx - x0, cy - y0, s, 0, 0, h, w)
        for blur in TEMPLATE_BLURS:
            template = ndimage.gaussian_filter(sharp, blur, mode="constant") if blur else sharp
            iou = float(np.minimum(soft, template).sum() / max(np.maximum(soft, template).sum(), 1e-6))
            if iou > best_iou:
                best, best_iou = shape, iou
    return best, best_iou


def judge_image(image: np.ndarray) -> list[DetectedObject]:
    """Objects read from an image (uint8 [H, W, 3], or float in [-1, 1]), largest first."""
    pixels = to_uint8_scale(image)
    height, width = pixels.shape[:2]
    alpha, residual = _colour_lines(pixels.reshape(-1, 3))
    # The pixel's colour is its nearest colour line; it is a core pixel if it lies far enough along it.
    label = np.where(alpha >= LINE_COVERAGE, residual, np.inf).argmin(axis=1)
    on_line = np.take_along_axis(np.stack([alpha, residual]), label[None, :, None], axis=2)[..., 0]
    core = (on_line[0] >= CORE_COVERAGE) & (on_line[1] < COLOUR_RESIDUAL)
    label = np.where(core, label, -1).reshape(height, width)
    min_pixels = max(
        2.0,
        SPECK_FRACTION * FILL["triangle"] * (SIZE_EXTENT["small"] * (1 - SIZE_JITTER)) ** 2 * height * width,
    )
    counts = np.bincount(label.ravel() + 1, minlength=len(_PALETTE_NAMES) + 1)[1:]
    rows = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
    cols = (np.arange(width, dtype=np.float32) + 0.5)[None, :]
    found = []
    for k in np.flatnonzero(counts >= min_pixels):
        components, num = ndimage.label(label == k, structure=_STRUCTURE)
        soft_k = (np.clip(alpha[:, k], 0.0, 1.0) * (residual[:, k] < COLOUR_RESIDUAL)).reshape(height, width)
        for index, window in enumerate(ndimage.find_objects(components), start=1):
            if (components[window] == index).sum() < min_pixels:
                continue
            pad = max(2, int(0.25 * max(window[0].stop - window[0].start, window[1].stop - window[1].start)))
            y0, y1 = max(window[0].start - pad, 0), min(window[0].stop + pad, height)
            x0, x1 = max(window[1].start - pad, 0), min(window[1].stop + pad, width)
            near = ndimage.binary_dilation(components[y0:y1, x0:x1] == index, structure=_STRUCTURE)
            soft = np.where(near, soft_k[y0:y1, x0:x1], 0.0).astype(np.float32)
            area = float(soft.sum())
            cx = float((soft * cols[:, x0:x1]).sum() / area)
            cy = float((soft * rows[y0:y1]).sum() / area)
            shape, fit = _fit_shape(soft, cx, cy, area, y0, x0)
            extent = float(np.sqrt(area / FILL[shape] / (height * width)))
            shape = shape if fit >= MIN_FIT else UNKNOWN_SHAPE
            centroid = (cx / width, cy / height)
            found.append(
                DetectedObject(
                    shape=shape,
                    colour=_PALETTE_NAMES[k],
                    size="large" if extent > SIZE_THRESHOLD else "small",
                    position=position_name(*centroid),
                    centroid=centroid,
                    extent=extent,
                    area=area / (height * width),
                    fit=fit,
                )
            )
    return sorted(found, key=lambda d: -d.area)


def _object_matches(spec: ObjectSpec, det: DetectedObject) -> tuple[bool, bool, bool]:
    return spec.shape == det.shape, spec.colour == det.colour, spec.size == det.size


def score_detections(detections: Sequence[DetectedObject], scene: Scene) -> dict[str, bool]:
    """Per attribute (shape, colour, size, position; for two objects: both objects, position = relation)
    whether the detections agree with the scene, and "all". A wrong object count fails everything."""
    keys = ("shape", "colour", "size", "position", "all")
    if len(detections) != len(scene.objects):
        return dict.fromkeys(keys, False)
    if len(scene.objects) == 1:
        spec, det = scene.objects[0], detections[0]
        shape, colour, size = _object_matches(spec, det)
        result = {"shape": shape, "colour": colour, "size": size, "position": spec.position == det.position}
    else:
        best = None
        for a, b in ((0, 1), (1, 0)):  # which detection plays the caption's first object
            m1 = _object_matches(scene.objects[0], detections[a])
            m2 = _object_matches(scene.objects[1], detections[b])
            rel = relation_between(detections[a].centroid, detections[b].centroid) == scene.relation
            candidate = {
                "shape": m1[0] and m2[0],
                "colour": m1[1] and m2[1],
                "size": m1[2] and m2[2],
                "position": rel,
            }
            total = sum(m1) + sum(m2) + rel
            if best is None or total > best[0]:
                best = (total, candidate)
        result = best[1]
    result["all"] = all(result.values())
    return result


def score(image: np.ndarray, text: str) -> dict[str, bool]:
    """Whether an image (uint8 [H, W, 3] or float in [-1, 1]) shows its caption: keys shape, colour, size,
    position, all."""
    return score_detections(judge_image(image), parse_caption(text))
