"""Accuracy, the parameter-randomisation sanity check, and the metric registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camzoo.metrics as metrics
from camzoo.metrics import METRICS, accuracy, parameter_randomisation, randomisable_layers

# ---------------------------------------------------------------- accuracy


def test_accuracy_top1_top5_by_hand():
    logits = torch.tensor([
        [9.0, 1, 2, 3, 4, 5, 6],  # label 0: top-1
        [1.0, 9, 8, 7, 6, 5, 0],  # label 5: 5th best -> top-5 only
        [1.0, 9, 8, 7, 6, 5, 0],  # label 6: last -> neither
        [0.0, 1, 2, 3, 4, 5, 6],  # label 2: 5th best
    ])
    result = accuracy(logits, torch.tensor([0, 5, 6, 2]))
    assert float(result["top1"]) == 0.25 and float(result["top5"]) == 0.75
    assert result["correct"].tolist() == [True, False, False, False]


def test_top5_is_dropped_for_five_classes_or_fewer_unless_asked_explicitly():
    logits = torch.randn(4, 5)
    assert set(accuracy(logits, torch.zeros(4, dtype=torch.long))) == {"top1", "correct"}
    assert float(accuracy(logits, torch.zeros(4, dtype=torch.long), topk=(5,))["top5"]) == 1.0
    with pytest.raises(ValueError, match="topk"):
        accuracy(logits, torch.zeros(4, dtype=torch.long), topk=(6,))


def test_accuracy_refuses_bad_input():
    with pytest.raises(ValueError, match="targets must lie"):
        accuracy(torch.randn(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="finite"):
        accuracy(torch.tensor([[float("nan"), 1.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="B=2"):
        accuracy(torch.randn(2, 3), torch.tensor([0, 1, 2]))


# ---------------------------------------------------------------- sanity check


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def cam(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Class activation map (Zhou et al. 2016): fc weights of the target over the last features."""
    with torch.no_grad():
        raw = torch.einsum("bchw,bc->bhw", model.features(images), model.fc.weight[targets]).relu()
        low = raw.amin((1, 2), keepdim=True)
        spread = raw.amax((1, 2), keepdim=True) - low
        return torch.where(spread > 0, (raw - low) / spread.clamp(min=1e-12), torch.zeros_like(raw))


def test_cascading_randomisation_goes_top_down_and_leaves_the_callers_model_alone():
    torch.manual_seed(0)
    model = SmallCNN().train()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    images, targets = torch.randn(4, 3, 12, 12), torch.tensor([0, 1, 2, 0])
    seen: list[dict[str, torch.Tensor]] = []

    def recording_cam(net: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append({name: value.clone() for name, value in net.state_dict().items()})
        return cam(net, x, t)

    rng_state = torch.get_rng_state()
    result = parameter_randomisation(model, images, targets, recording_cam, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert model.training
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert result["layers"] == ["fc", "conv2", "conv1"] == randomisable_layers(model)
    assert len(seen) == 4 and result["spearman"].shape == result["ssim"].shape == (3, 4)
    for name, value in seen[0].items():  # the reference maps come from the trained weights
        assert torch.equal(value, before[name])
    for step in range(1, 4):  # after step i, exactly the first i layers differ from the trained ones
        randomised = set(result["layers"][:step])
        for name, value in seen[step].items():
            assert torch.equal(value, before[name]) != (name.split(".")[0] in randomised), (step, name)
    torch.testing.assert_close(result["reference_maps"], cam(model, images, targets))
    assert float(result["mean_spearman"][-1]) < 0.9  # a fully random model explains differently


def test_randomisation_is_seeded():
    model, images, targets = SmallCNN(), torch.randn(2, 3, 10, 10), torch.tensor([0, 1])
    first = parameter_randomisation(model, images, targets, cam, seed=1)["spearman"]
    again = parameter_randomisation(model, images, targets, cam, seed=1)["spearman"]
    other = parameter_randomisation(model, images, targets, cam, seed=2)["spearman"]
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)


def test_explicit_layers_and_errors():
    model, images, targets = SmallCNN(), torch.randn(2, 3, 10, 10), torch.tensor([0, 1])
    result = parameter_randomisation(model, images, targets, cam, layers=["fc"])
    assert result["layers"] == ["fc"] and result["spearman"].shape == (1, 2)
    with pytest.raises(ValueError, match="unknown layer"):
        parameter_randomisation(model, images, targets, cam, layers=["head"])
    with pytest.raises(ValueError, match=r"\(B,H,W\)"):
        parameter_randomisation(model, images, targets, lambda m, x, t: cam(m, x, t)[:, :5])
    with pytest.raises(TypeError, match="explain_fn"):
        parameter_randomisation(model, images, targets, "gradcam")


def owners_of_parameters(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if name and list(module.parameters(recurse=False))]


def reversed_call_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The test's own record: parameter-owning modules by their last call (post-forward hooks), reversed."""
    finished: list[str] = []
    handles = [module.register_forward_hook(lambda m, i, o, name=name: finished.append(name))
               for name, module in model.named_modules() if name in set(owners_of_parameters(model))]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    order: list[str] = []
    for name in reversed(finished):
        if name not in order:
            order.append(name)
    return order


def attention_maps(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The model's own attention map (ABN / LFI-CAM), upsampled and min-max normalised per image."""
    with torch.no_grad():
        _, attention = model.forward_with_attention(images)
        maps = F.interpolate(attention.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        low = maps.amin((1, 2), keepdim=True)
        spread = maps.amax((1, 2), keepdim=True) - low
        return torch.where(spread > 0, (maps - low) / spread.clamp(min=1e-12), torch.zeros_like(maps))


def all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("kind", ["baseline", "abn", "lfi"])
def test_camzoo_models_are_randomised_from_the_logits_down_in_reverse_call_order(kind):
    import camzoo

    torch.manual_seed(0)
    model = camzoo.build_model(kind, "resnet8", num_classes=3).train()
    model.backbone.eval()  # a mixed state that must come back as it was
    flags = [m.training for m in model.modules()]
    order = randomisable_layers(model)
    assert [m.training for m in model.modules()] == flags and all_hooks(model) == 0
    assert order[0] == "fc"
    assert sorted(order) == sorted(owners_of_parameters(model))  # every owner once, none invented
    assert order == reversed_call_order(model, torch.randn(2, 3, 32, 32))
    position = {name: i for i, name in enumerate(order)}
    trunk = [i for name, i in position.items() if name.startswith("backbone.trunk.")]
    last_stage = [i for name, i in position.items() if name.startswith("backbone.last_stage.")]
    assert max(last_stage) < min(trunk)
    if kind == "lfi":  # fc <- (1 + M) * F; M comes from the FIN, which reads F
        fin = [i for name, i in position.items() if name.startswith("fin.")]
        assert len(fin) == 8 and max(fin) == 8 and min(fin) == 1  # right after fc, before the backbone
        assert max(fin) < min(last_stage)
    if kind == "abn":  # fc <- last stage <- (1 + M) * trunk; M comes from the attention branch, which reads the trunk
        branch = [i for name, i in position.items() if name.startswith("attention_branch.")]
        assert max(last_stage) < min(branch) and max(branch) < min(trunk)
        assert position["attention_branch.map_conv"] < position["attention_branch.conv"]
        assert position["attention_branch.conv"] < min(i for n, i in position.items() if n.startswith("attention_branch.stage."))


@pytest.mark.parametrize("kind", ["abn", "lfi"])
def test_camzoo_models_on_a_timm_backbone_start_from_fc(kind):
    import camzoo

    model = camzoo.build_model(kind, "resnet10t", num_classes=3, pretrained=False)
    probe = torch.randn(1, 3, 64, 64)
    order = randomisable_layers(model, probe)
    assert order[0] == "fc" and order == reversed_call_order(model, probe)
    branch = "fin." if kind == "lfi" else "attention_branch."
    first_branch = min(i for i, name in enumerate(order) if name.startswith(branch))
    assert all(name == "fc" or name.startswith("backbone.last_stage.") for name in order[:first_branch])
    assert order[-1].startswith("backbone.trunk.")  # the stem's first layer is randomised last


def test_plain_timm_and_torchvision_cnns_start_from_their_classifier():
    import timm
    import torchvision

    timm_net = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    order = randomisable_layers(timm_net)  # probe at its pretrained_cfg input size
    assert order[0] == "fc" and order[-1] == "conv1.0"
    assert order == owners_of_parameters(timm_net)[::-1]  # registration order is the forward order here
    vgg = torchvision.models.vgg11(num_classes=3)
    order = randomisable_layers(vgg, torch.randn(1, 3, 32, 32))
    assert order[:3] == ["classifier.6", "classifier.3", "classifier.0"] and order[-1] == "features.0"


class OutOfOrder(nn.Module):
    """The head and an unused layer are registered first; one conv is applied twice."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.unused = nn.Linear(4, 4)
        self.shared = nn.Conv2d(4, 4, 1)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.middle = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shared(self.stem(x))  # stem, shared, middle, shared, fc
        return self.fc(self.shared(self.middle(x)).mean((2, 3)))


def test_order_follows_calls_not_registration_and_uncalled_modules_go_last():
    model = OutOfOrder()
    assert owners_of_parameters(model)[0] == "fc"  # so reverse registration would put fc last
    assert randomisable_layers(model) == ["fc", "shared", "middle", "stem", "unused"]
    assert randomisable_layers(model, torch.randn(1, 3, 5, 7)) == ["fc", "shared", "middle", "stem", "unused"]
    images, targets = torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
    result = parameter_randomisation(model, images, targets, lambda m, x, t: torch.rand(x.shape[0], 8, 8))
    assert result["layers"] == ["fc", "shared", "middle", "stem", "unused"]


def test_a_failing_probe_names_the_way_out_and_leaves_no_hooks():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(ValueError, match="example="):
        randomisable_layers(model)  # a 3x32x32 probe does not fit Linear(64, 3)
    assert all_hooks(model) == 0 and model.training
    assert randomisable_layers(model, torch.zeros(1, 64)) == ["1"]
    result = parameter_randomisation(model, torch.randn(2, 1, 8, 8), torch.tensor([0, 1]),
                                     lambda m, x, t: torch.rand(x.shape[0], 8, 8))
    assert result["layers"] == ["1"]  # the default order probes with the images themselves


@pytest.mark.parametrize("kind, untouched", [
    ("lfi", ("fc",)),  # M is computed before fc
    ("abn", ("fc", "backbone.last_stage.", "attention_branch.cls_conv")),  # M is made before the perception branch's last stage
])
def test_cascade_on_attention_models_keeps_maps_until_their_producer_is_randomised(kind, untouched):
    import camzoo

    torch.manual_seed(0)
    model = camzoo.build_model(kind, "resnet8", num_classes=3)
    images, targets = torch.randn(2, 3, 24, 24), torch.tensor([0, 2])
    seen: list[torch.Tensor] = []

    def recording(net: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(attention_maps(net, x, t))
        return seen[-1]

    result = parameter_randomisation(model, images, targets, recording, seed=0)
    assert result["layers"] == randomisable_layers(model) and result["layers"][0] == "fc"
    unaffected = 0
    for step, name in enumerate(result["layers"]):
        if not name.startswith(untouched):
            break
        assert torch.equal(seen[step + 1], seen[0]), name  # the attention map does not read these layers
        unaffected += 1
    assert unaffected == (1 if kind == "lfi" else 8)
    assert not torch.equal(seen[-1], seen[0])
    assert float(result["mean_spearman"][-1]) < 0.9


# ---------------------------------------------------------------- registry


def test_every_registered_metric_names_a_public_function_and_a_direction():
    assert {"deletion", "insertion", "pointing_game", "max_box_acc_v2", "pxap", "stability_iou", "stability_ssim"} <= set(METRICS)
    for name, info in METRICS.items():
        # timings and bookkeeping (train time, pairs compared, image counts) are stored, not computed
        bookkeeping = not info.function and info.compute is None
        assert info.name == name and (bookkeeping or callable(getattr(metrics, info.function))), name
        assert info.low < info.high and info.arrow in ("↑", "↓")
    assert METRICS["deletion"].best([0.3, 0.1, float("nan")]) == 1
    assert METRICS["insertion"].best([0.3, 0.1, float("nan")]) == 0
    assert METRICS["pxap"].best([float("nan")]) == -1
