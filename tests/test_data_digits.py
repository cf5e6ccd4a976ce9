"""The built-in ``digits`` dataset (scikit-learn's bundled handwritten digits): contract, split, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from camzoo.cli import main
from camzoo.data import DATASETS, load
from camzoo.data.digits import CLASSES, MEAN, STD, load_digits, split_indices


def test_items_follow_the_data_contract() -> None:
    ds = load("digits", "test")                   # no root: nothing on disk is needed
    assert ds.name == "digits" and ds.split == "test" and ds.image_size == 32
    assert ds.classes == [str(d) for d in range(10)] == CLASSES
    assert ds.annotations == () and DATASETS["digits"].annotations == ()
    image, label, target = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 10 and target == {}
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])   # grey in 3 channels
    small = load("digits", "train", image_size=8, num_images=5)
    assert len(small) == 5 and small.images.shape == (5, 3, 8, 8)


def test_pixels_and_labels_are_scikit_learns() -> None:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    ds = load_digits("val", image_size=8)          # native size: no resampling
    index = split_indices(torch.from_numpy(bunch.target), "val")
    expected = np.round(bunch.images[index.numpy()] / 16 * 255).astype(np.uint8)
    assert np.array_equal(ds.images[:, 0].numpy(), expected)
    assert np.array_equal(ds.labels.numpy(), bunch.target[index.numpy()])
    images, _, _ = ds.get_batch(range(3))
    raw = ds.images[:3].float() / 255
    torch.testing.assert_close(images, (raw - MEAN[0]) / STD[0])


def test_splits_are_seeded_stratified_disjoint_and_complete() -> None:
    from sklearn.datasets import load_digits as sklearn_digits

    labels = torch.from_numpy(sklearn_digits().target)
    parts = {s: split_indices(labels, s, seed=0) for s in ("train", "val", "test")}
    joined = torch.cat(list(parts.values()))
    assert joined.numel() == 1797 and torch.unique(joined).numel() == 1797
    sizes = {s: p.numel() for s, p in parts.items()}
    assert sizes == {"train": 1262, "val": 180, "test": 355}
    for split, fraction in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        per_class = torch.bincount(labels[parts[split]], minlength=10).float()
        share = per_class / torch.bincount(labels).float()
        assert float((share - fraction).abs().max()) < 0.011, split      # every class in proportion
    assert torch.equal(split_indices(labels, "test", seed=0), parts["test"])
    assert not torch.equal(split_indices(labels, "test", seed=1), parts["test"])


def test_mean_and_std_match_the_train_split() -> None:
    raw = load_digits("train").images[:, 0].float() / 255
    assert abs(float(raw.mean()) - MEAN[0]) < 0.002
    assert abs(float(raw.std()) - STD[0]) < 0.002


def test_bad_arguments_fail_clearly() -> None:
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load("digits", "dev")
    with pytest.raises(ValueError, match="image_size must be an int >= 8"):
        load_digits("train", image_size=4)
    with pytest.raises(ValueError, match="unexpected keyword option"):
        load("digits", "train", num_classes=4)
    with pytest.raises(ValueError, match="num_images must be a positive int"):
        load_digits("train", num_images=0)


def test_cli_preview_and_train(tmp_path) -> None:
    runner = CliRunner()
    out = tmp_path / "digits.png"
    result = runner.invoke(main, ["datasets", "preview", "digits", "--out", str(out), "--rows", "2", "--cols", "3",
                                  "--image-size", "16"])
    assert result.exit_code == 0, result.output
    from PIL import Image

    assert Image.open(out).size == (3 * 16 + 2 * 2, 2 * 16 + 2)
    listed = runner.invoke(main, ["datasets", "list"])
    assert "digits" in listed.output
    run = tmp_path / "run"
    result = runner.invoke(main, [
        "train", "--kind", "baseline", "--backbone", "resnet8", "--dataset", "digits", "--image-size", "16",
        "--epochs", "1", "--batch-size", "32", "--out", str(run), "--device", "cpu", "--no-progress",
        "--dataset-option", "num_images=64",
    ])
    assert result.exit_code == 0, result.output
    assert "test acc" in result.output
    from camzoo.models import load_model

    model = load_model(run / "model.pt")
    assert model.class_names == CLASSES and model.num_classes == 10
    assert tuple(model.pretrained_cfg["mean"]) == pytest.approx(MEAN)
