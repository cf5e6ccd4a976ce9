"""The generator behind the built-in "parts" dataset: scene parameters and the renderer.

A scene is a bird (a body plus the five part slots of :mod:`parts_world`, each showing its class's
variant) in front of 0..max_background distractor objects, on a tinted crop of the "shapes" textures,
plus pixel noise. The renderer draws every item with :func:`parts_shapes.stamp`, which writes the
pixels and the part-ID map from the same mask, so the map is exact (last drawn wins).

Why the scene parameters are kept: :func:`render` re-draws any scene with any parts or distractors
left out, exactly (no inpainting). The texture crop and the noise are functions of the scene's own
parameters (a crop of a fixed noise field at a per-image offset), never of what is drawn, so the
pixels not covered by a removed item come out bit-identical.

Determinism as in "shapes": blocks of BLOCK scenes, each from its own SeedSequence, in units of the
image side; image i of a split is the same scene at any size and the first n images do not depend on
how many are generated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np

from . import parts_shapes as ps
from . import parts_world as world
from . import shapes_gen as sgen
from ._textures import TEXTURE_NAMES, textures

GENERATOR_VERSION = 1  # bump on any change that alters generated pixels or annotations (it names the cache file)
STREAM_TAG = 0xB1D5     # keeps the block seeds apart from those of "shapes" and "scenes"
NOISE_TAG = 0xB1D6
BIRD_SCALE = (0.17, 0.205)    # body half-length, fraction of the side
BIRD_JITTER = 0.05            # centre offset from (0.5, 0.45), fraction of the side
OBJECT_RADIUS = (0.05, 0.085)  # distractor equal-area radius, fraction of the side
BACKGROUND_GAIN = 0.7          # dims the texture so the bird stands out
MAX_BACKGROUND_LIMIT = 16


@dataclass
class PartsScenes:
    """Scene parameters of n images, lengths as fractions of the image side (any size renders them).

    The last four fields are those ``shapes_gen._background`` reads, so the texture crop is shared.
    """

    label: np.ndarray        # (n,) int64
    variant: np.ndarray      # (n, 5) int64, the variant of each slot (the class's)
    present: np.ndarray      # (n, 5) bool, slots drawn in the stored image
    bird: np.ndarray         # (n, 3) float64: centre x, centre y, body half-length
    mirror: np.ndarray       # (n,) bool, bird faces left
    body_colour: np.ndarray  # (n, 3) float32
    obj_kind: np.ndarray     # (n, B) int64 index into parts_shapes.DISTRACTOR_SHAPES
    obj_colour: np.ndarray   # (n, B, 3) float32
    obj_place: np.ndarray    # (n, B, 5) float64: centre x, centre y, radius, +-1 x flip, +-1 y flip
    obj_active: np.ndarray   # (n, B) bool, distractor drawn (the first background_count slots)
    noise_offset: np.ndarray  # (n, 2) float64 in [0, 1): where the image's noise is cropped
    texture: np.ndarray      # (n,) int64 index into TEXTURE_NAMES
    offset: np.ndarray       # (n, 2) float64 crop offset in [0, 1)
    flip: np.ndarray         # (n, 3) bool: flip rows, flip cols, transpose
    tint: np.ndarray         # (n, 3) float32


def check_max_background(max_background: int) -> None:
    if isinstance(max_background, bool) or not isinstance(max_background, (int, np.integer)) \
            or not 0 <= max_background <= MAX_BACKGROUND_LIMIT:
        raise ValueError(f"parts: max_background must be an int in 0..{MAX_BACKGROUND_LIMIT}, got {max_background!r}")


def _draw_block(rng: np.random.Generator, n: int, table: np.ndarray, max_background: int, split: str) -> PartsScenes:
    b, c = max_background, len(table)
    label = rng.permutation(np.arange(n) % c).astype(np.int64)
    present = np.ones((n, len(world.SLOTS)), dtype=bool)
    drop = rng.permutation(np.arange(n) % 2 == 1)  # half the images
    bits = rng.integers(1, 2 ** len(world.SLOTS), size=n)  # a random non-empty subset of slots
    if split == "train":
        present[drop] = (bits[drop, None] >> np.arange(len(world.SLOTS)) & 1) == 0
    bird = np.stack([0.5 + rng.uniform(-BIRD_JITTER, BIRD_JITTER, n), 0.45 + rng.uniform(-BIRD_JITTER, BIRD_JITTER, n),
                     rng.uniform(*BIRD_SCALE, n)], axis=1)
    count = rng.integers(0, b + 1, size=n)
    place = np.stack([rng.uniform(0.0, 1.0, (n, b)), rng.uniform(0.0, 1.0, (n, b)), rng.uniform(*OBJECT_RADIUS, (n, b)),
                      rng.choice([-1.0, 1.0], (n, b)), rng.choice([-1.0, 1.0], (n, b))], axis=2)
    shade = rng.uniform(0.8, 1.0, size=(n, b, 1)).astype(np.float32)
    return PartsScenes(
        label=label, variant=table[label], present=present, bird=bird, mirror=rng.random(n) < 0.5,
        body_colour=ps.BODY_COLOURS[rng.integers(0, len(ps.BODY_COLOURS), n)]
        * rng.uniform(0.85, 1.0, (n, 1)).astype(np.float32),
        obj_kind=rng.integers(0, len(ps.DISTRACTOR_SHAPES), size=(n, b)),
        obj_colour=sgen.PALETTE[rng.integers(0, len(sgen.PALETTE), size=(n, b))] * shade,
        obj_place=place, obj_active=np.arange(b)[None, :] < count[:, None],
        noise_offset=rng.uniform(0.0, 1.0, size=(n, 2)),
        texture=rng.integers(0, len(TEXTURE_NAMES), size=n), offset=rng.uniform(0.0, 1.0, size=(n, 2)),
        flip=rng.integers(0, 2, size=(n, 3)).astype(bool), tint=rng.uniform(0.2, 0.75, size=(n, 3)).astype(np.float32),
    )


def draw_scenes(n: int, num_classes: int, seed: int, split: str, max_background: int) -> PartsScenes:
    """Scene parameters of the first ``n`` images of ``split``."""
    if split not in sgen.SPLIT_CODES:
        raise ValueError(f"parts: unknown split {split!r}; choose one of {sorted(sgen.SPLIT_CODES)}")
    check_max_background(max_background)
    table = world.class_parts(num_classes).numpy()
    blocks = [_draw_block(np.random.default_rng(np.random.SeedSequence((STREAM_TAG, seed, sgen.SPLIT_CODES[split], k))),
                          sgen.BLOCK, table, max_background, split)
              for k in range(math.ceil(n / sgen.BLOCK))]
    return PartsScenes(**{f.name: np.concatenate([getattr(bl, f.name) for bl in blocks])[:n] for f in fields(PartsScenes)})


def take(scenes: PartsScenes, index: np.ndarray | slice) -> PartsScenes:
    """The scenes at ``index`` (a slice or an integer array)."""
    return PartsScenes(**{f.name: getattr(scenes, f.name)[index] for f in fields(PartsScenes)})


def to_arrays(scenes: PartsScenes) -> dict[str, np.ndarray]:
    """The parameters as named arrays (``scene_<field>``), for the .npz cache."""
    return {f"scene_{f.name}": getattr(scenes, f.name) for f in fields(PartsScenes)}


def from_arrays(arrays: dict[str, np.ndarray]) -> PartsScenes:
    return PartsScenes(**{f.name: np.asarray(arrays[f"scene_{f.name}"]) for f in fields(PartsScenes)})


SCENE_KEYS: tuple[str, ...] = tuple(f"scene_{f.name}" for f in fields(PartsScenes))


@lru_cache(maxsize=4)
def _noise_field(size: int) -> np.ndarray:
    """(3, 2S, 2S) float32 fixed noise; each image shows the S x S crop at its own offset."""
    rng = np.random.default_rng((NOISE_TAG, size))
    return rng.standard_normal((3, 2 * size, 2 * size), dtype=np.float32) * np.float32(sgen.NOISE_STD)


@lru_cache(maxsize=4)
def _texture_bank(size: int) -> np.ndarray:
    """(4 T, T', T') the "shapes" textures in their four row/column flips (index 4 t + 2 row + col),
    as background brightness (0.3 + 0.7 texture, dimmed by BACKGROUND_GAIN)."""
    tex = (np.float32(0.3) + np.float32(0.7) * textures(size)) * np.float32(BACKGROUND_GAIN)
    return np.ascontiguousarray(np.stack([t[::1 - 2 * r, ::1 - 2 * c] for t in tex for r in (0, 1) for c in (0, 1)]))


def _crop(field: np.ndarray, which: np.ndarray, offset: np.ndarray, size: int) -> np.ndarray:
    """(N,S,S) crops of ``field`` (K,T,T), plane ``which`` (N,) at per-image fractional offsets (N,2):
    one strided gather, no per-pixel index arithmetic."""
    windows = np.lib.stride_tricks.sliding_window_view(field, (size, size), axis=(1, 2))
    room = field.shape[1] - size + 1
    at = np.minimum(np.floor(offset * room).astype(np.int64), room - 1)
    return windows[which, at[:, 0], at[:, 1]]


def _background(sc: PartsScenes, size: int) -> np.ndarray:
    """(N,3,S,S) float32: a flipped, maybe transposed crop of a texture, tinted and dimmed (as
    ``shapes_gen._background`` draws it, with one gather instead of per-pixel indices)."""
    which = 4 * sc.texture + 2 * sc.flip[:, 0] + sc.flip[:, 1]
    crop = _crop(_texture_bank(size), which, sc.offset, size)
    turn = np.nonzero(sc.flip[:, 2])[0]
    crop[turn] = crop[turn].transpose(0, 2, 1)
    return crop[:, None] * sc.tint[:, :, None, None]


def _draw_bird(pmap: np.ndarray, sc: PartsScenes, keep: np.ndarray, size: int) -> None:
    n = len(sc.label)
    cx, cy, scale = sc.bird[:, 0] * size, sc.bird[:, 1] * size, sc.bird[:, 2] * size
    sign = np.where(sc.mirror, -1.0, 1.0)
    for slot in ps.BIRD_ORDER:
        if slot < 0:
            ps.stamp(pmap, cx, cy, scale, sign, np.zeros(n, np.int64), ps.BODY_SHAPES, ps.extent(-1),
                     np.ones(n, bool), world.BODY_ID)
            continue
        (ax, ay), part_size, _, _ = ps.SLOT_LAYOUT[slot]
        ps.stamp(pmap, cx + sign * ax * scale, cy + ay * scale, scale * part_size, sign, sc.variant[:, slot],
                 ps.variant_table(slot)[0], ps.extent(slot), keep[:, slot], world.FIRST_SLOT_ID + slot)


def colour_table(sc: PartsScenes) -> np.ndarray:
    """(N, 7 + B, 3) float32: the colour of each part-map id in each image (row 0, the background, unused)."""
    n, b = len(sc.label), sc.obj_kind.shape[1]
    table = np.zeros((n, world.FIRST_OBJECT_ID + b, 3), dtype=np.float32)
    table[:, world.BODY_ID] = sc.body_colour
    for slot in range(len(world.SLOTS)):
        table[:, world.FIRST_SLOT_ID + slot] = ps.variant_table(slot)[1][sc.variant[:, slot]]
    table[:, world.FIRST_OBJECT_ID:] = sc.obj_colour
    return table


def _paint(img: np.ndarray, pmap: np.ndarray, table: np.ndarray) -> None:
    """Colour the drawn pixels of ``img`` (N,3,S,S) from the part map and the colour table: one
    flat gather and one flat scatter per channel, over the drawn pixels only."""
    k, area = table.shape[1], pmap[0].size
    lin = np.flatnonzero(pmap)
    image, pixel = np.divmod(lin, area)
    colours = table.reshape(-1, 3)[image * k + pmap.reshape(-1)[lin]]
    flat = img.reshape(-1)
    for c in range(3):
        flat[(image * 3 + c) * area + pixel] = colours[:, c]


def render(scenes: PartsScenes, size: int, removed_parts: np.ndarray | None = None,
           removed_background: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Pixels and part maps of the scenes at ``size`` px, with the slots (N,5) and distractors (N,B)
    marked True in ``removed_*`` left out as well (beyond the slots the scene itself lacks).

    Returns images (N,3,S,S) uint8 and part_maps (N,S,S) uint8 (ids as in :mod:`parts_world`).
    """
    sgen.check_image_size("parts", size)
    n, b = len(scenes.label), scenes.obj_kind.shape[1]
    keep_parts = scenes.present & (True if removed_parts is None else ~np.asarray(removed_parts, dtype=bool))
    keep_objects = scenes.obj_active & (True if removed_background is None else ~np.asarray(removed_background, bool))
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    part_maps = np.zeros((n, size, size), dtype=np.uint8)
    chunk = max(1, (1 << 21) // (size * size))  # bounds the float temporaries to ~100 MB
    field = _noise_field(size)
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        sc = take(scenes, part)
        pmap = part_maps[part]
        for k in range(b):  # distractors first, behind the bird; loops over slots, never images
            place = sc.obj_place[:, k]
            ps.stamp(pmap, place[:, 0] * size, place[:, 1] * size, place[:, 2] * size, place[:, 3], sc.obj_kind[:, k],
                     ps.DISTRACTOR_SHAPES, ps.DISTRACTOR_BOX, keep_objects[part][:, k], world.FIRST_OBJECT_ID + k,
                     flip_v=place[:, 4])
        _draw_bird(pmap, sc, keep_parts[part], size)
        img = _background(sc, size)
        _paint(img, pmap, colour_table(sc))
        for c in range(3):
            img[:, c] += _crop(field, np.full(len(sc.label), c), sc.noise_offset, size)
        img *= np.float32(255.0)
        np.rint(img, out=img)
        np.clip(img, 0, 255, out=img)
        images[part] = img
    return {"images": images, "part_maps": part_maps}
