"""Score-CAM and Ablation-CAM: channel weights from extra forward passes instead of gradients.

Both start from the layer's activations A (B,C,h,w) (the base class's capture), then need one
score per (image, channel): Score-CAM runs the model on the image masked by each channel,
Ablation-CAM on the network with each channel zeroed. camzoo runs those passes batched on the
model's device, in chunks sized by a memory budget (halved and retried on out-of-memory), with a
progress bar only when a call takes more than two seconds. Two exact savings make them cheap:

- Score-CAM: a channel that is constant over the image (a dead ReLU channel, common in trained
  networks) gives an all-zero mask, hence the same all-zero input for every such channel of every
  image: it is run once.
- Ablation-CAM: the ablated copies of an image share everything below the layer, so the model is
  run on the single image and the layer's output is replaced by the (n,C,h,w) ablated copies: only
  the part after the layer sees the n copies (batch-1 tensors from below broadcast exactly). Where a
  model cannot do that (it fails, or returns a batch of the wrong size), camzoo falls back to
  running n copies of the image, which is always correct.
"""

from __future__ import annotations

import contextlib
from typing import Any
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .base import CAMMethod, run_model
from .layers import get_layer
from .registry import register

SCORECAM_EPS = 1e-8  # pytorch-grad-cam's, in the per-channel mask normalisation
FORWARD_FACTOR = 32  # assumed peak forward memory per sample, in multiples of its input's bytes
MAX_CHUNK = 128  # samples per forward at most: larger CPU batches were measured slower, not faster
PROGRESS_DELAY_S = 2.0


class PerturbationCAM(CAMMethod):
    """Shared options and chunked forwards of the perturbation methods (not registered itself).

    memory_mb: memory budget of one batched forward (sets the chunk size); progress: None shows a
    bar only when a call runs longer than 2 s, True always, False never.
    """

    uses_gradients = False
    family = "perturbation"
    cost = "per-channel"

    def __init__(self, model: nn.Module, layer: Any = None, batch_size: int | None = None,
                 *, memory_mb: float = 1024.0, progress: bool | None = None, **base_options: Any) -> None:
        super().__init__(model, layer=layer, batch_size=batch_size, **base_options)
        if not memory_mb > 0:
            raise ValueError(f"memory_mb must be positive; got {memory_mb}")
        self.memory_mb = float(memory_mb)
        self.progress = progress

    def chunk_size(self, sample_bytes: int) -> int:
        """Samples per forward so that ``sample_bytes * FORWARD_FACTOR`` each fit the budget (at most MAX_CHUNK)."""
        return max(1, min(MAX_CHUNK, int(self.memory_mb * 2**20 // max(1, sample_bytes * FORWARD_FACTOR))))

    def progress_bar(self, total: int):
        from tqdm import tqdm

        return tqdm(total=total, desc=self.name, unit="pass", disable=self.progress is False or total == 0,
                    delay=0.0 if self.progress else PROGRESS_DELAY_S, leave=False)

    def chunked_scores(self, total: int, chunk: int, score: Callable[[int, int], torch.Tensor],
                       segment: int | None = None) -> torch.Tensor:
        """Concatenate ``score(start, stop)`` over ``range(total)`` in chunks (none crossing a multiple
        of ``segment``); on out-of-memory the chunk is halved and retried, down to one sample."""
        parts, start = [], 0
        with self.progress_bar(total) as bar:
            while start < total:
                stop = min(total, start + chunk)
                if segment:
                    stop = min(stop, (start // segment + 1) * segment)
                try:
                    parts.append(score(start, stop))
                except MemoryError:
                    if stop - start == 1:
                        raise
                    chunk = max(1, (stop - start) // 2)
                    continue
                bar.update(stop - start)
                start = stop
        return torch.cat(parts) if parts else torch.empty(0)


def _target_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return logits.float().gather(1, targets[:, None].to(logits.device))[:, 0]


@register
class ScoreCAM(PerturbationCAM):
    """Score-CAM (Wang et al. 2020): w = softmax_c(y_c(X * M_k)), map = ReLU(sum_k w_k A_k).

    M_k = channel k of A, upsampled bilinearly to the input and min-max normalised to [0,1]; y_c is
    the target logit of the masked input (the normalised input times M_k: masked pixels take the
    dataset's mean colour). The softmax over channels is the paper's Algorithm 1 (it makes the
    baseline score of its eq. 4 irrelevant). align_corners=False by default (pytorch-grad-cam
    upsamples with align_corners=True; pass ``align_corners=True`` to reproduce it exactly).
    """

    name = "scorecam"

    def __init__(self, model: nn.Module, layer: Any = None, batch_size: int | None = None, *,
                 align_corners: bool = False, **options: Any) -> None:
        super().__init__(model, layer=layer, batch_size=batch_size, **options)
        self.align_corners = bool(align_corners)

    def raw_maps(self, images: torch.Tensor, targets: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, targets, activations, _ = self.layer_outputs(images, targets)
        batch, channels = activations.shape[:2]
        size = tuple(images.shape[-2:])
        flat = activations.float().flatten(0, 1)  # (B*C, h, w)
        constant = flat.amax(dim=(1, 2)) == flat.amin(dim=(1, 2))
        live = torch.nonzero(~constant)[:, 0]
        scores = torch.empty(batch * channels, device=activations.device)
        with torch.no_grad():
            if constant.any():  # an all-zero mask: the same all-zero input for every such channel
                zero_logits = run_model(self.model, torch.zeros_like(images[:1]), self.output)
                scores[constant] = _target_logits(zero_logits.expand(batch, -1), targets).repeat_interleave(
                    channels)[constant]

            def score(start: int, stop: int) -> torch.Tensor:
                index = live[start:stop]
                image_index = torch.div(index, channels, rounding_mode="floor")
                upsampled = F.interpolate(flat[index][:, None], size=size, mode="bilinear",
                                          align_corners=self.align_corners)[:, 0]
                low = upsampled.amin(dim=(1, 2), keepdim=True)
                masks = (upsampled - low) / (upsampled.amax(dim=(1, 2), keepdim=True) - low + SCORECAM_EPS)
                masked = images[image_index] * masks[:, None].to(images.dtype)
                return _target_logits(run_model(self.model, masked, self.output), targets[image_index])

            sample_bytes = images[0].numel() * images.element_size()
            scores[live] = self.chunked_scores(live.numel(), self.chunk_size(sample_bytes), score).to(scores.device)
            weights = scores.view(batch, channels).softmax(dim=1)
            raw = torch.einsum("bc,bchw->bhw", weights, activations.float()).clamp_min(0)
        return logits, targets, raw


class _LayerShapeError(ValueError):
    """The explained layer's output is not the (B,C,h,w) tensor Ablation-CAM can zero channels of."""


@contextlib.contextmanager
def _replaced_output(module: nn.Module, replacement: torch.Tensor, expected: tuple[int, ...], layer: str
                     ) -> Iterator[None]:
    """The module's output is replaced by ``replacement`` for the block (the hook removed even on error)."""

    def hook(mod: nn.Module, inputs: object, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or tuple(output.shape[1:]) != expected:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise _LayerShapeError(f"ablationcam zeroes channels of a (B,C,h,w) layer output; layer {layer!r} "
                                   f"outputs {shape}: choose a convolutional layer")
        return replacement.to(output.dtype)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@register
class AblationCAM(PerturbationCAM):
    """Ablation-CAM (Desai & Ramaswamy 2020): w_k = (y_c - y_c^k) / y_c, map = ReLU(sum_k w_k A_k).

    y_c^k is the target logit with channel k of the layer's output set to zero (the paper's
    ablation). pytorch-grad-cam zeroes too where the image's activations have minimum 0 (any layer
    after a ReLU) and otherwise uses min - 1e7; camzoo always zeroes. Where |y_c| < 1e-12 the
    difference is not divided.
    """

    name = "ablationcam"
    tail_only: bool | None = None  # whether the model runs the ablated copies after the layer only

    def ablated_logits(self, module: nn.Module, image: torch.Tensor, ablated: torch.Tensor) -> torch.Tensor:
        """Logits of the model with the layer's output replaced by ``ablated`` (n,C,h,w) copies."""
        count, expected = ablated.shape[0], tuple(ablated.shape[1:])
        if self.tail_only is not False:
            try:
                with _replaced_output(module, ablated, expected, str(self.layer)):
                    out = run_model(self.model, image, self.output)
                if out.shape[0] == count:
                    self.tail_only = True if count > 1 else self.tail_only
                    return out
            except (_LayerShapeError, MemoryError):
                raise
            except (RuntimeError, ValueError, TypeError):
                pass  # the part after the layer cannot take a batch larger than the input's
            self.tail_only = False
        with _replaced_output(module, ablated, expected, str(self.layer)):
            return run_model(self.model, image.expand(count, -1, -1, -1), self.output)

    def raw_maps(self, images: torch.Tensor, targets: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, targets, activations, _ = self.layer_outputs(images, targets)
        batch, channels = activations.shape[:2]
        module = get_layer(self.model, self.layer)
        self.tail_only = None  # decided again for each layer and model state

        def score(start: int, stop: int) -> torch.Tensor:  # flat (image, channel) pairs of one image
            image = start // channels
            ablated_channels = torch.arange(start - image * channels, stop - image * channels,
                                            device=activations.device)
            count = ablated_channels.numel()
            ablated = activations[image].expand(count, -1, -1, -1).clone()
            ablated[torch.arange(count, device=ablated.device), ablated_channels] = 0
            out = self.ablated_logits(module, images[image : image + 1], ablated)
            return _target_logits(out, targets[image].expand(count))

        with torch.no_grad():
            chunk = self.chunk_size(activations[0].numel() * activations.element_size())
            ablated_scores = self.chunked_scores(batch * channels, chunk, score, segment=channels)
            ablated_scores = ablated_scores.view(batch, channels).to(activations.device)
            original = _target_logits(logits, targets)[:, None].to(activations.device)
            safe = torch.where(original.abs() < 1e-12, torch.ones_like(original), original)
            weights = (original - ablated_scores) / safe
            raw = torch.einsum("bc,bchw->bhw", weights, activations.float()).clamp_min(0)
        return logits, targets, raw
