"""Random Logit similarity and the randomisation Spearman score (camzoo.metrics.class_sensitivity)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import camzoo
from camzoo.data.digits import load_digits
from camzoo.metrics.class_sensitivity import random_logit_similarity, random_other_classes, randomisation_spearman


@pytest.fixture(scope="module")
def digits_model() -> dict:
    """ResNet-8 on 16 px digits after 150 Adam steps (~97 % test accuracy), and 48 test images."""
    torch.manual_seed(0)
    train, test = load_digits("train", image_size=16), load_digits("test", image_size=16)
    x, y, _ = train.get_batch(range(len(train)))
    model = camzoo.build_model("baseline", "resnet8", num_classes=10, image_size=16, mean=train.mean, std=train.std,
                               class_names=train.classes)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(x), (64,), generator=order)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    optimiser.zero_grad(set_to_none=True)
    model.eval()
    images, labels, _ = test.get_batch(range(48))
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    return {"model": model, "images": images, "labels": labels, "accuracy": accuracy}


def test_random_other_classes_are_seeded_uniform_and_never_the_target() -> None:
    targets = torch.arange(10).repeat(500)
    others = random_other_classes(targets, 10, seed=3)
    assert not bool((others == targets).any())
    assert torch.equal(others, random_other_classes(targets, 10, seed=3))
    counts = torch.bincount((others - targets) % 10, minlength=10)   # offsets 1..9 equally likely
    assert counts[0] == 0 and counts[1:].min() > 440 and counts[1:].max() < 670
    with pytest.raises(ValueError, match="at least 2 classes"):
        random_other_classes(targets[:3] * 0, 1)


def test_eigencam_is_class_agnostic_and_gradcam_is_not(digits_model: dict) -> None:
    assert digits_model["accuracy"] > 0.85
    model, images, labels = digits_model["model"], digits_model["images"], digits_model["labels"]
    eigen = random_logit_similarity(model, images, "eigencam", labels, seed=0)
    grad = random_logit_similarity(model, images, "gradcam", labels, seed=0)
    assert float(eigen["random_logit_similarity"]) > 0.999          # the same map whatever the class
    assert float(grad["random_logit_similarity"]) < 0.5
    assert float((eigen["per_image"] > grad["per_image"]).float().mean()) > 0.9   # paired, image by image
    assert torch.equal(eigen["random_targets"], grad["random_targets"])            # same seed, same classes
    assert not bool((grad["random_targets"] == labels).any())
    ssim = random_logit_similarity(model, images, "eigencam", labels, measure="ssim")
    assert float(ssim["random_logit_similarity"]) > 0.999 and ssim["measure"] == "ssim"


def test_explain_callables_define_the_score() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    images = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    ramp = torch.linspace(0, 1, 64).reshape(8, 8)

    def agnostic(net, x, targets):
        return ramp.expand(x.shape[0], 8, 8).clone()

    def by_class(net, x, targets):  # a map whose peak moves with the class: rank order reversed for odd classes
        odd = (targets % 2 == 1)[:, None, None]
        return torch.where(odd, 1 - ramp, ramp).expand(x.shape[0], 8, 8).clone()

    assert torch.equal(random_logit_similarity(model, images, agnostic, labels)["per_image"], torch.ones(6))
    result = random_logit_similarity(model, images, by_class, labels, seed=1)
    parity_differs = (result["targets"] % 2) != (result["random_targets"] % 2)
    expected = torch.where(parity_differs, torch.tensor(-1.0), torch.tensor(1.0))
    torch.testing.assert_close(result["per_image"], expected)
    with pytest.raises(ValueError, match="measure must be one of"):
        random_logit_similarity(model, images, agnostic, labels, measure="iou")
    with pytest.raises(ValueError, match="targets"):
        random_logit_similarity(model, images, agnostic, torch.tensor([0, 1, 2, 3, 4, 1]))


def test_randomisation_spearman(digits_model: dict) -> None:
    model, images, labels = digits_model["model"], digits_model["images"][:16], digits_model["labels"][:16]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # the edges control ignores the model: its maps survive randomisation exactly
    edges = randomisation_spearman(model, images, "edges", labels, cascade=False)
    assert torch.equal(edges["per_image"], torch.ones(16)) and edges["per_layer"].shape == (1,)
    grad = randomisation_spearman(model, images, "gradcam", labels, seed=0)
    assert len(grad["layers"]) == grad["per_layer"].shape[0] > 5 and grad["layers"][0] == "fc"
    assert float(grad["randomisation_spearman"]) < 0.6
    assert float(grad["randomisation_spearman"]) == pytest.approx(float(grad["per_layer"][-1]))
    once = randomisation_spearman(model, images, "gradcam", labels, cascade=False, seed=0)
    assert float(once["randomisation_spearman"]) < 0.6
    three = randomisation_spearman(model, images, "gradcam", labels, cascade=False, seed=0, draws=3)
    assert three["per_draw"].shape == (3,)
    assert float(three["per_draw"][0]) == pytest.approx(float(once["randomisation_spearman"]), abs=1e-6)
    assert float(three["randomisation_spearman"]) == pytest.approx(float(three["per_draw"].mean()), abs=1e-6)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())     # the model is untouched
    with pytest.raises(ValueError, match="draws must be a positive int"):
        randomisation_spearman(model, images, "gradcam", labels, draws=0)
    with pytest.raises(ValueError, match="no meaning with cascade=False"):
        randomisation_spearman(model, images, "gradcam", labels, cascade=False, layers=["fc"])
