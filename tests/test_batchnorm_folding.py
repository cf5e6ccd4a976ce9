"""camzoo.batchnorm_folding: the benchmark scores its games on a copy with BatchNorm folded into the
convolutions; the copy must compute the same function and fold only where that is exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from camzoo.batchnorm_folding import count_batchnorms, fold_batchnorm
from camzoo.models import build_model


def _trained_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters far from their init, so folding changes the weights."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            shape = module.running_mean.shape
            module.running_mean.copy_(torch.randn(shape, generator=generator))
            module.running_var.copy_(torch.rand(shape, generator=generator) * 2 + 0.1)
            module.weight.data.copy_(torch.randn(shape, generator=generator))
            module.bias.data.copy_(torch.randn(shape, generator=generator))
    return model.eval()


def _logits(output):
    return output[0] if isinstance(output, (tuple, list)) else output


@pytest.mark.parametrize("kind", ["baseline", "abn", "lfi"])
@pytest.mark.parametrize("backbone,size", [("resnet8", 32), ("resnet18", 64)])
def test_folded_copy_computes_the_same_function_without_its_conv_batchnorms(kind, backbone, size):
    torch.manual_seed(0)
    model = _trained_statistics(build_model(kind, backbone, 5))
    if backbone == "resnet8":
        model.to(memory_format=torch.channels_last)  # as the trainer leaves it
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    folded = fold_batchnorm(model)
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = model(x), folded(x)
    torch.testing.assert_close(_logits(actual), _logits(expected), rtol=1e-4, atol=1e-4)
    if kind != "baseline":  # the attention map too
        torch.testing.assert_close(actual[1], expected[1], rtol=1e-4, atol=1e-4)
    # every BatchNorm that follows a convolution is gone; ABN's first branch norm follows a ReLU
    left = [name for name, module in folded.named_modules() if isinstance(module, nn.BatchNorm2d)]
    assert left == (["attention_branch.bn"] if kind == "abn" else [])
    assert count_batchnorms(model) > count_batchnorms(folded)
    assert type(folded) is type(model) and not folded.training
    # the original is untouched
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())


class _SharedOutput(nn.Module):
    """A convolution whose output feeds its BatchNorm *and* a skip: folding it would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.bn(y) + y
        return self.bn2(self.conv2(z)) + self.bn2(z)  # bn2 is called twice: not foldable either


class _Untraceable(nn.Module):
    """A data-dependent branch stops the tracer at this level; the child is still folded."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 100:  # data-dependent: symbolic tracing fails here
            return x
        return self.inner(x)


def test_only_exact_pairs_are_folded():
    shared = _trained_statistics(_SharedOutput())
    untraceable = _trained_statistics(_Untraceable())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    for model, left in ((shared, 2), (untraceable, 0)):
        folded = fold_batchnorm(model)
        assert count_batchnorms(folded) == left
        with torch.no_grad():
            torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
