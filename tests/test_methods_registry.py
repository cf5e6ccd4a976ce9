"""camzoo.methods.registry: each method is described from its class (summary, paper), as ``camzoo
methods`` lists it, and a method registered by a user is described the same way."""

from __future__ import annotations

from helpers import cli


def test_methods_lists_descriptions_and_papers():
    from camzoo.methods.registry import describe

    result = cli("methods")
    assert result.exit_code == 0
    assert "Grad-CAM: ReLU(sum_c mean_hw(dy/dA_c) * A_c) [Selvaraju et al. 2017]" in result.output
    info = describe("eigencam")
    assert info.paper == "Muhammad & Yeasin 2020" and info.summary.startswith("Eigen-CAM, as pytorch-grad-cam")
    assert describe("random").summary.startswith("seeded uniform noise") and describe("random").reference


def test_a_registered_method_is_described_from_its_class():
    from camzoo.methods import CAMMethod
    from camzoo.methods.registry import METHODS, describe, register

    @register
    class Doubled(CAMMethod):
        """Twice the channel mean. A second sentence that is not shown."""

        name = "doubled_channel_mean"
        paper = "Nobody et al. 2099"

        def compute(self, activations, gradients):
            return 2 * activations.mean(1)

    try:
        assert describe("doubled_channel_mean") == ("doubled_channel_mean", "Twice the channel mean", "Nobody et al. 2099", False)
        assert "doubled_channel_mean  Twice the channel mean [Nobody et al. 2099]" in cli("methods").output
    finally:
        METHODS.remove("doubled_channel_mean")
