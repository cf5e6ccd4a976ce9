"""The generic "annotated" folder: class map, boxes.csv, masks/, skipped files and every bad-input message."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import camzoo.data as data
from camzoo.cli import main
from camzoo.data import DatasetError
from helpers import picture

CLASS_MAP = {"ant": 3, "bee": 0, "cat": 9, "dog": 5}  # 4 folders in a 10-output model's index space


def mask(path: Path, width: int, height: int, region: tuple[slice, slice]) -> None:
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[region] = 7  # any nonzero value is object
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_tree(root: Path) -> Path:
    """ant/a0 (40x20, two boxes), ant/a1 (20x10, mask), bee/b0 (mask), bee/b1 (nothing), cat/c0 (one box),
    cat/broken.png (not an image), dog/d0 (mask); classes.txt maps into 10 outputs."""
    picture(root / "ant" / "a0.png", (40, 20))
    for rel in ("ant/a1.png", "bee/b0.png", "bee/b1.png", "cat/c0.png", "dog/d0.png"):
        picture(root / rel, (20, 10))
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    for rel in ("ant/a1.png", "bee/b0.png", "dog/d0.png"):
        mask(root / "masks" / rel, 20, 10, (slice(0, 5), slice(10, 20)))  # top right quarter
    (root / "boxes.csv").write_text("file,x0,y0,x1,y1\nant/a0.png,0,0,10,10\nant/a0.png,20,5,40,20\n"
                                    "cat/c0.png,2,2,6,8\n")
    (root / "classes.txt").write_text("".join(f"{k} {v}\n" for k, v in CLASS_MAP.items()))
    return root


def item(ds, rel: str):
    index = [r.path.relative_to(ds.records[0].path.parents[1]).as_posix() for r in ds.records].index(rel)
    return ds[index]


def test_loads_with_class_map_boxes_masks_and_skips(tmp_path):
    root = write_tree(tmp_path / "set")
    ds = data.load("annotated", "test", root=root, image_size=16)
    assert ds.name == "annotated" and ds.image_size == 16
    assert ds.folder_classes == ["ant", "bee", "cat", "dog"] and ds.class_index == CLASS_MAP
    assert ds.class_map == "classes.txt" and ds.num_model_classes == 10 == len(ds.classes)
    assert ds.classes[3] == "ant" and ds.classes[9] == "cat" and ds.classes[1] == "1"
    assert ds.annotations == ("mask", "boxes")
    # the corrupt file is skipped and listed; bee/b1 has no annotation and is dropped by default
    assert [(p.name, bool(re.search("not a readable image", why))) for p, why in ds.skipped] == [("broken.png", True)]
    assert [p.name for p in ds.unannotated] == ["b1.png"]
    assert ds.annotation_counts == {"mask": 3, "boxes": 2, "none": 0}
    assert [r.path.name for r in ds.records] == ["a0.png", "a1.png", "b0.png", "c0.png", "d0.png"]
    assert [r.label for r in ds.records] == [3, 3, 0, 9, 5]

    # two boxes of a 40x20 image at 16 px: x * 0.4, y * 0.8; its mask is their union (pixel centres inside)
    image, label, target = item(ds, "ant/a0.png")
    assert image.shape == (3, 16, 16) and label == 3
    assert target["boxes"].tolist() == [[0.0, 0.0, 4.0, 8.0], [8.0, 4.0, 16.0, 16.0]]
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[0:8, 0:4] = True
    expected[4:16, 8:16] = True
    assert torch.equal(target["mask"], expected)
    # a 20x10 mask of the top right quarter, nearest-resized to 16 px: rows 0..7, columns 8..15;
    # its box is the mask's tight box (10, 0, 20, 5) scaled by (0.8, 1.6)
    _, label, target = item(ds, "ant/a1.png")
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[0:8, 8:16] = True
    assert torch.equal(target["mask"], expected) and label == 3
    assert target["boxes"].tolist() == [[8.0, 0.0, 16.0, 8.0]]

    images, labels, targets = next(iter(data.loader(ds, batch_size=5)))
    assert images.shape == (5, 3, 16, 16) and labels.tolist() == [3, 3, 0, 9, 5]
    assert targets["mask"].shape == (5, 16, 16) and targets["boxes"].shape == (5, 2, 4)
    assert torch.isnan(targets["boxes"][1:, 1]).all()  # one box each, padded


def test_unannotated_keep_and_error(tmp_path):
    root = write_tree(tmp_path / "set")
    kept = data.load("annotated", "val", root=root, image_size=16, unannotated="keep")
    assert len(kept) == 6 and kept.unannotated == [] and kept.annotation_counts["none"] == 1
    _, label, target = item(kept, "bee/b1.png")
    assert label == 0 and target["boxes"].shape == (0, 4) and not target["mask"].any()
    with pytest.raises(DatasetError, match=r"b1\.png.*neither a row in boxes\.csv nor a mask"):
        data.load("annotated", "test", root=root, unannotated="error")


def test_without_class_map_or_annotations(tmp_path):
    root = tmp_path / "plain"
    for rel in ("b/1.png", "a/1.png", "a/2.jpg"):
        picture(root / rel, (12, 9))
    ds = data.load("annotated", "train", root=root, image_size=8)
    assert ds.classes == ["a", "b"] == ds.folder_classes and ds.class_map is None and ds.num_model_classes == 2
    assert ds.annotations == () and [r.label for r in ds.records] == [0, 0, 1] and ds.skipped == []
    assert ds[0][2] == {}
    with pytest.raises(DatasetError, match=r"num_classes=10 but .* has 2 class folders and no class map"):
        data.load("annotated", "test", root=root, num_classes=10)
    # the class_index option (a mapping, or the string `-o class_index=...` passes) overrides classes.txt
    (root / "classes.txt").write_text("a 0\nb 1\n")
    with pytest.raises(DatasetError, match=r"num_classes=5 but the class map \(classes\.txt\) uses output index 9"):
        data.load("annotated", "test", root=write_tree(tmp_path / "set"), num_classes=5)
    for option in ({"a": 7, "b": 2}, "a=7,b=2"):
        mapped = data.load("annotated", "test", root=root, class_index=option, num_classes=1000)
        assert mapped.class_map == "class_index" and mapped.num_model_classes == 1000
        assert [r.label for r in mapped.records] == [7, 7, 2]


def test_split_folders(tmp_path):
    root = tmp_path / "splits"
    picture(root / "train" / "x" / "1.png", (10, 10))
    picture(root / "val" / "x" / "1.png", (10, 10))
    picture(root / "val" / "y" / "1.png", (10, 10))
    (root / "boxes.csv").write_text("file,x0,y0,x1,y1\nval/y/1.png,0,0,5,5\ntrain/x/1.png,1,1,2,2\n")
    val = data.load("annotated", "val", root=root, image_size=10, unannotated="keep")
    assert len(val) == 2 and val.classes == ["x", "y"] and val.annotations == ("boxes",)
    assert val[1][2]["boxes"].tolist() == [[0.0, 0.0, 5.0, 5.0]]
    train = data.load("annotated", "train", root=root, image_size=10)
    assert train.classes == ["x", "y"] and len(train) == 1  # labels agree across splits
    with pytest.raises(DatasetError, match=r"split folders \['val', 'train'\] but no 'test' folder"):
        data.load("annotated", "test", root=root)


@pytest.mark.parametrize("edit, message", [
    (lambda r: (r / "boxes.csv").write_text("file,x0,y0,x1,y1\ncat/c0.png,0,0,50,10\n"),
     r"boxes\.csv' line 2 \(cat/c0\.png\): box 0 \(0, 0, 50, 10\) lies outside the 20x10 image"),
    (lambda r: mask(r / "masks" / "dog" / "d0.png", 10, 10, (slice(0, 2), slice(0, 2))),
     r"mask '.*d0\.png' is 10x10 but its image '.*d0\.png' is 20x10"),
    (lambda r: (r / "boxes.csv").write_text("path,x,y,w,h\ncat/c0.png,0,0,5,5\n"),
     r"boxes\.csv': the header must name the columns file,x0,y0,x1,y1; got path,x,y,w,h"),
    (lambda r: (r / "boxes.csv").write_text("file,x0,y0,x1,y1\ncat/c0.png,0,0,5\n"),
     r"boxes\.csv' line 2: expected 5 fields"),
    (lambda r: (r / "boxes.csv").write_text("file,x0,y0,x1,y1\ncat/c0.png,0,0,5,five\n"),
     r"boxes\.csv' line 2: x0,y0,x1,y1 must be numbers"),
    (lambda r: (r / "boxes.csv").write_text("file,x0,y0,x1,y1\ncat/zz.png,0,0,5,5\n"),
     r"boxes\.csv' line 2: file 'cat/zz\.png' does not exist"),
    (lambda r: (r / "boxes.csv").write_text("file,x0,y0,x1,y1\n../cat/c0.png,0,0,5,5\n"),
     r"boxes\.csv' line 2: file '\.\./cat/c0\.png' must be a path relative to"),
    (lambda r: (r / "classes.txt").write_text("ant 3\nbee three\n"),
     r"classes\.txt' line 2: expected '<folder name> <model output index>'"),
    (lambda r: (r / "classes.txt").write_text("ant 3\nbee 0\ncat 9\ndog 5\nzebra 2\n"),
     r"classes\.txt': names folder 'zebra', which is not a class folder"),
    (lambda r: (r / "classes.txt").write_text("ant 3\nbee 0\nant 4\n"),
     r"classes\.txt' line 3: folder 'ant' is listed twice"),
    (lambda r: (r / "classes.txt").write_text("ant 3\nbee 0\ncat 9\n"),
     r"classes\.txt': class folders \['dog'\] have no model output index"),
])
def test_bad_input_is_one_line_naming_the_file(tmp_path, edit, message):
    root = write_tree(tmp_path / "set")
    edit(root)
    with pytest.raises(DatasetError, match=message) as caught:
        data.load("annotated", "test", root=root, image_size=16)
    assert "\n" not in str(caught.value)


def test_verify_finds_truncated_images(tmp_path):
    root = write_tree(tmp_path / "set")
    path = root / "dog" / "d1.jpg"
    picture(path, (64, 64))
    path.write_bytes(path.read_bytes()[:-200])  # a valid header, part of the pixels
    ds = data.load("annotated", "test", root=root, unannotated="keep")
    assert len(ds.skipped) == 1 and len(ds) == 7  # the header alone reads fine; decoding the item fails
    with pytest.raises(DatasetError, match=r"annotated image 'dog/d1\.jpg': cannot read image"):
        item(ds, "dog/d1.jpg")
    ds = data.load("annotated", "test", root=root, unannotated="keep", verify=True)
    assert sorted(p.name for p, _ in ds.skipped) == ["broken.png", "d1.jpg"] and len(ds) == 6


def test_cli_check_and_preview(tmp_path):
    root = write_tree(tmp_path / "set")
    runner = CliRunner()
    result = runner.invoke(main, ["datasets", "check", "annotated", "--root", str(root), "--image-size", "16", "--verify"])
    assert result.exit_code == 0, result.output
    assert "annotated/test: 5 images, 10 classes, 16px, annotations: mask, boxes" in result.output
    assert re.search(r"annotated/test: skipped 1 unreadable image\(s\): \S*broken\.png \(not a readable", result.output)
    assert re.search(r"annotated/test: left out 1 of 6 images \(bee 1 of 2\): they have neither a row in boxes\.csv "
                     r"nor a mask in masks/.*-o unannotated=error.* e\.g\. '\S*b1\.png'", result.output)
    out = tmp_path / "grid.png"
    result = runner.invoke(main, ["datasets", "preview", "annotated", "--root", str(root), "--out", str(out),
                                  "--image-size", "16", "--rows", "1", "--cols", "5"])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (5 * 18 - 2, 16)
    result = runner.invoke(main, ["datasets", "list"])
    assert "annotated" in result.output


def test_boxes_are_in_the_upright_image(tmp_path):
    """A phone photo stored 20x10 with EXIF orientation 6 is shown (and loaded) 10 wide, 20 tall."""
    root = tmp_path / "exif"
    (root / "a").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    picture(root / "a" / "p.jpg", (20, 10), exif=exif)
    (root / "boxes.csv").write_text("file,x0,y0,x1,y1\na/p.jpg,0,10,10,20\n")
    ds = data.load("annotated", "test", root=root, image_size=20)
    assert ds[0][2]["boxes"].tolist() == [[0.0, 10.0, 20.0, 20.0]]
    (root / "boxes.csv").write_text("file,x0,y0,x1,y1\na/p.jpg,10,0,20,10\n")
    with pytest.raises(DatasetError, match="outside the 10x20 image"):
        data.load("annotated", "test", root=root)


@pytest.mark.parametrize("option, message", [
    ("ant=3,bee", r"class_index must be 'folder=index,folder=index,\.\.\.'"),
    ({"ant": -1}, r"class_index\['ant'\] must be an integer >= 0"),
    ({"ant": "x"}, r"class_index\['ant'\] must be an integer >= 0"),
    (["ant"], r"class_index must map folder names to model output indices"),
    ({"ant": 1, "bee": 2, "cat": 3}, r"class_index: class folders \['dog'\] have no model output index"),
])
def test_bad_class_index_option(tmp_path, option, message):
    with pytest.raises(DatasetError, match=message):
        data.load("annotated", "test", root=write_tree(tmp_path / "set"), class_index=option)
