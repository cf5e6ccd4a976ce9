"""The wrapper methods, ``sess(INNER)`` and ``refinecam(INNER)``, against pytorch-grad-cam 1.5.7's
``SESS`` and ``RefineCAM``, and the ``WRAPPER(INNER)`` name everywhere a method name goes.

Both references return maps at the input's size, min-max normalised per image; ours are compared
with them after min-max, within 1e-4 (max abs difference), on a random-init timm ResNet-18 (its
maps are not flat at these sizes: asserted) and on a small CNN, for several targets and images.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import camzoo
from camzoo.methods import get_method, select_methods, split_layer
from camzoo.methods.registry import describe, method_facts
from camzoo.metrics.context import MethodSpec
from helpers import camzoo_checkpoint, cli, minmax, picture, usage_error


@pytest.fixture(scope="module")
def resnet():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=5).eval()
    return model, torch.randn(3, 3, 40, 48), torch.tensor([0, 3, 1])


@pytest.fixture(scope="module")
def small_cnn():
    torch.manual_seed(1)
    model = nn.Sequential(OrderedDict(
        c1=nn.Conv2d(3, 8, 3, padding=1), r1=nn.ReLU(), c2=nn.Conv2d(8, 12, 3, stride=2, padding=1), r2=nn.ReLU(),
        c3=nn.Conv2d(12, 16, 3, stride=2, padding=1), r3=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1),
        flat=nn.Flatten(), fc=nn.Linear(16, 4))).eval()
    return model, torch.randn(2, 3, 24, 28), torch.tensor([2, 0])


def reference_targets(labels: torch.Tensor) -> list:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return [ClassifierOutputTarget(int(c)) for c in labels]


def assert_equal_maps(ours: camzoo.Explanation, reference: np.ndarray) -> None:
    maps = ours.maps.numpy()
    assert maps.shape == reference.shape
    assert (maps.reshape(len(maps), -1).std(1) > 0.05).all(), "maps must be non-trivial"
    assert np.abs(minmax(maps) - minmax(reference)).max() <= 1e-4


SESS_CASES = {  # model, layer, options, image size: default fusion at scale 9/7 (see
    # test_the_resize_matrices_are_opencvs); pre-filter with max pooling; raw logits, theta, default scales
    "resnet-layer3": ("resnet", "layer3", {"scales": [56, 72], "step_size": 14}, (56, 56)),  # a window edge on a pixel
    "resnet-layer2-prefilter-max": ("resnet", "layer2", {"scales": [32, 40], "window_size": 32, "pre_filter_ratio": 0.4,
                                                          "pool": "max"}, None),
    "cnn-logits-theta": ("cnn", "c3", {"num_scales": 3, "use_softmax_scores": False, "theta": 0.1, "step_size": 12}, None),
}


@pytest.mark.parametrize("case", sorted(SESS_CASES))
def test_sess_equals_pytorch_grad_cam(resnet, small_cnn, case):
    import pytorch_grad_cam

    which, layer, options, size = SESS_CASES[case]
    model, images, labels = resnet if which == "resnet" else small_cnn
    if size is not None:
        images = torch.nn.functional.interpolate(images, size=size, mode="bilinear")
    ours = camzoo.explain(model, images, method="sess(gradcam)", target=labels, layer=layer,
                          method_options={**options, "progress": False})
    with pytorch_grad_cam.SESS(model, [model.get_submodule(layer)], base_method=pytorch_grad_cam.GradCAM,
                               **options) as cam:
        reference = cam(images, reference_targets(labels))
    model.zero_grad(set_to_none=True)
    assert ours.method == "sess(gradcam)" and ours.layer == layer and ours.raw.shape == images[:, 0].shape
    assert_equal_maps(ours, reference)


def test_sess_of_another_inner_method_and_the_predicted_class(small_cnn):
    """The inner method's own options pass through (Score-CAM's align_corners, as pytorch-grad-cam's);
    no target: the predicted class of the whole image, as the reference's."""
    import pytorch_grad_cam

    model, images, _ = small_cnn
    options = {"num_scales": 2, "step_size": 14}
    ours = camzoo.explain(model, images, method="sess(scorecam)", layer="c3",
                          method_options={**options, "align_corners": True, "progress": False})
    with pytorch_grad_cam.SESS(model, [model.c3], base_method=pytorch_grad_cam.ScoreCAM, **options) as cam:
        reference = cam(images, None)
    assert torch.equal(ours.targets, model(images).argmax(1))
    assert_equal_maps(ours, reference)


@pytest.mark.parametrize("which", ["resnet", "cnn"])
def test_refinecam_equals_pytorch_grad_cam(resnet, small_cnn, which):
    """Its layers by default: the model's last three stages (at this size ResNet-18's layer2..4)."""
    import pytorch_grad_cam

    model, images, labels = resnet if which == "resnet" else small_cnn
    layers = ["layer2", "layer3", "layer4"] if which == "resnet" else ["r1", "r2", "r3"]
    ours = camzoo.explain(model, images, method="refinecam", target=labels)
    assert ours.layer == "+".join(layers)
    explicit = camzoo.explain(model, images, method="refinecam(gradcampp)", target=labels, layer=layers)
    assert torch.equal(ours.maps, explicit.maps)
    reference = pytorch_grad_cam.RefineCAM(model, [model.get_submodule(n) for n in layers])(
        images, reference_targets(labels))
    model.zero_grad(set_to_none=True)
    assert_equal_maps(ours, reference)


def test_refinecams_default_layers_are_stages(small_cnn):
    """A camzoo model's stages by their stage names (not the trunk holding two of them), then its
    declared layer; under no_grad too, and under inference_mode for a gradient-free inner method."""
    resnet8 = camzoo.build_model("baseline", "resnet8", num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    assert camzoo.explain(resnet8, x, method="refinecam").layer == \
        "backbone.trunk.layer1+backbone.trunk.layer2+cam_hook"
    model, images, _ = small_cnn
    with torch.no_grad():
        assert camzoo.explain(model, images, method="refinecam").layer == "r1+r2+r3"
    with torch.inference_mode():
        assert camzoo.explain(model, images, method="refinecam(eigencam)").layer == "r1+r2+r3"


def test_refinecam_of_a_method_with_its_own_passes(small_cnn):
    """An inner method that is not one pass runs once per layer (Score-CAM, with its option)."""
    import pytorch_grad_cam

    model, images, labels = small_cnn
    ours = camzoo.explain(model, images, method="refinecam(scorecam)", target=labels, layer=["r2", "r3"],
                          method_options={"align_corners": True, "progress": False})
    reference = pytorch_grad_cam.RefineCAM(model, [model.r2, model.r3], base_method=pytorch_grad_cam.ScoreCAM)(
        images, reference_targets(labels))
    assert get_method("refinecam(scorecam)").cost == "per-channel"
    assert_equal_maps(ours, reference)


def test_torchcam_multiplies_at_the_finest_layer_instead(resnet):
    """TorchCAM's RefineCAM normalises each layer's map, resizes them to the finest layer's
    resolution (not the input's) and multiplies there: the documented difference, reproduced (with
    Grad-CAM inside, whose per-layer maps TorchCAM and camzoo compute alike)."""
    pytest.importorskip("torchcam")
    from torchcam.methods import GradCAM, RefineCAM

    from camzoo.maps import minmax_normalise

    model, images, labels = resnet
    layers = ["layer2", "layer3", "layer4"]
    with RefineCAM(model, layers, input_shape=tuple(images.shape[1:]), base_method=GradCAM) as extractor:
        theirs = extractor(labels.tolist(), model(images))[0].detach()
    raws = [camzoo.explain(model, images, method="gradcam", target=labels, layer=n).raw for n in layers]
    size = tuple(raws[0].shape[-2:])
    product = torch.stack([torch.nn.functional.interpolate(minmax_normalise(r)[:, None], size=size, mode="bilinear",
                                                           align_corners=False)[:, 0] for r in raws]).prod(0)
    assert np.abs(minmax(theirs.numpy()) - minmax(product.numpy())).max() <= 1e-4
    ours = camzoo.explain(model, images, method="refinecam(gradcam)", target=labels, layer=layers)
    assert theirs.shape[-2:] == size != ours.maps.shape[-2:]


def test_the_name_form_everywhere(small_cnn):
    model, images, labels = small_cnn
    assert get_method("SESS(Grad-CAM)") is get_method("sess(gradcam)")  # one class per pair, canonical name
    assert get_method("sess(gradcam)").name == "sess(gradcam)" and get_method("sess").name == "sess"
    assert split_layer("sess(gradcam)@c3") == ("sess(gradcam)", "c3")
    options = {"num_scales": 2, "progress": False}
    bare = camzoo.explain(model, images, method="sess", target=labels, method_options=options)
    named = camzoo.explain(model, images, method="sess(gradcam)@c2", target=labels, method_options=options)
    assert named.layer == "c2" and bare.method == "sess" and bare.layer == "r3"  # the inner method's automatic layer
    assert torch.equal(bare.maps, camzoo.explain(model, images, method="sess(gradcam)", target=labels,
                                                 method_options=options).maps)
    several = camzoo.explain(model, images, method=["refinecam(layercam)", "gradcam"], target=labels)
    assert list(several) == ["refinecam(layercam)", "gradcam"] and several["refinecam(layercam)"].layer == "r1+r2+r3"
    # a benchmark config's methods list; every wrapper is picked up by the selectors, bare
    assert select_methods(["SESS(Grad-CAM)@c3", "@family:wrapper", "refinecam(scorecam)"]) == [
        "sess(gradcam)@c3", "refinecam", "sess", "refinecam(scorecam)"]
    assert {"sess", "refinecam"} <= set(select_methods(["@all"])) and "sess" in select_methods(["@cost:iterative"])
    assert MethodSpec.parse("Sess(LayerCAM)@c3") == MethodSpec("sess(layercam)", "c3")
    # options: the wrapper's own and the inner method's, listed and checked together
    facts = method_facts("sess(scorecam)")
    assert "family wrapper; cost iterative" in facts and "num_scales (int = 12)" in facts and "align_corners" in facts
    info = describe("sess(layercam)")
    assert "layercam" in info.summary and info.paper == "Tursun et al. 2023"
    assert get_method("sess(scorecam)").check_options({"num_scales": 2, "align_corners": True, "memory_mb": 8.0})
    with pytest.raises(ValueError, match=r"does not take option\(s\) n_scales; its options: .*num_scales.*align_corners"):
        camzoo.explain(model, images, method="sess(scorecam)", method_options={"n_scales": 2})
    with pytest.raises(TypeError, match="option num_scales must be int"):
        camzoo.explain(model, images, method="sess", method_options={"num_scales": 2.5})
    with pytest.raises(ValueError, match="pool must be 'mean' or 'max'"):
        camzoo.explain(model, images, method="sess", method_options={"pool": "median"})
    with pytest.raises(ValueError, match="at least the window size 24; got \\[16\\]"):
        camzoo.explain(model, images, method="sess", method_options={"scales": [16, 32]})
    with pytest.raises(ValueError, match="'sess' explains classes only"):
        camzoo.explain(model, images, method="sess", target=[lambda out: out.sum()])


def test_a_base_keyword_reaches_the_inner_method_too(small_cnn):
    """output= tells the wrapper (its window scores) and the inner method (its maps) where the logits are."""
    model, images, labels = small_cnn

    class Scores(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"scores": self.net(x)}

    options = {"num_scales": 2, "progress": False}
    plain = camzoo.explain(model, images, method="sess", target=labels, layer="c3", method_options=options)
    keyed = camzoo.explain(Scores().eval(), images, method="sess", target=labels, layer="net.c3", output="scores",
                           method_options=options)
    assert torch.allclose(plain.maps, keyed.maps, atol=1e-6)


@pytest.mark.parametrize("name, message", [
    ("sesss(gradcam)", "unknown method 'sesss'. Did you mean 'sess'?"),
    ("sess(gradcm)", "unknown method 'gradcm'. Did you mean 'gradcam'"),
    ("gradcam(eigencam)", "'gradcam' does not wrap another method; the wrappers are"),
    ("sess(refinecam(gradcam))", "wrappers do not nest"),
    ("refinecam(sess)", "wrappers do not nest"),
    ("sess(oracle)", "'oracle' draws the ground truth"),
    ("sess()", "names no inner method"),
    ("sess(gradcam", "a wrapper is written WRAPPER(INNER)"),
    ("sess(gradcam@layer2)", "put the layer after the whole name, 'sess(gradcam)@layer2'"),
])
def test_bad_wrapper_names_fail_in_one_line(name, message):
    with pytest.raises(ValueError) as error:
        select_methods([name])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_cli_explains_with_a_wrapped_method(tmp_path):
    checkpoint = camzoo_checkpoint(tmp_path / "model.pt")
    photo = picture(tmp_path / "a.png", size=(40, 32))
    result = cli("explain", photo, "--checkpoint", checkpoint, "--method", "sess(gradcam)",
                 "--method-option", "num_scales=2", "--no-progress", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "a_sess(gradcam).png").is_file()
    usage_error(cli("explain", photo, "--checkpoint", checkpoint, "--method", "sess(gradcm)", "--out", tmp_path / "x"),
                "Did you mean 'gradcam'")
    listed = cli("methods").output
    assert "sess(INNER)" in listed and "[Tursun et al. 2023]" in listed and "refinecam(INNER)" in listed


def test_the_resize_matrices_are_opencvs():
    """Same coefficients as pytorch-grad-cam's cv2.resize (INTER_LINEAR), zeros included: at scale 9/7
    a position falls on a source pixel, where torch's float positions give a neighbour ~1e-7 and a
    pasted window's edge then counts as "above 0" in SESS's fusion."""
    import cv2

    from camzoo.methods.wrappers import resize_matrix

    image = np.random.default_rng(0).random((144, 45)).astype(np.float32)
    image[image < 0.5] = 0
    for (height, width), (new_height, new_width) in [((144, 45), (112, 32)), ((3, 5), (9, 15)), ((7, 7), (32, 40))]:
        source = image[:height, :width]
        expected = cv2.resize(source, (new_width, new_height))
        ours = (resize_matrix(height, new_height) @ torch.from_numpy(source) @ resize_matrix(width, new_width).T).numpy()
        assert np.abs(ours - expected).max() < 1e-6 and np.array_equal(ours == 0, expected == 0)
    torch_positions = torch.nn.functional.interpolate(torch.from_numpy(image)[None, None], size=(112, 32),
                                                      mode="bilinear", align_corners=False)[0, 0].numpy()
    assert not np.array_equal(torch_positions == 0, cv2.resize(image, (32, 112)) == 0)  # why the matrices exist
