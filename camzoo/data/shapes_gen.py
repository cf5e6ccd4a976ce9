"""The generator behind the built-in "shapes" dataset: scenes with one class-defining object.

Each image: a tinted crop of a real texture (brick, grass, gravel) plus noise, 1-3 distractor objects
and one object whose shape (and, with more classes than shapes, pattern) defines the class. Object
and distractors draw their colours and patterns from the same pools, independently of the class, so
neither colour nor pattern alone gives the class, and the background carries no class signal at all.

Determinism: scenes are drawn in blocks of BLOCK images, each from its own ``SeedSequence((seed,
split, block))``, in units relative to the image side. So image i of a split is the same scene at any
image size, and the first n images of a split do not depend on how many are generated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _geometry as geo
from ._textures import TEXTURE_NAMES, textures

GENERATOR_VERSION = 1  # bump on any change that alters generated pixels (it names the cache file)
BLOCK = 256
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
CONTENTS = ("full", "background", "object")
MIN_SIZE, MAX_SIZE = 32, 224
MAX_CLASSES = len(geo.CLASS_SHAPES) * len(geo.PATTERNS)
MAX_DISTRACTORS = 3

# Saturated object colours shared by objects and distractors (RGB in [0, 1]).
PALETTE = np.array(
    [
        [0.95, 0.15, 0.15], [0.15, 0.85, 0.20], [0.20, 0.35, 1.00], [1.00, 0.90, 0.10],
        [0.95, 0.20, 0.95], [0.10, 0.90, 0.95], [1.00, 0.55, 0.05], [0.97, 0.97, 0.97],
    ],
    dtype=np.float32,
)
NOISE_STD = 0.04
# Radii of the disk with the object's area, as fractions of the image side.
OBJECT_RADIUS = (0.16, 0.22)
DISTRACTOR_RADIUS = (0.10, 0.17)


def check_split_counts(dataset: str, num_images: object, seed: object) -> None:
    """A generated split's size and seed, as every generated dataset takes them: a positive int and a
    non-negative int (bools refused), checked before any work."""
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 1:
        raise ValueError(f"{dataset}: num_images must be a positive int, got {num_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{dataset}: seed must be a non-negative int, got {seed!r}")


def check_image_size(dataset: str, size: object) -> None:
    """An image side the generators draw at: an int in MIN_SIZE..MAX_SIZE."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"{dataset}: image_size must be an int in {MIN_SIZE}..{MAX_SIZE}, got {size!r}")


def class_layout(num_classes: int) -> tuple[int, int]:
    """(number of shapes, number of pattern groups) used for ``num_classes`` classes.

    Shapes first: up to 10 classes are 10 shapes with the pattern a random nuisance; beyond that
    each class is a (shape, pattern) pair, e.g. 12 classes = 6 shapes x {solid, stripes}.
    """
    if not isinstance(num_classes, (int, np.integer)) or not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"shapes: num_classes must be an int in 2..{MAX_CLASSES}, got {num_classes!r}")
    n_patterns = math.ceil(num_classes / len(geo.CLASS_SHAPES))
    return math.ceil(num_classes / n_patterns), n_patterns


def class_names(num_classes: int) -> list[str]:
    n_shapes, n_patterns = class_layout(num_classes)
    shapes = list(geo.CLASS_SHAPES)
    if n_patterns == 1:
        return shapes[:num_classes]
    return [f"{shapes[k % n_shapes]}-{geo.PATTERNS[k // n_shapes]}" for k in range(num_classes)]


@dataclass
class Scenes:
    """Scene parameters of n images, in units relative to the image side (so any size can render them)."""

    label: np.ndarray        # (n,) int64
    shape: np.ndarray        # (n, 1 + D) int64 index into geo.ALL_SHAPES; column 0 is the object
    pattern: np.ndarray      # (n, 1 + D) int64 index into geo.PATTERNS
    colour: np.ndarray       # (n, 1 + D, 3) float32
    colour2: np.ndarray      # (n, 1 + D, 3) float32, the pattern's second colour
    cx: np.ndarray           # (n, 1 + D) float64 centre, fraction of the width
    cy: np.ndarray
    radius: np.ndarray       # equal-area radius, fraction of the side
    angle: np.ndarray
    active: np.ndarray       # (n, 1 + D) bool, whether the object / distractor is drawn
    texture: np.ndarray      # (n,) int64 index into TEXTURE_NAMES
    offset: np.ndarray       # (n, 2) float64 crop offset in [0, 1)
    flip: np.ndarray         # (n, 3) bool: flip rows, flip cols, transpose
    tint: np.ndarray         # (n, 3) float32
    noise_seed: np.ndarray   # (n,) uint64, seeds the pixel noise of each block at render time


def _draw_block(rng: np.random.Generator, n: int, num_classes: int) -> Scenes:
    n_shapes, n_patterns = class_layout(num_classes)
    d = MAX_DISTRACTORS
    label = rng.permutation(np.arange(n) % num_classes).astype(np.int64)

    shape = np.empty((n, 1 + d), dtype=np.int64)
    pattern = rng.integers(0, len(geo.PATTERNS), size=(n, 1 + d))
    shape[:, 0] = label % n_shapes
    if n_patterns > 1:
        pattern[:, 0] = label // n_shapes
    n_class_shapes = len(geo.CLASS_SHAPES)
    shape[:, 1:] = n_class_shapes + rng.integers(0, len(geo.DISTRACTOR_SHAPES), size=(n, d))

    colour_idx = rng.integers(0, len(PALETTE), size=(n, 1 + d))
    shade = rng.uniform(0.8, 1.0, size=(n, 1 + d, 1)).astype(np.float32)
    colour = PALETTE[colour_idx] * shade
    # A pattern's second colour is another saturated palette colour, so patterned objects keep a
    # clear silhouette on dark backgrounds (a dark second colour let stripes melt into them).
    colour2 = PALETTE[(colour_idx + rng.integers(1, len(PALETTE), size=(n, 1 + d))) % len(PALETTE)] * shade

    radius = np.empty((n, 1 + d))
    radius[:, 0] = rng.uniform(*OBJECT_RADIUS, size=n)
    radius[:, 1:] = rng.uniform(*DISTRACTOR_RADIUS, size=(n, d))
    angle = rng.uniform(0.0, 2 * math.pi, size=(n, 1 + d))

    # The object lies wholly inside the image; distractors may be cut by the border. Placement uses
    # one bound for all classes (geo.class_bound), so the background never hints at the class.
    extent = radius * np.array([[r for _, r in geo.shape_scales()]])[0][shape]
    extent[:, 0] = geo.class_bound() * radius[:, 0]
    cx = np.empty((n, 1 + d))
    cy = np.empty((n, 1 + d))
    cx[:, 0] = rng.uniform(extent[:, 0], 1.0 - extent[:, 0])
    cy[:, 0] = rng.uniform(extent[:, 0], 1.0 - extent[:, 0])
    # Distractors keep clear of the object (a same-coloured touching distractor would change its
    # silhouette): pick the first of several candidate positions that does not overlap it.
    tries = 12
    cand = rng.uniform(0.0, 1.0, size=(n, d, tries, 2))
    dist = np.hypot(cand[..., 0] - cx[:, :1, None], cand[..., 1] - cy[:, :1, None])
    clear = dist > (extent[:, :1, None] + extent[:, 1:, None] + 0.03)
    first = clear.argmax(axis=2)
    pick = np.take_along_axis(cand, first[..., None, None], axis=2)[:, :, 0]
    cx[:, 1:], cy[:, 1:] = pick[..., 0], pick[..., 1]
    n_distractors = rng.integers(1, d + 1, size=n)
    active = np.ones((n, 1 + d), dtype=bool)
    active[:, 1:] = (np.arange(d)[None, :] < n_distractors[:, None]) & clear.any(axis=2)

    return Scenes(
        label=label, shape=shape, pattern=pattern, colour=colour, colour2=colour2, cx=cx, cy=cy, radius=radius,
        angle=angle, active=active,
        texture=rng.integers(0, len(TEXTURE_NAMES), size=n),
        offset=rng.uniform(0.0, 1.0, size=(n, 2)),
        flip=rng.integers(0, 2, size=(n, 3)).astype(bool),
        tint=rng.uniform(0.2, 0.75, size=(n, 3)).astype(np.float32),
        noise_seed=rng.integers(0, 2**63, size=n, dtype=np.uint64),
    )


def draw_scenes(n: int, num_classes: int, seed: int, split: str) -> Scenes:
    """Scene parameters of the first ``n`` images of ``split``."""
    if split not in SPLIT_CODES:
        raise ValueError(f"shapes: unknown split {split!r}; choose one of {sorted(SPLIT_CODES)}")
    blocks = [
        _draw_block(np.random.default_rng(np.random.SeedSequence((seed, SPLIT_CODES[split], b))),
                    BLOCK, num_classes)
        for b in range(math.ceil(n / BLOCK))
    ]
    return Scenes(**{k: np.concatenate([getattr(b, k) for b in blocks])[:n] for k in Scenes.__annotations__})


def _take(scenes: Scenes, sl: slice) -> Scenes:
    return Scenes(**{k: getattr(scenes, k)[sl] for k in Scenes.__annotations__})


def _background(sc: Scenes, size: int) -> np.ndarray:
    tex = textures(size)
    room = tex.shape[-1] - size + 1
    oy = np.floor(sc.offset[:, 0] * room).astype(np.int64)
    ox = np.floor(sc.offset[:, 1] * room).astype(np.int64)
    ar = np.arange(size)
    rows = oy[:, None] + np.where(sc.flip[:, :1], size - 1 - ar, ar)
    cols = ox[:, None] + np.where(sc.flip[:, 1:2], size - 1 - ar, ar)
    crop = tex[sc.texture[:, None, None], rows[:, :, None], cols[:, None, :]]
    crop = np.where(sc.flip[:, 2, None, None], crop.transpose(0, 2, 1), crop)
    return (0.3 + 0.7 * crop)[..., None] * sc.tint[:, None, None, :]


def _paint(img: np.ndarray, sc: Scenes, j: int, size: int) -> np.ndarray:
    """Draw object slot j (0 = the class object) into img (N,H,W,3); return its mask (N,H,W)."""
    xs = np.arange(size, dtype=np.float32) + 0.5
    mask, u, v = geo.draw_shapes(
        xs, xs, sc.cx[:, j] * size, sc.cy[:, j] * size, sc.radius[:, j] * size, sc.angle[:, j], sc.shape[:, j]
    )
    mask &= sc.active[:, j, None, None]
    # Colour only the painted pixels (about a tenth of the image), not whole frames.
    where = np.nonzero(mask)
    second = geo.pattern_second(sc.pattern[where[0], j], u[where], v[where])
    img[where] = np.where(second[:, None], sc.colour2[where[0], j], sc.colour[where[0], j])
    return mask


def _noise(sc: Scenes, size: int) -> np.ndarray:
    # One draw per render chunk, seeded by its first image. Chunks start at fixed multiples for a
    # given size, and numpy fills arrays in order, so the first n images never depend on the total.
    rng = np.random.default_rng(int(sc.noise_seed[0]))
    return rng.standard_normal((len(sc.label), size, size, 3), dtype=np.float32) * NOISE_STD


def render(scenes: Scenes, size: int, content: str = "full") -> dict[str, np.ndarray]:
    """Pixels of the scenes at ``size`` px: images (N,3,S,S) uint8, masks (N,S,S) bool, boxes (N,4)."""
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"shapes: image_size must be an int in {MIN_SIZE}..{MAX_SIZE}, got {size!r}")
    if content not in CONTENTS:
        raise ValueError(f"shapes: content must be one of {CONTENTS}, got {content!r}")
    n = len(scenes.label)
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=bool)
    chunk = max(1, (1 << 20) // (size * size))  # bounds the float temporaries to ~100 MB
    for start in range(0, n, chunk):
        sc = _take(scenes, slice(start, start + chunk))
        if content == "object":
            img = np.full((len(sc.label), size, size, 3), 0.45, dtype=np.float32)
        else:
            img = _background(sc, size).astype(np.float32)
            for j in range(1, 1 + MAX_DISTRACTORS):
                _paint(img, sc, j, size)
        canvas = img.copy() if content == "background" else img
        masks[start:start + chunk] = _paint(canvas, sc, 0, size)
        img += _noise(sc, size)
        pixels = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
        images[start:start + chunk] = pixels.transpose(0, 3, 1, 2)
    return {"images": images, "masks": masks, "boxes": boxes_from_masks(masks), "labels": scenes.label.copy()}


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """Tight boxes (N,4) x0,y0,x1,y1 in pixel-edge coordinates: pixel (r, c) spans [c, c+1) x [r, r+1)."""
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    if not rows.any(axis=1).all():
        raise ValueError("shapes: an object was drawn with no pixels; this is a generator bug")
    size_h, size_w = masks.shape[1:]
    y0 = rows.argmax(axis=1)
    y1 = size_h - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = size_w - cols[:, ::-1].argmax(axis=1)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)
