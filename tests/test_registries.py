"""The registries carry the facts: one Registry shape with aliases; methods declare family, cost and
typed options; a method registered anywhere shows up everywhere with no other edit; every stored
number is a metrics-table entry; the metrics read typed settings, never the harness's dict."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import camzoo
from camzoo.bench.config import resolve_config
from camzoo.bench.plan import build_plan
from camzoo.bench.store import ALL_SEEDS, CellKey, ResultsStore
from camzoo.cli import main
from camzoo.methods import METHODS, get_method, select_methods
from camzoo.metrics import METRICS, EvalSettings, MetricInfo, register_metric
from camzoo.registry import Registry

ROOT = Path(__file__).resolve().parents[1]

TEMP_METHOD = '''
import torch
from camzoo.methods import CAMMethod, register


@register
class AbsGradTimesActivation(CAMMethod):
    """ReLU(sum_c |dy/dA_c| * A_c), a test method registered from outside camzoo."""

    name = "absgradxact"
    family = "gradient"
    cost = "backward"
    uses_gradients = True
    aliases = ("absgradxact_v0",)

    def compute(self, activations, gradients):
        return (gradients.abs() * activations).sum(1).clamp_min(0)
'''


def test_registry_names_aliases_and_errors():
    registry: Registry[int] = Registry("widget", normalise=str.lower)
    registry.add("alpha", 1, aliases=("old_alpha",))
    registry.add("beta", 2)
    assert list(registry) == ["alpha", "beta"] and registry["old_alpha"] == 1 and registry["ALPHA"] == 1
    assert "old_alpha" in registry and registry.canonical("old_alpha") == "alpha"
    assert registry.aliases() == {"old_alpha": "alpha"}
    with pytest.raises(ValueError, match="unknown widget 'alpah'. Did you mean 'alpha'"):
        registry.lookup("alpah")
    with pytest.raises(ValueError, match="already registered"):
        registry.add("beta", 3)
    with pytest.raises(ValueError, match="already names a widget"):
        registry.alias("beta", "alpha")
    registry.remove("alpha")
    assert "old_alpha" not in registry and list(registry) == ["beta"]


def test_a_method_in_a_new_module_appears_everywhere_with_no_other_edit(tmp_path, monkeypatch, benchmark_script):
    (tmp_path / "my_cams.py").write_text(TEMP_METHOD, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("my_cams")
    try:
        assert "absgradxact" in CliRunner().invoke(main, ["methods"]).output
        standard = resolve_config("standard")
        plan = build_plan(standard, device="cpu")
        assert all("absgradxact" in job.methods for job in plan.jobs)
        (one_pass,) = [g for g in plan.jobs[0].groups if "gradcam" in g]
        assert "absgradxact" in one_pass  # pure compute(): it joins the one forward and backward
        assert "absgradxact" in resolve_config("quick")["methods"]  # "@one-pass"
        assert "absgradxact" in benchmark_script("explain_speed").one_pass_methods()
        assert get_method("absgradxact_v0").name == "absgradxact"  # its old name still finds it
    finally:
        METHODS.remove("absgradxact")
        sys.modules.pop("my_cams", None)
    assert "absgradxact" not in select_methods(["@all"])


def test_selectors_pick_methods_by_their_declared_facts():
    assert select_methods(["@controls"]) == ["random", "centre", "edges", "oracle"]
    perturbation = set(select_methods(["@family:perturbation"]))
    assert {"scorecam", "ablationcam"} <= perturbation
    assert perturbation == {name for name in METHODS if get_method(name).family == "perturbation"}
    cheap = select_methods(["@cost:forward"])
    assert "eigencam" in cheap and "attention" in cheap and "gradcam" not in cheap and "random" in cheap
    everything = select_methods(["@all"])
    assert everything[-4:] == select_methods(["@controls"]) and len(everything) == len(METHODS)
    assert select_methods(["gradcam", "@one-pass"])[0] == "gradcam"  # each once, first mention first
    with pytest.raises(ValueError, match="unknown method selector '@family'"):
        select_methods(["@family"])


def test_explain_checks_method_options_against_the_typed_signature():
    model = camzoo.build_model("baseline", "resnet8", num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"'opticam' does not take option\(s\) iters; its options: iterations \(int"):
        camzoo.explain(model, x, method="opticam", method_options={"iters": 2})
    with pytest.raises(TypeError, match="option iterations must be int; got 2.5"):
        camzoo.explain(model, x, method="opticam", method_options={"iterations": 2.5})
    with pytest.raises(TypeError, match="option memory_mb must be float"):
        camzoo.explain(model, x, method=["gradcam", "scorecam"], method_options={"scorecam": {"memory_mb": "big"}})
    with pytest.raises(ValueError, match="sliding_window_shapes"):  # Captum's own keywords are the options
        camzoo.explain(model, x, method="captum:Occlusion", method_options={"window": (3, 4, 4)})
    exp = camzoo.explain(model, x, method="opticam", method_options={"iterations": 1})
    assert exp.maps.shape == (1, 32, 32)


def test_stores_written_under_old_names_report_under_the_new_ones(tmp_path):
    register_metric(MetricInfo("test_renamed_metric", True, 0, 1, "", "a metric once stored as test_old_metric",
                               scope="model", aliases=("test_old_metric",)))
    METHODS.alias("test_old_gradcam", "gradcam")
    try:
        with ResultsStore(tmp_path) as store:
            store.record_run("r1", {"eval": {}}, {"device": "cpu"})
            key = CellKey("shapes", "resnet8", "baseline", "default", 0, "test_old_gradcam")
            store.write_cell("r1", key, {"test_old_metric": (0.5, np.ones(3))}, code_version="0", device="cpu")
            (row,) = store.results("r1", with_per_image=True)
        assert (row["method"], row["metric"]) == ("gradcam", "test_renamed_metric")
    finally:
        METRICS.remove("test_renamed_metric")
        METHODS._aliases.pop("test_old_gradcam")


def test_the_runner_stores_only_numbers_the_metrics_table_knows(tmp_path):
    from camzoo.bench.runner import BenchRunner, commit_cell

    config = resolve_config("quick", overrides={
        "seeds": [0], "kinds": ["baseline"], "methods": ["gradcam"],
        "datasets": [{"name": "shapes", "root": str(tmp_path / "cache"), "image_size": 32,
                      "options": {"num_classes": 4, "train": {"num_images": 8}, "test": {"num_images": 8}}}]})
    runner = BenchRunner(build_plan(config, device="cpu"), tmp_path / "out", progress=False)
    key = CellKey("shapes", "-", "-", "-", ALL_SEEDS, "gallery")
    with pytest.raises(ValueError, match=r"not in the metrics table: \['made_up'\]"):
        commit_cell(runner.store, runner.run_id, key, {"eval_images": (8.0, None), "made_up": (1.0, None)})
    commit_cell(runner.store, runner.run_id, key, {"eval_images": (8.0, None)})
    runner.close()
    for name in ("train_seconds", "train_loss", "stability_pairs", "eval_images", "peak_memory_mb", "ms_per_image"):
        assert name in METRICS, name


def test_eval_settings_are_typed_and_checked_once():
    settings = EvalSettings.from_config(resolve_config("quick")["eval"])
    assert settings.game_images == 48 and settings.deletion_steps == 6 and settings.game_slice == slice(0, 48)
    assert EvalSettings.from_config({"game_images": "all"}).game_slice == slice(None)
    with pytest.raises(ValueError) as caught:
        EvalSettings(deletion_steps=0, substrates=("zeros", "sand"), deletion_fraction=1.5)
    for part in ("eval.deletion_steps", "eval.substrates", "eval.deletion_fraction"):
        assert part in str(caught.value), part
    with pytest.raises(TypeError, match="EvalSettings"):
        camzoo.metrics.score_maps(torch.nn.Identity(), torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4),
                                  torch.zeros(1, dtype=torch.long), None, None, {"deletion_steps": 4})


def test_no_metric_reads_a_settings_mapping_by_string():
    pattern = re.compile(r"settings\s*\[\s*[\"']|settings\.get\(\s*[\"']")
    found = [f"{path.name}:{n}" for path in (ROOT / "camzoo" / "metrics").glob("*.py")
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not found, found


def test_camzoo_methods_options_lists_the_declared_facts():
    output = CliRunner().invoke(main, ["methods", "--options"]).output
    smoothing = "eigen_smooth (bool = False), aug_smooth (bool = False)"
    assert f"family gradient; cost backward; one pass; options: {smoothing}" in output
    assert ("family optimisation; cost iterative; options: iterations (int = 50), lr (float = 0.1), "
            "aug_smooth (bool = False)") in output
    assert "family control; cost free; options: seed (int = 0)" in output


def test_explain_reads_a_layer_row_as_the_method_on_that_layer():
    model = camzoo.build_model("baseline", "resnet8", num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    row = camzoo.explain(model, x, method="gradcam@layer2")
    plain = camzoo.explain(model, x, method="gradcam", layer="layer2")
    assert row.layer == plain.layer and torch.equal(row.maps, plain.maps)
    rows = camzoo.explain(model, x, method=["gradcam@layer2", "hirescam@layer2"])
    assert list(rows) == ["gradcam@layer2", "hirescam@layer2"] and torch.equal(rows["gradcam@layer2"].maps, plain.maps)
    with pytest.raises(ValueError, match="names several layers"):
        camzoo.explain(model, x, method=["gradcam@layer2", "hirescam"])
    with pytest.raises(ValueError, match="give one of them"):
        camzoo.explain(model, x, method="gradcam@layer2", layer="layer3")
