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
from .capture import layer_tensors, rebuild_output
from .objectives import OutputTargets, is_detection_output, per_image_outputs, scalar_values, target_values
from .outputs import OutputSelector, forward_raw
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
    eigen_smoothable = True  # the map is self.combine(weights, activations): eigen_smooth applies

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


Objective = torch.Tensor | OutputTargets  # chosen classes (B,), or one output target per image


def _objective(targets: object, chosen: torch.Tensor) -> Objective:
    """What the perturbed passes score: the output targets as given, else the chosen classes."""
    return targets if isinstance(targets, OutputTargets) else chosen


def _original_values(logits: torch.Tensor, chosen: torch.Tensor, explains_outputs: bool) -> torch.Tensor:
    """(B,) the unperturbed scalars: output targets' values (held as (B, 1)), else the class logits."""
    return logits[:, 0].float() if explains_outputs else logits.float().gather(1, chosen[:, None].to(logits.device))[:, 0]


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

    def masked_scores(self, images: torch.Tensor, objective: Objective, image_index: torch.Tensor,
                      masks: torch.Tensor) -> torch.Tensor:
        """(n,) target scores of the masked inputs ``images[image_index] * masks`` ((n,H,W) masks): the
        normalised input times the mask, so masked pixels take the dataset's mean colour. One forward;
        SS-CAM and IS-CAM (smoothed_score.py) score their own masks through it."""
        masked = images[image_index] * masks[:, None].to(images.dtype)
        return target_values(self.model, masked, objective[image_index], self.output)

    def blank_scores(self, images: torch.Tensor, objective: Objective, chosen: torch.Tensor) -> torch.Tensor:
        """(B,) each image's target score on the all-zero input, which every all-zero mask gives: one
        forward of one image for classes, of the batch for output targets (each image's own target)."""
        zeros = torch.zeros_like(images[:1])
        if isinstance(objective, OutputTargets):
            return target_values(self.model, zeros.expand(len(images), -1, -1, -1), objective, self.output)
        return _original_values(run_model(self.model, zeros, self.output).expand(len(images), -1), chosen, False)

    def raw_maps(self, images: torch.Tensor, targets: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, chosen, activations, _ = self.layer_outputs(images, targets)
        objective = _objective(targets, chosen)
        batch, channels = activations.shape[:2]
        size = tuple(images.shape[-2:])
        flat = activations.float().flatten(0, 1)  # (B*C, h, w)
        constant = flat.amax(dim=(1, 2)) == flat.amin(dim=(1, 2))
        live = torch.nonzero(~constant)[:, 0]
        scores = torch.empty(batch * channels, device=activations.device)
        with torch.no_grad():
            if constant.any():  # an all-zero mask: the same all-zero input for every such channel
                blank = self.blank_scores(images, objective, chosen)
                scores[constant] = blank.to(scores.device).repeat_interleave(channels)[constant]

            def score(start: int, stop: int) -> torch.Tensor:
                index = live[start:stop]
                upsampled = F.interpolate(flat[index][:, None], size=size, mode="bilinear",
                                          align_corners=self.align_corners)[:, 0]
                low = upsampled.amin(dim=(1, 2), keepdim=True)
                masks = (upsampled - low) / (upsampled.amax(dim=(1, 2), keepdim=True) - low + SCORECAM_EPS)
                return self.masked_scores(images, objective, torch.div(index, channels, rounding_mode="floor"), masks)

            sample_bytes = images[0].numel() * images.element_size()
            scores[live] = self.chunked_scores(live.numel(), self.chunk_size(sample_bytes), score).to(scores.device)
            raw = self.combine(scores.view(batch, channels).softmax(dim=1), activations)
        return logits, chosen, raw


class _LayerShapeError(ValueError):
    """The explained layer's output is not a (B,C,h,w) tensor (or a pyramid of them) Ablation-CAM can zero."""


def _ablated_copies(layer_output: object, activations: torch.Tensor, image: int, channels: torch.Tensor,
                    layer: str) -> object:
    """``len(channels)`` copies of one image's layer output, copy i with channel ``channels[i]`` zeroed.

    Channels count as in the (B,C,h,w) map the CAM weights: one tensor's own; a pyramid's levels
    concatenated in order (``reshape.pyramid_to_feature_map``), so channel c lives in one level.
    """
    tensors = layer_tensors(layer_output)
    widths = [t.shape[1] if t.ndim == 4 else -1 for t in (tensors or {}).values()]
    single = isinstance(layer_output, torch.Tensor)
    if not tensors or min(widths) < 1 or sum(widths) != activations.shape[1] or (
            single and tuple(layer_output.shape[1:]) != tuple(activations.shape[1:])):
        shape = tuple(layer_output.shape) if single else type(layer_output).__name__
        raise _LayerShapeError(f"ablationcam zeroes channels of a (B,C,h,w) layer output; layer {layer!r} outputs "
                               f"{shape}: choose a convolutional layer")
    count = channels.numel()
    rows = torch.arange(count, device=channels.device)
    copies, offset = {}, 0
    for key, tensor in tensors.items():
        copy = tensor[image].expand(count, -1, -1, -1).clone()
        inside = (channels >= offset) & (channels < offset + tensor.shape[1])
        copy[rows[inside], channels[inside] - offset] = 0
        copies[key], offset = copy, offset + tensor.shape[1]
    return rebuild_output(layer_output, copies)


@contextlib.contextmanager
def _replaced_output(module: nn.Module, replacement: object, layer: str) -> Iterator[None]:
    """The module's output is replaced by ``replacement`` for the block (the hook removed even on error)."""
    expected = {k: tuple(v.shape[1:]) for k, v in layer_tensors(replacement).items()}

    def hook(mod: nn.Module, inputs: object, output: object) -> object:
        found = layer_tensors(output)
        if found is None or {k: tuple(v.shape[1:]) for k, v in found.items()} != expected:
            raise _LayerShapeError(f"ablationcam replaces layer {layer!r}'s output, but the layer returned a "
                                   "different structure in the ablation pass; choose a convolutional layer")
        return rebuild_output(output, {k: v.to(found[k].dtype) for k, v in layer_tensors(replacement).items()})

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _batch_of(raw: object, selector: OutputSelector) -> int:
    """How many images a raw model output holds, read as every method reads it (``per_image_outputs``,
    ``output=`` honoured); 0 when it cannot be read so."""
    try:
        return len(per_image_outputs(raw, selector))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return 0


@register
class AblationCAM(PerturbationCAM):
    """Ablation-CAM (Desai & Ramaswamy 2020): w_k = (y_c - y_c^k) / y_c, map = ReLU(sum_k w_k A_k).

    y_c^k is the target's score with channel k of the layer's output set to zero (the paper's
    ablation). pytorch-grad-cam zeroes too where the image's activations have minimum 0 (any layer
    after a ReLU) and otherwise uses min - 1e7; camzoo always zeroes. Where |y_c| < 1e-12 the
    difference is not divided. A pyramid layer (a detector's ``backbone``) is ablated one channel of
    one level at a time.
    """

    name = "ablationcam"
    tail_only: bool | None = None  # whether the model runs the ablated copies after the layer only

    def ablated_values(self, module: nn.Module, image: torch.Tensor, ablated: object, objective: Objective,
                       count: int) -> torch.Tensor:
        """(count,) target scores of the model with the layer's output replaced by the ablated copies."""
        if self.tail_only is not False:
            try:
                with _replaced_output(module, ablated, str(self.layer)):
                    raw = forward_raw(self.model, image)
                # a detector's batch of proposals does not follow its features' batch: never trusted
                if _batch_of(raw, self.output) == count and not is_detection_output(raw):
                    self.tail_only = True if count > 1 else self.tail_only
                    return scalar_values(raw, self.model, image, objective, self.output)
            except (_LayerShapeError, MemoryError):
                raise
            except (RuntimeError, ValueError, TypeError):
                pass  # the part after the layer cannot take a batch larger than the input's
            self.tail_only = False
        copies = image.expand(count, -1, -1, -1)
        with _replaced_output(module, ablated, str(self.layer)):
            return scalar_values(forward_raw(self.model, copies), self.model, copies, objective, self.output)

    def raw_maps(self, images: torch.Tensor, targets: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        captured = self.capture(images, targets)
        if len(captured.activations) != 1:
            raise ValueError(f"method {self.name!r} explains one layer at a time; got layer={self.layers}")
        logits, chosen, activations, layer_output = (captured.logits, captured.targets, captured.activations[0],
                                                     captured.outputs[0])
        objective = _objective(targets, chosen)
        batch, channels = activations.shape[:2]
        module = get_layer(self.model, self.layer)
        self.tail_only = None  # decided again for each layer and model state

        def score(start: int, stop: int) -> torch.Tensor:  # flat (image, channel) pairs of one image
            image = start // channels
            ablated_channels = torch.arange(start - image * channels, stop - image * channels,
                                            device=activations.device)
            count = ablated_channels.numel()
            ablated = _ablated_copies(layer_output, activations, image, ablated_channels, str(self.layer))
            return self.ablated_values(module, images[image : image + 1], ablated,
                                       objective[[image] * count], count)

        with torch.no_grad():
            chunk = self.chunk_size(activations[0].numel() * activations.element_size())
            ablated_scores = self.chunked_scores(batch * channels, chunk, score, segment=channels)
            ablated_scores = ablated_scores.view(batch, channels).to(activations.device)
            original = _original_values(logits, chosen, self.explains_outputs)[:, None].to(activations.device)
            safe = torch.where(original.abs() < 1e-12, torch.ones_like(original), original)
            raw = self.combine((original - ablated_scores) / safe, activations)
        return logits, chosen, raw
