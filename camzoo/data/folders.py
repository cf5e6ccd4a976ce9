"""ImageFolder trees, ImageNet-style folders with Pascal VOC XML boxes, CUB-200-2011, Oxford-IIIT Pet."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .files import BOX_TOLERANCE, FileDataset, check_boxes, Record, list_images, require_dir, require_file

DEFAULT_SIZE = 224


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_dir(root: Path, split: str, name: str) -> Path:
    require_dir(root, f"{name} root")
    folder = root / split
    if not folder.is_dir():
        found = _class_dirs(root)
        raise DatasetError(
            f"{name}: no folder {str(folder)!r} for split {split!r}; expected root/<split>/<class>/<image> "
            f"(folders found under root: {found[:8]})"
        )
    return folder


def load_imagefolder(
    root: str | Path, split: str, image_size: int | None = None, augment: bool = False
) -> FileDataset:
    """root/<split>/<class>/<image>: one folder per class, classes sorted by name (torchvision's rule)."""
    folder = _split_dir(Path(root), split, "imagefolder")
    classes = _class_dirs(folder)
    if not classes:
        raise DatasetError(f"imagefolder: {str(folder)!r} has no class folders")
    records = [
        Record(path, label, f"{cls}/{path.name}")
        for label, cls in enumerate(classes)
        for path in list_images(folder / cls)
    ]
    return FileDataset(records, classes, image_size or DEFAULT_SIZE, "imagefolder", split, augment=augment)


# ---------------------------------------------------------------- ImageNet-style + VOC XML
def read_voc_xml(path: Path) -> tuple[list[str], np.ndarray, tuple[int, int] | None]:
    """Object names, boxes (K,4) in pixel-edge coordinates, and (width, height) from a VOC XML file.

    VOC pixel indices are 1-based and inclusive, so xmin..xmax covers edges xmin-1 .. xmax.
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise DatasetError(f"cannot parse annotation {str(path)!r}: {err}") from err
    size = None
    size_el = root.find("size")
    if size_el is not None and size_el.findtext("width") and size_el.findtext("height"):
        size = (int(float(size_el.findtext("width"))), int(float(size_el.findtext("height"))))
    names, boxes = [], []
    for k, obj in enumerate(root.iter("object")):
        bb = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[union-attr,arg-type]
        except (AttributeError, TypeError, ValueError) as err:
            raise DatasetError(f"{str(path)!r}: object {k} has no valid <bndbox> ({err})") from err
        names.append((obj.findtext("name") or "").strip())
        boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))
    return names, np.array(boxes, dtype=np.float32).reshape(-1, 4), size


def load_imagenet_voc(
    root: str | Path, split: str = "val", image_size: int | None = None, augment: bool = False
) -> FileDataset:
    """ImageNet-style folder root/<split>/ (flat or one folder per synset) with one VOC XML per image.

    The XML of image ``X.JPEG`` is ``X.xml`` anywhere under root (the official bbox archive extracts
    them to ``val/``; some copies keep them in ``Annotations/`` or ``bbox/``). The label is the
    synset of the first object; classes are the sorted synsets seen, or the order of
    ``LOC_synset_mapping.txt`` ("n01440764 tench, Tinca tinca") when root holds it.
    """
    root = Path(root)
    folder = _split_dir(root, split, "imagenet")
    xml_by_stem = {p.stem: p for p in sorted(root.rglob("*.xml"))}
    images = list_images(folder)
    if not images:
        raise DatasetError(f"imagenet: no images under {str(folder)!r}")
    parsed = []
    for img in images:
        xml = xml_by_stem.get(img.stem)
        if xml is None:
            raise DatasetError(f"imagenet: image {str(img)!r} has no annotation {img.stem + '.xml'!r} under {str(root)!r}")
        names, boxes, size = read_voc_xml(xml)
        if not names:
            raise DatasetError(f"imagenet: annotation {str(xml)!r} holds no <object>")
        if size is not None:

            check_boxes(boxes, size[0], size[1], f"annotation {str(xml)!r}", BOX_TOLERANCE)
        parsed.append((img, names[0], boxes, xml))
    mapping = root / "LOC_synset_mapping.txt"
    if mapping.is_file():
        lines = [ln.split(maxsplit=1) for ln in mapping.read_text().splitlines() if ln.strip()]
        wnids = [ln[0] for ln in lines]
        classes = [ln[1].split(",")[0].strip() if len(ln) > 1 else ln[0] for ln in lines]
    else:
        wnids = sorted({name for _, name, _, _ in parsed})
        classes = list(wnids)
    index = {w: i for i, w in enumerate(wnids)}
    records = []
    for img, name, boxes, xml in parsed:
        if name not in index:
            raise DatasetError(f"imagenet: annotation {str(xml)!r} names synset {name!r}, unknown to {str(mapping)!r}")
        records.append(Record(img, index[name], f"annotation {xml.name}", boxes=boxes))
    return FileDataset(records, classes, image_size or DEFAULT_SIZE, "imagenet", split, augment=augment,
                       annotations=("boxes",))


# ---------------------------------------------------------------- CUB-200-2011
def _read_table(path: Path, columns: int, what: str) -> dict[int, list[str]]:
    """id -> fields of a whitespace table such as images.txt ("<id> <path>"); errors name the line."""
    require_file(path, what)
    table: dict[int, list[str]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=columns - 1)
        if len(fields) != columns:
            raise DatasetError(f"{str(path)!r} line {lineno}: expected {columns} fields, got {line!r}")
        try:
            table[int(fields[0])] = fields[1:]
        except ValueError:
            raise DatasetError(f"{str(path)!r} line {lineno}: id {fields[0]!r} is not an integer") from None
    return table


def load_cub(
    root: str | Path, split: str, image_size: int | None = None, augment: bool = False
) -> FileDataset:
    """CUB-200-2011: images.txt, train_test_split.txt, image_class_labels.txt, classes.txt, bounding_boxes.txt.

    Boxes are "<id> <x> <y> <width> <height>" in pixels; we use (x, y, x + width, y + height). When the
    separately distributed segmentations (``segmentations/<class>/<image>.png``) sit next to them,
    targets also carry masks (pixels >= 128 of the annotators' average).
    """
    if split not in ("train", "test"):
        raise ValueError(f"cub200: split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    if not (root / "images.txt").is_file() and (root / "CUB_200_2011" / "images.txt").is_file():
        root = root / "CUB_200_2011"
    require_dir(root, "cub200 root")
    paths = _read_table(root / "images.txt", 2, "cub200 image list")
    is_train = _read_table(root / "train_test_split.txt", 2, "cub200 split list")
    labels = _read_table(root / "image_class_labels.txt", 2, "cub200 labels")
    class_rows = _read_table(root / "classes.txt", 2, "cub200 class list")
    boxes = _read_table(root / "bounding_boxes.txt", 5, "cub200 boxes")
    class_ids = sorted(class_rows)
    class_index = {cid: i for i, cid in enumerate(class_ids)}
    seg_dir = root.parent / "segmentations" if (root.parent / "segmentations").is_dir() else root / "segmentations"
    has_masks = seg_dir.is_dir()
    want = "1" if split == "train" else "0"
    records = []
    for image_id, (rel,) in sorted(paths.items()):
        where = f"cub200 image id {image_id} (images.txt)"
        for table, fname in ((is_train, "train_test_split.txt"), (labels, "image_class_labels.txt"),
                             (boxes, "bounding_boxes.txt")):
            if image_id not in table:
                raise DatasetError(f"{where}: no entry in {str(root / fname)!r}")
        if is_train[image_id][0] not in ("0", "1"):
            raise DatasetError(f"{str(root / 'train_test_split.txt')!r}: image id {image_id} has is_train "
                               f"{is_train[image_id][0]!r}, expected 0 or 1")
        if is_train[image_id][0] != want:
            continue
        cid = int(labels[image_id][0])
        if cid not in class_index:
            raise DatasetError(f"{str(root / 'image_class_labels.txt')!r}: image id {image_id} has class {cid}, "
                               "not listed in classes.txt")
        try:
            x, y, w, h = (float(v) for v in boxes[image_id])
        except ValueError:
            raise DatasetError(f"{str(root / 'bounding_boxes.txt')!r}: image id {image_id} has a malformed box "
                               f"{boxes[image_id]}") from None
        mask_path = seg_dir / Path(rel).with_suffix(".png") if has_masks else None
        records.append(Record(root / "images" / rel, class_index[cid],
                              f"cub200 image id {image_id} (bounding_boxes.txt)",
                              boxes=np.array([[x, y, x + w, y + h]], dtype=np.float32), mask_path=mask_path))
    classes = [class_rows[cid][0].split(".", 1)[-1].replace("_", " ") for cid in class_ids]
    annotations = ("mask", "boxes") if has_masks else ("boxes",)
    return FileDataset(records, classes, image_size or DEFAULT_SIZE, "cub200", split, augment=augment,
                       mask_from_array=lambda a: a >= 128, annotations=annotations)


# ---------------------------------------------------------------- Oxford-IIIT Pet
def load_pets(
    root: str | Path, split: str, image_size: int | None = None, augment: bool = False, target: str = "breed"
) -> FileDataset:
    """Oxford-IIIT Pet: images/<Name>_<n>.jpg, annotations/{trainval,test}.txt, annotations/trimaps/*.png.

    List lines are "<image> <class id 1..37> <species 1=cat 2=dog> <breed id>". Trimap pixels are
    1 = pet, 2 = background, 3 = boundary; the mask is the pet including its boundary (trimap != 2),
    and the box is the mask's tight box. ``split`` "train" reads trainval.txt.
    """
    if split not in ("train", "test"):
        raise ValueError(f"pets: split must be 'train' or 'test', got {split!r}")
    if target not in ("breed", "species"):
        raise ValueError(f"pets: target must be 'breed' or 'species', got {target!r}")
    root = Path(root)
    if not (root / "annotations").is_dir() and (root / "oxford-iiit-pet" / "annotations").is_dir():
        root = root / "oxford-iiit-pet"
    require_dir(root, "pets root")
    ann = require_dir(root / "annotations", "pets annotations")
    list_path = require_file(ann / ("trainval.txt" if split == "train" else "test.txt"), "pets split list")
    entries = []
    for lineno, line in enumerate(list_path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 4 or not all(f.isdigit() for f in fields[1:]):
            raise DatasetError(f"{str(list_path)!r} line {lineno}: expected '<image> <class> <species> <breed>', "
                               f"got {line!r}")
        entries.append((fields[0], int(fields[1]), int(fields[2]), lineno))
    if target == "species":
        classes = ["cat", "dog"]
    else:
        names: dict[int, str] = {}
        for image, cid, _, _ in entries:
            names.setdefault(cid, image.rsplit("_", 1)[0].replace("_", " "))
        full_list = ann / "list.txt"  # names every breed, also those a split might lack
        if full_list.is_file():
            for line in full_list.read_text().splitlines():
                fields = line.split()
                if len(fields) == 4 and not line.startswith("#") and fields[1].isdigit():
                    names.setdefault(int(fields[1]), fields[0].rsplit("_", 1)[0].replace("_", " "))
        classes = [names[k] for k in sorted(names)]
        class_index = {k: i for i, k in enumerate(sorted(names))}
    records = []
    for image, cid, species, lineno in entries:
        label = species - 1 if target == "species" else class_index[cid]
        if target == "species" and species not in (1, 2):
            raise DatasetError(f"{str(list_path)!r} line {lineno}: species {species} is not 1 (cat) or 2 (dog)")
        records.append(Record(root / "images" / f"{image}.jpg", label, f"{list_path.name} line {lineno}",
                              mask_path=ann / "trimaps" / f"{image}.png"))
    return FileDataset(records, classes, image_size or DEFAULT_SIZE, "pets", split, augment=augment,
                       mask_from_array=lambda a: a != 2, annotations=("mask", "boxes"))
