"""Your own annotated images: an ImageFolder tree with optional ``boxes.csv``, ``masks/`` and a class map.

Why a loader of its own: a user benchmarking a trained classifier has images sorted into class
folders and, often, boxes or masks from some annotation tool, but none of the official layouts.
Why every image header is read up front: a box outside its image, a mask of another size or a
class map that names a missing folder must stop a run before it starts, and an unreadable file
must be listed and left out (``skipped``) rather than end a long run half-way. Pixels are still
decoded lazily, one item at a time (:class:`~camzoo.data.files.FileDataset`), so memory does not grow
with the number of images. Layout and formats: docs/datasets.md.
"""

from __future__ import annotations

import csv
import posixpath
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..groundtruth import boxes_to_masks
from ..inputs import open_image
from ..io import Problems, special_file_problem
from ..modelutil import IMAGENET_MEAN, IMAGENET_STD
from .errors import DatasetError
from .files import BOX_TOLERANCE, FileDataset, Record, check_boxes, list_images, require_dir
from .folders import DEFAULT_SIZE

SPLITS = ("test", "val", "train")      # all three mean the whole tree unless ROOT/<split>/ folders exist
MASKS_DIR, BOXES_FILE, CLASSES_FILE = "masks", "boxes.csv", "classes.txt"
BOX_COLUMNS = ("file", "x0", "y0", "x1", "y1")
UNANNOTATED = ("drop", "keep", "error")
_EXIF_ORIENTATION = 0x0112


def mask_nonzero(array: np.ndarray) -> np.ndarray:
    """Object pixels of a mask file: nonzero (module level, so DataLoader workers can pickle it)."""
    return array != 0


class AnnotatedDataset(FileDataset):
    """A :class:`FileDataset` that also carries its class map, the files it skipped and where each
    image's ground truth comes from.

    Attributes (besides the data contract's): ``folder_classes`` (class folder names, sorted);
    ``class_index`` (folder -> model output index, the label); ``class_map`` ("classes.txt",
    "class_index" or None); ``num_model_classes`` (== ``len(classes)``); ``skipped`` ((path, reason)
    of unreadable images); ``unannotated`` (paths without box or mask, left out); ``dropped_by_class``
    (class folder -> (left out, found), where any was left out); ``annotation_counts`` ({"mask": images
    with a mask file, "boxes": images with boxes.csv rows, "none": unannotated kept}). A record's name
    says its file and where its ground truth is written (boxes.csv lines, mask file), for error messages.
    """

    def __init__(self, records: Sequence[Record], classes: Sequence[str], image_size: int, split: str, *,
                 folder_classes: Sequence[str], class_index: Mapping[str, int], class_map: str | None,
                 skipped: Problems, unannotated: Sequence[Path], annotation_counts: Mapping[str, int],
                 annotations: tuple[str, ...], mean: Sequence[float], std: Sequence[float], augment: bool,
                 dropped_by_class: Mapping[str, tuple[int, int]] | None = None) -> None:
        super().__init__(records, classes, image_size, "annotated", split, mean=mean, std=std,
                         mask_from_array=mask_nonzero, augment=augment, annotations=annotations)
        self.folder_classes = list(folder_classes)
        self.class_index = dict(class_index)
        self.class_map = class_map
        self.num_model_classes = len(self.classes)
        self.skipped = list(skipped)
        self.unannotated = list(unannotated)
        self.annotation_counts = dict(annotation_counts)
        self.dropped_by_class = dict(dropped_by_class or {})

    def dropped_note(self, refuse: str = 'unannotated="error"') -> str | None:
        """What ``unannotated = "drop"`` left out and why, per class, and how to change it (one line; None:
        nothing was left out). Said wherever the images are counted, so a count is never a surprise.
        ``refuse``: how the reader sets the option that refuses such a folder instead."""
        if not self.unannotated:
            return None
        total = len(self.records) + len(self.unannotated)
        classes = ", ".join(f"{cls} {n} of {of}" for cls, (n, of) in self.dropped_by_class.items())
        gone = [cls for cls, (n, of) in self.dropped_by_class.items() if n == of]
        return (f"left out {len(self.unannotated)} of {total} images ({classes}): they have neither a row in "
                f"{BOXES_FILE} nor a mask in {MASKS_DIR}/, so no localisation metric can score them (the default "
                f"unannotated=\"drop\"; {refuse} refuses such a folder instead), e.g. "
                f"{str(self.unannotated[0])!r}" + (f"; no image of {', '.join(gone)} is left" if gone else ""))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
        image, label, target = super().__getitem__(index)
        if "mask" in self.annotations and "mask" not in target:  # no mask file: the union of its boxes
            boxes = target.get("boxes", torch.zeros((0, 4)))
            size = self.image_size
            try:
                target["mask"] = (boxes_to_masks(boxes[None], size, size)[0] if boxes.shape[0]
                                  else torch.zeros((size, size), dtype=torch.bool))
            except ValueError as err:  # named by file and row, as every other annotation error
                raise DatasetError(f"{self.records[index].record}: {err}") from err
        return image, label, target


def _class_dirs(folder: Path, reserved: tuple[str, ...] = ()) -> list[str]:
    return sorted(p.name for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name not in reserved)


def _split_folder(root: Path, split: str) -> tuple[Path, list[Path]]:
    """(folder of the split's class folders, every split folder): ROOT/<split> when ROOT holds
    split folders, else ROOT itself for any split name."""
    if split not in SPLITS:
        raise ValueError(f"annotated: split must be one of {', '.join(SPLITS)}; got {split!r}")
    present = [root / s for s in SPLITS if (root / s).is_dir()]
    if not present:
        return root, [root]
    if not (root / split).is_dir():
        raise DatasetError(f"annotated: {str(root)!r} holds split folders {[p.name for p in present]} but no "
                           f"{split!r} folder for split {split!r}")
    return root / split, present


def _parse_class_index(value: Any) -> dict[str, int]:
    """The ``class_index`` option: a mapping, or "folder=idx,folder=idx" (as ``-o`` passes it)."""
    if isinstance(value, str):
        pairs = [p.rsplit("=", 1) for p in value.split(",") if p.strip()]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise DatasetError(f"annotated: class_index must be 'folder=index,folder=index,...'; got {value!r}")
        value = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(value, Mapping):
        raise DatasetError(f"annotated: class_index must map folder names to model output indices; got {value!r}")
    out = {}
    for folder, idx in value.items():
        try:
            number = int(idx) if not isinstance(idx, (bool, float)) else None
        except ValueError:
            number = None
        if number is None or number < 0:
            raise DatasetError(f"annotated: class_index[{folder!r}] must be an integer >= 0; got {idx!r}")
        out[str(folder)] = number
    return out


def _read_classes_txt(path: Path) -> dict[str, int]:
    """``<folder name> <model output index>`` per line (the name may hold spaces); '#' comments."""
    index: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.strip().rsplit(maxsplit=1)
        if len(fields) != 2 or not fields[1].isdigit():
            raise DatasetError(f"{str(path)!r} line {lineno}: expected '<folder name> <model output index>' "
                               f"(index an integer >= 0), got {line!r}")
        if fields[0] in index:
            raise DatasetError(f"{str(path)!r} line {lineno}: folder {fields[0]!r} is listed twice")
        index[fields[0]] = int(fields[1])
    if not index:
        raise DatasetError(f"{str(path)!r} lists no class folder")
    return index


def _class_map(root: Path, folders: list[str], option: Any) -> tuple[dict[str, int], str | None]:
    """folder -> label, and where it came from; every folder must be mapped, and only folders."""
    if option is not None:
        index, source, where = _parse_class_index(option), "class_index", "annotated: class_index"
    elif (root / CLASSES_FILE).is_file():
        index, source = _read_classes_txt(root / CLASSES_FILE), CLASSES_FILE
        where = repr(str(root / CLASSES_FILE))
    else:
        return {f: i for i, f in enumerate(folders)}, None
    for folder in index:
        if folder not in folders:
            raise DatasetError(f"{where}: names folder {folder!r}, which is not a class folder under {str(root)!r} "
                               f"(class folders: {folders[:8]})")
    missing = [f for f in folders if f not in index]
    if missing:
        raise DatasetError(f"{where}: class folders {missing[:8]} have no model output index; list every folder")
    return index, source


def _class_names(index: Mapping[str, int], count: int) -> list[str]:
    """One name per model output: the folder(s) mapped to it, else the index itself."""
    names = [str(i) for i in range(count)]
    for i in range(count):
        folders = sorted(f for f, k in index.items() if k == i)
        if folders:
            names[i] = "/".join(folders)
    return names


def _orientation(image: Image.Image) -> int | None:
    """The EXIF orientation, without decoding pixels (PIL's PNG ``getexif`` decodes the whole image
    when the eXIf chunk is not ahead of the pixel data; such a chunk is ignored here)."""
    if image.format == "PNG":
        raw = image.info.get("exif")
        if not raw:
            return None
        exif = Image.Exif()
        exif.load(raw)
        return exif.get(_EXIF_ORIENTATION)
    return image.getexif().get(_EXIF_ORIENTATION)


def probe_image(path: Path, verify: bool) -> tuple[int, int] | str:
    """(width, height) as displayed (EXIF orientation applied), from the header alone unless
    ``verify``; a reason string when the file cannot be read."""
    if not path.is_file():
        return special_file_problem(path) or "does not exist"
    if verify:
        try:
            height, width = open_image(path)[1]
        except (ValueError, FileNotFoundError) as err:
            return str(err)
        return width, height
    try:
        with Image.open(path) as image:
            width, height = image.size
            if _orientation(image) in (5, 6, 7, 8):  # rotated by 90 degrees, as load_image shows it
                width, height = height, width
    except Exception as err:  # PIL raises several types for foreign or damaged files
        return f"not a readable image file ({type(err).__name__}: {err})"
    return width, height


def _read_boxes(root: Path) -> dict[str, list[tuple[int, np.ndarray]]]:
    """boxes.csv -> {file relative to root: [(line number, box)]}; a bad header or row is an error."""
    path = root / BOXES_FILE
    boxes: dict[str, list[tuple[int, np.ndarray]]] = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = csv.reader(handle)
        header = [h.strip() for h in next(rows, [])]
        if sorted(header) != sorted(BOX_COLUMNS) or len(header) != len(BOX_COLUMNS):
            raise DatasetError(f"{str(path)!r}: the header must name the columns {','.join(BOX_COLUMNS)}; "
                               f"got {','.join(header) or 'nothing'}")
        order = [header.index(c) for c in BOX_COLUMNS]
        for lineno, row in enumerate(rows, start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(BOX_COLUMNS):
                raise DatasetError(f"{str(path)!r} line {lineno}: expected {len(BOX_COLUMNS)} fields "
                                   f"({','.join(BOX_COLUMNS)}), got {len(row)}")
            name, *coords = (row[i].strip() for i in order)
            rel = posixpath.normpath(name)
            if not name or "\\" in name or rel.startswith(("/", "..")):
                raise DatasetError(f"{str(path)!r} line {lineno}: file {name!r} must be a path relative to "
                                   f"{str(root)!r} with forward slashes")
            try:
                box = np.array([float(v) for v in coords], dtype=np.float32)
            except ValueError:
                raise DatasetError(f"{str(path)!r} line {lineno}: x0,y0,x1,y1 must be numbers; got {coords}") from None
            if not (root / rel).is_file():
                raise DatasetError(f"{str(path)!r} line {lineno}: file {name!r} does not exist under {str(root)!r}")
            boxes.setdefault(rel, []).append((lineno, box))
    return boxes


def _mask_size(mask_path: Path, image_path: Path, size: tuple[int, int]) -> None:
    """A mask must be a readable image of its image's size (read from the header only)."""
    try:
        with Image.open(mask_path) as mask:
            found = mask.size
    except Exception as err:
        raise DatasetError(f"annotated: cannot read mask {str(mask_path)!r} ({type(err).__name__}: {err})") from err
    if found != size:
        raise DatasetError(f"annotated: mask {str(mask_path)!r} is {found[0]}x{found[1]} but its image "
                           f"{str(image_path)!r} is {size[0]}x{size[1]}; the mask must have the image's size")


def load_annotated(
    root: str | Path, split: str = "test", image_size: int | None = None, augment: bool = False,
    class_index: Mapping[str, int] | str | None = None, num_classes: int | None = None,
    unannotated: str = "drop", verify: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
) -> AnnotatedDataset:
    """ROOT/<class>/<image> (or ROOT/<split>/<class>/<image>) with optional boxes.csv, masks/ and classes.txt.

    Args:
        root: the folder (layout and file formats: docs/datasets.md).
        split: "test", "val" or "train": the whole tree, or ROOT/<split>/ when ROOT holds split folders.
        image_size: side of the returned square images (default 224); boxes and masks follow.
        augment: random horizontal flips (training only; off for evaluation).
        class_index: folder -> model output index (a mapping or "folder=idx,..."); overrides ROOT/classes.txt.
        num_classes: the model's output count (default: the largest index + 1 with a class map, else
            the number of folders, which it must then equal).
        unannotated: in a folder with annotations, an image with neither box nor mask is "drop"ped
            (listed in ``unannotated``), "keep"t (empty mask, no box), or an "error".
        verify: decode every image now, so truncated files are skipped too (a full pass over the data).
        mean: the normalisation applied (per channel), as the model expects.
        std: the normalisation applied (per channel).

    Returns:
        An :class:`AnnotatedDataset`; unreadable images are listed in its ``skipped``.
    """
    if unannotated not in UNANNOTATED:
        raise ValueError(f"annotated: unannotated must be one of {', '.join(UNANNOTATED)}; got {unannotated!r}")
    root = require_dir(Path(root).expanduser(), "annotated root")
    folder, split_folders = _split_folder(root, split)
    reserved = (MASKS_DIR,) if folder == root else ()
    folders = _class_dirs(folder, reserved)
    if not folders:
        raise DatasetError(f"annotated: {str(folder)!r} has no class folders; expected ROOT/<class>/<image>")
    every_folder = sorted({f for d in split_folders for f in _class_dirs(d, reserved)})
    index, source = _class_map(root, every_folder, class_index)
    count = max(index.values()) + 1
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise DatasetError(f"annotated: num_classes must be an integer; got {num_classes!r}")
        if source is None and num_classes != count:
            raise DatasetError(f"annotated: num_classes={num_classes} but {str(folder)!r} has {count} class folders "
                               f"and no class map; add {CLASSES_FILE} (or class_index) to map folders to outputs")
        if num_classes < count:
            raise DatasetError(f"annotated: num_classes={num_classes} but the class map ({source}) uses output "
                               f"index {count - 1}")
        count = num_classes
    boxes = _read_boxes(root) if (root / BOXES_FILE).is_file() else {}
    skipped: Problems = []
    found: list[tuple[Path, str, int, tuple[int, int], Path | None]] = []
    for cls in folders:
        for path in list_images(folder / cls):
            size = probe_image(path, verify)
            if isinstance(size, str):
                skipped.append((path, size))
                continue
            rel = path.relative_to(root).as_posix()
            mask = root / MASKS_DIR / Path(rel).with_suffix(".png")
            if mask.is_file():
                _mask_size(mask, path, size)
            found.append((path, rel, index[cls], size, mask if mask.is_file() else None))
    has_mask = any(m is not None for *_, m in found)
    has_boxes = has_mask or any(rel in boxes for _, rel, *_ in found)
    annotations = (("mask",) if has_mask else ()) + (("boxes",) if has_boxes else ())
    records, dropped = [], []
    counts = {"mask": 0, "boxes": 0, "none": 0}
    per_class = {cls: [0, 0] for cls in folders}  # class folder -> [images dropped, images found]
    for path, rel, label, (width, height), mask in found:
        cls = path.relative_to(folder).parts[0]
        per_class[cls][1] += 1
        rows = boxes.get(rel, [])
        for lineno, box in rows:
            check_boxes(box, width, height, f"{str(root / BOXES_FILE)!r} line {lineno} ({rel})", BOX_TOLERANCE)
        file_boxes = np.stack([b for _, b in rows]) if rows else None
        counts["mask"] += mask is not None
        counts["boxes"] += file_boxes is not None
        if annotations and mask is None and file_boxes is None:
            if unannotated == "error":
                raise DatasetError(f"annotated: image {str(path)!r} has neither a row in {BOXES_FILE} nor a mask "
                                   f"{str(root / MASKS_DIR / Path(rel).with_suffix('.png'))!r}")
            if unannotated == "drop":
                dropped.append(path)
                per_class[cls][0] += 1
                continue
            counts["none"] += 1
            file_boxes = np.zeros((0, 4), dtype=np.float32)
        records.append(Record(path, label, _record_name(rel, [n for n, _ in rows], mask, root), boxes=file_boxes,
                              mask_path=mask))
    if not records:
        why = f" ({len(skipped)} unreadable, {len(dropped)} without annotation)" if skipped or dropped else ""
        raise DatasetError(f"annotated: no usable image under {str(folder)!r}{why}")
    return AnnotatedDataset(
        records, _class_names(index, count), image_size or DEFAULT_SIZE, split, folder_classes=folders,
        class_index={f: index[f] for f in folders}, class_map=source, skipped=skipped, unannotated=dropped,
        annotation_counts=counts, annotations=annotations, mean=mean, std=std, augment=augment,
        dropped_by_class={cls: (n, of) for cls, (n, of) in per_class.items() if n})


def _record_name(rel: str, lines: Sequence[int], mask: Path | None, root: Path) -> str:
    """How errors name an image: its path and where its ground truth is written (boxes.csv lines, mask file)."""
    where = []
    if lines:
        where.append(f"{BOXES_FILE} line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines))}")
    if mask is not None:
        where.append(f"mask {mask.relative_to(root).as_posix()}")
    return f"annotated image {rel!r}" + (f" ({'; '.join(where)})" if where else "")
