"""The typed parts of a benchmark config that parse themselves: a ``[[datasets]]`` entry
(:class:`DatasetSpec`) and a ``[[variants]]`` entry (:class:`Variant`, which also builds each model's
``TrainConfig``).

Why here and not in the checker: each spec is built from its config entry exactly once, in
``camzoo.bench.plan.build_plan``, and says itself what is wrong with that entry; nothing after the
plan reads the config dict again. ``camzoo.bench.validate`` keeps only the probes that need the real
thing (a dataset on disk, a model's forward).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any
from collections.abc import Iterator, Mapping

from .store import ALL_SEEDS, CellKey

GALLERY_CELL = "gallery"
SPLITS = ("train", "test")
DATASET_KEYS = ("name", "root", "image_size", "options", "task", "train", "kinds")
# What a dataset's models do, and how their maps are scored: "classification" (the image's class), or
# "segmentation" / "detection" (each object of a scene, with the others as distractors: camzoo.bench.objects).
TASKS = ("classification", "segmentation", "detection")
VARIANT_KEYS = ("name", "train", "model")


class Frozen(Mapping[str, Any]):
    """A read-only mapping that pickles (a plan is sent to every rank of a distributed run, and
    ``types.MappingProxyType`` cannot be pickled)."""

    def __init__(self, data: Mapping[str, Any] | None = None):
        self._data = dict(data or {})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Frozen({self._data!r})"


def _kind_problems(dataset: str, kinds: object) -> list[str]:
    """What is wrong with a dataset entry's ``kinds``: a list of registered model kinds (or none)."""
    from ..models import get_kind

    if not isinstance(kinds, list) or not all(isinstance(kind, str) for kind in kinds):
        return [f"dataset {dataset!r}: kinds must be a list of model kinds (e.g. [\"baseline\", \"lfi\"]), got {kinds!r}"]
    problems = []
    for kind in kinds:
        try:
            get_kind(kind)
        except ValueError as err:
            problems.append(f"dataset {dataset!r}: {err}")
    return problems


@dataclass(frozen=True)
class DatasetSpec:
    """One ``[[datasets]]`` entry: what to load, at which size, with which loader options."""

    name: str
    root: str
    image_size: int
    options: Mapping[str, Any]
    annotated: bool = False  # masks or boxes: the localization metrics and the oracle control need them
    task: str = "classification"  # TASKS: which model kinds it trains (a kind's ``task``) and how it scores
    train: Mapping[str, Any] = field(default_factory=Frozen)  # [train] keys for this dataset's models only
    # the model kinds this dataset trains, in place of the config's ``kinds`` (empty: the config's); why:
    # a track that reads one kind's maps (the parts track: LFI-CAM's attention) need not train them all
    kinds: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entry: object) -> tuple[DatasetSpec | None, list[str]]:
        """The spec of one entry (as ``resolve_config`` completed it) and what is wrong with its shape.
        ``annotated`` is known once a split is loaded (:meth:`with_annotations`)."""
        if not isinstance(entry, Mapping) or "name" not in entry:
            return None, [f"each dataset needs a name, got {entry!r}"]
        problems = []
        extra = set(entry) - set(DATASET_KEYS)
        if extra:
            problems.append(f"dataset {entry['name']!r} has unknown keys {sorted(extra)} "
                            "(valid: name, root, image_size, options, task, train, kinds)")
        task = entry.get("task", "classification")
        if task not in TASKS:
            problems.append(f"dataset {entry['name']!r}: task must be one of {', '.join(TASKS)}, got {task!r}")
        options = entry.get("options", {})
        if not isinstance(options, Mapping) or not all(isinstance(options.get(s, {}), Mapping) for s in SPLITS):
            problems.append(f"dataset {entry['name']!r}: options must be a table (with optional train/test tables), "
                            f"got {options!r}")
        train = entry.get("train", {})
        if not isinstance(train, Mapping):
            problems.append(f"dataset {entry['name']!r}: train must be a table of [train] keys, got {train!r}")
        kinds = entry.get("kinds", [])
        problems += _kind_problems(entry["name"], kinds)
        if problems:
            return None, problems
        return cls(entry["name"], entry.get("root", ""), entry.get("image_size", 32), Frozen(options), task=task,
                   train=Frozen(train), kinds=tuple(kinds)), []

    @classmethod
    def parse_all(cls, entries: object) -> tuple[tuple[DatasetSpec, ...], list[str]]:
        """The ``datasets`` list: every entry's spec, and every problem of any."""
        if not isinstance(entries, list) or not entries:
            return (), ["datasets must name at least one dataset"]
        parsed = [cls.parse(entry) for entry in entries]
        specs = tuple(spec for spec, _ in parsed if spec is not None)
        problems = [p for _, found in parsed for p in found]
        keys = [spec.key for spec in specs]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:  # their cells would share keys: the second entry's would be taken as done
            problems.append(f"datasets {repeated} are listed twice (with the same task); list each dataset once per task")
        return specs, problems

    def with_annotations(self, split: Any) -> DatasetSpec:
        """This spec, annotated when the loaded ``split`` holds masks or boxes (a folder may have
        neither: its localization columns and the oracle are then left out)."""
        from ..data import info

        annotations = getattr(split, "annotations", None)
        return replace(self, annotated=bool(info(self.name).annotations if annotations is None else annotations))

    def split_options(self, split: str) -> dict[str, Any]:
        """The loader options of one split: the shared ones, then the split's own table."""
        options = {k: v for k, v in self.options.items() if k not in SPLITS}
        options.update(self.options.get(split, {}))
        return options

    def load(self, split: str, **extra: Any):
        """One split (``extra`` overrides loader options, e.g. a 1-image probe)."""
        from .. import data

        return data.load(self.name, split, root=self.root or None, image_size=self.image_size,
                         **{**self.split_options(split), **extra})

    @property
    def key(self) -> str:
        """The entry's name in the results (cells, tables): the dataset's name, and for the object track
        its task too ("scenes-segmentation"), so that one dataset can serve both tracks in one run, and a
        planted shortcut's kind ("shapes+watermark"), so that a run holds the dataset with and without it."""
        shortcut = self.options.get("shortcut")
        name = f"{self.name}+{shortcut}" if shortcut else self.name
        return name if self.task == "classification" else f"{name}-{self.task}"

    @property
    def gallery_key(self) -> CellKey:
        return CellKey(self.key, "-", "-", "-", ALL_SEEDS, GALLERY_CELL)


@dataclass(frozen=True)
class Variant:
    """A hyper-parameter variant (``[[variants]]``); a config without any has one, "default"."""

    name: str
    train: Mapping[str, Any] = field(default_factory=Frozen)
    model: Mapping[str, Any] = field(default_factory=Frozen)

    @classmethod
    def parse(cls, entry: object) -> tuple[Variant | None, list[str]]:
        """One ``[[variants]]`` entry and what is wrong with its shape (its name is checked with the
        others', :meth:`parse_all`)."""
        if not isinstance(entry, Mapping):
            return None, []  # named in parse_all's message
        problems = []
        extra = set(entry) - set(VARIANT_KEYS)
        if extra:
            problems.append(f"variant {entry.get('name')!r} has unknown keys {sorted(extra)} (valid: name, train, model)")
        for key in ("train", "model"):
            if not isinstance(entry.get(key, {}), Mapping):
                problems.append(f"variant {entry.get('name')!r}: {key} must be a table, got {entry[key]!r}")
        if problems:
            return None, problems
        return cls(entry.get("name"), Frozen(entry.get("train", {})), Frozen(entry.get("model", {}))), []

    @classmethod
    def parse_all(cls, entries: object) -> tuple[tuple[Variant, ...], list[str]]:
        """The ``variants`` list (empty: the one "default" variant) and every problem of any."""
        if not isinstance(entries, list):
            return (), [f"variants must be a list of [[variants]] tables, got {entries!r}"]
        if not entries:
            return (cls("default"),), []
        names = [v.get("name") if isinstance(v, Mapping) else None for v in entries]
        problems = []
        if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
            problems.append(f"every variant needs a distinct non-empty name, got {names!r}")
        parsed = [cls.parse(entry) for entry in entries]
        problems += [p for _, found in parsed for p in found]
        return tuple(variant for variant, _ in parsed if variant is not None), problems

    def train_config(self, table: Mapping[str, Any], kind: str, backbone: str, seed: int,
                     device: str) -> tuple[Any, list[str]]:
        """The validated ``camzoo.train.TrainConfig`` of one model of the grid (``table``: the config's
        [train], then this variant's train/model tables), or None, and what is wrong with it."""
        from ..train import TrainConfig

        where = "" if self.name == "default" else f" (variant {self.name!r})"
        settings = {**table, **self.train}
        model_options = {**settings.pop("model_options", {}), **self.model}
        if "milestones" in settings:
            settings["milestones"] = tuple(settings["milestones"])
        try:
            config = TrainConfig(kind=kind, backbone=backbone, seed=seed, device=device, model_options=model_options,
                                 progress=False, **settings)
        except TypeError as err:
            return None, [f"train{where}: [train] in the benchmark config: {err}"]
        try:
            config.validate()
        except ValueError as err:
            return config, [f"train{where}: {err}"]
        return config, []

