"""Opti-CAM against a transcription of the official code's optimisation, and Average Gain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import camzoo
from camzoo.methods.registry import describe
from camzoo.metrics import average_drop_increase


def official_opticam(model, layer, images, labels, iterations, lr):
    """hanwei0912/OptiCAM util.py ``Basic_OptCAM`` as the repository runs it (generate_opticam.py: loss
    "plain", normalisation "max_min", w = 0.5 * ones, Adam), minus its early stop, on normalised images
    (camzoo's masking convention, see the docstring of camzoo's OptiCAM)."""
    captured = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: captured.update(a=o))
    with torch.no_grad():
        f_images = model(images).gather(1, labels[:, None])[:, 0]
    handle.remove()
    feature = torch.relu(captured["a"]).detach()
    w = (0.5 * torch.ones((feature.shape[0], feature.shape[1], 1, 1))).requires_grad_(True)
    optimizer = torch.optim.Adam([w], lr=lr)

    def combine():
        alpha = torch.softmax(w, dim=1)
        saliency = (alpha.repeat((1, 1, feature.shape[2], feature.shape[3])) * feature).sum(axis=1, keepdim=True)
        saliency = F.interpolate(saliency, size=images.shape[2:], mode="bilinear", align_corners=False)
        flat = saliency.view(saliency.shape[0], -1)
        low, high = flat.min(-1)[0][:, None, None, None], flat.max(-1)[0][:, None, None, None]
        norm = (saliency - low) / (high - low)
        return norm, norm.repeat((1, images.shape[1], 1, 1)) * images

    for _ in range(iterations):
        _, new_images = combine()
        loss = torch.sum(f_images - model(new_images).gather(1, labels[:, None])[:, 0])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    norm, new_images = combine()
    with torch.no_grad():
        final_logit = model(new_images).gather(1, labels[:, None])[:, 0]
    return norm[:, 0].detach(), final_logit


def test_opticam_equals_the_official_optimisation(trained_resnet):
    model, images, labels = trained_resnet["model"], trained_resnet["images"][:4], trained_resnet["labels"][:4]
    reference, reference_logit = official_opticam(model, "layer4", images, labels, iterations=12, lr=0.1)
    ours = camzoo.explain(model, images, method="opticam", target=labels, layer="layer4",
                          method_options={"iterations": 12})
    assert (ours.maps.flatten(1).std(1) > 0.05).all()  # maps with structure, not flat
    assert (ours.maps - reference).abs().max() <= 1e-4
    assert all(p.grad is None for p in model.parameters())  # only the channel weights were optimised
    # the optimisation does its job: the masked image keeps more of the target logit than the
    # uniform start (the mean of the channels, iterations=0)
    start = camzoo.explain(model, images, method="opticam", target=labels, layer="layer4",
                           method_options={"iterations": 0})
    with torch.no_grad():
        logit = lambda maps: model(images * maps[:, None]).gather(1, labels[:, None])[:, 0]  # noqa: E731
        assert (logit(ours.maps) > logit(start.maps)).all()
        torch.testing.assert_close(logit(ours.maps), reference_logit, atol=1e-3, rtol=1e-4)


def test_opticam_is_listed_and_checks_its_options(trained_resnet):
    assert "opticam" in camzoo.list_methods() and "Zhang" in describe("opticam").paper
    model, images = trained_resnet["model"], trained_resnet["images"][:1]
    with pytest.raises(ValueError, match="iterations must be an integer >= 0"):
        camzoo.explain(model, images, method="opticam", method_options={"iterations": -1})
    with pytest.raises(ValueError, match="lr must be positive"):
        camzoo.explain(model, images, method="opticam", method_options={"lr": 0})
    # explain inside no_grad still optimises (the method turns gradients on for itself)
    with torch.no_grad():
        inside = camzoo.explain(model, images, method="opticam", layer="layer4", method_options={"iterations": 3})
    outside = camzoo.explain(model, images, method="opticam", layer="layer4", method_options={"iterations": 3})
    torch.testing.assert_close(inside.maps, outside.maps)


def test_average_gain_is_the_papers_formula(trained_resnet):
    model, images, labels = trained_resnet["model"], trained_resnet["images"], trained_resnet["labels"]
    maps = camzoo.explain(model, images, method="gradcam", target=labels).maps
    result = average_drop_increase(model, images, maps, labels)
    with torch.no_grad():
        y = model(images).softmax(1).gather(1, labels[:, None])[:, 0].double().numpy()
        o = model(images * maps[:, None]).softmax(1).gather(1, labels[:, None])[:, 0].double().numpy()
    expected = np.maximum(0, o - y) / (1 - y)
    np.testing.assert_allclose(result["gain"].numpy(), expected, atol=1e-5)
    assert float(result["average_gain"]) == pytest.approx(100 * expected.mean(), abs=1e-3)
    assert ((result["gain"] > 0) == result["increase"]).all()  # a gain exactly where confidence rose
