"""Shape and pattern definitions for the built-in "shapes" dataset, as vectorised implicit functions.

Why implicit functions: one boolean expression over coordinate grids draws a shape in every image of a
batch at once, and the same expression *is* the exact object mask.
Coordinates (u, v) are in object units: the object's centre at the origin, its rotation removed, and
scaled so that every shape has the area of the unit disk (so object area carries no class signal).
"""

from __future__ import annotations

import math
from functools import cache
from collections.abc import Callable

import numpy as np

ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 1.0


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Equilateral, circumradius 1: inside all three half-planes whose normals are 120 degrees apart;
    # the tips are trimmed by a circle of radius 0.85 to keep the shape compact (see class_bound()).
    inside = u * u + v * v <= 0.85 * 0.85
    for k in range(3):
        phi = math.pi / 2 + 2 * math.pi * k / 3
        inside &= u * math.cos(phi) + v * math.sin(phi) <= 0.5
    return inside


def _plus(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.34) & (av <= 1.0)) | ((av <= 0.34) & (au <= 1.0))


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Five-pointed star: fold the angle into one half-spike, then test against the edge running
    # from the outer tip (1, 0) to the inner corner at radius 0.5 and angle pi/5.
    sector = 2 * math.pi / 5
    angle = np.mod(np.arctan2(v, u), sector)
    angle = np.minimum(angle, sector - angle)
    rho = np.hypot(u, v)
    px, py = rho * np.cos(angle), rho * np.sin(angle)
    bx, by = 0.5 * math.cos(math.pi / 5), 0.5 * math.sin(math.pi / 5)
    # Sign of the cross product (B - A) x (P - A); the origin gives a positive sign.
    return (bx - 1.0) * py - by * (px - 1.0) >= 0.0


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.5 * 0.5)


def _crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.8 * 0.8)


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    x, y = 1.15 * u, -1.15 * v + 0.15  # image rows grow downwards; the point of the heart faces down
    return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0


def _semicircle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u * u + v * v <= 1.0) & (v >= -0.1)


def _hourglass(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Two triangles meeting tip to tip (a waist wide enough to survive 32 px images), cut by the unit
    # circle so that the shape stays compact (see class_bound()).
    return (u * u + v * v <= 1.0) & (np.abs(u) <= 0.18 + 0.82 * np.abs(v))


# Distractor shapes: never class-defining, and chosen to be unlike every class shape.
def _bar(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.26)


def _ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + (v / 0.38) ** 2 <= 1.0


def _corner(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # An "L": two bars meeting at a right angle.
    return ((np.abs(u) <= 1.0) & (np.abs(v - 0.75) <= 0.25)) | ((np.abs(u + 0.75) <= 0.25) & (np.abs(v) <= 1.0))


CLASS_SHAPES: dict[str, ShapeFn] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "plus": _plus,
    "star": _star,
    "ring": _ring,
    "crescent": _crescent,
    "heart": _heart,
    "semicircle": _semicircle,
    "hourglass": _hourglass,
}
DISTRACTOR_SHAPES: dict[str, ShapeFn] = {"bar": _bar, "ellipse": _ellipse, "corner": _corner}
PATTERNS: tuple[str, ...] = ("solid", "stripes", "checker")
ALL_SHAPES: tuple[str, ...] = tuple(CLASS_SHAPES) + tuple(DISTRACTOR_SHAPES)
SHAPE_FNS: tuple[ShapeFn, ...] = tuple(CLASS_SHAPES.values()) + tuple(DISTRACTOR_SHAPES.values())


@cache
def shape_scales() -> tuple[tuple[float, float], ...]:
    """Per shape: (scale to unit-disk area, bounding radius after that scaling).

    Measured once on a fine grid, so a new shape needs no hand-derived constants.
    """
    grid = np.linspace(-1.6, 1.6, 801)
    u, v = np.meshgrid(grid, grid)
    cell = (grid[1] - grid[0]) ** 2
    out = []
    for fn in SHAPE_FNS:
        inside = fn(u, v)
        scale = math.sqrt(math.pi / (inside.sum() * cell))  # multiply shape coordinates by this
        radius = float(np.hypot(u[inside], v[inside]).max()) * scale
        out.append((scale, radius))
    return tuple(out)


def class_bound() -> float:
    """The largest bounding radius of any class shape (equal-area units).

    The class object is placed, and distractors kept away from it, using this one bound for every
    class, so where the object sits and how much room it takes from the distractors say nothing
    about its class: an image with the object removed is independent of the label.
    """
    return max(radius for (_, radius), name in zip(shape_scales(), ALL_SHAPES) if name in CLASS_SHAPES)


def draw_shapes(
    xs: np.ndarray, ys: np.ndarray, cx: np.ndarray, cy: np.ndarray, radius: np.ndarray,
    angle: np.ndarray, shape: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks (N,H,W) of one shape per image, plus its object coordinates (u, v) for the pattern.

    xs, ys: pixel-centre coordinates (W,), (H,); per-image parameters are (N,) arrays, ``radius`` the
    radius of the disk with the same area, in pixels.
    """
    f32 = np.float32
    inv_r = (1.0 / radius).astype(f32)[:, None, None]
    c = np.cos(angle).astype(f32)[:, None, None] * inv_r
    s = np.sin(angle).astype(f32)[:, None, None] * inv_r
    dx = xs.astype(f32)[None, None, :] - cx.astype(f32)[:, None, None]
    dy = ys.astype(f32)[None, :, None] - cy.astype(f32)[:, None, None]
    u = dx * c + dy * s
    v = dy * c - dx * s
    mask = np.zeros(u.shape, dtype=bool)
    scales = shape_scales()
    for k in np.unique(shape):  # loop over shape kinds (<= 11), never over images
        sel = shape == k
        inv_scale = np.float32(1.0 / scales[k][0])
        mask[sel] = SHAPE_FNS[k](u[sel] * inv_scale, v[sel] * inv_scale)
    return mask, u, v


def pattern_second(pattern: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """True where a pattern paints its second colour; all arguments are flat arrays of painted pixels.

    ``pattern`` indexes PATTERNS. Patterns live in object coordinates, so they rotate and scale with
    the object.
    """
    period = np.float32(0.62)
    stripes = np.floor(u / (period / 2)).astype(np.int64) % 2 == 1
    checker = (np.floor(u / period) + np.floor(v / period)).astype(np.int64) % 2 == 1
    return ((pattern == 1) & stripes) | ((pattern == 2) & checker)
