"""camzoo.explain: input forms, layer detection across families, batching, hygiene and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

import camzoo
from camzoo.methods.base import upsample_and_normalise
from helpers import no_cfg_model, resnet8, timm_model


@pytest.fixture(scope="module")
def small_model() -> nn.Module:
    return timm_model(num_classes=3)


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    """A camzoo ResNet-8 whose classes have names."""
    return resnet8(class_names=["cat", "dog", "fox"])


def no_hooks_left(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


@pytest.mark.parametrize(
    "name, expected_layer",
    [("resnet18", "layer4"), ("efficientnet_b0", "bn2"), ("convnext_atto", "stages.3"), ("mobilenetv3_small_050", "blocks.5")],
)
@pytest.mark.parametrize("method", ["gradcam", "eigencam"])
def test_auto_layer_on_timm_families(name, expected_layer, method):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5)
    images = torch.randn(2, 3, 64, 64)
    result = camzoo.explain(model, images, method=method)
    assert result.layer == expected_layer
    assert result.maps.shape == (2, 64, 64) and result.maps.dtype == torch.float32
    assert result.maps.min() >= 0 and result.maps.max() <= 1
    assert result.raw.ndim == 3 and result.raw.shape[0] == 2
    assert result.targets.shape == (2,) and result.scores.shape == (2,)
    assert ((result.scores > 0) & (result.scores <= 1)).all()


def test_auto_layer_on_torchvision_resnet():
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=4)
    assert camzoo.explain(model, torch.randn(1, 3, 64, 64)).layer == "layer4"


def test_layer_as_module_or_name_gives_the_same_map(trained_resnet):
    model, images = trained_resnet["model"], trained_resnet["images"][:4]
    by_name = camzoo.explain(model, images, layer="layer3")
    by_module = camzoo.explain(model, images, layer=model.layer3)
    assert by_module.layer == "layer3"
    assert torch.equal(by_name.maps, by_module.maps)


def test_input_forms_agree(small_model, tmp_path):
    pixels = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(pixels).save(path)
    results = [
        camzoo.explain(small_model, form, image_size=48)
        for form in (pixels, Image.fromarray(pixels), path, str(path))
    ]
    for result in results:
        assert result.maps.shape == (1, 48, 48)
        assert torch.equal(result.maps, results[0].maps)
    batch = camzoo.explain(small_model, [path, pixels], image_size=48)
    assert batch.maps.shape == (2, 48, 48)
    # a batch of two runs other float kernels than a batch of one: agreement to float noise, not bits
    assert torch.allclose(batch.maps[0], results[0].maps[0], atol=1e-4)


def test_pixel_inputs_use_the_models_input_size_and_normalisation(small_model):
    pixels = np.full((30, 20, 3), 128, dtype=np.uint8)
    result = camzoo.explain(small_model, pixels)
    size = small_model.pretrained_cfg["input_size"][1:]
    assert result.maps.shape == (1, *size)
    mean = torch.tensor(small_model.pretrained_cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(small_model.pretrained_cfg["std"]).view(3, 1, 1)
    assert torch.allclose(result.inputs[0], (128 / 255 - mean) / std, atol=1e-5)


def test_tensor_inputs_3d_and_4d(small_model):
    image = torch.randn(3, 40, 40)
    single = camzoo.explain(small_model, image)
    batched = camzoo.explain(small_model, image[None])
    assert single.maps.shape == (1, 40, 40)
    assert torch.equal(single.maps, batched.maps)


def test_targets_int_sequence_tensor(trained_resnet):
    model, images = trained_resnet["model"], trained_resnet["images"][:3]
    assert camzoo.explain(model, images, target=2).targets.tolist() == [2, 2, 2]
    assert camzoo.explain(model, images, target=[0, 1, 3]).targets.tolist() == [0, 1, 3]
    predicted = camzoo.explain(model, images)
    with torch.no_grad():
        assert torch.equal(predicted.targets, model(images).argmax(1))
        assert torch.allclose(predicted.scores, model(images).softmax(1).amax(1), atol=1e-6)
    by_class = [camzoo.explain(model, images, target=k).maps for k in range(4)]
    assert not torch.equal(by_class[0], by_class[1]), "Grad-CAM must depend on the target class"


def test_targets_by_class_name(tiny):
    images = torch.randn(2, 3, 32, 32)
    assert camzoo.explain(tiny, images, target="dog").targets.tolist() == [1, 1]
    assert camzoo.explain(tiny, images, target=["fox", 0]).targets.tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"not one of the model's class names. Did you mean 'dog'"):
        camzoo.explain(tiny, images, target="dgo")


def test_a_one_logit_model_scores_with_the_sigmoid():
    torch.manual_seed(0)
    model = no_cfg_model(outputs=1).eval()
    images = torch.randn(3, 3, 16, 16)
    result = camzoo.explain(model, images)
    with torch.no_grad():
        expected = torch.sigmoid(model(images)[:, 0])
    assert result.targets.tolist() == [0, 0, 0]
    assert torch.allclose(result.scores, expected) and not torch.all(result.scores == 1.0)


def test_chunked_batches_equal_one_batch(trained_resnet):
    model, images, labels = trained_resnet["model"], trained_resnet["images"][:5], trained_resnet["labels"][:5]
    for method in ("gradcam", "eigencam"):
        whole = camzoo.explain(model, images, method=method, target=labels)
        chunked = camzoo.explain(model, images, method=method, target=labels, batch_size=2)
        assert torch.allclose(whole.maps, chunked.maps, atol=1e-5)
        assert torch.equal(whole.targets, chunked.targets)


def test_no_hooks_no_grads_and_mode_restored(trained_resnet):
    model, images = trained_resnet["model"], trained_resnet["images"][:2]
    model.train()
    try:
        camzoo.explain(model, images, method="gradcam")
        assert model.training, "the model's mode must be restored"
        assert no_hooks_left(model)
        assert all(p.grad is None for p in model.parameters()), "an explanation must not write .grad"
        with pytest.raises(ValueError, match="out of range"):
            camzoo.explain(model, images, target=7)
        assert no_hooks_left(model), "hooks must be removed even when the call raised"
        assert model.training
    finally:
        model.eval()


def test_upsample_and_normalise_constant_map_is_zero_not_nan():
    raw = torch.stack([torch.full((3, 3), 5.0), torch.arange(9.0).view(3, 3)])
    maps = upsample_and_normalise(raw, (6, 6))
    assert torch.equal(maps[0], torch.zeros(6, 6))
    assert maps[1].min() == 0 and maps[1].max() == 1
    assert torch.isfinite(maps).all()


def test_explanation_save_and_overlay(trained_resnet, tmp_path):
    result = camzoo.explain(trained_resnet["model"], trained_resnet["images"][:3])
    overlay = result.overlay(1)
    assert overlay.size == (64, 64) and overlay.mode == "RGB"
    out = result.save(tmp_path / "exp")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "gradcam" and manifest["num_images"] == 3
    assert manifest["targets"] == result.targets.tolist()
    assert np.array_equal(np.load(out / "maps.npy"), result.maps.numpy())
    assert np.array_equal(np.load(out / "raw.npy"), result.raw.numpy())
    assert len(manifest["files"]["overlays"]) == 3
    assert Image.open(out / manifest["files"]["overlays"][2]).size == (64, 64)
    assert not list(out.glob("*.tmp")), "no temporary files may be left behind"


def test_overlay_at_the_original_size_and_aspect_with_a_colormap(tiny):
    result = camzoo.explain(tiny, torch.randn(1, 3, 32, 32))
    photo = Image.new("RGB", (90, 30), (10, 20, 30))
    assert result.overlay(0, image=photo).size == (90, 30)
    assert np.array_equal(np.asarray(result.overlay(0, alpha=0.0, image=photo)), np.asarray(photo))
    viridis = np.asarray(result.overlay(0, alpha=1.0, colormap="viridis"))
    jet = np.asarray(result.overlay(0, alpha=1.0))
    assert viridis.shape == jet.shape and not np.array_equal(viridis, jet)
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        result.overlay(0, colormap="nope")
    assert result.map_at(0, (30, 90)).shape == (30, 90)


def test_label_out_of_range_is_an_index_error(tiny):
    result = camzoo.explain(tiny, torch.randn(2, 3, 32, 32))
    assert result.label(-1) == result.label(1)
    with pytest.raises(IndexError, match="image index 2 is out of range for an explanation of 2 images"):
        result.label(2)


class AttentionToy(nn.Module):
    """A model that emits its own attention map, as ABN / LFI-CAM do."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward_with_attention(self, x):
        features = self.conv(x)
        attention = torch.sigmoid(features.mean(1, keepdim=True))
        return self.fc((features * (1 + attention)).mean((2, 3))), attention

    def forward(self, x):
        return self.forward_with_attention(x)[0]


def test_attention_method_reads_the_models_own_map():
    torch.manual_seed(0)
    model = AttentionToy().eval()
    images = torch.randn(2, 3, 8, 8)
    result = camzoo.explain(model, images, method="attention")
    with torch.no_grad():
        logits, attention = model.forward_with_attention(images)
    assert torch.allclose(result.raw, attention[:, 0])
    assert torch.equal(result.targets, logits.argmax(1))
    assert result.maps.shape == (2, 8, 8)


# --- bad input: each a clear error naming the problem ------------------------------------------


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"img": torch.randn(8, 8)}, ValueError, r"shape \(3,H,W\) or \(B,3,H,W\)"),
        ({"img": torch.randn(1, 4, 8, 8)}, ValueError, "3 colour channels"),
        ({"img": torch.zeros(3, 8, 8, dtype=torch.uint8)}, ValueError, "must be float"),
        ({"img": torch.full((3, 8, 8), float("nan"))}, ValueError, "NaN"),
        ({"img": np.zeros((8, 8, 3), dtype=np.float32)}, ValueError, "uint8"),
        ({"img": 42}, TypeError, "cannot explain an input of type int"),
        ({"layer": "layer5"}, ValueError, r"layer 'layer5' not found.*Did you mean 'layer4'"),
        ({"method": "fullgradcam"}, ValueError, r"unknown method 'fullgradcam'.*Available: .*gradcam"),
        ({"target": 3}, ValueError, "target 3 is out of range for a model with 3 classes"),
        ({"target": -1}, ValueError, "target -1 is out of range"),
        ({"target": [0, 1]}, ValueError, "got 2 targets for a batch of 1"),
        ({"target": 1.5}, TypeError, "target must be an int"),
        ({"method": "attention"}, ValueError, "no forward_with_attention"),
    ],
)
def test_bad_input_errors(small_model, kwargs, error, message):
    arguments = {"img": torch.randn(3, 32, 32), **kwargs}
    with pytest.raises(error, match=message):
        camzoo.explain(small_model, **arguments)


def test_model_without_conv_layer_is_refused():
    with pytest.raises(ValueError, match="no convolutional layer"):
        camzoo.explain(MLP(), torch.randn(1, 3, 8, 8))


def test_non_spatial_layer_is_refused(small_model):
    with pytest.raises(ValueError, match=r"\(B,C,h,w\) feature map"):
        camzoo.explain(small_model, torch.randn(1, 3, 32, 32), layer="fc")


def test_unreadable_and_missing_image_paths(small_model, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        camzoo.explain(small_model, broken)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        camzoo.explain(small_model, tmp_path / "missing.png")


def test_nan_weights_give_a_clear_error():
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    with torch.no_grad():
        model.layer4[0].conv1.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="NaN"):
        camzoo.explain(model, torch.randn(1, 3, 64, 64), method="eigencam")


def test_a_headless_model_is_refused():
    headless = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    with pytest.raises(ValueError, match="no classifier head"):
        camzoo.explain(headless, torch.randn(1, 3, 32, 32))


def test_a_model_that_fails_on_the_input_says_so_in_one_short_line():
    model = no_cfg_model(kernel=5).eval()
    with pytest.raises(ValueError, match=r"the model failed on a batch of shape \(1, 3, 2, 2\)") as info:
        camzoo.explain(model, torch.randn(1, 3, 2, 2))
    assert len(str(info.value)) < 400 and "\n" not in str(info.value)


def test_a_meta_model_a_squeezing_model_and_a_url_get_the_right_result_or_the_right_cause():
    with torch.device("meta"):
        meta = no_cfg_model()
    with pytest.raises(ValueError, match="'meta' device"):
        camzoo.explain(meta, torch.randn(1, 3, 16, 16))
    torch.manual_seed(0)
    plain, x = no_cfg_model().eval(), torch.randn(1, 3, 16, 16)
    squeezing = no_cfg_model(squeeze=True).eval()
    squeezing.load_state_dict(plain.state_dict())
    for method in ("gradcam", "captum:Saliency"):
        a, b = camzoo.explain(plain, x, method=method), camzoo.explain(squeezing, x, method=method)
        assert torch.equal(a.targets, b.targets) and torch.allclose(a.maps, b.maps) and torch.allclose(a.scores, b.scores)
    with pytest.raises(ValueError, match="http://example.com/a.jpg.*URL"):
        camzoo.explain(plain, "http://example.com/a.jpg")


def test_methods_lists_names():
    assert {"gradcam", "eigencam", "attention"} <= set(camzoo.list_methods())
    assert camzoo.list_methods() == sorted(camzoo.list_methods())
