"""The probe behind ``camzoo bench --check``'s time estimate: this machine's unit costs, timed in seconds.

Why a probe and not a table of speeds: a run's time is a few unit costs (a training image, a forward, an
explanation, a metric's own arithmetic per image) times counts the plan knows, and the unit costs are
this machine's: its device, its threads (``--nproc`` ranks get one thread each on a CPU), its memory.
The probe times each unit once, on the plan's own models (untrained: speed does not depend on the
weights) at the plan's image sizes, with random inputs:

* per model shape (kind, backbone, image size): a training step as the trainer takes it
  (``camzoo.train.train_step``, the config's amp, channels_last, threads), a forward of the BatchNorm-folded
  copy the games query, and one explanation per cheap one-pass group (``explain_block``, as the runner);
* once per costly method (declared cost "per-channel" or "iterative"), on one shape: its seconds per image,
  which the cost model scales to the other shapes by its declared unit (camzoo.bench.estimate);
* per image size and scoring settings: every metric of a cell on a nearly free stand-in model (a mean and
  a linear layer), which gives the metrics' own arithmetic per image and counts the forwards they ask
  for (image-equivalents: a 2x2 grid counts four);
* per image size: the stability metrics of one pair of map sets.

Bounded: each timing doubles its batch from a few images until one call takes ``MIN_CALL_S`` (or reaches
the run's batch), so a slow model is timed on a few images — the last two calls' per-call and per-image
parts extrapolated to the run's batch — and a fast one on enough to amortise its overheads; once the
budget is spent, further image sizes of an already timed model are scaled by their pixels instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Iterator

import torch
from torch import nn

MIN_CALL_S = 0.05  # a timed call does at least this much work, or runs at the run's own batch
MIN_TRAIN_S = 0.15  # training, most of a small run's time: a step near the run's batch (per-image cost falls
# with the batch on a CPU too, by ~1.5x from 8 to 64 images for a CIFAR ResNet-8)
GROWTH = 1.3  # a settled timing: doubling the batch made the call at least this much longer
MAX_CALL_S = 1.0  # ... or one call took this long
BUDGET_S = 8.0  # past it, further image sizes of a timed model are scaled by pixels instead of timed
SCORE_IMAGES = 32  # images the scoring probe runs its metrics on, at most
STABILITY_MAPS = 16
COSTLY = ("per-channel", "iterative")  # declared cost classes (camzoo.methods COST_CLASSES) timed once


@dataclass(frozen=True)
class Shape:
    """What a model's speed depends on: kind, backbone, options, classes and the input side."""

    kind: str
    backbone: str
    size: int
    classes: int
    options: str = ""  # the model options, as a sorted repr (hashable)


@dataclass
class Units:
    """Seconds per image of one model shape."""

    train: float  # one training image (forward, loss, backward, optimizer step)
    forward: float  # one forward of the folded model (the games', the accuracy pass's)
    explain: dict[tuple[str, ...], float] = field(default_factory=dict)  # per cheap group
    channels: dict[str, int] = field(default_factory=dict)  # the explained layer's channels, per costly method
    timed: bool = True  # False: scaled by pixels from the same model at another size


@dataclass(frozen=True)
class Scoring:
    """A cell's metrics at one image size and scoring settings: their own seconds and the forwards they
    ask for, per image; "images" metrics read every evaluation image, "games" the first game_images."""

    images_s: float
    images_forwards: float
    games_s: float
    games_forwards: float


@dataclass
class Calibration:
    """Everything the probe measured, for ``camzoo.bench.estimate``."""

    device_label: str
    threads: int
    units: dict[Shape, Units] = field(default_factory=dict)
    costly: dict[str, tuple[Shape, float]] = field(default_factory=dict)  # method -> (shape timed on, s/image)
    scoring: dict[tuple, Scoring] = field(default_factory=dict)  # (size, settings, annotated) -> Scoring
    stability: dict[int, float] = field(default_factory=dict)  # size -> seconds per (pair, map)
    datasets: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # name -> classes, train, test images
    cpu_speed: float = 1.0  # seconds of a fixed piece of NumPy work (the report's kind of work)
    problems: list[str] = field(default_factory=list)  # work the probe could not run (the run would fail there)
    seconds: float = 0.0  # the probe's own wall time
    forward_calls: int = 0  # model forwards the probe ran (its bound is tested)


def rank_threads(device: torch.device, nproc: int) -> int:
    """The torch threads each rank will have: a forked CPU rank takes OMP_NUM_THREADS (default 1, as
    ``camzoo.train.launch`` sets it); one process keeps torch's own."""
    if device.type != "cpu" or nproc <= 1:
        return torch.get_num_threads()
    value = os.environ.get("OMP_NUM_THREADS", "1")
    return int(value) if value.isdigit() and int(value) > 0 else 1


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class Counter:
    """Counts a module's forward calls (the probe's bound is asserted on it)."""

    def __init__(self) -> None:
        self.calls = 0

    def watch(self, model: nn.Module) -> nn.Module:
        model.register_forward_pre_hook(lambda *_: setattr(self, "calls", self.calls + 1))
        return model


def per_image(run: Callable[[int], Any], device: torch.device, cap: int, start: int = 2, warm: bool = True,
              least: float = MIN_CALL_S, points: int = 1, repeat: bool = False) -> float:
    """Seconds per image of ``run(batch)`` at the run's batch ``cap``.

    A warm-up call (``warm``), then the batch doubles from ``start`` until a call takes ``least`` seconds
    and doubling the batch made it at least ``GROWTH`` times longer (the per-image part dominates the
    call's fixed part: a CPU training step of a timm ResNet-18 costs ~0.1 s on two images and on eight
    alike), with at least ``points`` calls; or until the batch reaches ``cap`` or a call ``MAX_CALL_S``.
    The last call (with ``repeat``, or a short one) is timed twice, the faster kept. Short of ``cap``, the
    last two calls give a fixed and a per-image part, extrapolated to ``cap`` (Opti-CAM's 50 steps on one
    image cost ~4x per image what they cost on 16)."""
    from ..modelutil import synchronize

    def timed(batch: int) -> float:
        synchronize(device)
        begin = time.perf_counter()
        run(batch)
        synchronize(device)
        return time.perf_counter() - begin

    def settled() -> bool:
        batch, seconds = found[-1]
        grown = len(found) >= 2 and seconds >= GROWTH * found[-2][1]
        return batch >= cap or seconds >= MAX_CALL_S or (
            seconds >= least and len(found) >= points and (grown or len(found) == 1 and points < 2))

    batch = max(1, min(start, cap))
    if warm:
        run(batch)
    found = [(batch, timed(batch))]
    while not settled():
        batch = min(cap, batch * 2)
        found.append((batch, timed(batch)))
    if repeat or found[-1][1] < least:
        found[-1] = (batch, min(found[-1][1], timed(batch)))
    (small, before), (batch, seconds) = found[max(0, len(found) - 2)], found[-1]
    if batch >= cap or small == batch:
        return seconds / batch
    # bounded: noise in a difference of two timings must not make a call look free
    slope = min(seconds / batch, max((seconds - before) / (batch - small), 0.2 * seconds / batch))
    return max(seconds - slope * batch, 0.0) / cap + slope


def eval_set(count: int, size: int, classes: int, annotated: bool, device: torch.device,
             task: str = "classification"):
    """Random evaluation images (an :class:`~camzoo.bench.evaluation.EvalSet`): a centred object box
    and mask when the dataset is annotated; for the object track, each image's target on that object
    (camzoo.bench.objects), with no distractor."""
    from .evaluation import EvalSet
    from .objects import BACKGROUND_CLASSES, object_targets

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(count, 3, size, size, generator=generator).to(device)
    labels = (torch.arange(count) % classes).to(device)
    low, high = size // 4, size - size // 4
    masks = boxes = None
    if annotated:
        masks = torch.zeros(count, size, size, dtype=torch.bool)
        masks[:, low:high, low:high] = True
        masks, boxes = masks.to(device), torch.tensor([[[low, low, high, high]]], dtype=torch.float32).expand(
            count, 1, 4).contiguous().to(device)
    found = EvalSet(images, labels, masks, boxes, (0.0,) * 3, (1.0,) * 3, [str(c) for c in range(classes)])
    if task == "classification" or masks is None:
        return found
    # ``classes`` counts the background here: the objects' dataset classes are 0 .. classes - 2
    objects = [int(c) % max(1, classes - BACKGROUND_CLASSES) for c in labels.tolist()]
    return dataclasses.replace(found, targets=object_targets(task, objects, masks, boxes[:, 0].tolist()))


def training_rate(model: nn.Module, config: Any, shape: Shape, device: torch.device) -> float:
    """Seconds per training image of one model, stepped as the trainer steps it."""
    from ..train.loop import train_step
    from ..train.state import runtime_settings

    cuda = device.type == "cuda"
    amp = cuda if config.amp is None else config.amp
    dtype = torch.bfloat16 if not cuda or torch.cuda.is_bf16_supported() else torch.float16
    model = model.to(device).train()
    if config.uses_channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=config.momentum, nesterov=config.nesterov,
                                weight_decay=config.weight_decay, fused=cuda or None)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if amp else contextlib.nullcontext
    x = torch.randn(config.batch_size, 3, shape.size, shape.size, device=device)
    if config.uses_channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = training_labels(model, config.batch_size, shape, device)
    deterministic = device.type == "cpu" if config.deterministic is None else config.deterministic
    with runtime_settings(deterministic, device, config.num_threads):
        return per_image(lambda b: train_step(model, optimizer, scaler, x[:b], y[:b], autocast)[0].item(), device,
                         config.batch_size, least=MIN_TRAIN_S, points=2, repeat=True)


def training_labels(model: nn.Module, batch: int, shape: Shape, device: torch.device) -> Any:
    """Random labels of the kind the model trains on: (B,) classes, a segmenter's (B,H,W) class maps, or
    a detector's targets (one centred box of class 1 per image)."""
    task = getattr(model, "task", "classification")
    if task == "segmentation":
        return torch.randint(0, model.num_classes, (batch, shape.size, shape.size), device=device)
    if task == "detection":
        low, high = shape.size / 4, shape.size * 3 / 4
        box = torch.tensor([[low, low, high, high]], device=device)
        return [{"boxes": box, "labels": torch.ones(1, dtype=torch.long, device=device)} for _ in range(batch)]
    return torch.randint(0, shape.classes, (batch,), device=device)


def forward_rate(scorer: nn.Module, size: int, batch: int, device: torch.device) -> float:
    """Seconds per image of a no-grad forward (the games' and the accuracy pass's)."""
    x = torch.randn(batch, 3, size, size, device=device)

    def run(b: int) -> None:
        with torch.no_grad():
            scorer(x[:b])

    return per_image(run, device, batch)


def explain_rate(model: nn.Module, group: tuple[str, ...], images: Any, batch: int, device: torch.device,
                 layers: Any, costly: bool = False) -> float:
    """Seconds per image of explaining a group as the runner does (``explain_block``); a costly method
    from one image up, without a warm-up (its model's forwards were timed already)."""
    from .evaluation import explain_block, first_images

    return per_image(lambda b: explain_block(model, first_images(images, b), group, b, device, layers,
                                             warm_up=False), device, batch, 1 if costly else 2, warm=not costly,
                     points=2 if costly else 1)


def layer_channels(model: nn.Module, method: str, layer: str | None, size: int, device: torch.device) -> int:
    """Channels of the layer a method explains (a per-channel method runs one pass per channel)."""
    from ..inputs import model_in_channels
    from ..methods.layers import get_layer, resolve_layers

    probe = torch.zeros(1, model_in_channels(model), size, size, device=device)
    name = resolve_layers(model, layer, probe=probe)[0]
    found: list[int] = []
    handle = get_layer(model, name).register_forward_hook(lambda _m, _i, out: found.append(int(out.shape[1])))
    try:
        with torch.no_grad():
            model(probe)
    finally:
        handle.remove()
    return found[0] if found else 1


class StandIn(nn.Module):
    """A nearly free classifier (mean colour, linear layer) standing in for the model while the metrics
    are timed: what remains is their own arithmetic; ``seen`` counts the image-equivalents it classified."""

    def __init__(self, classes: int, size: int) -> None:
        super().__init__()
        self.head = nn.Linear(3, classes)
        self.pixels = float(size * size)
        self.seen = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0] * x.shape[-2] * x.shape[-1] / self.pixels
        return self.head(x.float().mean((2, 3)))


def scoring_rate(settings: Any, size: int, classes: int, annotated: bool, device: torch.device,
                 warm: bool = True, objects: bool = False) -> Scoring:
    """A cell's metrics with the stand-in model: the "images" metrics alone (the block starts past the
    games' images), then with the games, on 1 image (``warm``: OpenCV's and the substrates' first calls
    in this process), then on 2, 4, ... images until the games take ``MIN_TRAIN_S`` (or on
    ``SCORE_IMAGES``). The discrimination metrics are left to the cost model: they explain new inputs
    with the cell's method. ``objects``: the object track's scoring, the maps alone (no model, no games)
    and the object share against an empty distractor mask."""
    from ..metrics import score_maps
    from ..modelutil import synchronize

    images = eval_set(SCORE_IMAGES, size, classes, annotated, device)
    # maps like a CAM's: a coarse random field (a layer's resolution) upsampled; contours, and so
    # MaxBoxAcc's cost, depend on how smooth a map is
    side = max(1, size // 8)
    coarse = torch.rand(SCORE_IMAGES, 1, side, side, generator=torch.Generator().manual_seed(1))
    maps = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    maps = maps.to(device) / maps.amax((1, 2), keepdim=True).to(device)
    plain = dataclasses.replace(settings, grid_games=(), sensitivity=())
    others = torch.zeros_like(images.masks) if objects and images.masks is not None else None

    def run(count: int) -> tuple[float, float, float, float]:
        found = []
        for games, start in ((1, 1), (None, 0)):  # "images" metrics only; then with the games
            model = StandIn(classes, size).to(device)
            begin = time.perf_counter()
            score_maps(None if others is not None else model, images.images[:count], maps[:count],
                       images.labels[:count], None if images.masks is None else images.masks[:count],
                       None if images.boxes is None else images.boxes[:count],
                       dataclasses.replace(plain, game_images=games), map_memo={}, model_memo={}, start=start,
                       other_masks=None if others is None else others[:count])
            synchronize(device)
            found += [(time.perf_counter() - begin) / count, model.seen / count]
        (only_s, only_f, all_s, all_f) = found
        return only_s, only_f, max(0.0, all_s - only_s), max(0.0, all_f - only_f)

    if warm:
        run(1)
    count = 2
    while (found := run(count))[2] * count < MIN_TRAIN_S and count < SCORE_IMAGES:
        count *= 2
    return Scoring(*found)


def stability_rate(size: int, device: torch.device) -> float:
    """Seconds per (pair, map) of a stability cell: its metrics and the LFI-CAM script's IoU."""
    from ..metrics import pairwise_stability

    generator = torch.Generator().manual_seed(0)
    sets = [torch.rand(STABILITY_MAPS, size, size, generator=generator).to(device) for _ in range(2)]
    begin = time.perf_counter()
    pairwise_stability(sets)
    pairwise_stability(sets, lfi_compat=True)
    return (time.perf_counter() - begin) / STABILITY_MAPS


def cpu_speed() -> float:
    """Seconds of a fixed piece of NumPy work like the report's (bootstrap resampling of per-image
    values): the report's cost is scaled by it."""
    import numpy as np

    rng = np.random.default_rng(0)
    values = rng.random(1000)
    found = []
    for _ in range(8):  # the fastest of the last seven (the first warms the allocator up): a short timing
        begin = time.perf_counter()  # on a shared machine only ever runs long
        for _ in range(8):
            values[rng.integers(0, 1000, (200, 1000))].mean(1).sort()
        found.append(time.perf_counter() - begin)
    return min(found[1:])


__all__ = ["BUDGET_S", "COSTLY", "Calibration", "Counter", "Scoring", "Shape", "StandIn", "Units", "cpu_speed",
           "eval_set", "explain_rate", "forward_rate", "layer_channels", "per_image", "rank_threads", "scoring_rate",
           "stability_rate", "threads", "training_rate"]
