"""Output targets (camzoo.targets) on torchvision segmenters and detectors, against pytorch-grad-cam 1.5.7.

Random-init models (no download): ``fcn_resnet50`` at 32 px and ``fasterrcnn_mobilenet_v3_large_320_fpn``
at 128 px with ``box_score_thresh=0.0``. A random MobileNet backbone in eval mode (BatchNorm's
default running statistics) shrinks its features to ~1e-8, so the class scores do not depend on
them and every map is flat: its BatchNorm statistics are first measured on 8 random images. It has one
foreground class: where boxes of several labels overlap, pytorch-grad-cam's target takes the best box
of any label (and scores 0 if its label differs) while BoxTarget takes the best box of its own label
(documented); with one label the two rules are the same, which Ablation-CAM's perturbed passes need.
The reference map is pytorch-grad-cam's own before its resize (its ``get_cam_image``, with its ReLU),
as in test_methods_zoo.py; both min-max normalised per image, equal within 1e-5.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import camzoo
from camzoo.methods.eigen import first_component_projection
from camzoo.methods.reshape import pyramid_to_feature_map
from camzoo.targets import BoxTarget, ClassTarget, SegmentationTarget
from helpers import minmax

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def segmenter():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=4).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        predicted = model(images)["out"].argmax(1)
    return model, images, predicted


@pytest.fixture(scope="module")
def detector():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=2, min_size=128, max_size=128, box_score_thresh=0.0).eval()
    for module in model.backbone.body.modules():  # BatchNorm statistics of random images (see the docstring)
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        model.backbone.train()(model.transform(list(torch.rand(8, 3, 128, 128)))[0].tensors)
    model.eval()
    image = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        detections = model(image)[0]
    return model, image, detections


class _Out(nn.Module):
    """pytorch-grad-cam's tutorial wrapper: a segmenter whose forward returns ``out`` (camzoo needs none)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def reference(cls_name: str, model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: list,
              reshape=None) -> tuple[np.ndarray, np.ndarray]:
    """(pytorch-grad-cam's raw map with its ReLU, its projection before ReLU for Eigen-CAM's sign)."""
    import pytorch_grad_cam

    recorded = {}
    options = {"reshape_transform": reshape} if reshape is not None else {}
    with getattr(pytorch_grad_cam, cls_name)(model=model, target_layers=[layer], **options) as cam:
        original = cam.get_cam_image
        cam.get_cam_image = lambda *a, **k: recorded.setdefault("raw", original(*a, **k))
        cam(input_tensor=images, targets=targets)
    model.zero_grad(set_to_none=True)
    return np.maximum(recorded["raw"], 0), recorded["raw"]


def assert_equal_maps(ours: torch.Tensor, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    assert ours.flatten(1).std(1).min() > 0, "maps must be non-trivial"
    assert np.abs(minmax(ours.numpy()) - minmax(theirs)).max() <= TOLERANCE


def eigen_reference(ours_projection: torch.Tensor, theirs: np.ndarray, theirs_signed: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam keeps LAPACK's SVD sign, camzoo fixes it: per image, its map or that of the
    negated projection, whichever sign camzoo's projection has."""
    signs = np.sign((ours_projection.numpy() * theirs_signed).reshape(len(theirs), -1).sum(1))
    assert set(signs.tolist()) <= {-1.0, 1.0}
    return np.where(signs[:, None, None] > 0, theirs, np.maximum(-theirs_signed, 0))


def test_segmentation_target_equals_pytorch_grad_cam(segmenter):
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    model, images, predicted = segmenter
    category = int(predicted[0].flatten().mode().values)
    masks = [(predicted[i] == category).numpy().astype(np.float32) for i in range(len(images))]
    given = [SegmentationTarget(category, mask) for mask in masks]
    layer = model.backbone.layer4
    for method, name in (("gradcam", "GradCAM"), ("eigencam", "EigenCAM")):
        ours = camzoo.explain(model, images, method=method, target=given, layer=layer)
        theirs, signed = reference(name, _Out(model), layer, images,
                                   [SemanticSegmentationTarget(category, m) for m in masks])
        if method == "eigencam":
            activations = layer(model.backbone.layer3(model.backbone.layer2(model.backbone.layer1(
                model.backbone.maxpool(model.backbone.relu(model.backbone.bn1(model.backbone.conv1(images))))))))
            theirs = eigen_reference(first_component_projection(activations.detach()), theirs, signed)
        assert_equal_maps(ours.raw, theirs)
    assert ours.targets.tolist() == [category] * len(images)


def test_segmentation_target_without_mask_takes_the_predicted_region_and_ablation_agrees(segmenter):
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    model, images, predicted = segmenter
    image, category = images[:1], int(predicted[0].flatten().mode().values)
    layer = model.backbone.layer1  # 256 channels: every ablated copy runs the rest of the network
    ours = camzoo.explain(model, image, method="ablationcam", target=SegmentationTarget(category), layer=layer,
                          method_options={"progress": False})
    mask = (predicted[0] == category).numpy().astype(np.float32)
    theirs, _ = reference("AblationCAM", _Out(model), layer, image, [SemanticSegmentationTarget(category, mask)])
    assert_equal_maps(ours.raw, theirs)
    with torch.no_grad():
        expected = (model(image)["out"][0, category] * torch.from_numpy(mask)).sum()
    assert torch.allclose(ours.scores, expected[None], rtol=1e-5)


def test_box_target_equals_pytorch_grad_cam(detector):
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    model, image, detections = detector
    label, box = int(detections["labels"][0]), detections["boxes"][0]
    theirs_target = [FasterRCNNBoxScoreTarget([label], box[None].numpy())]
    ours_target = BoxTarget(label, box)
    gradient_layer = model.backbone.body["12"]  # a tensor-valued block: pytorch-grad-cam hooks tensors only
    ours = camzoo.explain(model, image, method="gradcam", target=ours_target, layer=gradient_layer)
    theirs, _ = reference("GradCAM", model, gradient_layer, image, theirs_target)
    assert_equal_maps(ours.raw, theirs)
    assert float(ours.scores[0]) == pytest.approx(1.0 + float(detections["scores"][0]), rel=1e-5)

    # Eigen-CAM on the whole backbone, a feature pyramid: the same reshape given to both
    ours = camzoo.explain(model, image, method="eigencam", target=ours_target)
    assert ours.layer == "backbone"
    theirs, signed = reference("EigenCAM", model, model.backbone, image, theirs_target, reshape=pyramid_to_feature_map)
    with torch.no_grad():
        pyramid = pyramid_to_feature_map(model.backbone(model.transform(image)[0].tensors))
    assert_equal_maps(ours.raw, eigen_reference(first_component_projection(pyramid), theirs, signed))

    # 16 channels after a ReLU (pytorch-grad-cam zeroes a channel only where the layer's minimum is 0):
    # every ablated copy runs the whole detector
    ablation_layer = model.backbone.body["1"].block[0]
    ours = camzoo.explain(model, image, method="ablationcam", target=ours_target, layer=ablation_layer,
                          method_options={"progress": False})
    theirs, _ = reference("AblationCAM", model, ablation_layer, image, theirs_target)
    assert_equal_maps(ours.raw, theirs)


def test_gradients_reach_the_backbone_through_detection_post_processing(detector):
    model, image, detections = detector
    target = BoxTarget(int(detections["labels"][0]), detections["boxes"][0])
    result = camzoo.explain(model, image, method="gradcam", target=target)
    assert result.layer == "backbone" and result.raw.flatten(1).std(1).min() > 0
    assert all(p.grad is None for p in model.parameters())


def test_box_target_without_a_match_warns_and_gives_a_zero_map(detector):
    model, image, detections = detector
    far = BoxTarget(int(detections["labels"][0]), [0.0, 0.0, 1.0, 1.0])
    with pytest.warns(UserWarning, match="no predicted box of that label"):
        result = camzoo.explain(model, image, method="gradcam", target=far)
    assert float(result.maps.abs().max()) == 0.0 and float(result.scores[0]) == 0.0


def test_class_target_and_list_forms_equal_the_class_forms(segmenter):
    model, images, _ = segmenter
    classifier = nn.Sequential(model.backbone.conv1, nn.ReLU(), nn.Conv2d(64, 5, 3), nn.AdaptiveAvgPool2d(1),
                               nn.Flatten()).eval()
    by_index = camzoo.explain(classifier, images, method="gradcam", target=[3, 1], layer="2")
    by_target = camzoo.explain(classifier, images, method="gradcam", target=[ClassTarget(3), ClassTarget(1)], layer="2")
    assert torch.allclose(by_index.raw, by_target.raw, atol=1e-6)
    assert by_target.targets.tolist() == [3, 1]
    with torch.no_grad():
        logits = classifier(images)
    assert torch.allclose(by_target.scores, logits[[0, 1], [3, 1]])  # an output target's score is its value


def test_dense_outputs_need_an_output_target_and_bad_targets_fail_in_one_line(segmenter):
    model, images, _ = segmenter
    with pytest.raises(ValueError, match="SegmentationTarget"):
        camzoo.explain(model, images, method="gradcam")
    with pytest.raises(ValueError, match="3 targets for a batch of 2"):
        camzoo.explain(model, images, method="gradcam", target=[SegmentationTarget(0)] * 3)
    with pytest.raises(ValueError, match="must return a scalar"):
        camzoo.explain(model, images, method="gradcam", target=lambda out: out[0])
    with pytest.raises(ValueError, match="mask is"):
        camzoo.explain(model, images, method="gradcam", target=SegmentationTarget(0, np.ones((5, 5))))
    with pytest.raises(ValueError, match="class index"):
        SegmentationTarget(-1)
    with pytest.raises(ValueError, match="x1 >= x0"):
        BoxTarget(1, [5, 5, 2, 9])


def test_a_bare_callable_of_one_image_output_works_on_a_segmenter(segmenter):
    model, images, _ = segmenter
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = camzoo.explain(model, images, method="gradcam", target=lambda out: out[2].sum())
    reference_map = camzoo.explain(model, images, method="gradcam", target=SegmentationTarget(2, np.ones((32, 32))))
    assert torch.allclose(result.raw, reference_map.raw, atol=1e-5)
    assert result.targets.tolist() == [-1, -1]


def test_scorecam_and_captum_serve_segmentation_and_detection_targets(segmenter, detector):
    model, images, predicted = segmenter
    first, second = (int(p.flatten().mode().values) for p in predicted)  # each image's most predicted class
    for method in ("captum:Saliency", "captum:IntegratedGradients"):
        options = {"n_steps": 4} if method.endswith("Gradients") else None
        per_image = camzoo.explain(model, images, method=method, target=[SegmentationTarget(first),
                                                                         SegmentationTarget(second)],
                                   method_options=options)
        alone = camzoo.explain(model, images[1:], method=method, target=SegmentationTarget(second),
                               method_options=options)
        assert per_image.raw.flatten(1).std(1).min() > 0
        assert torch.allclose(per_image.raw[1:], alone.raw, atol=1e-5)  # per-image targets stay per image
    detector_model, image, detections = detector
    target = BoxTarget(int(detections["labels"][0]), detections["boxes"][0])
    result = camzoo.explain(detector_model, image, method="scorecam", target=target,
                            layer=detector_model.backbone.body["1"].block[0], method_options={"progress": False})
    assert result.raw.flatten(1).std(1).min() > 0


def test_a_method_that_explains_classes_only_refuses_output_targets(segmenter):
    model, images, _ = segmenter
    with pytest.raises(ValueError, match="explains the model module's own output|cannot serve"):
        camzoo.explain(model, images, method="captum:GuidedBackprop", target=SegmentationTarget(0))
