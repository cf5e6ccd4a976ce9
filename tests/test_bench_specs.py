"""The config's typed parts parse themselves once: a dataset or variant entry says what is wrong with
it, a variant builds each model's TrainConfig (validated once), and the plan they make pickles."""

from __future__ import annotations

import pickle

import pytest

from camzoo.bench.config import resolve_config
from camzoo.bench.plan import ConfigError, build_plan
from camzoo.bench.specs import DatasetSpec, Variant

SHAPES = {"name": "shapes", "root": "", "image_size": 32,
          "options": {"num_classes": 4, "train": {"num_images": 16}, "test": {"num_images": 8}}}


def test_a_dataset_entry_parses_into_its_spec_and_split_options():
    spec, problems = DatasetSpec.parse({**SHAPES, "options": {**SHAPES["options"], "test": {"num_images": 8,
                                                                                              "mean": [0.5]}}})
    assert problems == [] and spec is not None
    assert spec.split_options("train") == {"num_classes": 4, "num_images": 16}
    assert spec.split_options("test") == {"num_classes": 4, "num_images": 8, "mean": [0.5]}
    assert spec.gallery_key.method == "gallery" and not spec.annotated  # known once a split is loaded


@pytest.mark.parametrize("entries, message", [
    ([], "datasets must name at least one dataset"),
    ([{"root": "x"}], "each dataset needs a name"),
    ([{**SHAPES, "colour": 3}], "dataset 'shapes' has unknown keys ['colour']"),
    ([{**SHAPES, "options": {"train": 5}}], "dataset 'shapes': options must be a table"),
])
def test_a_bad_dataset_entry_names_its_problem(entries, message):
    specs, problems = DatasetSpec.parse_all(entries)
    assert specs == () and any(message in p for p in problems), problems


def test_variants_parse_with_a_default_and_distinct_names():
    assert Variant.parse_all([]) == ((Variant("default"),), [])
    variants, problems = Variant.parse_all([{"name": "a", "train": {"lr": 0.05}}, {"name": "b", "model": {}}])
    assert problems == [] and [v.name for v in variants] == ["a", "b"] and variants[0].train == {"lr": 0.05}
    _, problems = Variant.parse_all([{"name": "a"}, {"name": "a", "extra": 1}, {"name": "c", "train": 3}])
    assert any("distinct non-empty name" in p for p in problems)
    assert any("variant 'a' has unknown keys ['extra']" in p for p in problems)
    assert any("variant 'c': train must be a table" in p for p in problems)


def test_a_variant_builds_the_train_config_of_a_model():
    variant = Variant("fast", {"lr": 0.2, "milestones": [0.3, 0.6]}, {"width": 2})
    config, problems = variant.train_config({"epochs": 3, "lr": 0.1, "model_options": {"depth": 1}},
                                            "baseline", "resnet8", 4, "cpu")
    assert problems == [] and (config.lr, config.epochs, config.seed, config.milestones) == (0.2, 3, 4, (0.3, 0.6))
    assert config.model_options == {"depth": 1, "width": 2} and config.progress is False
    none, problems = Variant("default").train_config({"epochs": 1, "nope": 1}, "baseline", "resnet8", 0, "cpu")
    assert none is None and problems and problems[0].startswith("train: [train] in the benchmark config:")
    built, problems = variant.train_config({"epochs": 0}, "baseline", "resnet8", 0, "cpu")
    assert built is not None and problems == ["train (variant 'fast'): epochs must be an integer >= 1, got 0"]


def _config(tmp_path, **overrides):
    return resolve_config("quick", overrides={
        "seeds": [0, 1], "kinds": ["baseline"], "backbones": ["resnet8"], "methods": ["gradcam"], "device": "cpu",
        "datasets": [{**SHAPES, "root": str(tmp_path / "cache")}], **overrides})


def test_each_job_gets_its_own_train_config_built_and_validated_once(tmp_path, monkeypatch):
    from camzoo.train import TrainConfig

    validated = []
    original = TrainConfig.validate
    monkeypatch.setattr(TrainConfig, "validate", lambda self: validated.append(self.seed) or original(self))
    config = _config(tmp_path, variants=[{"name": "a"}, {"name": "b", "train": {"lr": 0.05}}])
    plan = build_plan(config)
    assert sorted(validated) == [0, 0, 1, 1]  # one per (variant, seed): the model probes reuse them
    lr = config["train"]["lr"]
    assert [(job.variant.name, job.seed, job.source.config.lr) for job in plan.jobs] == [
        ("a", 0, lr), ("a", 1, lr), ("b", 0, 0.05), ("b", 1, 0.05)]
    assert plan.jobs[0].source.checkpoint.startswith("shapes-resnet8-baseline-a-seed0-")


def test_the_plan_pickles_for_the_ranks(tmp_path):
    plan = build_plan(_config(tmp_path))
    copy = pickle.loads(pickle.dumps(plan))
    assert copy.run_id == plan.run_id and copy.jobs == plan.jobs and dict(copy.config) == dict(plan.config)


def test_problems_of_the_specs_and_the_train_table_are_listed_together(tmp_path):
    config = _config(tmp_path, train={"epochs": 0})
    config["datasets"].append({"name": "digits", "root": "", "image_size": 32, "options": {"train": 4}})
    with pytest.raises(ConfigError, match="options must be a table"):
        build_plan(config)  # a wrong shape stops before anything is loaded
    config["datasets"].pop()
    with pytest.raises(ConfigError, match="epochs must be an integer >= 1, got 0") as caught:
        build_plan(config)
    assert str(caught.value).count("epochs must be") == 1  # each problem once, though every seed's config has it
