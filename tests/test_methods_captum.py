"""Captum attributions through camzoo's interface (method="captum:<Attribution>") against Captum itself."""

from __future__ import annotations

import pytest
import torch

import camzoo
from camzoo.methods import upsample_and_normalise


@pytest.fixture(scope="module")
def small():
    model = camzoo.build_model("baseline", "resnet8", num_classes=4).eval()
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return model, images, torch.tensor([0, 3, 1])


def test_input_attributions_equal_captum_reduced_by_abs_sum(small):
    from captum.attr import IntegratedGradients, Occlusion, Saliency

    model, images, targets = small
    cases = [
        ("IntegratedGradients", IntegratedGradients(model), {"n_steps": 8}),
        ("Saliency", Saliency(model), {}),
        ("Occlusion", Occlusion(model), {"sliding_window_shapes": (3, 4, 4), "strides": 2}),
    ]
    for name, attribution, options in cases:
        ours = camzoo.explain(model, images, method=f"captum:{name}", target=targets, method_options=options)
        reference = attribution.attribute(images.clone().requires_grad_(True), target=targets, **options).detach()
        assert ours.method == f"captum:{name}" and ours.raw.shape == (3, 16, 16)
        assert torch.allclose(ours.raw, reference.abs().sum(1), atol=1e-5), name
        assert torch.allclose(ours.maps, upsample_and_normalise(reference.abs().sum(1), (16, 16)), atol=1e-5)


def test_layer_attributions_are_upsampled_like_cams(trained_resnet):
    from captum.attr import LayerGradCam

    model, images, labels = trained_resnet["model"], trained_resnet["images"][:4], trained_resnet["labels"][:4]
    ours = camzoo.explain(model, images, method="captum:LayerGradCam", target=labels, layer="layer3",
                          method_options={"relu_attributions": True})
    reference = LayerGradCam(model, model.layer3).attribute(images, target=labels, relu_attributions=True)[:, 0]
    assert ours.layer == "layer3" and torch.allclose(ours.raw, reference.detach(), atol=1e-6)
    ours_gradcam = camzoo.explain(model, images, method="gradcam", target=labels, layer="layer3")
    assert torch.allclose(ours.maps, ours_gradcam.maps, atol=1e-5)


def test_reduction_rule_options_and_errors(small):
    from captum.attr import InputXGradient

    model, images, targets = small
    reference = InputXGradient(model).attribute(images.clone().requires_grad_(True), target=targets).detach()
    signed = camzoo.explain(model, images, method="captum:InputXGradient", target=targets,
                            method_options={"reduce": "sum"})
    assert torch.allclose(signed.raw, reference.sum(1), atol=1e-6)
    assert camzoo.methods.get_method("captum:Saliency") is camzoo.methods.get_method("captum:Saliency")
    with pytest.raises(ValueError, match="Did you mean captum:IntegratedGradients"):
        camzoo.explain(model, images, method="captum:IntegratedGradient")
    with pytest.raises(ValueError, match="does not take option"):
        camzoo.explain(model, images, method="captum:Saliency", method_options={"n_steps": 3})
    with pytest.raises(ValueError, match="reduce must be one of"):
        camzoo.explain(model, images, method="captum:Saliency", method_options={"reduce": "mean"})
    with pytest.raises(ValueError, match="attributes to the input pixels"):
        camzoo.explain(model, images, method="captum:Saliency", layer="cam_hook")


@pytest.mark.parametrize("kind, backbone", [("baseline", "resnet8"), ("lfi", "resnet8"), ("abn", "resnet8"),
                                            ("baseline", "resnet50")])
def test_deeplift_runs_on_camzoo_s_resnets_and_equals_captum(kind, backbone):
    """Captum's DeepLift refuses a module called twice; camzoo's blocks call each ReLU module once."""
    from captum.attr import DeepLift

    model = camzoo.build_model(kind, backbone, num_classes=4).eval()
    with torch.no_grad():  # BatchNorm statistics away from the identity, so DeepLift is not Input x Gradient
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ours = camzoo.explain(model, images, method="captum:DeepLift", target=[1, 2], method_options={"reduce": "sum"})
    reference = DeepLift(model).attribute(images.clone().requires_grad_(True), target=[1, 2]).detach().sum(1)
    assert torch.allclose(ours.raw, reference, atol=1e-5, rtol=1e-4)
    assert ours.raw.abs().sum() > 0
