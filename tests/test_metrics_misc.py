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


# ---------------------------------------------------------------- registry


def test_every_registered_metric_names_a_public_function_and_a_direction():
    assert {"deletion", "insertion", "pointing_game", "max_box_acc_v2", "pxap", "iou", "ssim"} <= set(METRICS)
    for name, info in METRICS.items():
        assert info.name == name and callable(getattr(metrics, info.function))
        assert info.low < info.high and info.arrow in ("↑", "↓")
    assert METRICS["deletion"].best([0.3, 0.1, float("nan")]) == 1
    assert METRICS["insertion"].best([0.3, 0.1, float("nan")]) == 0
    assert METRICS["pxap"].best([float("nan")]) == -1
