"""Background textures for "shapes": the grayscale photographs that scikit-image ships in its wheel.

Why read the PNG files directly: ``skimage.data.<name>()`` may fall back to a pooch download for
images that are not bundled; reading the bundled files by path guarantees camzoo never touches the
network.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

TEXTURE_NAMES: tuple[str, ...] = ("brick", "grass", "gravel")
CROP_FRACTION = 0.25  # one image shows this fraction of a texture's width


def _texture_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


@lru_cache(maxsize=1)
def _raw_textures() -> tuple[np.ndarray, ...]:
    from PIL import Image

    out = []
    for name in TEXTURE_NAMES:
        path = _texture_dir() / f"{name}.png"
        if not path.is_file():
            raise FileNotFoundError(
                f"scikit-image's bundled texture {str(path)!r} is missing; the 'shapes' dataset needs "
                "the brick, grass and gravel images that ship inside the scikit-image wheel "
                "(reinstall scikit-image >= 0.21)."
            )
        with Image.open(path) as img:
            out.append(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)
    return tuple(out)


@lru_cache(maxsize=8)
def textures(image_size: int) -> np.ndarray:
    """(3, T, T) float32 textures in [0, 1], resized so that an image_size crop shows CROP_FRACTION.

    Each texture is contrast-stretched to its 1st..99th percentile so that all three carry the same
    amount of clutter.
    """
    from skimage.transform import resize

    side = int(round(image_size / CROP_FRACTION))
    out = np.empty((len(TEXTURE_NAMES), side, side), dtype=np.float32)
    for i, tex in enumerate(_raw_textures()):
        small = resize(tex, (side, side), order=1, anti_aliasing=side < tex.shape[0])
        lo, hi = np.percentile(small, [1, 99])
        out[i] = np.clip((small - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return out
