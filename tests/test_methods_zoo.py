"""The CAM zoo against pytorch-grad-cam (1.5.7): Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM,
EigenGrad-CAM, Score-CAM, Ablation-CAM on the briefly trained fixture model (non-trivial maps).

The reference map is pytorch-grad-cam's own, before its resize: we record what its
``get_cam_image`` returns during its call and apply its ReLU. Both are min-max normalised per
image and must agree within 1e-4 (max abs difference); the full pipelines must correlate > 0.999.
TorchCAM is not installed here, so it is not a reference in these tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import camzoo
from camzoo.methods.eigen import first_component_projection
from camzoo.methods.perturbation import AblationCAM, PerturbationCAM
from helpers import linear_head_cnn, minmax, per_image_correlation

GRADIENT_FAMILY = {
    "gradcampp": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "hirescam": "HiResCAM",
    "gradcam_elementwise": "GradCAMElementWise",
}


def pytorch_grad_cam(cls_name: str, model: nn.Module, layer: str, images: torch.Tensor, labels: torch.Tensor):
    """(its maps at input size, its raw map before resizing with its ReLU applied)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    recorded = {}
    with getattr(pytorch_grad_cam, cls_name)(model=model, target_layers=[model.get_submodule(layer)]) as cam:
        original = cam.get_cam_image
        cam.get_cam_image = lambda *a, **k: recorded.setdefault("raw", original(*a, **k))
        maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in labels])
    model.zero_grad(set_to_none=True)  # its backward writes .grad into the shared fixture model
    return maps, np.maximum(recorded["raw"], 0)


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
@pytest.mark.parametrize("method", sorted(GRADIENT_FAMILY))
def test_gradient_family_equals_pytorch_grad_cam(trained_resnet, method, layer):
    model, images, labels = trained_resnet["model"], trained_resnet["images"], trained_resnet["labels"]
    ours = camzoo.explain(model, images, method=method, target=labels, layer=layer)
    maps, raw = pytorch_grad_cam(GRADIENT_FAMILY[method], model, layer, images, labels)
    assert ours.raw.shape == raw.shape
    assert (ours.raw.flatten(1).amax(1) > 0).all() and ours.raw.flatten(1).std(1).min() > 0, "maps must be non-trivial"
    assert np.abs(minmax(ours.raw.numpy()) - minmax(raw)).max() <= 1e-4
    assert per_image_correlation(ours.maps.numpy(), maps).min() > 0.999


def test_eigengradcam_equals_pytorch_grad_cam_up_to_its_sign(trained_resnet):
    """pytorch-grad-cam keeps LAPACK's SVD sign; ours correlates with sum_c G*A. Per image, ours
    equals its map where the signs agree, and its map of the negated projection where they do not."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    model, images, labels = trained_resnet["model"], trained_resnet["images"], trained_resnet["labels"]
    ours = camzoo.explain(model, images, method="eigengradcam", target=labels, layer="layer3")
    _, raw = pytorch_grad_cam("EigenGradCAM", model, "layer3", images, labels)
    product = []
    handle = model.layer3.register_forward_hook(lambda m, i, o: product.append(o))
    logits = model(images)
    handle.remove()
    (grads,) = torch.autograd.grad(logits.gather(1, labels[:, None]).sum(), product[0])
    elementwise = (grads * product[0]).detach()
    projection = get_2d_projection(elementwise.numpy())
    signs = np.sign((first_component_projection(elementwise).numpy() * projection).reshape(len(images), -1).sum(1))
    assert set(signs.tolist()) <= {-1.0, 1.0}
    expected = np.where(signs[:, None, None] > 0, raw, np.maximum(-projection, 0))
    assert (ours.raw.flatten(1).amax(1) > 0).all()
    assert np.abs(minmax(ours.raw.numpy()) - minmax(expected)).max() <= 1e-4


def test_scorecam_equals_pytorch_grad_cam_with_its_upsampling(trained_resnet):
    """With align_corners=True (pytorch-grad-cam's UpsamplingBilinear2d) the maps are equal; our
    default, align_corners=False (the official Score-CAM code), is the documented difference.
    One image, layer3 (256 channels, 4x4): every pass is a full forward, in both libraries."""
    layer = "layer3"
    model, images, labels = trained_resnet["model"], trained_resnet["images"][:1], trained_resnet["labels"][:1]
    maps, raw = pytorch_grad_cam("ScoreCAM", model, layer, images, labels)
    ours = camzoo.explain(model, images, method="scorecam", target=labels, layer=layer,
                          method_options={"align_corners": True, "progress": False})
    assert (ours.raw.flatten(1).std(1) > 0).all()
    assert np.abs(minmax(ours.raw.numpy()) - minmax(raw)).max() <= 1e-4
    assert per_image_correlation(ours.maps.numpy(), maps).min() > 0.999
    default = camzoo.explain(model, images, method="scorecam", target=labels, layer=layer,
                             method_options={"progress": False})
    assert per_image_correlation(default.maps.numpy(), maps).min() > 0.95


def test_ablationcam_equals_pytorch_grad_cam(trained_resnet):
    layer = "layer3"  # its tail (layer4 + head) starts with a strided block and a projection shortcut
    model, images, labels = trained_resnet["model"], trained_resnet["images"][:2], trained_resnet["labels"][:2]
    maps, raw = pytorch_grad_cam("AblationCAM", model, layer, images, labels)
    explainer = AblationCAM(model, layer=layer, progress=False)
    ours = explainer(images, labels)
    assert explainer.tail_only is True, "a ResNet stage's ablated copies run through the tail only"
    assert (ours.raw.flatten(1).std(1) > 0).all()
    assert np.abs(minmax(ours.raw.numpy()) - minmax(raw)).max() <= 1e-4
    assert per_image_correlation(ours.maps.numpy(), maps).min() > 0.999


class SkipConcat(nn.Module):
    """Logits read a layer *and* a tensor from below it (torch.cat), so the batch-1 shortcut of
    Ablation-CAM cannot run and the fallback (n copies of the image) must be used."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.features = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.stem(x)
        high = self.features(low)
        pooled = torch.cat([low.mean((2, 3)), high.amax((2, 3))], dim=1)
        return self.head(pooled)


def test_ablationcam_falls_back_and_equals_brute_force():
    model = SkipConcat().eval()
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 2])
    explainer = AblationCAM(model, layer="features", progress=False)
    ours = explainer(images, targets)
    assert explainer.tail_only is False
    with torch.no_grad():  # brute force: zero one channel at a time with a hook, one image at a time
        low = model.stem(images)
        acts = model.features(low)
        y = model(images).gather(1, targets[:, None])[:, 0]
        expected = torch.zeros(2, 8, 8)
        for b in range(2):
            weights = []
            for k in range(6):
                ablated = acts[b : b + 1].clone()
                ablated[:, k] = 0
                pooled = torch.cat([low[b : b + 1].mean((2, 3)), ablated.amax((2, 3))], dim=1)
                weights.append((y[b] - model.head(pooled)[0, targets[b]]) / y[b])
            expected[b] = torch.einsum("c,chw->hw", torch.stack(weights), acts[b]).clamp_min(0)
    assert torch.allclose(ours.raw, expected, atol=1e-5)


class ScoresInADict(nn.Module):
    """A classifier whose logits sit under a key of its output: explained with ``output="scores"``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"scores": self.head(self.features(x).mean((2, 3)))}


def test_ablationcam_takes_the_tail_only_shortcut_through_an_output_selector():
    """The ablated copies' batch is counted as every method reads the output (output= honoured), so a
    model whose logits sit under a key still runs its tail only, with the maps of the same network
    returning a tensor."""
    model = ScoresInADict().eval()
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    explainer = AblationCAM(model, layer="features", output="scores", progress=False)
    shortcut = explainer(images, torch.tensor([0, 2]))
    assert explainer.tail_only is True
    unwrapped = nn.Module()  # the same network returning its logits as a tensor
    unwrapped.net = model
    unwrapped.forward = lambda x: model(x)["scores"]
    plain = AblationCAM(unwrapped, layer="net.features", progress=False)(images, torch.tensor([0, 2]))
    assert torch.allclose(shortcut.raw, plain.raw, atol=1e-5)


def test_gradient_family_closed_forms_on_a_linear_head():
    """logits = W mean_hw(A): G = W_c / (h*w) everywhere, so HiResCAM and XGrad-CAM equal Grad-CAM
    and LayerCAM is ReLU(sum_c ReLU(W_c) A_c) / (h*w)."""
    torch.manual_seed(0)
    weight = torch.randn(5, 3)
    model = linear_head_cnn(weight)
    images = torch.rand(4, 3, 6, 7) + 0.1  # positive activations: XGrad-CAM's sum_hw A is not ~0
    targets = torch.tensor([0, 1, 2, 4])
    w = weight[targets] / 42
    gradcam = torch.einsum("bc,bchw->bhw", w, images).clamp_min(0)
    run = {m: camzoo.explain(model, images, method=m, target=targets, layer="features").raw
           for m in ("hirescam", "xgradcam", "layercam")}
    assert torch.allclose(run["hirescam"], gradcam, atol=1e-6)
    assert torch.allclose(run["xgradcam"], gradcam, atol=1e-5)
    assert torch.allclose(run["layercam"], torch.einsum("bc,bchw->bhw", w.clamp_min(0), images), atol=1e-6)


def test_scorecam_chunks_and_memory_retries_give_the_same_map():
    model = camzoo.build_model("baseline", "resnet8", num_classes=4).eval()
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    whole = camzoo.explain(model, images, method="scorecam", method_options={"progress": False})
    small = camzoo.explain(model, images, method="scorecam", method_options={"memory_mb": 0.01, "progress": False})
    assert torch.allclose(whole.raw, small.raw, atol=1e-5)

    calls = []

    def score(start: int, stop: int) -> torch.Tensor:
        calls.append(stop - start)
        if stop - start > 3:
            raise MemoryError("simulated")
        return torch.arange(start, stop, dtype=torch.float32)

    method = PerturbationCAM(model, progress=False)
    result = method.chunked_scores(10, 8, score, segment=5)
    assert torch.equal(result, torch.arange(10.0)) and max(c for c in calls if c <= 3) <= 3
    with pytest.raises(ValueError, match="memory_mb"):
        PerturbationCAM(model, memory_mb=0)


def test_every_zoo_method_is_listed_with_its_paper():
    from camzoo.methods.registry import describe

    for name in ("gradcampp", "xgradcam", "layercam", "hirescam", "eigengradcam", "scorecam", "ablationcam"):
        assert name in camzoo.list_methods()
        info = describe(name)
        assert info.summary and not info.reference
    assert "Chattopadhay" in describe("gradcampp").paper and "Wang" in describe("scorecam").paper
