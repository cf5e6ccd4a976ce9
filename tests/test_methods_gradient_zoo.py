"""ShapleyCAM, Finer-CAM and FullGrad against their references: pytorch-grad-cam 1.5.7 (all three)
and TorchCAM 0.5.0 (Finer-CAM's mean weighting).

Models: a random-init timm ResNet-18 at 64 px (BatchNorm statistics measured on random batches, so
activations are not shrunk to ~0) and a small CNN with biased convolutions and SiLU (smooth, so
ShapleyCAM's Hessian-vector product is not 0 for a plain logit). The reference map is its own raw
map before resizing (recorded from ``get_cam_image``, its ReLU applied); FullGrad's maps are at
input size in both libraries. Both are min-max normalised per image and must agree within 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import camzoo
from camzoo.cli.options import parse_value
from camzoo.methods import get_method, shares_one_pass
from camzoo.methods.shapley import twice_differentiable
from camzoo.targets import ClassTarget
from helpers import minmax, timm_model

TOLERANCE = 1e-4


def _measured_batchnorm(model: nn.Module, size: int, classes_seed: int = 0) -> nn.Module:
    """BatchNorm running statistics of random batches instead of (0, 1): a random-init deep network
    otherwise shrinks its features towards 0 and every map comes out flat."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the batches
    generator = torch.Generator().manual_seed(classes_seed)
    with torch.no_grad():
        model.train()
        for _ in range(2):
            model(torch.randn(8, 3, size, size, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def resnet():
    model = _measured_batchnorm(timm_model("resnet18", seed=0, num_classes=6), 64)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return model, images


class SmallCNN(nn.Module):
    """Biased convolutions, BatchNorm, SiLU, a max-pool, global pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 12, 3, padding=1), nn.SiLU())
        self.block = nn.Sequential(nn.Conv2d(12, 16, 3, padding=1), nn.BatchNorm2d(16), nn.SiLU())
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.features(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def cnn():
    model = _measured_batchnorm(SmallCNN(), 24)
    images = torch.randn(4, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    return model, images


@pytest.fixture(scope="module")
def vit():
    """A 3-block timm ViT at 64 px: a 4x4 patch grid plus the class token."""
    model = timm_model("vit_tiny_patch16_224", seed=0, num_classes=5, img_size=64, depth=3)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    return model, images


def _tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ViT reshape_transform: drop the class token, (B,16,C) -> (B,C,4,4)."""
    return tokens[:, 1:].reshape(tokens.shape[0], 4, 4, tokens.shape[-1]).permute(0, 3, 1, 2)


def _recorded_raw(cam, call) -> np.ndarray:
    """Run ``call`` on a pytorch-grad-cam object; return its raw map (before resizing), ReLU applied."""
    recorded = {}
    original = cam.get_cam_image
    cam.get_cam_image = lambda *a, **k: recorded.setdefault("raw", original(*a, **k))
    call()
    return np.maximum(recorded["raw"], 0)


def _assert_equal(ours: torch.Tensor, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    assert (ours.flatten(1).amax(1) > 0).all() and (ours.flatten(1).std(1) > 0).all(), "maps must be non-trivial"
    assert np.abs(minmax(ours.numpy()) - minmax(reference)).max() <= TOLERANCE


def minmax_t(maps: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(minmax(maps.numpy()))


# --- ShapleyCAM -------------------------------------------------------------------------------


def _reference_shapley(model, layer, images, targets, objective):
    from pytorch_grad_cam import ShapleyCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST, ClassifierOutputTarget

    kind = ClassifierOutputReST if objective == "rest" else ClassifierOutputTarget
    with ShapleyCAM(model=model, target_layers=[model.get_submodule(layer)]) as cam:
        raw = _recorded_raw(cam, lambda: cam(input_tensor=images, targets=[kind(int(t)) for t in targets]))
    model.zero_grad(set_to_none=True)
    return raw


@pytest.mark.parametrize("case", [("resnet", "layer4", "rest"), ("resnet", "layer3", "rest"),
                                  ("cnn", "features", "logit"), ("cnn", "block", "rest")])
def test_shapleycam_equals_pytorch_grad_cam(case, request):
    fixture, layer, objective = case
    model, images = request.getfixturevalue(fixture)
    targets = torch.arange(len(images)) % 3 + 1
    ours = camzoo.explain(model, images, method="shapleycam", target=targets, layer=layer,
                          method_options={"objective": objective})
    _assert_equal(ours.raw, _reference_shapley(model, layer, images, targets, objective))
    gradcam = camzoo.explain(model, images, method="gradcam", target=targets, layer=layer).raw
    assert not torch.allclose(minmax_t(ours.raw), minmax_t(gradcam), atol=1e-3), "the Hessian term must be exercised"


def test_shapleycam_is_gradcam_where_the_hessian_vanishes(resnet):
    """layer4 -> global pooling -> linear: the logit's gradient does not depend on the activations,
    autograd reports no Hessian-vector product at all (the reference's None case), and H A = 0."""
    model, images = resnet
    ours = camzoo.explain(model, images, method="shapleycam", layer="layer4")  # the predicted classes
    targets = ours.targets
    _assert_equal(ours.raw, _reference_shapley(model, "layer4", images, targets, "logit"))
    gradcam = camzoo.explain(model, images, method="gradcam", target=targets, layer="layer4")
    assert torch.allclose(ours.raw, gradcam.raw, atol=1e-6)


@pytest.mark.parametrize("objective", ["logit", "rest"])
def test_shapleycam_on_a_vit_equals_the_references_weights(vit, objective):
    """Token layers: pytorch-grad-cam 1.5.7's ShapleyCAM computes its weights in the reshaped layout
    but then refuses the (B,T,C) activations in get_cam_image (with detach=False its
    reshape_transform is not applied to them), so the reference here is its own get_cam_weights
    times the reshaped activations. The ViT's attention has curvature: H A != 0 for a logit too.
    Its fused attention kernel has no second derivative; camzoo's forward takes the math kernel."""
    from pytorch_grad_cam import ShapleyCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST, ClassifierOutputTarget

    model, images = vit
    layer, targets = "blocks.1.norm1", [1, 3]
    ours = camzoo.explain(model, images, method="shapleycam", target=targets, layer=layer,
                          method_options={"objective": objective})
    kind = ClassifierOutputReST if objective == "rest" else ClassifierOutputTarget
    cam = ShapleyCAM(model=model, target_layers=[model.get_submodule(layer)], reshape_transform=_tokens_to_grid)

    def weighted(input_tensor, target_layer, chosen, activations, grads, eigen_smooth):
        weights = cam.get_cam_weights(input_tensor, target_layer, chosen, activations, grads)
        return (weights[:, :, None, None] * _tokens_to_grid(activations).detach().numpy()).sum(1)

    cam.get_cam_image = weighted
    with twice_differentiable():  # as camzoo's own pass
        raw = _recorded_raw(cam, lambda: cam(input_tensor=images, targets=[kind(t) for t in targets]))
    cam.activations_and_grads.gradients = []  # its release() cannot detach_ the token gradients (views)
    cam.activations_and_grads.release()
    model.zero_grad(set_to_none=True)
    _assert_equal(ours.raw, raw)
    gradcam = camzoo.explain(model, images, method="gradcam", target=targets, layer=layer).raw
    assert not torch.allclose(minmax_t(ours.raw), minmax_t(gradcam), atol=1e-3)


def test_shapleycam_serves_output_targets_and_refuses_rest_for_them(cnn):
    model, images = cnn
    by_class = camzoo.explain(model, images, method="shapleycam", target=2, layer="block")
    by_target = camzoo.explain(model, images, method="shapleycam", target=ClassTarget(2), layer="block")
    assert torch.allclose(by_class.raw, by_target.raw, atol=1e-6)
    with pytest.raises(ValueError, match="objective='rest'"):
        camzoo.explain(model, images, method="shapleycam", target=ClassTarget(2), layer="block",
                       method_options={"objective": "rest"})
    with pytest.raises(ValueError, match="objective must be one of"):
        camzoo.explain(model, images, method="shapleycam", method_options={"objective": "softmax"})


# --- Finer-CAM ------------------------------------------------------------------------------


def _reference_finer(model, layer, images, target_idx=None, alpha=1.0, ranks=None, base="GradCAM", reshape=None):
    import pytorch_grad_cam
    from pytorch_grad_cam import FinerCAM

    with FinerCAM(model, [model.get_submodule(layer)], reshape, base_method=getattr(pytorch_grad_cam, base)) as cam:
        raw = _recorded_raw(cam.base_cam, lambda: cam(images, targets=None, target_idx=target_idx, alpha=alpha,
                                                      comparison_categories=ranks))
    model.zero_grad(set_to_none=True)
    return raw


@pytest.mark.parametrize("case", [
    ("resnet", "layer4", {}, {}),  # the predicted class against ranks 1, 2, 3
    ("resnet", "layer3", {"target": 2, "alpha": 0.5, "comparison": (1, 3)}, {"target_idx": 2, "alpha": 0.5, "ranks": [1, 3]}),
    ("resnet", "layer4", {"base": "layercam", "comparison": 2}, {"base": "LayerCAM", "ranks": [1, 2]}),
    ("cnn", "block", {"target": 4, "alpha": 2.0}, {"target_idx": 4, "alpha": 2.0}),
    ("vit", "blocks.2.norm1", {"comparison": (2, 1)}, {"ranks": [2, 1], "reshape": _tokens_to_grid}),
])
def test_finercam_equals_pytorch_grad_cam(case, request):
    fixture, layer, options, reference = case
    model, images = request.getfixturevalue(fixture)
    options = dict(options)
    target = options.pop("target", None)
    ours = camzoo.explain(model, images, method="finercam", target=target, layer=layer, method_options=options)
    _assert_equal(ours.raw, _reference_finer(model, layer, images, **reference))
    with torch.no_grad():
        logits = model(images)
    assert ours.raw.shape[0] == len(images) and torch.equal(
        ours.targets, logits.argmax(1) if target is None else torch.full((len(images),), target))


def test_finercam_mean_weighting_equals_torchcam(resnet):
    """TorchCAM's objective y_t - gamma * mean_k y_k (its default gamma = 0.6), per-image targets."""
    pytest.importorskip("torchcam")
    from torchcam.methods import FinerCAM, GradCAM

    model, images = resnet
    targets = [1, 4, 0]
    for layer in ("layer4", "layer3"):
        with FinerCAM(model, layer, input_shape=(3, 64, 64), base_method=GradCAM) as extractor:
            reference = extractor(targets, model(images), normalized=False)[0].detach().numpy()
        model.zero_grad(set_to_none=True)
        ours = camzoo.explain(model, images, method="finercam", target=targets, layer=layer,
                              method_options={"alpha": 0.6, "weighting": "mean"})
        _assert_equal(ours.raw, reference)


def test_finercam_options_and_refusals(cnn):
    model, images = cnn
    cls = get_method("finercam")
    assert not shares_one_pass(cls) and cls.family == "gradient" and cls.cost == "backward"
    assert cls.check_options({"comparison": parse_value("1,2,4")})  # what --method-option comparison=1,2,4 gives
    from_cli = camzoo.explain(model, images, method="finercam", method_options={"comparison": parse_value("1,2,3")})
    default = camzoo.explain(model, images, method="finercam")
    assert torch.equal(from_cli.raw, default.raw)  # the default count 3 is the ranks (1, 2, 3)
    for options, message in [({"comparison": 0}, "ranks start at 1"), ({"comparison": "1,2"}, "comparison must be"),
                             ({"weighting": "max"}, "weighting must be"), ({"base": "scorecam"}, "one-pass gradient"),
                             ({"alpha": float("nan")}, "alpha must be")]:
        with pytest.raises((ValueError, TypeError), match=message):
            camzoo.explain(model, images, method="finercam", method_options=options)
    with pytest.raises(ValueError, match="explains classes only"):
        camzoo.explain(model, images, method="finercam", target=ClassTarget(1))
    one_class = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))
    with pytest.raises(ValueError, match="at least 2 classes"):
        camzoo.explain(one_class, images, method="finercam", layer="1")


# --- FullGrad -------------------------------------------------------------------------------


def _reference_fullgrad(model, images, targets):
    from pytorch_grad_cam import FullGrad
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with FullGrad(model, []) as cam:  # prints that target layers are ignored
        maps = cam(images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    model.zero_grad(set_to_none=True)
    return maps


@pytest.mark.parametrize("fixture", ["resnet", "cnn", "vit"])
def test_fullgrad_equals_pytorch_grad_cam(fixture, request, capsys):
    """At the input's resolution in both libraries (its cv2 upsampling of each layer's terms equals
    torch's bilinear, align_corners=False); the targets differ per image."""
    model, images = request.getfixturevalue(fixture)
    targets = (torch.arange(len(images)) * 2) % 5
    ours = camzoo.explain(model, images, method="fullgrad", target=targets)
    assert all(p.grad is None for p in model.parameters()), "no parameter .grad is written"
    _assert_equal(ours.raw, _reference_fullgrad(model, images, targets))
    assert ours.raw.shape[-2:] == images.shape[-2:] and ours.layer is None


def test_fullgrad_refuses_a_layer(cnn):
    model, images = cnn
    with pytest.raises(ValueError, match="drop layer="):
        camzoo.explain(model, images, method="fullgrad", layer="block")
