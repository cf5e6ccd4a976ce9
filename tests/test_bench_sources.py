"""Where a model job's model comes from: a trained model and a loaded checkpoint answer the same
questions (the evaluation split it sees, a method row's layer and reshape rule), so no caller asks which
one it has."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from camzoo.bench.datasets import DatasetData
from camzoo.bench.evaluation import EvalStream, Renormalised
from camzoo.bench.sources import ModelSource, TrainedSource
from camzoo.bench.specs import DatasetSpec
from camzoo.train import TrainConfig
from helpers import write_folder

QUESTIONS = ("obtain", "evaluation", "layer_for", "reshape_function")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> DatasetData:
    folder = write_folder(tmp_path_factory.mktemp("sources") / "photos", per_class=2, side=40)
    spec, problems = DatasetSpec.parse({"name": "annotated", "root": str(folder), "image_size": 32, "options": {}})
    assert not problems
    return DatasetData(spec, lambda split: EvalStream(split, 4, 4, torch.device("cpu"), 4))


def test_both_sources_answer_the_same_questions():
    for question in QUESTIONS:
        assert callable(getattr(TrainedSource, question)) and callable(getattr(ModelSource, question)), question


def test_the_layer_and_reshape_of_a_method_row():
    trained = TrainedSource.for_job(TrainConfig(kind="baseline", backbone="resnet8"), "shapes/resnet8/baseline/seed0")
    loaded = ModelSource(None, "a.pth", "a", {}, "layer3", reshape="math:floor")
    assert trained.layer_for("gradcam") is None and trained.layer_for("gradcam@layer2") == "layer2"
    assert loaded.layer_for("gradcam") == "layer3" and loaded.layer_for("gradcam@layer2") == "layer2"
    assert trained.reshape_function() is None and loaded.reshape_function().__name__ == "floor"


def test_the_checkpoint_directory_names_the_job_and_what_it_trains():
    config = TrainConfig(kind="baseline", backbone="resnet8", epochs=2)
    source = TrainedSource.for_job(config, "shapes/resnet8/baseline/seed0")
    assert source.checkpoint.startswith("shapes-resnet8-baseline-seed0-") and len(source.checkpoint.split("-")[-1]) == 10
    # where it runs is not what it trains: the same directory on any rank's device
    assert TrainedSource.for_job(dataclasses.replace(config, device="cuda:1"), "shapes/resnet8/baseline/seed0") == \
        dataclasses.replace(source, config=dataclasses.replace(config, device="cuda:1"))
    assert TrainedSource.for_job(dataclasses.replace(config, epochs=3), "shapes/resnet8/baseline/seed0").checkpoint \
        != source.checkpoint


def test_the_evaluation_split_a_source_sees(data):
    model = torch.nn.Linear(1, 1)  # declares no normalisation
    trained = TrainedSource(TrainConfig(), "x")
    assert trained.evaluation(model, data) == (data.test, data.stream)
    assert ModelSource(None, "a.pth", "a", {}, None).evaluation(model, data) == (data.test, data.stream)
    split, stream = ModelSource(None, "a.pth", "a", {}, None, image_size=40).evaluation(model, data)
    assert split is not data.test and stream.first.images.shape[-1] == 40
    own = ModelSource(None, "a.pth", "a", {}, None, mean=(0.5,), std=(0.25,))
    split, stream = own.evaluation(model, data)
    # one value stands for every channel of a colour model (its images stay colour)
    assert isinstance(split, Renormalised) and split.mean == (0.5,) * 3 and stream.first.images.shape[1:] == (3, 32, 32)
    assert own.evaluation(model, data)[1] is stream  # prepared once, for every model that asks


def test_a_loaded_source_obtains_its_checkpoint_untrained(data, tmp_path):
    import timm

    path = tmp_path / "a.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False, num_classes=4).state_dict(), path)
    model, numbers = ModelSource("resnet10t", str(path), "a", {}, None).obtain(data, torch.device("cpu"),
                                                                              tmp_path / "models")
    assert not model.training and numbers == {}  # its model cell records accuracy only
    assert not (tmp_path / "models").exists()  # nothing is trained or written
