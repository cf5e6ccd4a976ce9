"""CAM against TorchCAM (0.5.0), FEM and KPCA-CAM against pytorch-grad-cam (1.5.7), on a random-init
timm ResNet-18 (64 px) and a small CNN, for several targets and images; CAM's refusals.

Each reference's own raw map is recorded before its resize (TorchCAM: ``normalized=False``;
pytorch-grad-cam: what its ``get_cam_image`` returns, with the ReLU it applies next); both are
min-max normalised per image and must agree within 1e-4 (max abs difference).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import camzoo
from camzoo.methods.activation_family import kernel_first_component
from helpers import minmax, timm_model

TOLERANCE = 1e-4


class SmallCNN(nn.Module):
    """conv -> ReLU -> strided conv -> ReLU (``features``, 8x8 at 16 px) -> global average pool -> Linear,
    or another head: ``head="mlp"`` (Linear, ReLU, Linear), ``head="max"`` (max pooling + Linear)."""

    def __init__(self, head: str = "linear", classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU())
        self.pool = "max" if head == "max" else "mean"
        self.fc = nn.Sequential(nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, classes)) if head == "mlp" \
            else nn.Linear(12, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x)
        return self.fc(a.amax(dim=(2, 3)) if self.pool == "max" else a.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def resnet18() -> tuple[nn.Module, torch.Tensor]:
    """timm resnet18, random weights (seed 0), 6 classes, and 4 images of 64 px. Its random-init
    features are not flat (checked by every test's non-trivial assertion), so BatchNorm keeps its
    initial statistics."""
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return timm_model("resnet18", seed=0, num_classes=6), images


@pytest.fixture(scope="module")
def small_cnn() -> tuple[nn.Module, torch.Tensor]:
    return SmallCNN().eval(), torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))


def assert_equal_maps(ours: torch.Tensor, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    assert (ours.flatten(1).std(1) > 1e-6).all(), "maps must be non-trivial (not constant; a ReLU'd map not all 0)"
    assert np.abs(minmax(ours.numpy()) - minmax(reference)).max() <= TOLERANCE


def torchcam_cam(model: nn.Module, layer: str, images: torch.Tensor, targets: list[int]) -> np.ndarray:
    """TorchCAM's CAM with its automatic fc_layer (the model's only Linear), unnormalised."""
    from torchcam.methods import CAM

    with CAM(model, target_layer=layer) as extractor:
        with torch.no_grad():
            model(images)
        (raw,) = extractor(class_idx=targets, normalized=False)
    return raw.numpy()


def grad_cam_raw(cls_name: str, model: nn.Module, layer: str, images: torch.Tensor, **options
                 ) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-grad-cam's raw map of a class-agnostic method (its get_cam_image, then its ReLU), and
    the activations it was given."""
    import pytorch_grad_cam

    recorded = {}

    def record(input_tensor, target_layer, targets, activations, *rest):
        recorded["activations"] = activations
        return recorded.setdefault("raw", original(input_tensor, target_layer, targets, activations, *rest))

    with getattr(pytorch_grad_cam, cls_name)(model=model, target_layers=[model.get_submodule(layer)],
                                             **options) as cam:
        original = cam.get_cam_image
        cam.get_cam_image = record
        cam(input_tensor=images, targets=None)
    return np.maximum(recorded["raw"], 0), recorded["activations"]


# --- cam --------------------------------------------------------------------------------------


@pytest.mark.parametrize("targets", [[0, 3, 5, 1], [4, 4, 2, 0]])
def test_cam_equals_torchcam_on_resnet18(resnet18, targets):
    model, images = resnet18
    ours = camzoo.explain(model, images, method="cam", target=targets)
    assert ours.layer == "layer4"
    assert_equal_maps(ours.raw, torchcam_cam(model, "layer4", images, targets))
    assert (ours.raw.flatten(1).amin(1) < 0).any(), "CAM has no ReLU: the signed sum is normalised"


def test_cam_equals_torchcam_on_a_small_cnn_and_a_camzoo_model(small_cnn):
    model, images = small_cnn
    for targets in ([0, 2, 4], [3, 1, 1]):
        ours = camzoo.explain(model, images, method="cam", target=targets, layer="features")
        assert_equal_maps(ours.raw, torchcam_cam(model, "features", images, targets))
    torch.manual_seed(0)
    abn = camzoo.build_model("abn", "resnet8", num_classes=3).eval()  # its head: cam_hook -> GAP -> fc
    pictures = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ours = camzoo.explain(abn, pictures, method="cam", target=[2, 0])
    assert ours.layer == "cam_hook"
    assert_equal_maps(ours.raw, torchcam_cam(abn, "cam_hook", pictures, [2, 0]))


@pytest.mark.parametrize("head, found", [("mlp", "'fc.2' of SmallCNN that gives them reads 7 features, but layer "
                                                 "'features' has 12 channels"),
                                         ("max", "reads 12 features that are not the spatial mean")])
def test_cam_refuses_a_head_that_is_not_pooling_and_linear(head, found):
    images = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="use gradcam") as error:
        camzoo.explain(SmallCNN(head).eval(), images, method="cam", layer="features")
    assert found in str(error.value) and "\n" not in str(error.value)


def test_cam_refuses_a_layer_that_does_not_feed_the_pooling_and_output_targets(resnet18):
    model, images = resnet18
    with pytest.raises(ValueError, match="'fc' of ResNet that gives them reads 512 features, but layer 'layer3' has "
                                         "256 channels: pass layer="):
        camzoo.explain(model, images, method="cam", layer="layer3")
    with pytest.raises(ValueError, match="explains classes only"):
        camzoo.explain(model, images, method="cam", target=[lambda out: out[0]] * len(images))

    from camzoo.metrics.grid_models import GridWrapper

    cam = camzoo.methods.get_method("cam")
    assert cam.applies_to(type(model)) and cam.applies_to(type(camzoo.build_model("baseline", "resnet8", 3)))
    assert not cam.applies_to(type("Segmenter", (nn.Module,), {"task": "segmentation"}))
    assert not cam.applies_to(GridWrapper), "each cell's logits pool only their block: not CAM's head"


# --- fem and kpcacam --------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2.0, 1.0])
def test_fem_equals_pytorch_grad_cam(resnet18, small_cnn, k):
    """layer3 (4x4): at 2x2 no value can exceed mean + 2 std (the largest z-score of 4 values is 1.5)."""
    for (model, images), layer in ((resnet18, "layer3"), (small_cnn, "features")):
        ours = camzoo.explain(model, images, method="fem", layer=layer, method_options={"k": k})
        assert_equal_maps(ours.raw, grad_cam_raw("FEM", model, layer, images, k=k)[0])


def test_fem_weights_are_the_share_above_k_sigma():
    """One channel, positions [0, 0, 0, 4]: mean 1, population std sqrt(3) (the sample std would be
    2); 4 > 1 + k sqrt(3) for k = 1 (weight 1/4), not for k = 2."""
    from camzoo.methods.activation_family import FEM

    activations = torch.tensor([0.0, 0.0, 0.0, 4.0]).view(1, 1, 2, 2)
    fem = FEM(nn.Conv2d(3, 1, 1), k=1.0)
    assert torch.equal(fem.channel_terms(activations, None), activations / 4)
    assert torch.equal(FEM(nn.Conv2d(3, 1, 1), k=2.0).compute(activations, None), torch.zeros(1, 2, 2))


@pytest.mark.parametrize("kernel", ["sigmoid", "rbf", "poly", "cosine", "linear"])
def test_kpcacam_equals_pytorch_grad_cam_up_to_its_sign(resnet18, small_cnn, kernel):
    """sklearn makes the eigenvector's largest entry positive, ours correlates with the channel-mean
    activation: per image, ours equals its map where the signs agree, else its negated projection's."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_kernel

    gamma = 0.05 if kernel == "rbf" else None
    for (model, images), layer in ((resnet18, "layer3"), (small_cnn, "features")):
        ours = camzoo.explain(model, images, method="kpcacam", layer=layer,
                              method_options={"kernel": kernel, "gamma": gamma})
        raw, activations = grad_cam_raw("KPCA_CAM", model, layer, images, kernel=kernel, gamma=gamma)
        projection = get_2d_projection_kernel(activations, kernel, gamma)
        signs = np.sign((kernel_first_component(torch.from_numpy(activations), kernel, gamma).numpy() * projection)
                        .reshape(len(images), -1).sum(1))
        assert set(signs.tolist()) <= {-1.0, 1.0}
        assert_equal_maps(ours.raw, np.where(signs[:, None, None] > 0, raw, np.maximum(-projection, 0)))


def test_kpcacam_linear_kernel_is_eigencam_and_unknown_kernels_are_refused(small_cnn):
    model, images = small_cnn
    linear = camzoo.explain(model, images, method="kpcacam", layer="features", method_options={"kernel": "linear"})
    eigen = camzoo.explain(model, images, method="eigencam", layer="features")
    assert torch.allclose(linear.raw, eigen.raw, atol=1e-5)
    activations = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(4))
    for kernel in ("sigmoid", "rbf"):  # K(-x, -y) = K(x, y): only the sign fix can tell them apart
        projection = kernel_first_component(activations, kernel)
        assert projection.abs().amax() > 0
        assert torch.allclose(kernel_first_component(-activations, kernel), -projection, atol=1e-6)
    with pytest.raises(ValueError, match="kernel 'chi2' is not supported; choose one of linear"):
        camzoo.explain(model, images, method="kpcacam", method_options={"kernel": "chi2"})


def test_the_three_share_the_one_pass_and_are_listed():
    from camzoo.methods import get_method, select_methods, shares_one_pass
    from camzoo.methods.registry import describe

    assert shares_one_pass(get_method("fem")) and shares_one_pass(get_method("kpcacam"))
    assert not shares_one_pass(get_method("cam")) and get_method("cam").cost == "forward"
    assert {"cam", "fem", "kpcacam"} <= set(select_methods(["@family:activation"]))
    assert "Zhou" in describe("cam").paper and "Fuad" in describe("fem").paper and "Karmani" in describe("kpcacam").paper
