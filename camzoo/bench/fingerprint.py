"""What a run's numbers depend on besides its config: the content of the files it reads.

Why: a run id that hashed the config alone came back unchanged when a checkpoint was retrained in
place or a folder's classes.txt was corrected, so a rerun into the same directory recomputed nothing
and showed the old table. A run's identity therefore also covers the content of every input that
changes a number: each ``[[models]]`` checkpoint file, the source file of a ``package.module:factory``
or ``reshape`` module, and for each on-disk dataset the split it is scored on (and, when the grid
trains, the split it trains on): its image files, its labels and class names (class folders,
``classes.txt``, ``class_index``), its boxes (``boxes.csv``) and its mask files. Generated datasets
(shapes, scenes, digits) are defined by their config and camzoo's version: nothing of theirs is hashed.

Why cheap: a resume must not read gigabytes again. A file's sha256 is cached in the results directory
(``.input-hashes.sqlite``), keyed by its path, size, mtime, ctime and inode; a resume only stats the
files, and hashes again those whose stat changed. A file modified in the last
:data:`RACY_SECONDS` is not cached (its next change could keep the same timestamp: git's "racily
clean" problem), so it is hashed again on the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

CACHE_NAME = ".input-hashes.sqlite"
RACY_SECONDS = 2.0
_CHUNK = 1 << 20

# What each part of a dataset's fingerprint covers, for the line that says which input changed.
PARTS = {
    "images": "image files",
    "labels": "labels and class names (class folders, classes.txt or class_index)",
    "boxes": "boxes (boxes.csv)",
    "masks": "mask files (masks/)",
    "files": "files",
}


@dataclass
class HashCounts:
    """Files hashed and files whose cached hash was reused, in this process (the tests read these)."""

    hashed: int = 0
    hashed_bytes: int = 0
    reused: int = 0


COUNTS = HashCounts()


class FileHashes:
    """sha256 of files, cached in ``directory/.input-hashes.sqlite`` (None: in memory only).

    ``write=False`` reads an existing cache without creating or changing it (``camzoo bench --check``
    writes nothing). The cache is an optimisation: a cache that cannot be opened or written is
    ignored (every file is then hashed)."""

    def __init__(self, directory: str | Path | None = None, write: bool = True):
        self._memo: dict[str, str] = {}
        self._db: sqlite3.Connection | None = None
        self._write = write
        path = None if directory is None else Path(directory) / CACHE_NAME
        if path is None or not path.parent.is_dir() or (not write and not path.is_file()):
            return
        try:
            uri = f"file:{path.resolve()}" + ("" if write else "?mode=ro")
            self._db = sqlite3.connect(uri, uri=True, timeout=5.0)
            if write:
                self._db.execute("CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER, "
                                 "mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER, sha256 TEXT)")
        except sqlite3.Error:
            self._db = None

    def __enter__(self) -> FileHashes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Commit what was hashed (a busy or read-only cache is left as it was)."""
        if self._db is not None:
            try:
                self._db.commit()
            except sqlite3.Error:
                pass
            self._db.close()
            self._db = None

    def __call__(self, path: str | os.PathLike) -> str:
        """The sha256 (hex) of the file's content: from the cache when its stat is unchanged."""
        where = os.path.abspath(path)
        if where in self._memo:
            return self._memo[where]
        before = os.stat(where)
        key = (before.st_size, before.st_mtime_ns, before.st_ctime_ns, before.st_ino)
        cached = self._lookup(where)
        if cached is not None and cached[:4] == key:
            COUNTS.reused += 1
            self._memo[where] = cached[4]
            return cached[4]
        digest = hashlib.sha256()
        with open(where, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        COUNTS.hashed += 1
        COUNTS.hashed_bytes += before.st_size
        after = os.stat(where)
        steady = (after.st_size, after.st_mtime_ns, after.st_ctime_ns, after.st_ino) == key
        if steady and time.time_ns() - after.st_mtime_ns > RACY_SECONDS * 1e9:
            self._store(where, key, digest.hexdigest())
        self._memo[where] = digest.hexdigest()
        return digest.hexdigest()

    def _lookup(self, where: str) -> tuple | None:
        if self._db is None:
            return None
        try:
            return self._db.execute("SELECT size, mtime_ns, ctime_ns, inode, sha256 FROM hashes WHERE path=?",
                                    (where,)).fetchone()
        except sqlite3.Error:
            return None

    def _store(self, where: str, key: tuple, sha: str) -> None:
        if self._db is None or not self._write:
            return
        try:
            self._db.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?)", (where, *key, sha))
        except sqlite3.Error:
            pass


@dataclass(frozen=True)
class Inputs:
    """The fingerprinted inputs of a run. ``digests``: what -> 16 hex digits (a checkpoint, a module, a
    part of a dataset split), part of the run id; ``trained``: dataset key -> the digest of the split its
    models train on (part of each trained model's directory name, so other training data never reuses
    another's weights)."""

    digests: Mapping[str, str] = field(default_factory=dict)
    trained: Mapping[str, str] = field(default_factory=dict)


def fingerprint_inputs(datasets: Sequence[Any], probes: Mapping[str, Any], entries: Sequence[Sequence[Any]],
                       trains: bool, cache_dir: str | Path | None = None, write: bool = True) -> Inputs:
    """Fingerprint a plan's inputs. ``datasets``: the DatasetSpecs; ``probes``: dataset key -> its
    loaded test split; ``entries``: each ``[[models]]`` entry's ModelSources; ``trains``: whether the
    grid trains (then each on-disk dataset's train split counts too); ``cache_dir``: where the hash
    cache lives (the results directory), ``write``: whether it may be created or updated."""
    digests: dict[str, str] = {}
    trained: dict[str, str] = {}
    with FileHashes(cache_dir, write) as hashes:
        for entry in entries:
            for source in entry:
                digests[f"checkpoint {source.checkpoint}"] = hashes(source.checkpoint)[:16]
                for role, spec in (("model", source.name), ("reshape", source.reshape)):
                    found = _module_file(spec) if role == "reshape" or _is_import_path(spec) else None
                    if found is not None:
                        digests[f"{role} code {found[0]} ({found[1]})"] = hashes(found[1])[:16]
        for dataset in datasets:
            if not _on_disk(dataset.name) or dataset.key not in probes:
                continue
            splits = [("test", probes[dataset.key])] + ([("train", dataset.load("train"))] if trains else [])
            root = _root(dataset)
            for split_name, split in splits:
                parts = split_parts(split, root, hashes)
                for part, digest in parts.items():
                    digests[f"dataset {dataset.key} {split_name} {part}"] = digest
                if split_name == "train":
                    trained[dataset.key] = _combine(parts)
    return Inputs(dict(sorted(digests.items())), trained)


def split_parts(split: Any, root: Path | None, hashes: FileHashes) -> dict[str, str]:
    """A loaded split's fingerprint, part by part (:data:`PARTS`): per file for a split read file by file
    (``records``), from the arrays for one held in memory (``images``), else every file below the root."""
    records = getattr(split, "records", None)
    if records is not None:
        return _record_parts(records, list(split.classes), root, hashes)
    if getattr(split, "images", None) is not None:
        return _array_parts(split)
    if root is None:
        return {}
    from ..io import walk_files

    files = hashlib.sha256()
    for names, path in walk_files(root):
        if path.is_file():
            files.update(f"{'/'.join(names)}\0{hashes(path)}\n".encode())
    return {"files": files.hexdigest()[:16]}


def _record_parts(records: Iterable[Any], classes: list[str], root: Path | None, hashes: FileHashes) -> dict[str, str]:
    parts = {name: hashlib.sha256() for name in ("images", "labels", "boxes", "masks")}
    parts["labels"].update(json.dumps(classes).encode())
    for record in records:
        name = _relative(record.path, root).encode() + b"\0"
        parts["images"].update(name + hashes(record.path).encode() + b"\n")
        parts["labels"].update(name + str(int(record.label)).encode() + b"\n")
        boxes = getattr(record, "boxes", None)
        parts["boxes"].update(name + (b"-" if boxes is None else np.ascontiguousarray(boxes, np.float32).tobytes()))
        mask = getattr(record, "mask_path", None)
        parts["masks"].update(name + (b"-" if mask is None else hashes(mask).encode()) + b"\n")
    return {name: digest.hexdigest()[:16] for name, digest in parts.items()}


def _array_parts(split: Any) -> dict[str, str]:
    """An in-memory split (CIFAR, STL-10): its arrays, hashed as they were loaded (no file to cache)."""
    parts = {}
    for name in ("images", "labels", "boxes", "masks"):
        digest = hashlib.sha256()
        value = getattr(split, name, None)
        if value is not None:
            array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
            digest.update(str((array.dtype, array.shape)).encode())
            digest.update(np.ascontiguousarray(array).data)
        if name == "labels":
            digest.update(json.dumps(list(split.classes)).encode())
        parts[name] = digest.hexdigest()[:16]
    return parts


def _combine(parts: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(sorted(parts.items()))).encode()).hexdigest()[:16]


def _relative(path: Any, root: Path | None) -> str:
    path = Path(path)
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def _on_disk(name: str) -> bool:
    from ..data import info

    return bool(info(name).needs_root)


def _root(dataset: Any) -> Path | None:
    """The folder an on-disk dataset is read from (its ``root``, else ``$CAMZOO_DATA/<name>``)."""
    if dataset.root:
        return Path(dataset.root).expanduser()
    env = os.environ.get("CAMZOO_DATA")
    return Path(env) / dataset.name if env else None


def _is_import_path(name: str | None) -> bool:
    if not name:
        return False
    from ..models.loading import is_import_path

    return is_import_path(name)


def _module_file(spec: str | None) -> tuple[str, str] | None:
    """(module, its source file) of ``package.module:function`` (None: no file, e.g. a built-in)."""
    if not spec or ":" not in spec:
        return None
    module_name = spec.split(":")[0]
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if path is None:
        import importlib.util

        try:
            found = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            return None
        path = getattr(found, "origin", None)
    return (module_name, path) if path and os.path.isfile(path) else None


def changed_inputs(before: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """What differs between two runs' inputs, each as a short phrase ("checkpoint b.pt: other content",
    "dataset annotated test labels and class names (...)")."""
    said = []
    for what in sorted(set(before) | set(now)):
        if before.get(what) == now.get(what):
            continue
        state = "new" if what not in before else "gone" if what not in now else "other content"
        words = what.split(" ")
        if words[0] == "dataset" and words[-1] in PARTS:
            what = " ".join(words[:-1] + [PARTS[words[-1]]])
        said.append(f"{what}: {state}")
    return said


def changed_files(inputs: Mapping[str, str], cache_dir: str | Path | None = None) -> list[str]:
    """The files a stored run read (checkpoints, model and reshape code) that now hold other content, each
    as a phrase; files no longer there are not judged (a report needs only the store). Datasets are not
    re-read here: that needs their loader (a rerun of the bench checks them)."""
    said = []
    with FileHashes(cache_dir) as hashes:
        for what, digest in inputs.items():
            found = re.fullmatch(r"checkpoint (.+)|(?:model|reshape) code \S+ \((.+)\)", what)
            path = found and (found.group(1) or found.group(2))
            if path and os.path.isfile(path) and hashes(path)[:16] != digest:
                said.append(f"{what}: its file now holds other content")
    return said


__all__ = ["CACHE_NAME", "COUNTS", "FileHashes", "Inputs", "changed_files", "changed_inputs", "fingerprint_inputs",
           "split_parts"]
