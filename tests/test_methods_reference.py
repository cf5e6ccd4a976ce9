"""Grad-CAM and Eigen-CAM against independent references: Captum, pytorch-grad-cam, closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import camzoo
from camzoo.methods.eigen import first_component_projection
from helpers import linear_head_cnn, per_image_correlation


def test_fixture_model_learned_the_task(trained_resnet):
    assert trained_resnet["accuracy"] >= 0.9


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_gradcam_equals_captum_before_upsampling(trained_resnet, layer):
    from captum.attr import LayerGradCam

    model, images, labels = trained_resnet["model"], trained_resnet["images"], trained_resnet["labels"]
    ours = camzoo.explain(model, images, method="gradcam", target=labels, layer=layer)
    reference = LayerGradCam(model, model.get_submodule(layer)).attribute(
        images, target=labels, relu_attributions=True
    )[:, 0]
    assert ours.raw.shape == reference.shape
    assert (ours.raw.flatten(1).amax(1) > 0).all(), "every map must be non-zero for the check to mean anything"
    assert (ours.raw - reference).abs().max().item() < 1e-5


def test_gradcam_matches_pytorch_grad_cam(trained_resnet):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, images, labels = trained_resnet["model"], trained_resnet["images"], trained_resnet["labels"]
    ours = camzoo.explain(model, images, method="gradcam", target=labels).maps.numpy()
    with GradCAM(model=model, target_layers=[model.layer4]) as cam:
        reference = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in labels])
    model.zero_grad(set_to_none=True)  # the peer's backward leaves .grad on the shared session model
    assert per_image_correlation(ours, reference).min() > 0.999


def test_gradcam_maps_find_the_evidence(trained_resnet):
    """On the quadrant task the map's mass concentrates on the square (far above its area share)."""
    maps = camzoo.explain(trained_resnet["model"], trained_resnet["images"], target=trained_resnet["labels"]).maps
    masks = trained_resnet["masks"].float()
    inside = (maps * masks).sum((1, 2)) / maps.sum((1, 2))
    assert inside.mean() > 1.5 * masks.mean()


def test_eigencam_matches_pytorch_grad_cam_up_to_its_sign(trained_resnet):
    """pytorch-grad-cam's Eigen-CAM keeps numpy's arbitrary SVD sign; ours fixes it. Where the signs
    agree the full pipelines must agree; where they differ we must equal pytorch-grad-cam's own
    pipeline applied to the flipped projection."""
    from pytorch_grad_cam import EigenCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    model, images = trained_resnet["model"], trained_resnet["images"]
    ours = camzoo.explain(model, images, method="eigencam")
    with torch.no_grad():
        features = model.forward_features(images)
    signed = first_component_projection(features).numpy()
    reference_projection = get_2d_projection(features.numpy())
    signs = np.sign((signed * reference_projection).reshape(len(images), -1).sum(1))
    assert set(signs.tolist()) <= {-1.0, 1.0}
    with EigenCAM(model=model, target_layers=[model.layer4]) as cam:
        reference = cam(input_tensor=images, targets=None)
    flipped = scale_cam_image(np.maximum(-reference_projection, 0), images.shape[-2:][::-1])
    expected = np.where(signs[:, None, None] > 0, reference, flipped)
    assert per_image_correlation(ours.maps.numpy(), expected).min() > 0.999
    assert np.abs(np.abs(signed) - np.abs(reference_projection)).max() < 1e-3 * np.abs(signed).max()


def test_gradcam_closed_form_on_a_linear_head():
    torch.manual_seed(0)
    weight = torch.randn(5, 3)
    model = linear_head_cnn(weight)
    images = torch.randn(4, 3, 6, 7)
    targets = torch.tensor([0, 1, 2, 4])
    result = camzoo.explain(model, images, target=targets, layer="features")
    expected = torch.einsum("bc,bchw->bhw", weight[targets] / (6 * 7), images).clamp_min(0)
    assert torch.allclose(result.raw, expected, atol=1e-6)


def test_eigencam_closed_form_on_rank_one_activations():
    """A = a (x) s + noise-free: the first component is a, the projection is |a| (s - mean s)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(2, 8, generator=generator) + 0.5  # positive channel loadings
    s = torch.randn(2, 5, 6, generator=generator)
    activations = a[:, :, None, None] * s[:, None]
    projection = first_component_projection(activations)
    expected = a.norm(dim=1)[:, None, None] * (s - s.mean((1, 2), keepdim=True))
    assert torch.allclose(projection, expected, atol=1e-4)
    # the sign fix is independent of the SVD's sign: negated loadings give the negated projection
    assert torch.allclose(first_component_projection(-activations), -expected, atol=1e-4)
