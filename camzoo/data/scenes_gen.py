"""The generator behind the built-in "scenes" dataset: 2-4 objects of distinct classes per image.

It is the "shapes" generator's world (its textures, shape drawing, palette, noise and rendering)
with every object class-defining: each image holds 2-4 objects whose classes are all different, on
a tinted texture crop, none touching another and none cut by the border. So every object has an
exact mask and a tight box, and the other objects of an image are distractors of known class and
place: ground truth for explaining segmenters and detectors one target object at a time.

Object 0, the "primary" object, is the largest of its image (its equal-area radius is at least 1/0.85
times every other's), so the classification view (label = class of object 0) has a defined answer.
Colours and patterns are drawn independently of the class, as in "shapes".

Determinism, as in "shapes": blocks of BLOCK scenes, each drawn from its own SeedSequence, in units
of the image side. Image i of a split is the same scene at any size, and the first n images do not
depend on how many are generated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from . import _geometry as geo
from . import shapes_gen as gen
from ._textures import TEXTURE_NAMES

GENERATOR_VERSION = 1  # bump on any change that alters generated pixels or annotations (it names the cache file)
MAX_OBJECTS, MIN_OBJECTS = 4, 2
MIN_CLASSES = MAX_OBJECTS  # distinct classes per image need at least this many classes
STREAM_TAG = 0x5CE9E5  # keeps the block seeds apart from those of "shapes" (same seed, other scenes)
PRIMARY_RADIUS = (0.12, 0.15)  # equal-area radius of object 0, fraction of the side
OTHER_RATIO = (0.60, 0.85)     # radius of every other object, as a fraction of object 0's
GAP = 0.03                     # least clearance between two objects' bounding circles, fraction of the side
RUNS, TRIES = 8, 48            # placement: independent greedy runs per image, candidate positions per object


def check_num_classes(num_classes: int) -> None:
    if not isinstance(num_classes, (int, np.integer)) or not MIN_CLASSES <= num_classes <= gen.MAX_CLASSES:
        raise ValueError(f"scenes: num_classes must be an int in {MIN_CLASSES}..{gen.MAX_CLASSES} (each image "
                         f"holds up to {MAX_OBJECTS} objects of distinct classes), got {num_classes!r}")


@dataclass
class Layout:
    """Scene parameters of n images; slot j of ``scenes`` is object j (``scenes.active`` marks the drawn ones)."""

    scenes: gen.Scenes
    object_labels: np.ndarray  # (n, MAX_OBJECTS) int64 class of each object, -1 where no object


def _place(rng: np.random.Generator, bound: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres (n, RUNS, M) x, y and how many leading objects each run placed (n, RUNS).

    Each run places the objects in turn at the first of TRIES random positions whose bounding circle
    keeps GAP clear of the objects already placed and lies inside the image; an object with no clear
    candidate ends the run. Runs are independent, so the caller takes the first that placed enough.
    """
    n, m = bound.shape
    lo = bound[:, None, :, None, None]
    cand = lo + rng.uniform(0.0, 1.0, size=(n, RUNS, m, TRIES, 2)) * (1.0 - 2.0 * lo)
    cx = np.zeros((n, RUNS, m))
    cy = np.zeros((n, RUNS, m))
    placed = np.zeros((n, RUNS, m), dtype=bool)
    for j in range(m):  # loops over object slots (<= 4), never over images
        c = cand[:, :, j]  # (n, RUNS, TRIES, 2)
        clear = np.ones(c.shape[:3], dtype=bool)
        for k in range(j):
            dist = np.hypot(c[..., 0] - cx[:, :, k, None], c[..., 1] - cy[:, :, k, None])
            clear &= dist > (bound[:, None, k, None] + bound[:, None, j, None] + GAP)
        first = clear.argmax(axis=2)
        pick = np.take_along_axis(c, first[..., None, None], axis=2)[:, :, 0]
        cx[:, :, j], cy[:, :, j] = pick[..., 0], pick[..., 1]
        placed[:, :, j] = clear.any(axis=2) & (placed[:, :, j - 1] if j else True)
    return cx, cy, placed.sum(axis=2)


def _draw_block(rng: np.random.Generator, n: int, num_classes: int) -> Layout:
    n_shapes, n_patterns = gen.class_layout(num_classes)
    m = MAX_OBJECTS
    rows = np.arange(n)
    # Distinct classes per image: object 0's class is balanced over the block, the others a random
    # draw without replacement from the remaining classes.
    primary = rng.permutation(rows % num_classes).astype(np.int64)
    keys = rng.random((n, num_classes))
    keys[rows, primary] = -1.0
    labels = np.argsort(keys, axis=1)[:, :m].astype(np.int64)

    shape = labels % n_shapes
    pattern = rng.integers(0, len(geo.PATTERNS), size=(n, m))
    if n_patterns > 1:
        pattern = labels // n_shapes
    colour_idx = rng.integers(0, len(gen.PALETTE), size=(n, m))
    shade = rng.uniform(0.8, 1.0, size=(n, m, 1)).astype(np.float32)
    colour = gen.PALETTE[colour_idx] * shade
    colour2 = gen.PALETTE[(colour_idx + rng.integers(1, len(gen.PALETTE), size=(n, m))) % len(gen.PALETTE)] * shade

    radius = np.empty((n, m))
    radius[:, 0] = rng.uniform(*PRIMARY_RADIUS, size=n)
    radius[:, 1:] = radius[:, :1] * rng.uniform(*OTHER_RATIO, size=(n, m - 1))
    angle = rng.uniform(0.0, 2 * math.pi, size=(n, m))
    wanted = rng.integers(MIN_OBJECTS, m + 1, size=n)
    # One bound for every class (as in "shapes"), so spacing and position say nothing of the class.
    cx, cy, count = _place(rng, geo.class_bound() * radius)
    enough = count >= wanted[:, None]
    run = np.where(enough.any(axis=1), enough.argmax(axis=1), count.argmax(axis=1))
    count = np.minimum(wanted, count[rows, run])
    if (count < MIN_OBJECTS).any():
        raise RuntimeError("scenes: could not place two objects in an image; this is a generator bug")
    active = np.arange(m)[None, :] < count[:, None]

    scenes = gen.Scenes(
        label=labels[:, 0].copy(), shape=shape, pattern=pattern, colour=colour, colour2=colour2,
        cx=cx[rows, run], cy=cy[rows, run], radius=radius, angle=angle, active=active,
        texture=rng.integers(0, len(TEXTURE_NAMES), size=n),
        offset=rng.uniform(0.0, 1.0, size=(n, 2)),
        flip=rng.integers(0, 2, size=(n, 3)).astype(bool),
        tint=rng.uniform(0.2, 0.75, size=(n, 3)).astype(np.float32),
        noise_seed=rng.integers(0, 2**63, size=n, dtype=np.uint64),
    )
    return Layout(scenes, np.where(active, labels, -1))


def draw_layouts(n: int, num_classes: int, seed: int, split: str) -> Layout:
    """Scene parameters of the first ``n`` images of ``split``."""
    if split not in gen.SPLIT_CODES:
        raise ValueError(f"scenes: unknown split {split!r}; choose one of {sorted(gen.SPLIT_CODES)}")
    check_num_classes(num_classes)
    blocks = [
        _draw_block(np.random.default_rng(np.random.SeedSequence((STREAM_TAG, seed, gen.SPLIT_CODES[split], b))),
                    gen.BLOCK, num_classes)
        for b in range(math.ceil(n / gen.BLOCK))
    ]
    scenes = gen.Scenes(**{f.name: np.concatenate([getattr(b.scenes, f.name) for b in blocks])[:n]
                           for f in fields(gen.Scenes)})
    return Layout(scenes, np.concatenate([b.object_labels for b in blocks])[:n])


def _boxes(masks: np.ndarray) -> np.ndarray:
    """Tight pixel-edge boxes (N,4) of masks (N,H,W); NaN rows for empty masks (absent objects)."""
    out = np.full((len(masks), 4), np.nan, dtype=np.float32)
    present = masks.any(axis=(1, 2))
    if present.any():
        out[present] = gen.boxes_from_masks(masks[present])
    return out


def render(layout: Layout, size: int) -> dict[str, np.ndarray]:
    """Pixels and annotations at ``size`` px: images (N,3,S,S) uint8, instances (N,S,S) uint8 (0 =
    background, j+1 = object j), object_labels (N,M) int64 (-1 = none), object_boxes (N,M,4) float32
    (NaN = none)."""
    gen.check_image_size("scenes", size)
    everything = layout.scenes
    n = len(everything.label)
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    instances = np.zeros((n, size, size), dtype=np.uint8)
    boxes = np.full((n, MAX_OBJECTS, 4), np.nan, dtype=np.float32)
    chunk = max(1, (1 << 20) // (size * size))  # bounds the float temporaries to ~100 MB
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        sc = gen._take(everything, part)
        img = gen._background(sc, size).astype(np.float32)
        for j in range(MAX_OBJECTS):
            mask = gen._paint(img, sc, j, size)  # placements never overlap, so the masks are disjoint
            instances[part][mask] = j + 1
            boxes[part, j] = _boxes(mask)
        img += gen._noise(sc, size)
        images[part] = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8).transpose(0, 3, 1, 2)
    return {"images": images, "instances": instances, "object_labels": layout.object_labels.copy(),
            "object_boxes": boxes}
