"""camzoo.explain on the model forms users bring: dtypes, grad modes, structured outputs, targets
(issue 11, item 5: each failure mode a new user hit, as a test)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import timm
import torch
from torch import nn

import camzoo
from camzoo.methods import get_method
from helpers import picture, timm_model


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return timm_model(num_classes=4)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def test_automatic_layer_is_chosen_per_input_size(resnet):
    small, large = torch.randn(1, 3, 24, 24), torch.randn(1, 3, 96, 96)
    assert camzoo.explain(resnet, small).layer == "layer3"  # layer4 is 1x1 at 24 px
    assert camzoo.explain(resnet, large).layer == "layer4"  # not the cached choice of the first call
    explainer = get_method("gradcam")(resnet)  # the same explainer object, called at both sizes
    assert explainer(large).layer == "layer4" and explainer(small).layer == "layer3"
    assert explainer(large).raw.shape == (1, 3, 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["gradcam", "eigencam"])
def test_half_and_bfloat16_models(resnet, dtype, method):
    low = timm.create_model("resnet10t", pretrained=False, num_classes=4).eval()
    low.load_state_dict(resnet.state_dict())
    low.to(dtype)
    x = torch.randn(2, 3, 64, 64)
    exp, reference = camzoo.explain(low, x, method=method), camzoo.explain(resnet, x, method=method)
    assert exp.maps.dtype == exp.raw.dtype == exp.scores.dtype == torch.float32
    assert torch.isfinite(exp.maps).all() and exp.maps.amax() == 1.0
    assert _correlation(exp.raw, reference.raw) > 0.98
    assert next(low.parameters()).dtype == dtype


def test_works_inside_no_grad_and_refuses_inference_mode_clearly(resnet):
    x = torch.randn(2, 3, 64, 64)
    reference = camzoo.explain(resnet, x)
    with torch.no_grad():
        inside = camzoo.explain(resnet, x)
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(inside.maps, reference.maps)
    assert all(p.grad is None for p in resnet.parameters())
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match=r"inference_mode\(\).*torch.no_grad\(\) is fine"):
            camzoo.explain(resnet, x)
        assert camzoo.explain(resnet, x, method="eigencam").maps.shape == (2, 64, 64)  # no autograd needed
    assert all(not m._forward_hooks for m in resnet.modules())


@dataclass
class Output:
    features: torch.Tensor
    logits: torch.Tensor


class Wrapped(nn.Module):
    """The resnet, returning its logits inside another structure."""

    def __init__(self, inner: nn.Module, form: str):
        super().__init__()
        self.inner, self.form = inner, form

    def forward(self, x):
        logits = self.inner(x)
        aux = logits.detach() * 0 + 7
        return {
            "tuple": lambda: (logits, aux),
            "aux_first": lambda: (aux, logits),
            "dict": lambda: {"aux": aux, "logits": logits},
            "dict_other_key": lambda: {"aux": aux, "scores": logits},
            "dataclass": lambda: Output(aux, logits),
            "flat": lambda: logits[:, 0],
            "middle_axis": lambda: logits[:, None],
        }[self.form]()


@pytest.mark.parametrize("form, output", [("tuple", None), ("dict", None), ("dataclass", None), ("aux_first", 1),
                                          ("dict_other_key", "scores"), ("dataclass", "logits"),
                                          ("middle_axis", lambda out: out[:, 0])])
def test_structured_outputs_through_the_output_selector(resnet, form, output):
    x = torch.randn(2, 3, 64, 64)
    reference = camzoo.explain(resnet, x)
    exp = camzoo.explain(Wrapped(resnet, form), x, output=output)
    assert exp.layer == "inner.layer4"
    torch.testing.assert_close(exp.maps, reference.maps)
    torch.testing.assert_close(exp.scores, reference.scores)


def test_structured_outputs_fail_clearly(resnet):
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"keys \['aux', 'scores'\] and none is called 'logits'.*output='KEY'"):
        camzoo.explain(Wrapped(resnet, "dict_other_key"), x)
    with pytest.raises(ValueError, match=r"output='nope' does not select anything"):
        camzoo.explain(Wrapped(resnet, "dict"), x, output="nope")
    with pytest.raises(ValueError, match=r"shape \(1,\): one value per image, no class axis"):
        camzoo.explain(Wrapped(resnet, "flat"), x)
    with pytest.raises(ValueError, match=r"shape \(1, 1, 4\).*output=lambda out: out\[:, 0\]"):
        camzoo.explain(Wrapped(resnet, "middle_axis"), x)
    with pytest.raises(TypeError, match="does not accept output="):
        camzoo.explain(resnet, x, method="attention", output=0)


def test_a_1x1_layer_is_refused_not_stretched(resnet):
    with pytest.raises(ValueError, match=r"layer 'layer4' gives a 1x1 map for a 24x24 input: no spatial extent"):
        camzoo.explain(resnet, torch.randn(1, 3, 24, 24), layer="layer4")


def test_target_as_a_function_of_the_logits(resnet):
    x = torch.randn(3, 3, 64, 64)
    runner_up = camzoo.explain(resnet, x, target=lambda logits: logits.topk(2, dim=1).indices[:, 1])
    logits = resnet(x)
    assert runner_up.targets.tolist() == logits.topk(2, dim=1).indices[:, 1].tolist()
    by_index = camzoo.explain(resnet, x, target=runner_up.targets)
    torch.testing.assert_close(runner_up.maps, by_index.maps)
    chunked = camzoo.explain(resnet, x, target=lambda logits: logits.argmin(1), batch_size=2)
    assert chunked.targets.tolist() == logits.argmin(1).tolist()
    with pytest.raises(ValueError, match=r"must return \(B,\) integer class indices; it returned torch.float32"):
        camzoo.explain(resnet, x, target=lambda logits: logits.max(1).values)


def test_target_by_class_name(resnet):
    x = torch.randn(1, 3, 64, 64)
    named = timm.create_model("resnet10t", pretrained=False, num_classes=4).eval()
    named.class_names = ["cat", "dog", "fox", "owl"]
    exp = camzoo.explain(named, x, target="fox")
    assert exp.targets.tolist() == [2] and exp.label(0) == "fox"
    with pytest.raises(ValueError, match=r"'foxx' is not one of the model's class names. Did you mean 'fox'"):
        camzoo.explain(named, x, target="foxx")
    hf_style = timm.create_model("resnet10t", pretrained=False, num_classes=4).eval()
    hf_style.config = type("Config", (), {"id2label": {0: "a", 1: "b", 2: "c", 3: "d"}})()
    exp = camzoo.explain(hf_style, x, target=["c"])
    assert exp.targets.tolist() == [2] and exp.label(0) == "c"
    with pytest.raises(ValueError, match="this model has no class names"):
        camzoo.explain(resnet, x, target="cat")


def test_cli_fuses_repeated_layers(tmp_path):
    import csv

    from click.testing import CliRunner

    from camzoo.cli import main

    image = picture(tmp_path / "a.png", size=(40, 40))
    result = CliRunner().invoke(main, ["explain", str(image), "--model", "resnet10t", "--layer", "layer2",
                                       "--layer", "layer3", "--image-size", "64", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "o" / "manifest.csv") as handle:
        assert [row["layer"] for row in csv.DictReader(handle)] == ["layer2+layer3"]
    result = CliRunner().invoke(main, ["explain", str(image), "--model", "resnet10t", "--output", "0",
                                       "--image-size", "64", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "the model returned a tensor; drop output=" in result.output
