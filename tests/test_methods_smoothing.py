"""``eigen_smooth`` and ``aug_smooth`` against pytorch-grad-cam (1.5.7), which offers both on every method.

eigen_smooth: pytorch-grad-cam projects the per-channel terms on their first principal component with an
arbitrary SVD sign; ours fixes the sign to correlate with the unsmoothed channel sum. Per image, ours
must equal ReLU of its projection or of the negated projection, whichever sign ours documents.
aug_smooth: the mean over its six test-time augmentations, compared map for map at input size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import camzoo
from camzoo.methods import get_method, method_names
from helpers import minmax

# camzoo name -> pytorch-grad-cam class, for the methods whose map is a sum of per-channel terms
SUMMED = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM",
          "hirescam": "HiResCAM", "gradcam_elementwise": "GradCAMElementWise"}


def reference(cls_name: str, model, layer: str, images, labels, **call):
    """pytorch-grad-cam's maps at input size and its (first) per-layer map before its ReLU."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    recorded = []
    with getattr(pytorch_grad_cam, cls_name)(model=model, target_layers=[model.get_submodule(layer)]) as cam:
        original = cam.get_cam_image

        def record(*args, **kwargs):
            recorded.append(original(*args, **kwargs))
            return recorded[-1]

        cam.get_cam_image = record
        maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in labels], **call)
    model.zero_grad(set_to_none=True)
    return maps, recorded[0]


@pytest.mark.parametrize("method", sorted(SUMMED))
def test_eigen_smooth_equals_pytorch_grad_cam_up_to_its_sign(trained_resnet, method):
    model, images, labels = trained_resnet["model"], trained_resnet["images"][:6], trained_resnet["labels"][:6]
    ours = camzoo.explain(model, images, method=method, target=labels, layer="layer3",
                          method_options={"eigen_smooth": True}).raw.numpy()
    plain = camzoo.explain(model, images, method=method, target=labels, layer="layer3").raw.numpy()
    _, projection = reference(SUMMED[method], model, "layer3", images, labels, eigen_smooth=True)
    assert (ours.reshape(len(ours), -1).max(1) > 0).all() and ours.reshape(len(ours), -1).std(1).min() > 0
    for index in range(len(ours)):
        candidates = [np.maximum(projection[index], 0), np.maximum(-projection[index], 0)]
        errors = [np.abs(minmax(ours[index][None]) - minmax(c[None])).max() for c in candidates]
        assert min(errors) <= 1e-4, (method, index, errors)
    assert np.abs(minmax(ours) - minmax(plain)).max() > 1e-3, "eigen_smooth must change the map"


def test_eigen_smooth_reaches_the_perturbation_methods(trained_resnet):
    model, images, labels = trained_resnet["model"], trained_resnet["images"][:1], trained_resnet["labels"][:1]
    options = {"align_corners": True, "eigen_smooth": True}
    ours = camzoo.explain(model, images, method="scorecam", target=labels, layer="layer3", method_options=options).raw
    _, projection = reference("ScoreCAM", model, "layer3", images, labels, eigen_smooth=True)
    assert ours.flatten(1).std(1).min() > 0
    for index in range(len(ours)):
        errors = [np.abs(minmax(ours[index].numpy()[None]) - minmax(np.maximum(s * projection[index], 0)[None])).max()
                  for s in (1, -1)]
        assert min(errors) <= 1e-4


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_aug_smooth_equals_pytorch_grad_cam(trained_resnet, method):
    model, images, labels = trained_resnet["model"], trained_resnet["images"][:4], trained_resnet["labels"][:4]
    ours = camzoo.explain(model, images, method=method, target=labels, layer="layer3",
                          method_options={"aug_smooth": True})
    theirs, _ = reference(SUMMED[method], model, "layer3", images, labels, aug_smooth=True)
    assert ours.raw.shape == ours.maps.shape == images.shape[:1] + images.shape[2:]
    assert ours.raw.flatten(1).std(1).min() > 0
    assert np.abs(minmax(ours.raw.numpy()) - minmax(theirs)).max() <= 1e-4
    plain = camzoo.explain(model, images, method=method, target=labels, layer="layer3")
    assert not torch.allclose(ours.maps, plain.maps, atol=1e-3), "aug_smooth must change the map"
    assert torch.equal(ours.targets, plain.targets) and torch.allclose(ours.scores, plain.scores)


def test_smoothing_options_are_listed_where_they_apply_and_refused_elsewhere(trained_resnet):
    for name in method_names():
        cls = get_method(name)
        listed = set(cls.option_parameters())
        if cls.reference or name == "attention":
            assert not listed & {"eigen_smooth", "aug_smooth"}, name
        else:
            assert "aug_smooth" in listed, name
    assert "eigen_smooth" in get_method("gradcam").option_parameters()
    assert "eigen_smooth" not in get_method("eigencam").option_parameters()  # already a principal component
    model, images = trained_resnet["model"], trained_resnet["images"][:2]
    with pytest.raises(ValueError, match="eigen_smooth"):
        camzoo.explain(model, images, method="eigencam", method_options={"eigen_smooth": True})
    with pytest.raises(ValueError, match="aug_smooth"):
        camzoo.explain(model, images, method="random", method_options={"aug_smooth": True})
    with pytest.raises(TypeError, match="bool"):
        camzoo.explain(model, images, method="gradcam", method_options={"eigen_smooth": "yes"})


def test_one_pass_run_keeps_an_aug_smoothed_member_apart(trained_resnet):
    """explain_many shares one pass among plain members; an aug_smooth member runs its own six."""
    from camzoo.methods.multi import explain_many

    model, images, labels = trained_resnet["model"], trained_resnet["images"][:3], trained_resnet["labels"][:3]
    options = {"layercam": {"aug_smooth": True}, "gradcam": {"eigen_smooth": True}}
    together = explain_many(model, images, ["gradcam", "layercam", "hirescam"], labels, layer="layer3",
                            method_options=options)
    for name in ("gradcam", "layercam"):
        alone = camzoo.explain(model, images, method=name, target=labels, layer="layer3", method_options=options[name])
        assert torch.allclose(together[name].maps, alone.maps, atol=1e-6)


# cheap settings for the options that set a method's number of passes, by option name
CHEAP = {"num_samples": 2, "iterations": 2, "num_scales": 1}


def test_every_method_that_lists_eigen_smooth_honours_it():
    """eigen_smooth changes the map of every method that lists it (none accepts it and ignores it)."""
    model = camzoo.build_model("baseline", "resnet8", num_classes=4).eval()
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    checked = []
    for name in method_names(reference=False):
        cls = get_method(name)
        accepted = cls.option_parameters()
        if "eigen_smooth" not in accepted:
            continue
        cheap = {key: value for key, value in CHEAP.items() if key in accepted}
        plain = camzoo.explain(model, images, method=name, target=1, method_options=cheap).raw
        smooth = camzoo.explain(model, images, method=name, target=1, method_options={**cheap, "eigen_smooth": True}).raw
        assert not torch.allclose(plain, smooth, atol=1e-6), name
        checked.append(name)
    assert len(checked) >= 10
