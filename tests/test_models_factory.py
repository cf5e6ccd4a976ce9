"""load_any_model with the user's own module (``package.module:factory``) and constructor keyword arguments."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest
import torch
from torch import nn

from camzoo.models.loading import ModelSpecError, load_any_model

MODULE = '''
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, width, num_classes=10, in_chans=3):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, width, 3, padding=1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def build(width=4, num_classes=10, in_chans=3):
    return Tiny(width, num_classes, in_chans)


def fixed(width=4):
    return Tiny(width, 7)


def not_a_model():
    return "hello"


class Zoo:
    @staticmethod
    def small(**kwargs):
        return Tiny(2, **kwargs)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module ``camzoo_test_nets`` on sys.path; removed from sys.modules afterwards."""
    name = "camzoo_test_nets"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the working-directory fallback may append to it
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name
    sys.modules.pop(name, None)


def test_factory_with_kwargs_and_state_dict(tmp_path, user_module):
    mod = __import__(user_module)
    trained = mod.build(width=6, num_classes=4)
    torch.save(trained.state_dict(), tmp_path / "w.pth")
    # the class count is read from the weights; width comes from the keyword arguments
    model = load_any_model(f"{user_module}:build", tmp_path / "w.pth", factory_kwargs={"width": 6})
    assert isinstance(model, nn.Module) and not model.training
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model(x), trained.eval()(x))
    # without the keyword arguments the weights do not fit, and the message names the keys and shapes
    with pytest.raises(ModelSpecError, match=r"does not fit model 'camzoo_test_nets:build': .*conv\.weight") as err:
        load_any_model(f"{user_module}:build", tmp_path / "w.pth")
    assert err.value.param == "checkpoint" and "\n" not in str(err.value)
    # no checkpoint: the factory's own defaults, num_classes passed through (also inside factory_kwargs)
    assert load_any_model(f"{user_module}:build", None, 3).head.out_features == 3
    assert load_any_model(f"{user_module}:build", None, factory_kwargs={"num_classes": 5}).head.out_features == 5
    assert load_any_model(f"{user_module}:Zoo.small", None, 2).conv.out_channels == 2


def test_factory_grayscale_and_fixed_head(tmp_path, user_module):
    mod = __import__(user_module)
    torch.save(mod.build(num_classes=2, in_chans=1).state_dict(), tmp_path / "gray.pth")
    assert load_any_model(f"{user_module}:build", tmp_path / "gray.pth").conv.in_channels == 1
    # a factory without num_classes: loads its own head, refuses an explicit class count
    torch.save(mod.fixed().state_dict(), tmp_path / "fixed.pth")
    assert load_any_model(f"{user_module}:fixed", tmp_path / "fixed.pth").head.out_features == 7
    with pytest.raises(ModelSpecError, match="takes no num_classes parameter"):
        load_any_model(f"{user_module}:fixed", None, 7)


def test_pickled_model_is_refused(tmp_path, user_module):
    mod = __import__(user_module)
    torch.save(mod.build(), tmp_path / "whole.pt")  # the whole module object: a pickle of user code
    with pytest.raises(ModelSpecError, match="refuses to unpickle") as err:
        load_any_model(f"{user_module}:build", tmp_path / "whole.pt")
    assert err.value.param == "checkpoint" and "\n" not in str(err.value)


@pytest.mark.parametrize("name, kwargs, message", [
    ("camzoo_test_nets:nothere", None, r"module 'camzoo_test_nets' has no attribute 'nothere'"),
    ("camzoo_no_such_module_x:build", None, r"cannot import 'camzoo_no_such_module_x' .*No module named"),
    ("camzoo_test_nets:not_a_model", None, r"cannot build model .*returned a str, not an nn.Module"),
    ("camzoo_test_nets:build", {"depth": 3}, r"cannot build model .*TypeError: .*depth"),
    ("camzoo_test_nets:build", {"num_classes": 3, 1: 2}, r"model arguments must be a mapping of names"),
    ("camzoo_test_nets:bu-ild", None, r"is not an import path; expected package\.module:factory"),
])
def test_factory_errors_are_one_line(user_module, name, kwargs, message):
    with pytest.raises(ModelSpecError, match=message) as err:
        load_any_model(name, None, factory_kwargs=kwargs)
    assert "\n" not in str(err.value)


def test_timm_factory_kwargs(tmp_path):
    pytest.importorskip("timm")
    model = load_any_model("resnet10t", None, 3, factory_kwargs={"in_chans": 1})
    assert model.conv1[0].in_channels == 1 and model.fc.out_features == 3
    torch.save(model.state_dict(), tmp_path / "g.pth")
    assert load_any_model("resnet10t", tmp_path / "g.pth").conv1[0].in_channels == 1
    with pytest.raises(ModelSpecError, match="never downloads"):
        load_any_model("resnet10t", None, factory_kwargs={"pretrained": True})
    with pytest.raises(ModelSpecError, match="contradicts num_classes=4"):
        load_any_model("resnet10t", None, 4, factory_kwargs={"num_classes": 3})


def test_module_in_the_working_directory(tmp_path, monkeypatch):
    """A console script's sys.path lacks the working directory; a module there is still found."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "camzoo_cwd_nets.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(folder))])
    monkeypatch.chdir(folder)
    monkeypatch.delitem(sys.modules, "camzoo_cwd_nets", raising=False)
    try:
        assert load_any_model("camzoo_cwd_nets:build", None, 2).head.out_features == 2
        assert os.getcwd() in sys.path
    finally:
        sys.modules.pop("camzoo_cwd_nets", None)
