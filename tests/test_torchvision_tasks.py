"""torchvision segmenters and detectors by name: built offline, class count read per family, weights round-trip."""

from __future__ import annotations

import argparse

import pytest
import torch

from camzoo.models.loading import ModelSpecError, load_any_model
from camzoo.models.torchvision_models import FAMILIES, head_classes

TINY_DETECTOR = {"min_size": 64, "max_size": 64, "box_score_thresh": 0.0}

# one cheap member per family, with the class count a reader that took the last Linear / conv
# would get instead (Faster R-CNN: the box regressor's 4 x K rows; anchor heads: anchors x K rows)
PER_FAMILY = ["fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large",
              "fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn", "fcos_resnet50_fpn",
              "ssdlite320_mobilenet_v3_large"]


@pytest.fixture
def no_downloads(monkeypatch):
    """Any attempt to fetch weights fails the test."""
    import torch.hub
    import torchvision.models._api as tv_api

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args[:1]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", refuse, raising=False)
    monkeypatch.setattr(tv_api.WeightsEnum, "get_state_dict", refuse)


def test_the_guard_catches_a_builders_default_backbone_download(no_downloads):
    import torchvision

    with pytest.raises(AssertionError, match="a download was attempted"):
        torchvision.models.get_model("lraspp_mobilenet_v3_large", weights=None)  # weights_backbone defaults to ImageNet


def test_every_family_has_a_member():
    import torchvision

    names = [n for m in (torchvision.models.segmentation, torchvision.models.detection)
             for n in torchvision.models.list_models(module=m)]
    assert {next(p for p in FAMILIES if n.startswith(p)) for n in PER_FAMILY} == set(FAMILIES)
    assert set(PER_FAMILY) <= set(names)


@pytest.mark.parametrize("arch", PER_FAMILY)
def test_class_count_is_read_from_each_familys_head(arch, no_downloads):
    import torchvision

    model = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=5)
    state = model.state_dict()
    assert head_classes(arch, state) == 5
    wrong = [v for v in state.values() if v.ndim >= 2][-1].shape[0]  # the last Linear / conv's rows
    if arch.startswith(("fasterrcnn", "retinanet", "ssdlite")):
        assert wrong != 5  # so the family rule is needed
    assert head_classes(arch, {}) is None  # weights of another architecture: not guessed


def test_segmenter_round_trips_and_is_marked(tmp_path, no_downloads):
    torch.manual_seed(0)
    model = load_any_model("torchvision:fcn_resnet50", None, 3)
    assert model.task == "segmentation" and model.num_classes == 3
    assert model.pretrained_cfg["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert "input_size" not in model.pretrained_cfg
    torch.save(model.state_dict(), tmp_path / "fcn.pth")
    loaded = load_any_model("torchvision:fcn_resnet50", tmp_path / "fcn.pth")
    assert loaded.num_classes == 3 and not loaded.training
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = model.eval()(images)["out"], loaded(images)["out"]
    assert got.shape == (2, 3, 64, 64)
    torch.testing.assert_close(got, expected)


def test_detector_round_trips_from_a_reference_script_checkpoint(tmp_path, no_downloads):
    torch.manual_seed(0)
    name = "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn"
    model = load_any_model(name, None, 4, factory_kwargs=TINY_DETECTOR)
    assert model.task == "detection" and model.num_classes == 4
    assert model.pretrained_cfg["mean"] == (0.0, 0.0, 0.0) and model.pretrained_cfg["std"] == (1.0, 1.0, 1.0)
    assert "input_size" not in model.pretrained_cfg
    assert model.transform.min_size == (64,) and model.roi_heads.score_thresh == 0.0
    # torchvision's reference train.py: {"model": ..., "optimizer": ..., "args": Namespace, "epoch": ...};
    # a pretrained backbone's FrozenBatchNorm2d leaves no num_batches_tracked in the weights
    weights = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"model": weights, "args": argparse.Namespace(lr=0.02, aux_loss=False), "epoch": 3},
               tmp_path / "checkpoint.pth")
    loaded = load_any_model(name, tmp_path / "checkpoint.pth", factory_kwargs=TINY_DETECTOR)
    assert loaded.num_classes == 4
    images = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        expected, got = model.eval()(list(images)), loaded(list(images))
    assert len(got) == 2 and len(got[0]["boxes"]) > 0  # box_score_thresh=0 keeps boxes of a random model
    for a, b in zip(expected, got):
        for key in ("boxes", "labels", "scores"):
            torch.testing.assert_close(b[key], a[key])


def test_aux_head_in_the_weights_builds_one(tmp_path, no_downloads):
    import torchvision

    model = torchvision.models.get_model("fcn_resnet50", weights=None, weights_backbone=None, num_classes=2,
                                         aux_loss=True)
    torch.save(model.state_dict(), tmp_path / "aux.pth")
    loaded = load_any_model("torchvision:fcn_resnet50", tmp_path / "aux.pth")
    assert loaded.aux_classifier is not None and loaded.num_classes == 2
    with pytest.raises(ModelSpecError, match="unexpected keys: aux_classifier"):
        load_any_model("torchvision:fcn_resnet50", tmp_path / "aux.pth", factory_kwargs={"aux_loss": False})


def test_unsupported_and_downloading_names_are_refused(no_downloads):
    for arch in ("maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn", "raft_small"):
        with pytest.raises(ModelSpecError, match=f"'{arch}' is not supported.*fasterrcnn_\\*") as info:
            load_any_model(f"torchvision:{arch}", None)
        assert "\n" not in str(info.value) and info.value.param == "model"
    with pytest.raises(ModelSpecError, match="Similar names: torchvision:deeplabv3_resnet50"):
        load_any_model("torchvision:deeplabv3_resnet5", None)
    with pytest.raises(ModelSpecError, match="'weights_backbone' is not allowed"):
        load_any_model("torchvision:fcn_resnet50", None, factory_kwargs={"weights_backbone": "DEFAULT"})
    # torchvision would drop a misspelt option silently
    with pytest.raises(ModelSpecError, match="takes no option 'box_score_tresh' .did you mean 'box_score_thresh'") as info:
        load_any_model("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", None,
                       factory_kwargs={"box_score_tresh": 0.0})
    assert info.value.param == "factory-kwargs"
    with pytest.raises(ModelSpecError, match="takes no option 'min_size'"):
        load_any_model("torchvision:fcn_resnet50", None, factory_kwargs={"min_size": 64})
