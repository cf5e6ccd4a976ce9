"""Bring-your-own models in `camzoo bench`, read exactly as `camzoo explain` reads them.

A factory whose model returns a dataclass, a Hugging Face-style ``ModelOutput`` or a tuple is scored
(``--output`` / ``output =`` name another key); a grayscale timm state dict is scored on colour photos
(their luma, as explain gives them); the class count is the output's own, not the last Linear's (an
auxiliary head registered after the classifier); and ``camzoo.explain`` and ``camzoo explain`` size
one photo the same way, so they give one map.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from camzoo.cli import main
from helpers import cli, timm_model, timm_weights, write_folder

# The user's own package: one network, returning its logits in each of the shapes users' models do.
FACTORY = '''
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Out:
    logits: torch.Tensor
    features: torch.Tensor


class ModelOutput(OrderedDict):
    """Hugging Face's ModelOutput: an OrderedDict whose keys are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Net(nn.Module):
    def __init__(self, num_classes=4, returns="tensor", aux=0):
        super().__init__()
        self.returns = returns
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.layer = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)
        if aux:  # an auxiliary head registered after the classifier
            self.aux = nn.Linear(8, aux)

    def forward(self, x):
        features = self.layer(self.conv(x).relu()).relu()
        logits = self.fc(features.mean((2, 3)))
        return {"tensor": lambda: logits, "dataclass": lambda: Out(logits, features),
                "modeloutput": lambda: ModelOutput(logits=logits, features=features),
                "tuple": lambda: (logits, features), "named": lambda: {"scores": logits, "features": features},
                }[self.returns]()


def build(num_classes=4, returns="tensor", aux=0):
    return Net(num_classes, returns, aux)
'''
SHAPES = ("dataclass", "modeloutput", "tuple")
LIGHT = "[eval]\nimages = 4\ngame_images = 4\ndeletion_steps = 4\nsubstrates = []\n"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("byo") / "photos", per_class=2, side=32)


@pytest.fixture
def package(tmp_path, monkeypatch) -> Path:
    """byo_nets.py on sys.path, and one set of weights every output shape loads (a.pth)."""
    (tmp_path / "byo_nets.py").write_text(FACTORY, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "byo_nets", raising=False)
    import byo_nets

    torch.manual_seed(0)
    torch.save(byo_nets.build().state_dict(), tmp_path / "a.pth")
    return tmp_path


def bench(*arguments: str):
    return CliRunner().invoke(main, ["bench", "--no-progress", "--no-html", *arguments])


def test_outputs_of_every_shape_are_read_as_explain_reads_them(folder, package):
    """One run, one entry per output shape, the same weights: every entry scores exactly the same."""
    entries = "".join(f'''
[[models]]
name = "byo_nets:build"
label = "{shape}"
checkpoints = ["{package / 'a.pth'}"]
options = {{returns = "{shape}"}}
{'output = "scores"' if shape == "named" else ""}
''' for shape in (*SHAPES, "named"))
    config = package / "byo.toml"
    config.write_text(f'methods = ["gradcam", "random"]\n{entries}\n[[datasets]]\nname = "annotated"\n'
                      f'root = "{folder}"\nimage_size = 32\n{LIGHT}', encoding="utf-8")
    result = bench("--config", str(config), "--out", str(package / "out"))
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(package / "out" / "summary.csv")
    gradcam = summary[summary["method"] == "gradcam"].set_index("backbone")
    assert set(gradcam.index) == {*SHAPES, "named"}
    for column in ("top1_mean", "deletion_mean", "insertion_mean", "pointing_game_mean"):
        values = gradcam[column].to_numpy()
        assert np.isfinite(values).all() and np.ptp(values) == 0, (column, values)


def test_camzoo_bench_output_names_the_logits(folder, package):
    flags = ["--model", "byo_nets:build", "--checkpoint", str(package / "a.pth"), "--data", str(folder),
             "--methods", "gradcam", "--images", "4", "--image-size", "32", "--config", str(package / "light.toml")]
    (package / "light.toml").write_text(LIGHT, encoding="utf-8")
    # build returns a tensor unless told: a dict without "logits" needs --output, said in one line
    (package / "byo_nets.py").write_text(FACTORY.replace('returns="tensor"', 'returns="named"'), encoding="utf-8")
    sys.modules.pop("byo_nets", None)
    refused = bench(*flags, "--out", str(package / "refused"))
    assert refused.exit_code != 0 and "Traceback" not in refused.output, refused.output
    assert "none is called 'logits'" in refused.output and "--output" in refused.output, refused.output
    assert "(or a callable)" not in refused.output  # not something a command line or a TOML file can give
    result = bench(*flags, "--output", "scores", "--out", str(package / "out"))
    assert result.exit_code == 0, result.output
    printed = bench(*flags, "--output", "scores", "--print-config")
    assert 'output = "scores"' in printed.output, printed.output
    summary = pd.read_csv(package / "out" / "summary.csv")
    assert np.isfinite(summary[summary["method"] == "gradcam"]["deletion_mean"]).all()


def test_a_grayscale_timm_state_dict_is_benched_on_colour_photos(folder, tmp_path):
    gray = timm_weights(tmp_path / "gray.pth", "resnet10t", 0, num_classes=4, in_chans=1)
    config = tmp_path / "light.toml"
    config.write_text(LIGHT.replace("substrates = []", 'substrates = ["road"]'), encoding="utf-8")
    result = bench("--model", "resnet10t", "--checkpoint", str(gray), "--data", str(folder), "--methods", "gradcam",
                   "--image-size", "32", "--config", str(config), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("method")
    for column in ("top1_mean", "deletion_mean", "srg_road_mean", "pointing_game_mean", "random_logit_similarity_mean"):
        assert np.isfinite(summary.loc["gradcam", column]), column
    for method in ("edges", "oracle"):  # the controls draw on the gray images too
        assert np.isfinite(summary.loc[method, "pointing_game_mean"]), method


def test_the_grid_games_wrap_a_grayscale_model():
    """No random model qualifies a grid in a test; the DiFull / DiPart wrappers themselves take one channel."""
    from camzoo.metrics.grid_models import grid_wrapper

    model = timm_model("resnet10t", 0, num_classes=4, in_chans=1)
    for kind in ("difull", "dipart"):
        assert grid_wrapper(kind, model, 2, cell_size=32)(torch.randn(1, 1, 64, 64)).shape == (1, 16)


def test_the_bench_gives_a_grayscale_model_the_pixels_explain_gives_it(folder, tmp_path):
    """The same photo at its own size: the bench's evaluation image is camzoo.explain's input, luma and all."""
    from camzoo.bench.datasets import DatasetData
    from camzoo.bench.evaluation import EvalStream
    from camzoo.bench.sources import ModelSource
    from camzoo.bench.specs import DatasetSpec
    from camzoo.inputs import prepare_images

    source = ModelSource("resnet10t", str(timm_weights(tmp_path / "gray.pth", "resnet10t", 0, num_classes=4,
                                                       in_chans=1)), "gray", {}, None)
    model = source.load()
    spec, _ = DatasetSpec.parse({"name": "annotated", "root": str(folder), "image_size": 32})
    data = DatasetData(spec, lambda split: EvalStream(split, 2, 2, torch.device("cpu")))
    _, stream = source.evaluation(model, data)
    first = stream.first.images[0]
    assert first.shape == (1, 32, 32)
    # the bench deals the folder's images by class (stratified), so its first image is one of the photos
    photos = sorted(folder.rglob("*.png"))
    explained = [prepare_images(photo, model, image_size=32)[0] for photo in photos]
    closest = min(range(len(photos)), key=lambda i: float((explained[i] - first).abs().max()))
    torch.testing.assert_close(first, explained[closest], atol=1e-5, rtol=0)


def test_the_class_count_is_the_outputs_own_not_the_last_linears(folder, package):
    """fc (3 classes) makes the output; aux (4) is registered after it."""
    import byo_nets

    from camzoo.models.loading import load_any_model

    torch.save(byo_nets.build(num_classes=3, aux=4).state_dict(), package / "aux.pth")
    model = load_any_model("byo_nets:build", package / "aux.pth", factory_kwargs={"aux": 4})
    assert model.fc.out_features == 3 and model(torch.zeros(1, 3, 16, 16)).shape == (1, 3)
    # explain reads it so too: a target of 3 is out of range for the output's 3 classes, not the aux head's 4
    photo = folder / "ant" / "ant0.png"
    flags = ["--model", "byo_nets:build", "--model-option", "aux=4", "--checkpoint", package / "aux.pth",
             "--image-size", "32"]
    assert cli("explain", photo, *flags, "--out", package / "maps").exit_code == 0
    refused = cli("explain", photo, *flags, "--target", "3", "--out", package / "maps")
    assert refused.exit_code == 2 and "for a model with 3 classes" in refused.output, refused.output
    # the bench on a 4-class folder: the count that does not fit names the layer and the shape it came from
    config = package / "aux.toml"
    config.write_text(f'methods = ["gradcam"]\n[[models]]\nname = "byo_nets:build"\ncheckpoints = ["{package / "aux.pth"}"]\n'
                      f'options = {{aux = 4}}\n[[datasets]]\nname = "annotated"\nroot = "{folder}"\nimage_size = 32\n',
                      encoding="utf-8")
    result = bench("--config", str(config), "--check", "--no-estimate")
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert "the model has 3 outputs but the dataset has 4 classes" in result.output, result.output
    assert "shape (1, 3), comes from layer 'fc'" in result.output, result.output


@pytest.mark.parametrize("declares", ["torchvision", "nothing"])
def test_the_api_and_the_command_line_give_one_map(package, declares):
    """One rule for both: the model's declared size (a torchvision classifier's 224, however it was
    built), else the photo's own (a factory's model that declares none)."""
    import torchvision
    from PIL import Image

    import camzoo

    photo = package / "cat.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 451, 3), np.uint8)).save(photo)
    torch.manual_seed(0)
    if declares == "torchvision":
        model, name, side = torchvision.models.resnet18(num_classes=3).eval(), "torchvision:resnet18", (224, 224)
    else:
        import byo_nets

        model, name, side = byo_nets.build(num_classes=3).eval(), "byo_nets:build", (300, 451)
    torch.save(model.state_dict(), package / "weights.pth")
    exp = camzoo.explain(model, photo)
    assert tuple(exp.maps.shape[-2:]) == side
    result = cli("explain", photo, "--model", name, "--checkpoint", package / "weights.pth", "--save-maps",
                 "--out", package / "maps")
    assert result.exit_code == 0, result.output
    saved = np.load(package / "maps" / "cat_gradcam.npy").astype(np.float32)
    assert saved.shape == (300, 451)
    np.testing.assert_allclose(saved, exp.map_at(0, (300, 451)).numpy(), atol=2e-3)
