"""Control rows for the benchmark: maps that no explanation method should lose to (or beat).

Why they are methods: a control must go through exactly the pipeline a CAM goes through (same
upsampling, same per-image min-max, same :class:`~camzoo.explanation.Explanation`, same metrics),
or a method's margin over it measures the pipelines rather than the method. Each is flagged
``reference = True`` so tables list it apart and never call it "best"; the normalised score is
(value - random) / (oracle - random).

- ``random``: uniform noise at the explained layer's resolution, upsampled like a CAM.
- ``centre``: an isotropic Gaussian at the image centre (the photographer's bias).
- ``edges``: the Sobel gradient magnitude of the input (XAI-TRIS: popular methods often fail to beat it).
- ``oracle``: the ground-truth mask, or the union of the boxes.

Only ``random`` explains a layer; the other three are computed at input resolution (so the shared
bilinear resize is the identity) and refuse ``layer=``, as ``attention`` does, rather than silently
ignore it. All four still run the model once, for the targets and scores an Explanation carries.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..groundtruth import boxes_to_masks
from .base import CAMMethod, OutputSelector
from .registry import register

_MASK32 = 0xFFFFFFFF
CENTRE_SIGMA_FRACTION = 0.25  # sigma of the `centre` Gaussian, as a fraction of the shorter image side


# --- counter-based hashing for the `random` control ---------------------------------------------
def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2**32 for int64 x in [0, 2**32), without ever overflowing int64.

    Split in 16-bit halves because int64 overflow is undefined behaviour in C++: wrapping happens to
    work on today's kernels, but a hash whose value depends on that is not worth the risk.
    """
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer finaliser ("lowbias32", C. Wellons): nearby inputs -> unrelated outputs."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def bits_fingerprint(values: torch.Tensor, salt: int = 0) -> torch.Tensor:
    """(B, ...) floats -> (B,) int64 in [0, 2**32): a hash of each row's exact float32 bit patterns.

    sum_i (bits_i * w_i mod 2**32) with odd position weights w_i < 2**31 (a Weyl sequence), so the
    key changes with any single value and with the values' order; then one finaliser. Exact integer
    arithmetic on the values' device: the same key on CPU and GPU for the same numbers, and no int64
    overflow (bits < 2**32, w < 2**31; the sum stays below 2**63 for rows under 2**31 values).
    In place where possible: on a CPU this is memory-bound (about 0.3 s for 128 images of 224 px).
    """
    rows = values.shape[0]
    bits = values.detach().float().contiguous().view(rows, -1).view(torch.int32).long()
    bits &= _MASK32
    weights = torch.arange(bits.shape[1], device=bits.device, dtype=torch.int64)
    weights *= 0x3C6EF373  # odd, < 2**31: positions < 2**31 keep the product below 2**62
    weights += salt & _MASK32
    weights &= 0x7FFFFFFF
    weights |= 1
    bits *= weights
    bits &= _MASK32
    total = bits.sum(dim=1)
    return _mix32((total ^ (total >> 32)) & _MASK32)


def model_key(model: nn.Module, seed: int, device: torch.device) -> torch.Tensor:
    """A 32-bit key (0-d int64 on ``device``) of the seed and every parameter's values.

    One pass over the parameters (a loop over tensors, not images), chained so that order matters.
    """
    key = _mix32(torch.tensor(seed, dtype=torch.int64, device=device))
    for index, parameter in enumerate(model.parameters()):
        if parameter.numel():
            fingerprint = bits_fingerprint(parameter.reshape(1, -1), salt=index).to(device)[0]
            key = _mix32(key ^ fingerprint)
    return key


def image_keys(images: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per image (B,) int64: a hash of its exact pixels, combined with ``key``."""
    return _mix32(bits_fingerprint(images) ^ key)


def keyed_uniform_noise(keys: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B,height,width) float32 noise, uniform on [0, 1) in steps of 2**-24, a pure function of each key."""
    cells = torch.arange(height * width, device=keys.device, dtype=torch.int64)
    mixed = _mix32(_mix32((keys[:, None] + _mul32(cells + 1, 0x9E3779B9)) & _MASK32) ^ keys[:, None])
    return ((mixed >> 8).float() * 2.0**-24).view(-1, height, width)


@register
class RandomMap(CAMMethod):
    """``random``: seeded uniform noise at the explained layer's resolution, upsampled like a CAM.

    What the noise depends on: (seed, the model's parameter values, the image's exact pixel values,
    the layer's h and w) — and on nothing else: not the image's position in the batch, the batch
    size or ``batch_size`` chunking. So the benchmark gets the same random row whatever its batching,
    and the same model and image give the same map on every call, on CPU or GPU alike.

    Why the model's weights are in the key: two models (say, two training seeds) must get
    independent noise, or ``random`` would score perfect cross-seed stability and stop being the
    stability floor. By the same token, in the parameter-randomisation sanity check its maps change
    completely: it shows the chance-level similarity, while ``centre``/``edges``/``oracle``, which
    ignore the model, show the model-independent ceiling.

    Why not a ``torch.Generator``: one generator is one stream, so a batched draw depends on the
    batch's composition, and per-image generators need a per-image loop. A counter-based integer
    hash runs batched on the device instead. Distinct images get independent noise (up to a 2**-32
    key collision); identical images get identical noise.
    """

    name = "random"
    reference = True
    family = "control"
    cost = "free"

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        **options: Any,
    ):
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2**32); got {seed!r}")
        super().__init__(model, layer, batch_size, **options)  # output=, reshape= (CAMMethod)
        self.seed = seed

    def raw_maps(
        self, images: torch.Tensor, targets: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, targets, activations, _ = self.layer_outputs(images, targets)
        height, width = activations.shape[-2:]
        keys = image_keys(images, model_key(self.model, self.seed, images.device))
        return logits, targets, keyed_uniform_noise(keys, height, width).to(activations.device)


class InputControl(CAMMethod):
    """A control computed from the input (and ground truth), not from a layer.

    The model runs once without hooks, only for the logits (targets and scores); the map has the
    input's resolution, so the shared bilinear resize leaves it unchanged and only min-max applies.
    """

    family = "control"
    cost = "free"

    def __init__(self, model: nn.Module, layer: nn.Module | str | None = None, batch_size: int | None = None, *,
                 output: OutputSelector = None):
        if layer is not None:
            raise ValueError(
                f"method {self.name!r} is computed from the input image, not a layer; drop layer=... "
                "(only 'random' among the controls explains a layer)"
            )
        super().__init__(model, None, batch_size, output=output)

    def input_map(self, images: torch.Tensor, ground_truth: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """(B,3,H,W) normalised images -> (B,H,W) raw map at input resolution."""
        raise NotImplementedError

    def raw_maps(
        self,
        images: torch.Tensor,
        targets: torch.Tensor | None,
        ground_truth: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        result = self.forward_targets(images, targets)
        with torch.no_grad():
            raw = self.input_map(images, ground_truth)
        return result.logits, result.chosen, raw


def centre_gaussian(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """(height, width) exp(-d**2 / (2 sigma**2)), d from the image centre, sigma = 1/4 of the shorter side.

    The centre is that of the pixel grid ((H-1)/2, (W-1)/2 in pixel indices), so the map is symmetric
    under flips for even and odd sizes alike.
    """
    sigma = CENTRE_SIGMA_FRACTION * min(height, width)
    rows = torch.arange(height, device=device, dtype=torch.float32) - (height - 1) / 2
    cols = torch.arange(width, device=device, dtype=torch.float32) - (width - 1) / 2
    squared = rows[:, None] ** 2 + cols[None, :] ** 2
    return torch.exp(-squared / (2 * sigma**2))


@register
class CentreMap(InputControl):
    """``centre``: the same isotropic Gaussian for every image (sigma: 1/4 of the shorter side)."""

    name = "centre"
    reference = True

    def input_map(self, images: torch.Tensor, ground_truth: dict[str, torch.Tensor] | None) -> torch.Tensor:
        height, width = images.shape[-2:]
        return centre_gaussian(height, width, images.device).expand(images.shape[0], height, width)


_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def sobel_magnitude(images: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) -> (B,H,W): per channel sqrt(gx**2 + gy**2) of the 3x3 Sobel, summed over channels.

    Per channel and summed, not on a grey image: a red/green edge of equal luminance is an edge the
    model can see, and greying would erase it. Borders repeat the edge pixel, which for a 3x3 kernel
    is scipy.ndimage.sobel's default ``mode="reflect"``. One grouped conv2d for the whole batch.
    """
    batch, channels, height, width = images.shape
    kernel_x = torch.tensor(_SOBEL_X, device=images.device, dtype=torch.float32)
    kernels = torch.stack([kernel_x, kernel_x.T])[:, None]  # (2,1,3,3): d/dx, d/dy
    flat = images.detach().float().reshape(batch * channels, 1, height, width)
    gradients = F.conv2d(F.pad(flat, (1, 1, 1, 1), mode="replicate"), kernels)  # (B*C, 2, H, W)
    magnitude = gradients.pow(2).sum(dim=1).sqrt()
    return magnitude.view(batch, channels, height, width).sum(dim=1)


@register
class EdgesMap(InputControl):
    """``edges``: Sobel gradient magnitude of the normalised input (channels weighted as the model sees them)."""

    name = "edges"
    reference = True

    def input_map(self, images: torch.Tensor, ground_truth: dict[str, torch.Tensor] | None) -> torch.Tensor:
        return sobel_magnitude(images)


def ground_truth_mask(ground_truth: dict[str, torch.Tensor], height: int, width: int) -> torch.Tensor:
    """(B,H,W) bool: the mask when given (it is the finer truth), else the union of the boxes.

    Same precedence as the localization metrics, so the oracle is scored against what it shows.
    """
    if "mask" in ground_truth:
        return ground_truth["mask"]
    return boxes_to_masks(ground_truth["boxes"], height, width)


@register
class OracleMap(InputControl):
    """``oracle``: the ground-truth region itself (1 inside, 0 outside): the ceiling of localization.

    An image whose region is empty gets an all-zero map (min-max of a constant map), not an error:
    the metrics decide what an empty region means.
    """

    name = "oracle"
    reference = True
    needs_ground_truth = True

    def input_map(self, images: torch.Tensor, ground_truth: dict[str, torch.Tensor] | None) -> torch.Tensor:
        if not ground_truth:  # the base class refuses earlier; this guards direct calls of raw_maps
            raise ValueError("method 'oracle' needs ground_truth={'mask': ...} and/or {'boxes': ...}")
        return ground_truth_mask(ground_truth, images.shape[-2], images.shape[-1]).float()


__all__ = [
    "CENTRE_SIGMA_FRACTION",
    "CentreMap",
    "EdgesMap",
    "InputControl",
    "OracleMap",
    "RandomMap",
    "centre_gaussian",
    "ground_truth_mask",
    "bits_fingerprint",
    "image_keys",
    "keyed_uniform_noise",
    "model_key",
    "sobel_magnitude",
]
