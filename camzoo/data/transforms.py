"""Image transforms that move masks and boxes with the pixels.

Boxes are x0,y0,x1,y1 in pixel-edge coordinates (pixel (r, c) spans [c, c+1) x [r, r+1)), so a
resize scales them by the size ratio and a horizontal flip maps x to W - x, with no half-pixel terms.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..groundtruth import scale_boxes


def hflip_where(
    flip: torch.Tensor, images: torch.Tensor, mask: torch.Tensor | None = None, boxes: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Flip the images (B,3,H,W) where ``flip`` (B,) is True, with their masks (B,H,W) and boxes (B,K,4)."""
    f4 = flip.view(-1, 1, 1, 1)
    images = torch.where(f4, images.flip(-1), images)
    if mask is not None:
        mask = torch.where(f4[:, 0], mask.flip(-1), mask)
    if boxes is not None:
        width = images.shape[-1]
        flipped = torch.stack([width - boxes[..., 2], boxes[..., 1], width - boxes[..., 0], boxes[..., 3]], -1)
        boxes = torch.where(flip.view(-1, 1, 1), flipped, boxes)
    return images, mask, boxes


def random_translate(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The CIFAR augmentation, batched: zero-pad by ``pad`` and crop back at a random offset per image
    (zero is the mean colour of a normalised image). Offsets are drawn on the images' device."""
    b, c, h, w = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=device)
    rows = (oy[:, None] + torch.arange(h, device=device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=device))[:, None, None, :]
    index_b = torch.arange(b, device=device)[:, None, None, None]
    index_c = torch.arange(c, device=device)[None, :, None, None]
    return padded[index_b, index_c, rows, cols]


AUGMENTS = ("none", "flip", "crop_flip")


def augment_batch(images: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Train-time augmentation of a normalised batch on its device: "flip" (random horizontal flips)
    or "crop_flip" (flips, then the CIFAR translation by H/8); "none" returns the batch.

    The same two transforms the in-memory datasets' ``augment=True`` applies, so there is one set.
    """
    if mode not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {mode!r}")
    if mode == "none":
        return images
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    images = hflip_where(flip, images)[0]
    if mode == "crop_flip":
        images = random_translate(images, max(1, images.shape[-2] // 8), generator)
    return images


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 batch (N,3,H,W) to (N,3,size,size) with antialiased bilinear filtering."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((images.shape[0], 3, size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], 1024):  # chunks bound the float temporaries
        chunk = images[start:start + 1024].float()
        chunk = torch.nn.functional.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True,
                                                align_corners=False)
        out[start:start + 1024] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """A bool mask (H,W) resized to size x size with nearest neighbours (a thin object may vanish)."""
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
    return torch.from_numpy(np.asarray(resized) > 127)


def resize_record(
    image: Image.Image, size: int, mask: np.ndarray | None = None, boxes: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Resize one PIL image to size x size (no crop, as wsolevaluation does, so no object is cut off).

    Returns the image as float (3,S,S) in [0,1], the mask resized with nearest neighbours, and the
    boxes scaled by the same factors.
    """
    w, h = image.size
    resized = image.convert("RGB").resize((size, size), Image.BILINEAR)
    tensor = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
    out_mask = None if mask is None else resize_mask(mask, size)
    out_boxes = None if boxes is None else scale_boxes(boxes, (w, h), (size, size))  # edges stay edges
    return tensor, out_mask, out_boxes
