"""How a report names a model: a ``[[models]]`` checkpoint by its file, a trained model by its seed.

Why one place: the gallery, report.html, summary.md's provenance and the discrimination table's notes
all name models. A loaded checkpoint's "seed" is only its position in ``checkpoints``; a reader who
passed ``--checkpoint a.pt --checkpoint b.pt`` knows the files, not the positions, so "seed 0" would
make them guess which is which.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Namer = Callable[[str, str, str, int], str]  # (backbone, kind, variant, seed) -> a model's name


def checkpoint_files(config: Mapping[str, Any]) -> dict[tuple[str, int], str]:
    """(backbone label, seed) -> the name of that ``[[models]]`` checkpoint: its file's basename, or the
    path as the config gives it where two different paths share a basename (``run1/model.pt``,
    ``run2/model.pt``); the same file given twice in one entry is told apart by its position (``#2``)."""
    from .sources import entry_label

    paths = {(entry_label(entry), seed): str(path) for entry in config.get("models") or []
             for seed, path in enumerate(entry.get("checkpoints") or [])}
    owners: dict[str, set[str]] = {}
    for path in paths.values():
        owners.setdefault(Path(path).name, set()).add(path)
    names = {key: Path(path).name if len(owners[Path(path).name]) == 1 else path for key, path in paths.items()}
    seen: dict[tuple[str, str], int] = {}
    for key in sorted(names, key=lambda k: k[1]):
        count = seen[key[0], names[key]] = seen.get((key[0], names[key]), 0) + 1
        if count > 1:
            names[key] += f" #{count}"
    return names


def model_namer(config: Mapping[str, Any], with_kind: bool = False) -> Namer:
    """(backbone, kind, variant, seed) -> how a report names one model: a ``[[models]]`` checkpoint by its
    file (:func:`checkpoint_files`), a trained model as "seed N" (and its variant, other than the default),
    after its kind with ``with_kind`` ("baseline seed 0": where the kind is not said around the name)."""
    from .sources import SOURCE_KIND

    files = checkpoint_files(config)

    def name(backbone: str, kind: str, variant: str, seed: int) -> str:
        found = files.get((backbone, int(seed))) if kind == SOURCE_KIND else None
        if found is not None:
            return found
        return (f"{kind} " if with_kind else "") + f"seed {seed}" + ("" if variant == "default" else f" {variant}")

    return name


def checkpoint_line(config: Mapping[str, Any]) -> str | None:
    """summary.md's provenance line naming each ``[[models]]`` entry's checkpoint files, in order (the
    order of the seed column of long.csv.gz and summary.csv's per-model values); None without entries."""
    from .sources import entry_label

    files = checkpoint_files(config)
    entries = [(entry_label(entry), len(entry.get("checkpoints") or [])) for entry in config.get("models") or []]
    if not entries:
        return None
    listed = "; ".join(f"{label}: " + ", ".join(f"`{files[label, seed]}`" for seed in range(count))
                       for label, count in entries)
    return f"- checkpoints (in this order, numbered from 0 in long.csv.gz's `seed` column): {listed}"


__all__ = ["Namer", "checkpoint_files", "checkpoint_line", "model_namer"]
