"""On-disk loaders, each on a tiny copy of the real dataset's exact layout written here, plus bad input."""

from __future__ import annotations

import os
import pickle
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import camzoo.data as data
from camzoo.cli import main
from camzoo.data import DatasetError
from helpers import cifar_rows, cli, dump_py2_style, picture, runtime_error, write_cifar10

RNG = np.random.default_rng(0)


def unnormalise(image: torch.Tensor, ds) -> np.ndarray:
    """(3,H,W) normalised -> (H,W,3) uint8-range floats."""
    x = image * torch.tensor(ds.std).view(3, 1, 1) + torch.tensor(ds.mean).view(3, 1, 1)
    return (x * 255).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------- CIFAR
def test_cifar10_reads_official_layout(tmp_path):
    rows = write_cifar10(tmp_path)
    train = data.load("cifar10", "train", root=tmp_path)
    test = data.load("cifar10", "test", root=tmp_path / "cifar-10-batches-py")  # the folder itself works too
    assert len(train) == 15 and len(test) == 3
    assert train.classes[1] == "automobile" and train.image_size == 32
    image, label, target = train[4]  # data_batch_2, record 1
    assert target == {} and label == rows["data_batch_2_labels"][1]
    raw = rows["data_batch_2"][1]
    expected = np.stack([raw[:1024], raw[1024:2048], raw[2048:]], axis=-1).reshape(32, 32, 3)  # R, G, B planes
    np.testing.assert_allclose(unnormalise(image, train), expected, atol=1e-3)
    assert test.labels.tolist() == rows["test_batch_labels"].tolist()


def test_cifar100_fine_and_coarse(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine = [f"fine{i}".encode() for i in range(100)]
    coarse = [f"coarse{i}".encode() for i in range(20)]
    dump_py2_style({b"fine_label_names": fine, b"coarse_label_names": coarse}, folder / "meta")
    for split, n in (("train", 5), ("test", 2)):
        dump_py2_style({b"data": cifar_rows(n), b"fine_labels": list(range(90, 90 + n)),
                        b"coarse_labels": list(range(n)), b"filenames": [b"x"] * n}, folder / split)
    ds = data.load("cifar100", "train", root=tmp_path, image_size=16)
    assert len(ds) == 5 and len(ds.classes) == 100 and ds.labels.tolist() == [90, 91, 92, 93, 94]
    assert ds[0][0].shape == (3, 16, 16)
    coarse_ds = data.load("cifar100", "test", root=tmp_path, label_type="coarse")
    assert coarse_ds.classes[:2] == ["coarse0", "coarse1"] and coarse_ds.labels.tolist() == [0, 1]


def test_cifar_truncated_pickle_names_the_file(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetError, match=r"data_batch_3.*truncated or corrupt"):
        data.load("cifar10", "train", root=tmp_path)


def test_cifar_pickle_with_foreign_code_is_refused(tmp_path):
    write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil()}, f, protocol=2)
    with pytest.raises(DatasetError, match=r"test_batch.*refusing to load global"):
        data.load("cifar10", "test", root=tmp_path)


def test_cifar_missing_root_and_missing_batch(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        data.load("cifar10", "train", root=tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="no cifar-10-batches-py"):
        data.load("cifar10", "train", root=tmp_path)
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_5").unlink()
    with pytest.raises(DatasetError, match="data_batch_5.*does not exist"):
        data.load("cifar10", "train", root=tmp_path)


def test_cifar_label_out_of_range_names_the_record(tmp_path):
    write_cifar10(tmp_path)
    dump_py2_style({b"data": cifar_rows(3), b"labels": [1, 12, 2]}, tmp_path / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(DatasetError, match=r"test_batch.*record 1 has label 12"):
        data.load("cifar10", "test", root=tmp_path)


# ---------------------------------------------------------------- STL-10
def test_stl10_binary_is_column_major(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    images = RNG.integers(0, 256, size=(4, 96, 96, 3), dtype=np.uint8)  # (N, row, col, channel)
    images[2, 0, 5] = [255, 0, 0]  # a red pixel at row 0, column 5
    # Official layout: per image, channel by channel, each channel column by column.
    images.transpose(0, 3, 2, 1).tofile(folder / "train_X.bin")
    np.array([1, 10, 3, 4], dtype=np.uint8).tofile(folder / "train_y.bin")
    (folder / "class_names.txt").write_text("\n".join(
        ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]) + "\n")
    ds = data.load("stl10", "train", root=tmp_path)
    assert len(ds) == 4 and ds.image_size == 96 and ds.labels.tolist() == [0, 9, 2, 3]
    assert ds.classes[9] == "truck"
    np.testing.assert_allclose(unnormalise(ds[2][0], ds), images[2], atol=1e-3)
    # Truncated image file: a clear error naming it.
    raw = (folder / "train_X.bin").read_bytes()
    (folder / "train_X.bin").write_bytes(raw[:-100])
    with pytest.raises(DatasetError, match=r"train_X\.bin.*not a whole number"):
        data.load("stl10", "train", root=tmp_path)


# ---------------------------------------------------------------- photo helpers
def photo_with_rectangle(width: int, height: int, box: tuple[int, int, int, int], path: Path) -> None:
    """A dark noisy photo with a white rectangle covering pixel-edge box (x0, y0, x1, y1)."""
    pixels = RNG.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG" if path.suffix == ".png" else "JPEG", quality=98)


def bright_box(image: torch.Tensor, ds) -> tuple[float, float, float, float]:
    bright = unnormalise(image, ds).mean(-1) > 160
    rows, cols = np.nonzero(bright)
    return cols.min(), rows.min(), cols.max() + 1, rows.max() + 1


def test_imagefolder(tmp_path):
    for split, counts in (("train", {"cat": 2, "dog": 3}), ("val", {"cat": 1, "dog": 1})):
        for cls, n in counts.items():
            for k in range(n):
                photo_with_rectangle(20, 12, (1, 1, 5, 5), tmp_path / split / cls / f"{k}.png")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    ds = data.load("imagefolder", "train", root=tmp_path, image_size=16)
    assert len(ds) == 5 and ds.classes == ["cat", "dog"]
    assert [r.label for r in ds.records] == [0, 0, 1, 1, 1]
    image, label, target = ds[3]
    assert image.shape == (3, 16, 16) and label == 1 and target == {}
    images, labels, targets = next(iter(data.loader(ds, batch_size=4)))
    assert images.shape == (4, 3, 16, 16) and labels.tolist() == [0, 0, 1, 1] and targets == {}
    assert len(data.load("imagefolder", "val", root=tmp_path)) == 2
    with pytest.raises(DatasetError, match="no folder .*test"):
        data.load("imagefolder", "test", root=tmp_path)


def test_corrupt_image_names_file_and_record(tmp_path):
    photo_with_rectangle(20, 12, (1, 1, 5, 5), tmp_path / "train" / "cat" / "0.png")
    (tmp_path / "train" / "cat" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = data.load("imagefolder", "train", root=tmp_path)
    with pytest.raises(DatasetError, match=r"cat/1\.png: cannot read image"):
        ds[1]


def test_preview_of_a_folder_with_an_unreadable_image_says_what_check_says(tmp_path):
    for cls in ("a", "b"):
        for i in range(2):
            picture(tmp_path / "ds" / "train" / cls / f"{i}.png", size=(16, 16), seed=i)
    (tmp_path / "ds" / "train" / "a" / "bad.png").write_bytes(b"junk")
    checked = cli("datasets", "check", "imagefolder", "--root", tmp_path / "ds", "--verify")
    previewed = cli("datasets", "preview", "imagefolder", "--root", tmp_path / "ds", "--out", tmp_path / "p.png")
    runtime_error(checked, "cannot read image")
    runtime_error(previewed, "cannot read image")
    assert previewed.output.strip().splitlines()[-1] == checked.output.strip().splitlines()[-1]


# ---------------------------------------------------------------- CUB-200-2011
def write_cub(root: Path, boxes: dict[int, tuple[float, float, float, float]] | None = None) -> Path:
    cub = root / "CUB_200_2011"
    specs = [  # id, class dir, file, is_train, size, box (x0, y0, x1, y1)
        (1, "001.Black_footed_Albatross", "Black_Footed_Albatross_0001_796111.jpg", 1, (60, 40), (10, 5, 30, 25)),
        (2, "001.Black_footed_Albatross", "Black_Footed_Albatross_0002_55.jpg", 0, (50, 50), (0, 0, 20, 50)),
        (3, "002.Laysan_Albatross", "Laysan_Albatross_0001_545.jpg", 1, (40, 80), (8, 40, 32, 72)),
    ]
    lines = {k: [] for k in ("images", "split", "labels", "boxes")}
    for image_id, cdir, fname, train, (w, h), box in specs:
        photo_with_rectangle(w, h, box, cub / "images" / cdir / fname)
        lines["images"].append(f"{image_id} {cdir}/{fname}")
        lines["split"].append(f"{image_id} {train}")
        lines["labels"].append(f"{image_id} {int(cdir[:3])}")
        x0, y0, x1, y1 = (boxes or {}).get(image_id, box)
        lines["boxes"].append(f"{image_id} {x0:.1f} {y0:.1f} {x1 - x0:.1f} {y1 - y0:.1f}")
    (cub / "images.txt").write_text("\n".join(lines["images"]) + "\n")
    (cub / "train_test_split.txt").write_text("\n".join(lines["split"]) + "\n")
    (cub / "image_class_labels.txt").write_text("\n".join(lines["labels"]) + "\n")
    (cub / "bounding_boxes.txt").write_text("\n".join(lines["boxes"]) + "\n")
    (cub / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    return cub


def test_cub_boxes_follow_the_resize(tmp_path):
    write_cub(tmp_path)
    train = data.load("cub200", "train", root=tmp_path, image_size=32)
    test = data.load("cub200", "test", root=tmp_path / "CUB_200_2011", image_size=32)
    assert len(train) == 2 and len(test) == 1
    assert train.classes == ["Black footed Albatross", "Laysan Albatross"] and train.annotations == ("boxes",)
    for i in range(2):
        image, label, target = train[i]
        assert label == i
        np.testing.assert_allclose(target["boxes"][0].numpy(), bright_box(image, train), atol=1.01)
    # image 3 is 40x80: box (8,40,32,72) scales by (32/40, 32/80)
    torch.testing.assert_close(train[1][2]["boxes"], torch.tensor([[6.4, 16.0, 25.6, 28.8]]))


def test_cub_with_segmentations_gives_masks(tmp_path):
    cub = write_cub(tmp_path)
    seg = tmp_path / "segmentations" / "001.Black_footed_Albatross"
    seg.mkdir(parents=True)
    m = np.zeros((40, 60), dtype=np.uint8)
    m[5:25, 10:30] = 255
    Image.fromarray(m).save(seg / "Black_Footed_Albatross_0001_796111.png")
    ds = data.load("cub200", "train", root=cub, image_size=30)
    image, _, target = ds[0]
    assert set(ds.annotations) == {"mask", "boxes"} and target["mask"].shape == (30, 30)
    assert target["mask"].sum() == 10 * 15  # 20x20 of 60x40 -> 10x15 of 30x30
    with pytest.raises(DatasetError, match=r"image id 3.*Laysan_Albatross_0001_545\.png.*does not exist"):
        ds[1]


def test_cub_box_outside_image_names_file_and_record(tmp_path):
    write_cub(tmp_path, boxes={3: (8, 40, 45, 72)})  # image 3 is 40 px wide
    ds = data.load("cub200", "train", root=tmp_path)
    ds[0]
    with pytest.raises(DatasetError, match=r"image id 3 \(bounding_boxes\.txt\).*lies outside the 40x80 image"):
        ds[1]


def test_cub_malformed_table_names_line(tmp_path):
    cub = write_cub(tmp_path)
    (cub / "bounding_boxes.txt").write_text("1 10 5 20\n")
    with pytest.raises(DatasetError, match=r"bounding_boxes\.txt' line 1: expected 5 fields"):
        data.load("cub200", "train", root=tmp_path)


# ---------------------------------------------------------------- ImageNet-style + VOC XML
def voc_xml(path: Path, filename: str, size: tuple[int, int], objects: list[tuple[str, tuple[int, ...]]]) -> None:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "val"
    ET.SubElement(ann, "filename").text = filename
    size_el = ET.SubElement(ann, "size")
    for tag, value in (("width", size[0]), ("height", size[1]), ("depth", 3)):
        ET.SubElement(size_el, tag).text = str(value)
    for name, (xmin, ymin, xmax, ymax) in objects:
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        for tag, value in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
            ET.SubElement(bb, tag).text = str(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(ann).write(path)


def write_imagenet(root: Path, bad_box: bool = False) -> None:
    # Images in synset folders (torchvision layout); the official bbox XMLs extracted flat to val/.
    photo_with_rectangle(50, 40, (10, 8, 30, 28), root / "val" / "n01440764" / "ILSVRC2012_val_00000001.JPEG")
    photo_with_rectangle(40, 40, (0, 0, 16, 16), root / "val" / "n01443537" / "ILSVRC2012_val_00000002.JPEG")
    voc_xml(root / "val" / "ILSVRC2012_val_00000001.xml", "ILSVRC2012_val_00000001", (50, 40),
            [("n01440764", (11, 9, 30, 28 if not bad_box else 60))])
    voc_xml(root / "val" / "ILSVRC2012_val_00000002.xml", "ILSVRC2012_val_00000002", (40, 40),
            [("n01443537", (1, 1, 16, 16)), ("n01443537", (21, 21, 40, 40))])


def test_imagenet_voc_boxes_and_padding(tmp_path):
    write_imagenet(tmp_path)
    ds = data.load("imagenet", "val", root=tmp_path, image_size=20)
    assert ds.classes == ["n01440764", "n01443537"] and len(ds) == 2
    image, label, target = ds[0]
    assert label == 0
    # VOC's 1-based inclusive (11..30) is pixel edges 10..30; scaled by 20/50 and 20/40.
    torch.testing.assert_close(target["boxes"], torch.tensor([[4.0, 4.0, 12.0, 14.0]]))
    np.testing.assert_allclose(target["boxes"][0].numpy(), bright_box(image, ds), atol=1.01)
    images, labels, targets = next(iter(data.loader(ds, batch_size=2)))
    assert targets["boxes"].shape == (2, 2, 4)
    assert torch.isnan(targets["boxes"][0, 1]).all() and not torch.isnan(targets["boxes"][1]).any()
    (tmp_path / "LOC_synset_mapping.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    assert data.load("imagenet", "val", root=tmp_path).classes == ["tench", "goldfish"]


def test_imagenet_box_outside_image_names_xml(tmp_path):
    write_imagenet(tmp_path, bad_box=True)
    with pytest.raises(DatasetError, match=r"ILSVRC2012_val_00000001\.xml.*box 0 .*outside the 50x40 image"):
        data.load("imagenet", "val", root=tmp_path)


def test_imagenet_missing_annotation(tmp_path):
    write_imagenet(tmp_path)
    (tmp_path / "val" / "ILSVRC2012_val_00000002.xml").unlink()
    with pytest.raises(DatasetError, match=r"ILSVRC2012_val_00000002\.JPEG.*has no annotation"):
        data.load("imagenet", "val", root=tmp_path)


# ---------------------------------------------------------------- Oxford-IIIT Pet
def write_pets(root: Path, trimap_size: dict[str, tuple[int, int]] | None = None) -> None:
    specs = [("Abyssinian_1", 1, 1, 1, "trainval", (40, 30), (5, 5, 25, 20)),
             ("american_bulldog_10", 2, 2, 1, "trainval", (30, 30), (0, 10, 30, 30)),
             ("Abyssinian_2", 1, 1, 1, "test", (20, 40), (2, 2, 10, 38))]
    (root / "annotations" / "trimaps").mkdir(parents=True)
    listing = ["#Image CLASS-ID SPECIES BREED ID", "#ID: 1:37 Class ids", "#SPECIES: 1:Cat 2:Dog",
               "#BREED ID: 1-25:Cat 1:12:Dog", "#All images with 1st letter as captial are cat images",
               "#images with small first letter are dog images"]
    per_split = {"trainval": [], "test": []}
    for name, cid, species, breed, split, (w, h), (x0, y0, x1, y1) in specs:
        photo_with_rectangle(w, h, (x0, y0, x1, y1), root / "images" / f"{name}.jpg")
        tw, th = (trimap_size or {}).get(name, (w, h))
        trimap = np.full((th, tw), 2, dtype=np.uint8)  # background
        trimap[y0:y1, x0:x1] = 3  # boundary ring ...
        trimap[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = 1  # ... around the pet
        Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"{name}.png")
        line = f"{name} {cid} {species} {breed}"
        listing.append(line)
        per_split[split].append(line)
    (root / "annotations" / "list.txt").write_text("\n".join(listing) + "\n")
    for split, lines in per_split.items():
        (root / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")


def test_pets_trimaps_are_masks(tmp_path):
    write_pets(tmp_path)
    ds = data.load("pets", "train", root=tmp_path, image_size=20)
    assert ds.classes == ["Abyssinian", "american bulldog"] and len(ds) == 2
    image, label, target = ds[0]
    assert label == 0 and target["mask"].shape == (20, 20)
    # The mask (pet + boundary) is where the bright rectangle is, after the same resize.
    bright = unnormalise(image, ds).mean(-1) > 160
    assert (bright == target["mask"].numpy()).mean() > 0.95
    # The box is the tight box of the mask in the original 40x30 image, (5,5)-(25,20), scaled by (1/2, 2/3).
    torch.testing.assert_close(target["boxes"], torch.tensor([[2.5, 10 / 3, 12.5, 40 / 3]]))
    species = data.load("pets", "test", root=tmp_path, target="species")
    assert species.classes == ["cat", "dog"] and species[0][1] == 0
    # Flips move the mask and box with the image.
    flipped = data.load("pets", "train", root=tmp_path, image_size=20, augment=True)
    torch.manual_seed(0)
    unflipped_mask = ds[0][2]["mask"]
    seen = set()
    for _ in range(8):
        image, _, target = flipped[0]
        bright = unnormalise(image, flipped).mean(-1) > 160
        assert (bright == target["mask"].numpy()).mean() > 0.95
        np.testing.assert_allclose(target["boxes"][0].numpy(), bright_box(image, flipped), atol=1.01)
        seen.add(torch.equal(target["mask"], unflipped_mask))
    assert seen == {True, False}, "expected both flipped and unflipped draws"


def test_pets_mask_of_wrong_size_names_file_and_line(tmp_path):
    write_pets(tmp_path, trimap_size={"american_bulldog_10": (31, 30)})
    ds = data.load("pets", "train", root=tmp_path)
    ds[0]
    with pytest.raises(DatasetError, match=r"trainval\.txt line 2: mask .*american_bulldog_10\.png' is 31x30 but"):
        ds[1]


def test_pets_missing_root(tmp_path):
    with pytest.raises(DatasetError, match=r"pets: dataset root .*nowhere' does not exist"):
        data.load("pets", "train", root=tmp_path / "nowhere")


# ---------------------------------------------------------------- CLI on a local copy
def test_cli_check_on_disk_copies(tmp_path):
    runner = CliRunner()
    write_cub(tmp_path)
    res = runner.invoke(main, ["datasets", "check", "cub200", "--root", str(tmp_path), "--verify"])
    assert res.exit_code == 0, res.output
    assert "cub200/train: 2 images, 2 classes, 224px, annotations: boxes" in res.output
    assert "cub200/test: 1 images" in res.output and "all 2 items read" in res.output
    for split in ("train", "val"):
        photo_with_rectangle(20, 12, (1, 1, 5, 5), tmp_path / "tree" / split / "cat" / "0.png")
    res = runner.invoke(main, ["datasets", "check", "imagefolder", "--root", str(tmp_path / "tree")])
    assert res.exit_code == 0, res.output
    assert "imagefolder/val: 1 images, 1 classes" in res.output and "imagefolder/test: not present" in res.output
    res = runner.invoke(main, ["datasets", "check", "cifar10", "--root", str(tmp_path / "missing")])
    assert res.exit_code != 0 and "does not exist" in res.output
    write_pets(tmp_path / "pets", trimap_size={"Abyssinian_2": (5, 5)})
    res = runner.invoke(main, ["datasets", "check", "pets", "--root", str(tmp_path / "pets"), "--verify"])
    assert res.exit_code != 0 and "Abyssinian_2.png' is 5x5" in res.output
    out = tmp_path / "pets.png"
    res = runner.invoke(main, ["datasets", "preview", "pets", "--root", str(tmp_path / "pets"), "--out", str(out),
                               "--image-size", "24", "--rows", "1", "--cols", "2"])
    assert res.exit_code == 0, res.output and out.is_file()
