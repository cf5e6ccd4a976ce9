"""SS-CAM, IS-CAM and Smooth Grad-CAM++ against TorchCAM (0.5.0), the library that ships them.

How both libraries see the same noise: TorchCAM draws it with ``torch.distributions.Normal(0, std)
.sample``, i.e. ``std * N(0, 1)`` from the global CPU generator; camzoo draws ``std * N(0, 1)`` from
its own CPU generator seeded with ``seed``. Seeding the global generator with that seed just
before TorchCAM's call gives both the same Mersenne-Twister stream, and both consume it in the same
order (sample-major: all images and channels of sample 1, then of sample 2...). TorchCAM draws
one tensor per sample, camzoo one per chunk; torch's CPU normal sampler turns uniforms into normals
in blocks of 16 values, so the stream is the same however it is split, as long as each draw is a
multiple of 16 values (H*W here). ``test_sscam_chunks_seeds_and_the_global_generator`` checks that
a different chunking gives the same map.

TorchCAM's raw map (its ReLU, before its normalisation) and ours are min-max normalised per image
and must agree within 1e-4. Random-init models give near-uniform softmax weights, under which any
weights give about the same map; the ResNet-18's logits are therefore scaled by 30 (its ``fc``), and
each test checks that its map is far from the uniform-weight one, so that a wrong weight would show.
Where the draws cannot be shared, the expectation is checked: without noise SS-CAM is TorchCAM's
Score-CAM, and Smooth Grad-CAM++ on a linear head does not depend on the noise at all.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import camzoo
from camzoo.methods import get_method
from camzoo.targets import ClassTarget
from helpers import linear_head_cnn

TOLERANCE = 1e-4


def minmax(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.detach().flatten(1).float()
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return (flat - low) / (high - low)


def torchcam_raw(method: str, model: nn.Module, layer: str, images: torch.Tensor, targets: torch.Tensor,
                 seed: int, **options) -> torch.Tensor:
    """TorchCAM's raw map, the global generator seeded with ``seed`` just before the call (its noise)."""
    import torchcam.methods

    with getattr(torchcam.methods, method)(model, layer, input_shape=tuple(images.shape[1:]), **options) as cam:
        model(images)  # TorchCAM's protocol: the user's forward pass, which its hooks record
        torch.manual_seed(seed)
        return cam(targets.tolist(), normalized=False)[0].detach()


def layer_activations(model: nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
    found = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: found.append(o.detach()))
    with torch.no_grad():
        model(images)
    handle.remove()
    return found[0]


def layer_gradient(model: nn.Module, layer: str, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """d (sum of the target logits) / d the layer's output, by plain autograd."""
    found = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: found.append(o))
    logits = model(images)
    handle.remove()
    return torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), found[0])[0]


def assert_equal_and_discriminating(ours: torch.Tensor, reference: torch.Tensor, uniform: torch.Tensor) -> None:
    assert (ours.flatten(1).amax(1) > 0).all() and (ours.flatten(1).std(1) > 0).all(), "maps must be non-trivial"
    assert (minmax(ours) - minmax(reference)).abs().max() <= TOLERANCE
    assert (minmax(ours) - minmax(uniform.clamp_min(0))).abs().max() > 100 * TOLERANCE, "weights must matter"


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    """timm ResNet-18, random init (seed 0), logits scaled by 30 (a softmax over channels that is not flat)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=5).eval()
    with torch.no_grad():
        model.fc.weight.mul_(30)
    return model


def small_cnn() -> nn.Module:
    """Three conv + ReLU layers, global pooling, a linear head; channel 0 of layer "3" is dead (constant 0)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 5))
    with torch.no_grad():
        model[2].bias[0] = -100.0
        model[8].weight.mul_(100)
    return model.eval()


# (model, layer, images, targets): Score-CAM variants run one full forward per channel, sample and
# image in both libraries, so the ResNet-18 explains 2 images of 32 px at layer1 (64 channels)
def score_cases(resnet18: nn.Module) -> dict[str, tuple[nn.Module, str, torch.Tensor, torch.Tensor]]:
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return {"resnet18": (resnet18, "layer1", images[:2], torch.tensor([1, 3])),
            "small": (small_cnn(), "3", images[:, :, :16, :16], torch.tensor([0, 3, 4]))}


@pytest.mark.parametrize("model_name", ["resnet18", "small"])
@pytest.mark.parametrize(("method", "reference", "options"), [
    ("sscam", "SSCAM", {"num_samples": 2, "std": 2.0}),
    ("iscam", "ISCAM", {"num_samples": 2}),
])
def test_smoothed_score_cams_equal_torchcam(resnet18, model_name, method, reference, options):
    model, layer, images, targets = score_cases(resnet18)[model_name]
    expected = torchcam_raw(reference, model, layer, images, targets, seed=5, **options)
    seeded = {"seed": 5} if method == "sscam" else {}
    ours = camzoo.explain(model, images, method=method, target=targets, layer=layer,
                          method_options={**options, **seeded, "progress": False})
    assert_equal_and_discriminating(ours.raw, expected, layer_activations(model, layer, images).mean(1))


def test_sscam_without_noise_is_torchcams_scorecam():
    """std = 0: one sample, no draws; the dead channel is scored by the one blank forward."""
    model, layer, images, targets = score_cases(None)["small"]
    expected = torchcam_raw("ScoreCAM", model, layer, images, targets, seed=0)
    ours = camzoo.explain(model, images, method="sscam", target=targets, layer=layer,
                          method_options={"std": 0.0, "progress": False})
    assert_equal_and_discriminating(ours.raw, expected, layer_activations(model, layer, images).mean(1))


def test_sscam_chunks_seeds_and_the_global_generator():
    model, layer, images, targets = score_cases(None)["small"]

    def run(**options) -> torch.Tensor:
        return camzoo.explain(model, images, method="sscam", target=targets, layer=layer,
                              method_options={"num_samples": 2, "progress": False, **options}).raw

    state = torch.get_rng_state()
    default = run()
    assert torch.equal(torch.get_rng_state(), state), "the global generator is left alone"
    assert torch.allclose(run(memory_mb=0.01), default, atol=1e-6)  # one mask per forward: the same draws
    assert torch.equal(run(seed=0), default)
    assert not torch.allclose(run(seed=1), default, atol=1e-3)
    assert not torch.allclose(run(seed=None), run(seed=None), atol=1e-3)


@pytest.mark.parametrize("model_name", ["resnet18", "small"])
def test_smoothgradcampp_torchcam_compat_equals_torchcam(resnet18, model_name):
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    model, layer, targets = (resnet18, "layer3", torch.tensor([0, 4])) if model_name == "resnet18" else \
        (small_cnn(), "1", torch.tensor([1, 3]))
    expected = torchcam_raw("SmoothGradCAMpp", model, layer, images, targets, seed=3, num_samples=3, std=0.3)
    ours = camzoo.explain(model, images, method="smoothgradcampp", target=targets, layer=layer,
                          method_options={"num_samples": 3, "seed": 3, "torchcam_compat": True, "progress": False})
    assert_equal_and_discriminating(ours.raw, expected, layer_activations(model, layer, images).mean(1))


def test_smoothgradcampp_default_is_the_papers_smoothing():
    """A per-copy loop: D_p = mean over copies of G^p, alpha from D_2 and D_3, ReLU(D_1), the image's
    own activations. Layer "1" feeds two more convolutions, so G differs between copies and the
    default differs from ``torchcam_compat`` (the last copy's G and A)."""
    model, layer, seed, samples, std = small_cnn(), "1", 4, 3, 0.3
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    targets = torch.tensor([2, 4])
    noise = std * torch.randn((samples, *images.shape), generator=torch.Generator().manual_seed(seed))
    g = torch.stack([layer_gradient(model, layer, copy, targets) for copy in images + noise])  # per sample
    a = layer_activations(model, layer, images)
    d2, d3 = (g ** 2).mean(0), (g ** 3).mean(0)
    alpha = d2 / (2 * d2 + (d3 * a).sum((2, 3), keepdim=True) + 1e-8)
    weights = (alpha * g.mean(0).clamp_min(0)).sum((2, 3))
    expected = torch.einsum("bc,bchw->bhw", weights, a).clamp_min(0)

    def run(**options) -> torch.Tensor:
        return camzoo.explain(model, images, method="smoothgradcampp", target=targets, layer=layer, method_options={
            "num_samples": samples, "std": std, "seed": seed, "progress": False, **options}).raw

    ours = run()
    assert_equal_and_discriminating(ours, expected, a.mean(1))
    assert (minmax(ours) - minmax(run(torchcam_compat=True))).abs().max() > 1e-2


def test_smoothgradcampp_on_a_linear_head_does_not_depend_on_the_noise():
    """logits = W mean_hw(A): G = W_c / (h*w) for every copy, so the weights have a closed form and,
    on the image's own activations, the map is the same for every seed (TorchCAM's, on the last
    noisy copy's activations, is not)."""
    weight = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    model = linear_head_cnn(weight).eval()
    images = torch.rand(3, 3, 6, 7, generator=torch.Generator().manual_seed(1)) + 0.1
    targets = torch.tensor([0, 1, 4])
    g = weight[targets] / 42  # (B, C), constant over positions
    alpha = g ** 2 / (2 * g ** 2 + g ** 3 * images.sum((2, 3)) + 1e-8)
    expected = torch.einsum("bc,bchw->bhw", 42 * alpha * g.clamp_min(0), images).clamp_min(0)

    def run(seed: int, **options) -> torch.Tensor:
        return camzoo.explain(model, images, method="smoothgradcampp", target=targets, layer="features",
                              method_options={"seed": seed, "std": 1.0, "progress": False, **options}).raw

    assert torch.allclose(run(0), expected, rtol=1e-4, atol=1e-6)
    assert torch.allclose(run(1), expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(run(0, torchcam_compat=True), run(1, torchcam_compat=True), atol=1e-3)


@pytest.mark.parametrize("method", ["sscam", "iscam", "smoothgradcampp"])
def test_output_targets_give_the_class_maps(method):
    model, layer, images, targets = score_cases(None)["small"]
    options = {"num_samples": 2, "progress": False}
    by_class = camzoo.explain(model, images, method=method, target=targets, layer=layer, method_options=options)
    by_target = camzoo.explain(model, images, method=method, target=[ClassTarget(int(t)) for t in targets],
                               layer=layer, method_options=options)
    assert torch.allclose(by_target.raw, by_class.raw, atol=1e-6)


def test_registry_facts_and_bad_options():
    facts = {name: (get_method(name).family, get_method(name).cost) for name in ("sscam", "iscam", "smoothgradcampp")}
    assert facts == {"sscam": ("perturbation", "per-channel"), "iscam": ("perturbation", "per-channel"),
                     "smoothgradcampp": ("gradient", "iterative")}
    assert {"num_samples", "std", "seed", "memory_mb"} <= set(get_method("sscam").option_parameters())
    assert "seed" not in get_method("iscam").option_parameters()  # no noise: deterministic
    model = small_cnn()
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        get_method("iscam")(model, num_samples=0)
    with pytest.raises(ValueError, match="std must be a finite number >= 0"):
        get_method("smoothgradcampp")(model, std=-0.1)
    with pytest.raises(TypeError, match="seed"):
        get_method("sscam").check_options({"seed": 1.5})
