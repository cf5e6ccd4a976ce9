"""SS-CAM and IS-CAM: Score-CAM with each channel's masked input taken over several samples.

Both follow TorchCAM (0.5.0), the library that ships them, so that its maps are an exact reference
(tests/test_methods_noise_zoo.py). TorchCAM's Score-CAM, which both build on, differs from camzoo's
``scorecam`` (pytorch-grad-cam's and the official code's) in one way that changes a map: each
channel is min-max normalised at the layer's resolution, ``(A - min) / (max - min + 1e-8)``, and
*then* upsampled bilinearly, where ``scorecam`` upsamples first and normalises the upsampled mask.
TorchCAM also subtracts the unmasked image's score from every channel's score; that is one
constant per image, which the softmax over channels ignores, so it is left out here.

The masked inputs of all images, channels and samples are scored in chunks under ``memory_mb``
(:meth:`ScoreCAM.masked_scores`, :meth:`PerturbationCAM.chunked_scores`); the mask of each item is
built in its chunk, so no (samples, B, C, H, W) tensor is ever held.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .perturbation import ScoreCAM, _objective
from .registry import register

TORCHCAM_EPS = 1e-8  # TorchCAM's, in its min-max normalisation of each channel


def noise_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (None: a fresh random seed).

    Why its own generator: the global one stays untouched, and a fixed seed makes the maps
    reproducible. On the CPU the stream does not depend on how the draws are split into chunks
    (torch draws normal values in blocks of 16), so the maps do not depend on ``memory_mb`` there.
    """
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def check_sampling(num_samples: int, std: float | None = None) -> None:
    """One-line errors for a sample count below 1 or a negative (or non-finite) noise level."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1; got {num_samples!r}")
    if std is not None and not 0 <= std < float("inf"):
        raise ValueError(f"std must be a finite number >= 0; got {std!r}")


class _SmoothedScoreCAM(ScoreCAM):
    """TorchCAM's Score-CAM averaged over samples: w = softmax_k(mean_s y_c(X * M_k^s)).

    Subclasses say how many samples they take and what sample s does to a mask (:meth:`sample_masks`).
    """

    num_samples: int

    def samples(self) -> int:
        """How many masked inputs each channel needs (fewer where the samples would all be equal)."""
        return self.num_samples

    def zero_mask_is_blank(self) -> bool:
        """Whether an all-zero mask (a constant channel) gives the all-zero input in every sample, so
        that all such channels of an image are scored by one blank forward."""
        return True

    def sample_masks(self, masks: torch.Tensor, sample: torch.Tensor, generator: torch.Generator | None
                     ) -> torch.Tensor:
        """(n,H,W) upsampled masks and the (n,) sample index of each -> the masks that sample uses."""
        raise NotImplementedError

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The noise generator of one call (None for a method without noise)."""
        return None

    def raw_maps(self, images: torch.Tensor, targets: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, chosen, activations, _ = self.layer_outputs(images, targets)
        objective = _objective(targets, chosen)
        batch, channels = activations.shape[:2]
        size = tuple(images.shape[-2:])
        flat = activations.float().flatten(0, 1)  # (B*C, h, w)
        high, low = flat.amax(dim=(1, 2)), flat.amin(dim=(1, 2))
        normalised = (flat - low[:, None, None]) / (high - low + TORCHCAM_EPS)[:, None, None]
        constant = (high == low) if self.zero_mask_is_blank() else torch.zeros_like(high, dtype=torch.bool)
        live = torch.nonzero(~constant)[:, 0]
        samples, count = self.samples(), live.numel()
        # item i = (sample i // count, channel live[i % count]): sample-major, TorchCAM's order of draws
        image_index = torch.div(live, channels, rounding_mode="floor").repeat(samples)
        generator = self.generator(images.device)
        scores = torch.empty(batch * channels, device=activations.device)
        with torch.no_grad():
            if constant.any():
                scores[constant] = self.blank_scores(images, objective, chosen).to(
                    scores.device).repeat_interleave(channels)[constant]

            def score(start: int, stop: int) -> torch.Tensor:
                item = torch.arange(start, stop, device=live.device)
                upsampled = F.interpolate(normalised[live[item % count]][:, None], size=size, mode="bilinear",
                                          align_corners=self.align_corners)[:, 0]
                masks = self.sample_masks(upsampled, torch.div(item, count, rounding_mode="floor"), generator)
                return self.masked_scores(images, objective, image_index[start:stop], masks)

            sample_bytes = images[0].numel() * images.element_size()
            per_sample = self.chunked_scores(samples * count, self.chunk_size(sample_bytes), score)
            scores[live] = per_sample.to(scores.device).view(samples, count).mean(dim=0)
            weights = scores.view(batch, channels).softmax(dim=1)
            raw = self.combine(weights, activations)
        return logits, chosen, raw


@register
class SSCAM(_SmoothedScoreCAM):
    """SS-CAM (Wang et al. 2020): Score-CAM whose masks are perturbed by Gaussian noise, averaged.

    w_k = softmax_k(mean_s y_c(X * (M_k + delta_s))), delta_s ~ N(0, std^2) drawn per pixel at the
    input's resolution, map = ReLU(sum_k w_k A_k); M_k is channel k min-max normalised at the
    layer's resolution, then upsampled (TorchCAM's definition; its defaults num_samples = 35,
    std = 2.0). seed: the noise generator's seed (None: a fresh one each call); with the default 0
    the maps are reproducible. With std = 0 every sample is the same and one is run.
    """

    name = "sscam"

    def __init__(self, model: nn.Module, layer: Any = None, batch_size: int | None = None, *,
                 num_samples: int = 35, std: float = 2.0, seed: int | None = 0, **options: Any) -> None:
        super().__init__(model, layer=layer, batch_size=batch_size, **options)
        check_sampling(num_samples, std)
        self.num_samples, self.std, self.seed = num_samples, float(std), seed

    def samples(self) -> int:
        return self.num_samples if self.std > 0 else 1

    def zero_mask_is_blank(self) -> bool:
        return self.std == 0  # noise makes every channel's mask its own

    def generator(self, device: torch.device) -> torch.Generator | None:
        return noise_generator(self.seed, device) if self.std > 0 else None

    def sample_masks(self, masks: torch.Tensor, sample: torch.Tensor, generator: torch.Generator | None
                     ) -> torch.Tensor:
        if generator is None:
            return masks
        return masks + self.std * torch.randn(masks.shape, generator=generator, device=masks.device)


@register
class ISCAM(_SmoothedScoreCAM):
    """IS-CAM (Naidu et al. 2020): Score-CAM whose masked input is integrated over growing scales.

    w_k = softmax_k(mean_s y_c(a_s X * M_k)), a_s = sum_{j=1..s} j / N for s = 1..N (TorchCAM's
    schedule: the coefficients grow from 1/N to (N+1)/2), map = ReLU(sum_k w_k A_k); M_k as in
    SS-CAM. num_samples: N (TorchCAM's default 10). Deterministic: no noise.
    """

    name = "iscam"

    def __init__(self, model: nn.Module, layer: Any = None, batch_size: int | None = None, *,
                 num_samples: int = 10, **options: Any) -> None:
        super().__init__(model, layer=layer, batch_size=batch_size, **options)
        check_sampling(num_samples)
        self.num_samples = num_samples

    def sample_masks(self, masks: torch.Tensor, sample: torch.Tensor, generator: torch.Generator | None
                     ) -> torch.Tensor:
        steps = torch.arange(1, self.num_samples + 1, dtype=torch.float64, device=masks.device)
        coefficients = (steps / self.num_samples).cumsum(0).to(masks.dtype)
        return masks * coefficients[sample][:, None, None]
