"""The bird of the built-in "parts" dataset: body, part variants and distractor shapes as implicit
functions, and the one stamping routine that draws any of them into pixels and the part-ID map.

Why implicit functions (as in ``_geometry``): one boolean expression over a coordinate window draws
an item in every image of a batch at once, and the same expression is its exact mask. Only
+, -, *, /, abs and comparisons touch per-pixel values (no transcendental functions), so a pixel's
result never depends on how many images or which window it was computed with: re-rendering a scene
gives the same bits.

Units: a part's local coordinates (u, v) have the part's attachment point at the origin, u pointing
to the bird's front (flipped for mirrored birds), v pointing down, and one unit = the part's size.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np

from . import _geometry as geo

ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
Array = np.ndarray


def _body(u: Array, v: Array) -> Array:  # ellipse body plus a round head at the front, top
    return (u * u + (v / 0.55) ** 2 <= 1.0) | ((u - 0.85) ** 2 + (v + 0.5) ** 2 <= 0.42 * 0.42)


def _span(u: Array) -> Array:
    return (u >= 0.0) & (u <= 1.0)


# Beaks: attach at u = 0, tip at u = 1.
def _cone(u: Array, v: Array) -> Array:
    return _span(u) & (np.abs(v) <= 0.42 * (1.0 - u))


def _needle(u: Array, v: Array) -> Array:
    return _span(u) & (np.abs(v) <= 0.22 * (1.0 - 0.5 * u))


def _blunt(u: Array, v: Array) -> Array:
    return (u >= 0.0) & (u * u + v * v <= 0.7 * 0.7)


def _open(u: Array, v: Array) -> Array:
    return _span(u) & (np.abs(np.abs(v) - 0.45 * u) <= 0.15)


# Eyes: centred, radius about 1.
def _dot(u: Array, v: Array) -> Array:
    return u * u + v * v <= 0.85 * 0.85


def _box(u: Array, v: Array) -> Array:
    return (np.abs(u) <= 0.75) & (np.abs(v) <= 0.75)


def _slit(u: Array, v: Array) -> Array:
    return u * u + (v / 0.45) ** 2 <= 1.0


# Feet: attach at v = 0 under the body, reach down to v = 1; two legs at u = +-0.3.
def _legs(u: Array, v: Array) -> Array:
    return (np.abs(np.abs(u) - 0.3) <= 0.1) & (v >= 0.0) & (v <= 0.9)


def _tfeet(u: Array, v: Array) -> Array:
    return _legs(u, v) | ((np.abs(np.abs(u) - 0.3) <= 0.28) & (np.abs(v - 0.87) <= 0.1))


def _ballfeet(u: Array, v: Array) -> Array:
    return _legs(u, v) | ((np.abs(u) - 0.3) ** 2 + (v - 0.82) ** 2 <= 0.2 * 0.2)


def _stilt(u: Array, v: Array) -> Array:
    return ((np.abs(u) <= 0.16) & (v >= 0.0) & (v <= 0.9)) | ((np.abs(u) <= 0.6) & (np.abs(v - 0.86) <= 0.11))


def _splay(u: Array, v: Array) -> Array:
    return (np.abs(np.abs(u) - (0.1 + 0.5 * v)) <= 0.12) & (v >= 0.0) & (v <= 0.95)


# Tails: attach at u = 0, reach back to u = -1.
def _fan(u: Array, v: Array) -> Array:
    return (u * u + v * v <= 1.0) & (u <= 0.0) & (np.abs(v) <= -0.75 * u)


def _rod(u: Array, v: Array) -> Array:  # a bar slanting back and up
    t = -0.87 * u - 0.5 * v
    return (t >= -0.05) & (t <= 1.0) & (np.abs(0.5 * u - 0.87 * v) <= 0.17)


def _fork(u: Array, v: Array) -> Array:
    return (u <= 0.05) & (u >= -1.0) & (np.abs(np.abs(v) + 0.5 * u) <= 0.15)


# Wings: centred on the body.
def _leaf(u: Array, v: Array) -> Array:
    return u * u + (v / 0.45) ** 2 <= 1.0


def _wedge(u: Array, v: Array) -> Array:  # wide at the front, pointed at the back
    return (u <= 0.6) & (u >= -1.0) & (np.abs(v) <= 0.55 * (u + 1.0) / 1.6)


def _panel(u: Array, v: Array) -> Array:
    return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.4)


def _distractor(index: int) -> ShapeFn:
    inv = np.float32(1.0 / geo.shape_scales()[index][0])
    fn = geo.SHAPE_FNS[index]
    return lambda u, v: fn(u * inv, v * inv)


BLACK, WHITE = (0.08, 0.08, 0.08), (0.97, 0.97, 0.97)
RED, GREEN, BLUE, YELLOW = (0.95, 0.15, 0.15), (0.15, 0.85, 0.20), (0.20, 0.35, 1.00), (1.00, 0.90, 0.10)
MAGENTA, CYAN, ORANGE = (0.95, 0.20, 0.95), (0.10, 0.90, 0.95), (1.00, 0.55, 0.05)

# Per slot: where it attaches on the bird (body units, u forward, v down), its size in body units,
# whether it is drawn before the body (behind it) and its variants as (shape, colour); every variant
# of a slot differs from the others in shape, colour or both.
SLOT_LAYOUT: tuple[tuple[tuple[float, float], float, bool, tuple[tuple[ShapeFn, tuple[float, ...]], ...]], ...] = (
    ((1.15, -0.5), 0.5, False, ((_cone, ORANGE), (_needle, YELLOW), (_blunt, RED), (_open, BLACK))),
    ((0.95, -0.6), 0.2, False, ((_dot, BLACK), (_box, WHITE), (_slit, RED))),
    ((0.0, 0.4), 0.75, True, ((_tfeet, ORANGE), (_ballfeet, RED), (_stilt, YELLOW), (_splay, BLUE))),
    ((-0.9, -0.05), 0.8, True, tuple((s, c) for s in (_fan, _rod, _fork) for c in (BLUE, GREEN, MAGENTA))),
    ((-0.05, -0.05), 0.6, False, tuple((s, c) for s in (_leaf, _wedge, _panel) for c in (CYAN, WHITE))),
)
# Draw order of the bird: slots behind the body, the body, then slots over it (last drawn wins).
BIRD_ORDER: tuple[int, ...] = tuple(s for s, lay in enumerate(SLOT_LAYOUT) if lay[2]) + (-1,) + \
    tuple(s for s, lay in enumerate(SLOT_LAYOUT) if not lay[2])
BODY_SHAPES: tuple[ShapeFn, ...] = (_body,)
BODY_COLOURS = np.array([[0.55, 0.42, 0.30], [0.62, 0.62, 0.60], [0.78, 0.68, 0.48], [0.45, 0.50, 0.36]],
                        dtype=np.float32)
# Distractors: "shapes" shapes unlike every part (and drawn with only exact arithmetic, see above).
DISTRACTOR_NAMES: tuple[str, ...] = ("square", "plus", "ring", "crescent", "hourglass")
DISTRACTOR_SHAPES: tuple[ShapeFn, ...] = tuple(_distractor(geo.ALL_SHAPES.index(n)) for n in DISTRACTOR_NAMES)
DISTRACTOR_BOUND = max(geo.shape_scales()[geo.ALL_SHAPES.index(n)][1] for n in DISTRACTOR_NAMES)
DISTRACTOR_BOX = (-DISTRACTOR_BOUND, DISTRACTOR_BOUND, -DISTRACTOR_BOUND, DISTRACTOR_BOUND)


def variant_table(slot: int) -> tuple[tuple[ShapeFn, ...], np.ndarray]:
    """The shapes and (V,3) float32 colours of a slot's variants."""
    variants = SLOT_LAYOUT[slot][3]
    return tuple(s for s, _ in variants), np.array([c for _, c in variants], dtype=np.float32)


@cache
def extent(slot: int) -> tuple[float, float, float, float]:
    """u0, u1, v0, v1: a box (own units) holding every variant of ``slot`` (-1: the body), measured
    once on a fine grid with a margin, so each item is drawn in a window just around it."""
    grid = np.linspace(-1.5, 1.5, 601, dtype=np.float32)
    u, v = grid[None, :], grid[:, None]
    inside = np.zeros((len(grid), len(grid)), dtype=bool)
    for fn in ((_body,) if slot < 0 else variant_table(slot)[0]):
        inside |= np.broadcast_to(fn(u, v), inside.shape)
    rows, cols = np.nonzero(inside)
    margin = 0.02
    return (float(grid[cols.min()]) - margin, float(grid[cols.max()]) + margin,
            float(grid[rows.min()]) - margin, float(grid[rows.max()]) + margin)


def stamp(pmap: Array, cx: Array, cy: Array, scale: Array, mirror: Array, kind: Array,
          shapes: tuple[ShapeFn, ...], box: tuple[float, float, float, float], active: Array, ident: int,
          flip_v: Array | None = None) -> None:
    """Draw one item per image into the part-ID map ``pmap`` (N,S,S) uint8, in place (last drawn wins;
    the pixels are coloured from the finished map, so they cannot disagree with it).

    cx, cy: the item's origin in pixels; scale: pixels per item unit; mirror: +-1 (u flipped, for
    mirrored birds); flip_v: +-1 (v flipped) or None; kind: index into ``shapes``; box: u0, u1, v0,
    v1 holding every shape (own units, before flips); active: (N,) bool, whether image i has the
    item; ident: its part-map id. Items are axis-aligned, so u and v stay 1-D until the shape test;
    work is done only for the active images, in a window around each item.
    """
    idx = np.nonzero(active)[0]
    if len(idx) == 0:
        return
    size, f32 = pmap.shape[-1], np.float32
    cx, cy, scale, mirror, kind = cx[idx], cy[idx], scale[idx], mirror[idx], kind[idx]
    flip = np.ones(len(idx)) if flip_v is None else flip_v[idx]
    u0, u1, v0, v1 = box
    wx = int(np.ceil(float(scale.max()) * (u1 - u0))) + 2
    wy = int(np.ceil(float(scale.max()) * (v1 - v0))) + 2
    x0 = np.floor(cx + np.where(mirror < 0, -u1, u0) * scale).astype(np.int64)
    y0 = np.floor(cy + np.where(flip < 0, -v1, v0) * scale).astype(np.int64)
    xs, ys = x0[:, None] + np.arange(wx), y0[:, None] + np.arange(wy)   # (n,W) pixel columns / rows
    inv = (1.0 / scale).astype(f32)[:, None]
    u = ((xs.astype(f32) + f32(0.5) - cx.astype(f32)[:, None]) * (inv * mirror.astype(f32)[:, None]))[:, None, :]
    v = ((ys.astype(f32) + f32(0.5) - cy.astype(f32)[:, None]) * (inv * flip.astype(f32)[:, None]))[:, :, None]
    kinds = np.unique(kind)
    if len(kinds) == 1:
        mask = shapes[kinds[0]](u, v)
    else:
        mask = np.zeros((len(idx), wy, wx), dtype=bool)
        for k in kinds:  # loops over shape kinds, never over images
            sel = np.nonzero(kind == k)[0]
            mask[sel] = shapes[k](u[sel], v[sel])
    mask = mask & ((ys >= 0) & (ys < size))[:, :, None] & ((xs >= 0) & (xs < size))[:, None, :]
    flat = np.flatnonzero(mask)
    i, rest = np.divmod(flat, wy * wx)
    a, b = np.divmod(rest, wx)
    pmap.reshape(-1)[(idx[i] * size + y0[i] + a) * size + x0[i] + b] = ident
