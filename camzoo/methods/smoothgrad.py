"""Smooth Grad-CAM++: Grad-CAM++ with its derivatives averaged over noisy copies of the input.

TorchCAM (0.5.0) ships it and is the reference (tests/test_methods_noise_zoo.py); its arithmetic is
kept: alpha's numerator is the mean second derivative (TorchCAM's correction of the paper's typo),
the denominator sums A * D3 over positions, eps = 1e-8. So with one sample and std = 0 this is not
camzoo's ``gradcampp`` (pytorch-grad-cam's: sum_hw(A) * G^3 at each position, eps = 1e-6); the two
agree where G is constant over positions (a layer followed by global pooling and a linear head)
up to eps.

TorchCAM reads two things from the *last* noisy copy instead of the image: the gradient in
ReLU(D1) and the activations the weights multiply (its hooks keep what the last noisy forward
recorded). camzoo uses the mean first derivative over the copies and the image's own activations,
which is what the paper's smoothing means; ``torchcam_compat=True`` reproduces TorchCAM exactly.

All noisy copies of all images run as batched forward and backward passes in chunks under
``memory_mb``; only the part of the model above the layer is differentiated.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import _OUT_OF_MEMORY
from .perturbation import Objective, PerturbationCAM, _objective
from .registry import register
from .smoothed_score import check_sampling, noise_generator

SMOOTHGRADCAMPP_EPS = 1e-8  # TorchCAM's, in the denominator of alpha


@register
class SmoothGradCAMPlusPlus(PerturbationCAM):
    """Smooth Grad-CAM++ (Omeiza et al. 2019): Grad-CAM++ weights from derivatives averaged over noisy inputs.

    Over N copies X + delta_s, delta_s ~ N(0, std^2) per input value, with D_p the mean over copies
    of G^p (G = dy_c/dA of each copy): alpha = D_2 / (2 D_2 + sum_hw(A D_3) + 1e-8),
    w_c = sum_hw alpha ReLU(D_1), map = ReLU(sum_c w_c A_c), A the image's own activations.
    num_samples = N and std are TorchCAM's (4, 0.3); seed: the noise generator's (None: a fresh one
    each call; the default 0 makes maps reproducible). torchcam_compat: take ReLU(G) and A of the
    last copy, as TorchCAM 0.5.0 does.
    """

    name = "smoothgradcampp"
    family = "gradient"
    cost = "iterative"  # N forward and backward passes per image
    uses_gradients = True

    def __init__(self, model: nn.Module, layer: Any = None, batch_size: int | None = None, *,
                 num_samples: int = 4, std: float = 0.3, seed: int | None = 0, torchcam_compat: bool = False,
                 **options: Any) -> None:
        super().__init__(model, layer=layer, batch_size=batch_size, **options)
        check_sampling(num_samples, std)
        self.num_samples, self.std, self.seed = num_samples, float(std), seed
        self.torchcam_compat = bool(torchcam_compat)

    def noisy_passes(self, images: torch.Tensor, objective: Objective) -> torch.Tensor:
        """(N*B, k, C, h, w): the layer's gradients of every noisy copy (k = 1), and with
        ``torchcam_compat`` its activations too (k = 2); sample-major: copy i is image i % B with
        the i-th draw of noise, TorchCAM's order."""
        batch = images.shape[0]
        generator = noise_generator(self.seed, images.device)

        def score(start: int, stop: int) -> torch.Tensor:
            index = torch.arange(start, stop, device=images.device) % batch
            noise = torch.randn((stop - start, *images.shape[1:]), generator=generator, device=images.device)
            try:
                captured = self.capture(images[index] + (self.std * noise).to(images.dtype), objective[index])
            except _OUT_OF_MEMORY as err:  # the backward's: chunked_scores retries a smaller chunk
                raise MemoryError(f"out of memory in a backward pass of {stop - start} noisy copies") from err
            kept = captured.gradients[:1] + (captured.activations[:1] if self.torchcam_compat else [])
            return torch.stack(kept, dim=1)

        sample_bytes = 2 * images[0].numel() * images.element_size()  # a forward and its backward
        return self.chunked_scores(self.num_samples * batch, self.chunk_size(sample_bytes), score)

    def raw_maps(self, images: torch.Tensor, targets: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, chosen, activations, _ = self.layer_outputs(images, targets)
        passes = self.noisy_passes(images, _objective(targets, chosen)).to(activations.device)
        passes = passes.view(self.num_samples, images.shape[0], *passes.shape[1:])
        gradients = passes[:, :, 0]
        with torch.no_grad():
            d2, d3 = gradients.pow(2).mean(dim=0), gradients.pow(3).mean(dim=0)
            alpha = d2 / (2 * d2 + (d3 * activations).sum(dim=(2, 3), keepdim=True) + SMOOTHGRADCAMPP_EPS)
            first, combined = (gradients[-1], passes[-1, :, 1]) if self.torchcam_compat else \
                (gradients.mean(dim=0), activations)
            weights = (alpha * first.clamp_min(0)).sum(dim=(2, 3))
            raw = self.combine(weights, combined)
        return logits, chosen, raw
