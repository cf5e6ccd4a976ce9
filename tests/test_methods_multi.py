"""One pass for the gradient family: camzoo.explain(model, img, method=[...])."""

from __future__ import annotations

import pytest
import torch

import camzoo
from camzoo.methods.multi import shares_one_pass
from camzoo.methods import get_method

FAMILY = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigencam", "eigengradcam"]


def count_forwards(model: torch.nn.Module):
    calls = []
    handle = model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    return calls, handle


def test_one_pass_equals_one_method_at_a_time(trained_resnet):
    model, images, labels = trained_resnet["model"], trained_resnet["images"], trained_resnet["labels"]
    together = camzoo.explain(model, images, method=FAMILY, target=labels, layer="layer3")
    assert list(together) == FAMILY
    for name in FAMILY:
        alone = camzoo.explain(model, images, method=name, target=labels, layer="layer3")
        assert together[name].method == name and together[name].layer == alone.layer
        assert torch.equal(together[name].targets, alone.targets)
        assert torch.allclose(together[name].raw, alone.raw, atol=1e-6)
        assert torch.allclose(together[name].maps, alone.maps, atol=1e-6)
        assert torch.allclose(together[name].scores, alone.scores)


def test_one_forward_for_the_whole_family(trained_resnet):
    model, images = trained_resnet["model"], trained_resnet["images"][:4]
    calls, handle = count_forwards(model)
    try:
        camzoo.explain(model, images, method=FAMILY, layer="layer4")
        assert calls == [4], "one forward of the batch for seven methods"
        calls.clear()
        camzoo.explain(model, images, method=FAMILY)  # the automatic layer may add one 1-image probe
        assert [c for c in calls if c == 4] == [4] and len(calls) <= 2
    finally:
        handle.remove()


def test_methods_with_their_own_passes_run_beside_it():
    model = camzoo.build_model("baseline", "resnet8", num_classes=4).eval()
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    methods = ["gradcam", "scorecam", "Grad-CAM", "random", "hirescam"]
    result = camzoo.explain(model, images, method=methods, method_options={"scorecam": {"progress": False}})
    assert list(result) == ["gradcam", "scorecam", "random", "hirescam"]  # a method named twice runs once
    alone = camzoo.explain(model, images, method="scorecam", method_options={"progress": False})
    assert torch.allclose(result["scorecam"].maps, alone.maps, atol=1e-6)
    assert shares_one_pass(get_method("layercam")) and not shares_one_pass(get_method("scorecam"))
    assert not shares_one_pass(get_method("random")) and not shares_one_pass(get_method("oracle"))
    with pytest.raises(ValueError, match="key the options by method name"):
        camzoo.explain(model, images, method=["gradcam", "hirescam"], method_options={"memory_mb": 1})
    with pytest.raises(TypeError, match="non-empty list"):
        camzoo.explain(model, images, method=[])
