"""Models the benchmark loads instead of training: a config's ``[[models]]`` entries.

Why: most users of a CAM benchmark already have trained classifiers (their own ResNet-50 or ViT,
or standard checkpoints a new method must be scored on). An entry names an architecture (a timm
name, ``torchvision:NAME``, the user's ``package.module:factory``, or nothing for camzoo
``model.pt`` files) and one or more checkpoints; each checkpoint is one "seed" of the entry, so
cross-seed stability compares them exactly as it compares trained seeds. Such models are never
trained: their accuracy is measured on the dataset. Loading goes through
``camzoo.models.loading.load_any_model`` (``weights_only``; a pickle is refused; a state dict that
does not fit names its keys).

An entry may also say how its images are prepared and explained, each defaulting to what
``camzoo.explain`` chooses: ``output`` (where the model's output keeps the logits: an index or a
key/attribute name, as ``camzoo explain --output``; every forward of the run reads them by
``camzoo.methods.outputs``' one rule), ``layer`` (the CAM layer), ``reshape`` (``"package.module:function"``, a
callable turning the layer's output into (B,C,h,w); default: camzoo's rule for tokens and
channels-last outputs), ``image_size`` (default: the dataset entry's, as ``explain(image_size=...)``)
and ``mean``/``std`` (default: the dataset options' own ``mean``/``std`` where given, else the
model's declared normalisation, its ``pretrained_cfg``, else the dataset's). A grayscale model (its
first convolution takes one channel) sees the images as ``camzoo.explain`` gives them to it: their
luma, normalised with the averaged mean/std.

A model the benchmark trains is a :class:`TrainedSource`. Both kinds of source answer the same
questions, so a model job never asks which one it has: :meth:`obtain` the model (train, reuse or
load), the evaluation split it sees (:meth:`evaluation`), and the options of a method row on it
(:meth:`layer_for`, :meth:`reshape_function`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from .specs import Frozen

if TYPE_CHECKING:
    from ..train import TrainConfig
    from .datasets import DatasetData
    from .evaluation import EvalStream

SOURCE_KIND = "checkpoint"  # the Kind column of a loaded model's rows
ENTRY_KEYS = ("name", "checkpoints", "label", "options", "output", "layer", "reshape", "image_size", "mean", "std")


class Obtained(NamedTuple):
    """A job's model (eval mode, on the device) and what its model cell records besides accuracy."""

    model: nn.Module
    numbers: dict[str, tuple[float, None]]


@dataclass(frozen=True)
class TrainedSource:
    """A model of the grid: trained with ``config`` into ``OUT/models/<checkpoint>``, or reused from
    there when an earlier run finished it (camzoo.train resumes or returns the finished model)."""

    config: TrainConfig  # validated when the plan was built
    checkpoint: str  # the directory under OUT/models: "<job label>-<digest of the training fingerprint>"

    @classmethod
    def for_job(cls, config: TrainConfig, label: str, data: str = "") -> TrainedSource:
        """The source of the job ``label``: its directory names the job and what it trains (``data``: the
        content digest of an on-disk train split), so a changed recipe or changed training data never
        reuses another's weights."""
        fingerprint = repr(sorted(config.fingerprint().items())) + (f" data {data}" if data else "")
        digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:10]
        return cls(config, f"{label.replace('/', '-')}-{digest}")

    def obtain(self, data: DatasetData, device: torch.device, models: Path) -> Obtained:
        """Train (or reuse) on the dataset's train split, on ``device`` (a rank's own, for a plan built
        on another rank: the device is a runtime field, not part of the fingerprint)."""
        from ..train import train

        result = train(dataclasses.replace(self.config, device=str(device)), data.train, models / self.checkpoint)
        return Obtained(result.model, {"train_seconds": (result.total_train_time_s, None),
                                       "train_loss": (result.train_loss, None)})

    def evaluation(self, model: nn.Module, data: DatasetData) -> tuple[Any, EvalStream]:
        """The dataset's own test split and stream: a trained model was trained on its preparation."""
        return data.test, data.stream

    def layer_for(self, method: str) -> str | None:
        """The layer a method row explains: its own (``NAME@LAYER``), else the method's default."""
        from ..methods import split_layer

        return split_layer(method)[1]

    def reshape_function(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """None: camzoo's own rule for the layer's output (a grid model needs no other)."""
        return None


@dataclass(frozen=True)
class ModelSource:
    """One checkpoint of one ``[[models]]`` entry."""

    name: str | None  # architecture; None: a camzoo model.pt rebuilds itself
    checkpoint: str
    label: str  # the table's Backbone column
    options: Mapping[str, Any]  # constructor keyword arguments (timm / torchvision / factory)
    layer: str | None  # the CAM layer; None: what camzoo.explain picks for the model
    reshape: str | None = None  # "package.module:function" for the layer's output; None: camzoo's rule
    image_size: int | None = None  # None: the dataset entry's
    mean: tuple[float, ...] | None = None  # None: see :meth:`normalisation`
    std: tuple[float, ...] | None = None
    output: int | str | None = None  # where the output keeps the logits (camzoo.explain's output=)

    def reshape_function(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The entry's ``reshape`` callable (None: camzoo's own rule, as in ``camzoo.explain``)."""
        return None if self.reshape is None else import_callable(self.reshape)

    def normalisation(self, model: nn.Module, split: Any, explicit: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Mean/std the model sees: the entry's; else the dataset's when its options set them
        (``explicit``); else what ``camzoo.explain`` uses, the model's declared ``pretrained_cfg``;
        else the dataset's (a model that declares none, e.g. torchvision's). One value per channel
        of the model's first convolution (``inputs.channel_stats``: a grayscale model gets the
        averages, and its images become their luma)."""
        from ..inputs import channel_stats, model_in_channels

        declared = getattr(model, "pretrained_cfg", None) or {}
        own = (tuple(split.mean), tuple(split.std))
        default = own if explicit else tuple(tuple(float(v) for v in declared.get(key, fallback))
                                             for key, fallback in (("mean", own[0]), ("std", own[1])))
        channels = model_in_channels(model)  # each on its own: an entry may give 1 value for one and 3 for the other
        mean, std = (channel_stats(values, values, channels)[0] for values in (self.mean or default[0], self.std or default[1]))
        return mean, std

    def load(self, device: torch.device | str = "cpu", num_classes: int | None = None, read: bool = True) -> nn.Module:
        """The model in eval mode on ``device``; with ``read``, a classifier's forward returns its logits,
        read from whatever it returns as ``camzoo.explain`` reads them (``outputs.read_logits``, the
        entry's ``output``), so accuracy, metrics and games need no rule of their own."""
        from ..inference import is_detector, is_segmenter
        from ..methods.outputs import read_logits
        from ..models.loading import load_any_model

        model = load_any_model(self.name, self.checkpoint, num_classes, dict(self.options) or None,
                               output=self.output)
        if read and not (is_segmenter(model) or is_detector(model)):
            read_logits(model, self.output)
        return model.to(device).eval()

    def obtain(self, data: DatasetData, device: torch.device, models: Path) -> Obtained:
        """The checkpoint loaded, never trained (its model cell records accuracy only)."""
        return Obtained(self.load(device), {})

    def evaluation(self, model: nn.Module, data: DatasetData) -> tuple[Any, EvalStream]:
        """The test split and stream the model sees: the dataset's, or, with the entry's own image size
        or mean/std (:meth:`normalisation`), the same images prepared for it."""
        options = data.spec.split_options("test")
        mean, std = self.normalisation(model, data.test, explicit="mean" in options or "std" in options)
        return data.prepared(self.image_size or data.spec.image_size, mean, std)

    def layer_for(self, method: str) -> str | None:
        """The layer a method row explains: its own (``NAME@LAYER``), else the entry's, else the method's default."""
        from ..methods import split_layer

        return split_layer(method)[1] or self.layer


def entry_label(entry: Mapping[str, Any]) -> str:
    """An entry's Backbone column: its ``label``, else its name, else its first checkpoint's stem."""
    if entry.get("label"):
        return str(entry["label"])
    if entry.get("name"):
        return str(entry["name"]).replace(":", "-")
    return Path(str(entry["checkpoints"][0])).stem


def sources(entry: Mapping[str, Any]) -> tuple[ModelSource, ...]:
    """The checkpoints of an entry, in order (seed i = checkpoint i)."""
    options = Frozen(entry.get("options") or {})
    stats = {key: tuple(float(v) for v in entry[key]) if entry.get(key) else None for key in ("mean", "std")}
    return tuple(ModelSource(entry.get("name") or None, str(path), entry_label(entry), options,
                             entry.get("layer") or None, entry.get("reshape") or None, entry.get("image_size"),
                             **stats, output=entry.get("output")) for path in entry["checkpoints"])


def import_callable(spec: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function (ValueError naming what is missing)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"reshape must be 'package.module:function', got {spec!r}")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"reshape {spec!r} cannot be imported: {err}") from None
    if not callable(found):
        raise ValueError(f"reshape {spec!r} is not callable")
    return found


def _override_problems(entry: Mapping[str, Any], where: str) -> list[str]:
    """The per-entry preprocessing overrides: types and ranges, and an importable reshape."""
    problems = []
    size = entry.get("image_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 8):
        problems.append(f"{where}.image_size must be an integer >= 8 (pixels), got {size!r}")
    for key in ("mean", "std"):
        values = entry.get(key)
        if values is None:
            continue
        numbers = isinstance(values, list) and len(values) in (1, 3) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        if not numbers or (key == "std" and min(values) <= 0):
            what = "positive numbers" if key == "std" else "numbers"
            problems.append(f"{where}.{key} must be a list of 1 or 3 {what} (per channel), got {values!r}")
    if entry.get("reshape") is not None:
        if not isinstance(entry["reshape"], str):
            problems.append(f"{where}.reshape must be a 'package.module:function' string, got {entry['reshape']!r}")
        else:
            try:
                import_callable(entry["reshape"])
            except ValueError as err:
                problems.append(f"{where}: {err}")
    return problems


def entry_problems(models: object) -> list[str]:
    """What is wrong with the ``models`` list's shape (nothing is loaded)."""
    if not isinstance(models, list):
        return [f"models must be a list of [[models]] tables, got {models!r}"]
    problems, labels = [], []
    for index, entry in enumerate(models):
        where = f"models[{index}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{where} must be a table with name and checkpoints, got {entry!r}")
            continue
        extra = sorted(set(entry) - set(ENTRY_KEYS))
        if extra:
            problems.append(f"{where} has unknown keys {extra} (valid: {', '.join(ENTRY_KEYS)})")
        checkpoints = entry.get("checkpoints")
        if not isinstance(checkpoints, list) or not checkpoints or not all(isinstance(c, str) for c in checkpoints):
            problems.append(f"{where}.checkpoints must be a non-empty list of file paths, got {checkpoints!r}")
            continue
        if len(set(checkpoints)) != len(checkpoints):
            problems.append(f"{where}.checkpoints names a file twice: {checkpoints!r}")
        for key in ("name", "label", "layer"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                problems.append(f"{where}.{key} must be a string, got {entry[key]!r}")
        output = entry.get("output")
        if output is not None and (isinstance(output, bool) or not isinstance(output, (int, str)) or output == ""):
            problems.append(f"{where}.output must be an index (an integer) or a key/attribute name (a string) of the "
                            f"model's output, got {output!r}")
        if not isinstance(entry.get("options", {}), Mapping):
            problems.append(f"{where}.options must be a table of constructor arguments, got {entry['options']!r}")
        problems += _override_problems(entry, where)
        labels.append(entry_label(entry))
    if len(set(labels)) != len(labels):
        problems.append(f"two [[models]] entries share a label {labels!r}: give each a distinct label")
    return problems


def load_problems(models: Sequence[Sequence[ModelSource]], datasets: Mapping[str, Any]) -> list[str]:
    """Load every checkpoint on the CPU and check it against every dataset: it must load (one line
    naming missing/unexpected keys otherwise), run, and give class logits (:func:`output_problem`)
    that are the dataset's classes — or cover the dataset's class map (``classes.txt`` /
    ``class_index``, e.g. ImageNet's 1,000 outputs on a 10-class folder). ``models``: each entry's
    sources; ``datasets``: name -> the loaded test split."""
    from ..models.loading import ModelSpecError

    problems: list[str] = []
    for entry in models:
        for source in entry:
            if not Path(source.checkpoint).is_file():
                problems.append(f"model {source.label}: checkpoint {source.checkpoint!r} does not exist")
                continue
            try:
                model = source.load("cpu", read=False)
            except (ModelSpecError, ValueError, TypeError, RuntimeError, OSError) as err:
                problems.append(f"model {source.label}: {source.checkpoint}: {err}")
                continue
            for name, split in datasets.items():
                problem = output_problem(model, source.output, source.image_size or _side(split), split)
                if problem:
                    problems.append(f"model {source.label} ({source.checkpoint}) on dataset {name!r}: {problem}")
    return problems


def _side(split: Any) -> int:
    """The image side of a loaded split (its ``image_size``, else its first image's width)."""
    size = getattr(split, "image_size", None)
    return int(size) if isinstance(size, int) else int(split[0][0].shape[-1])


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def output_problem(model: nn.Module, output: int | str | None, side: int, split: Any) -> str | None:
    """Why the model cannot be scored on ``split`` at ``side`` px (None when it can), from one forward
    of a blank image read as ``camzoo explain`` reads it (``output``: the entry's selector): it must
    run (a ViT built for another size, a stem that downsamples below 1 px cannot), give (1, K) class
    logits, and K must fit the dataset (:func:`class_problem`). K is the output's own width, not a
    guess from the last Linear layer (an auxiliary head may come after the classifier), and a K that
    does not fit names the layer that made it (``modelutil.output_head``)."""
    from ..inference import is_detector, is_segmenter
    from ..inputs import model_in_channels
    from ..methods.outputs import logits_of
    from ..modelutil import output_head

    probe = torch.zeros(1, model_in_channels(model), side, side)
    try:
        with torch.no_grad():
            raw = model(probe)
    except (RuntimeError, ValueError, AssertionError, TypeError) as err:
        return f"it does not run on {side} px images ({_first_line(err)}); set the entry's image_size or the dataset's"
    if is_segmenter(model) or is_detector(model):  # the object track reads their outputs itself
        count = getattr(model, "num_classes", None)
        return class_problem(count if isinstance(count, int) and count > 0 else None, split)
    try:
        count = int(logits_of(raw, model, probe, output).shape[1])
    except (ValueError, TypeError) as err:
        what = _first_line(err).split("; pass output=")[0]  # the API's remedy; this is the bench's
        return f"its output is not class logits: {what}; set output = \"KEY\" (or an index) in its [[models]] entry, " \
               "or pass camzoo bench --output KEY"
    problem = class_problem(count, split)
    if problem:
        head, shape = output_head(model, probe, output)
        made = f"from layer {head!r}" if head else "not straight from a Linear or convolution layer"
        problem += f" (the model's output, shape {shape}, comes {made})"
    return problem


def class_problem(outputs: int | None, split: Any) -> str | None:
    """Why a model with ``outputs`` classes cannot be scored on ``split`` (None when it can)."""
    if outputs is None:
        return None
    mapped = getattr(split, "class_map", None)
    needed = int(getattr(split, "num_model_classes", len(split.classes)))
    if mapped and outputs < needed:
        return f"the class map names output {needed - 1} but the model has {outputs} outputs"
    if not mapped and outputs != needed:
        return (f"the model has {outputs} outputs but the dataset has {needed} classes and no class map; "
                "add classes.txt (one 'folder index' line per class) or class_index to the dataset's options")
    return None


def one_command_overrides(model: str | None, checkpoints: Sequence[str | Path], data: str | Path | None,
                          dataset: str = "annotated", methods: str | None = None, images: int | None = None,
                          image_size: int | None = None, output: str | None = None) -> dict[str, Any]:
    """``camzoo bench --model NAME --checkpoint A [--checkpoint B] --data ROOT ...`` as config overrides:
    one ``[[models]]`` entry, one dataset, the methods plus every control; {} without checkpoints.
    ``output``: ``--output`` as ``camzoo explain`` reads it (digits: an index, else a key or attribute)."""
    if not checkpoints:
        if model or data or methods or images or image_size or output:
            raise ValueError("--model, --data, --methods, --images, --image-size and --output describe your own "
                             "models: give them with --checkpoint (one per trained model)")
        return {}
    if data is None:
        raise ValueError("--checkpoint needs --data ROOT: the image folder to score the models on")
    entry: dict[str, Any] = {"checkpoints": [str(path) for path in checkpoints]}
    if model:
        entry["name"] = model
    if output:
        entry["output"] = int(output) if output.lstrip("-").isdigit() else output
    chosen = [m.strip() for m in (methods or "@one-pass").split(",") if m.strip()]
    overrides: dict[str, Any] = {
        "models": [entry], "methods": [*chosen, "@controls"],
        "datasets": [{"name": dataset, "root": str(data), "image_size": image_size or 224, "options": {}}],
    }
    if images:
        overrides["eval"] = {"images": images}
    return overrides
