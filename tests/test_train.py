"""camzoo.train: one trainer for baseline / ABN / LFI-CAM; checkpoints, resume, determinism, CLI."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from click.testing import CliRunner

from camzoo.models import build_model, load_model
from camzoo.train import TrainConfig, augment_batch, learning_rate, train, train_step
from helpers import cli

SIZE = 16


class Squares(torch.utils.data.Dataset):
    """In-memory data-contract dataset: a bright square in one of four quadrants is the class."""

    classes = ["top-left", "top-right", "bottom-left", "bottom-right"]
    mean, std, image_size = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), SIZE

    def __init__(self, n: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 4
        self.images = torch.randn(n, 3, SIZE, SIZE, generator=g) * 0.3
        half = SIZE // 2
        for c in range(4):
            y0, x0 = (c // 2) * half, (c % 2) * half
            self.images[self.labels == c, :, y0 : y0 + half, x0 : x0 + half] += 1.5

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i]), {"mask": torch.zeros(SIZE, SIZE, dtype=torch.bool)}


class Uint8Squares(Squares):
    """Like camzoo's in-memory datasets: uint8 storage, normalised (and optionally augmented with
    the given generator) a whole batch at a time by get_batch."""

    def __init__(self, n: int = 64, seed: int = 0, augment: bool = False) -> None:
        super().__init__(n, seed)
        self.images = (self.images * 40 + 128).clamp(0, 255).to(torch.uint8)
        self.augment = augment

    def get_batch(self, indices, generator=None):
        idx = torch.as_tensor(indices, dtype=torch.long)
        self.batch_calls = getattr(self, "batch_calls", 0) + (len(idx) > 1)
        x = self.images[idx].float().div(255.0)
        if self.augment:
            flip = torch.rand(len(idx), generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return (x - 0.5) / 0.25, self.labels[idx], {}

    def __getitem__(self, i: int):
        x, y, t = self.get_batch([i], torch.Generator().manual_seed(i))
        return x[0], int(y[0]), t


class ItemsOnly(torch.utils.data.Dataset):
    """The same items without the tensor attributes: forces the DataLoader path."""

    def __init__(self, base: Squares) -> None:
        self.base, self.classes = base, base.classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return self.base[i]


def _config(**overrides) -> TrainConfig:
    base = dict(kind="abn", backbone="resnet8", epochs=2, batch_size=16, lr=0.05, seed=3, augment="crop_flip", progress=False)
    return TrainConfig(**{**base, **overrides})


def _weights(path) -> dict[str, torch.Tensor]:
    return load_model(path).state_dict()


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["baseline", "abn", "lfi"])
def test_a_few_steps_reduce_the_loss(kind):
    torch.manual_seed(0)
    model = build_model(kind, "resnet8", 4).train()
    data = Squares(16)
    x, y = data.images, data.labels
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    losses = [float(train_step(model, optimizer, scaler, x, y)[0]) for _ in range(8)]
    assert losses[-1] < 0.8 * losses[0], losses


def test_train_writes_a_loadable_model_and_skips_a_finished_run(tmp_path):
    train_set, test_set = Squares(64), Squares(32, seed=1)
    result = train(_config(kind="lfi", epochs=3), train_set, tmp_path, eval_dataset=test_set)
    assert result.checkpoint == tmp_path / "model.pt" and result.checkpoint.exists()
    assert not (tmp_path / "checkpoint.pt").exists()  # the resume state goes once the run is done
    assert len(result.history) == 3 and result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert 0 <= result.train_accuracy <= 1 and 0 <= result.eval_accuracy <= 1 and result.wall_time_s > 0
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert log["finished"] and len(log["history"]) == 3
    model = load_model(result.checkpoint)
    assert model.class_names == Squares.classes and model.pretrained_cfg["input_size"] == (3, SIZE, SIZE)
    assert model.pretrained_cfg["mean"] == Squares.mean and model.config["kind"] == "lfi"
    # the reported eval accuracy is the loaded model's accuracy on the test set
    with torch.no_grad():
        acc = (model(test_set.images).argmax(1) == test_set.labels).float().mean().item()
    assert acc == pytest.approx(result.eval_accuracy)
    again = train(_config(kind="lfi", epochs=3), train_set, tmp_path)
    assert again.resumed_from_epoch == 3 and again.train_loss == result.train_loss
    with pytest.raises(ValueError, match="different config.*lr"):
        train(_config(kind="lfi", epochs=3, lr=0.2), train_set, tmp_path)


def test_resumed_training_equals_uninterrupted_training(tmp_path):
    data = Squares(48)
    full = train(_config(epochs=3), data, tmp_path / "full")

    class Interrupt(Exception):
        pass

    def stop_after_first_epoch(epoch, stats):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(_config(epochs=3), data, tmp_path / "cut", callback=stop_after_first_epoch)
    assert (tmp_path / "cut" / "checkpoint.pt").exists() and not (tmp_path / "cut" / "model.pt").exists()
    torch.manual_seed(12345)  # the resumed run must not depend on the caller's RNG state
    resumed = train(_config(epochs=3), data, tmp_path / "cut")
    assert resumed.resumed_from_epoch == 1
    assert _same_weights(_weights(full.checkpoint), _weights(resumed.checkpoint))
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]


def test_fast_path_equals_dataloader_path_and_seed_matters(tmp_path):
    data = Squares(48)
    fast = train(_config(kind="baseline", progress=True, log_every=1), data, tmp_path / "fast")  # bar on: no effect on weights
    slow = train(_config(kind="baseline", fast_path=False), ItemsOnly(data), tmp_path / "slow")
    assert _same_weights(_weights(fast.checkpoint), _weights(slow.checkpoint))
    other_seed = train(_config(kind="baseline", seed=4), data, tmp_path / "seed4")
    assert not _same_weights(_weights(fast.checkpoint), _weights(other_seed.checkpoint))


def test_get_batch_path_equals_dataloader_path_and_draws_augmentation_from_the_seed(tmp_path):
    data = Uint8Squares(48)
    batched = train(_config(kind="lfi", augment="none"), data, tmp_path / "batched")
    assert data.batch_calls == 6  # 2 epochs x 3 batches of 16, each one get_batch call
    items = train(_config(kind="lfi", augment="none", fast_path=False), ItemsOnly(data), tmp_path / "items")
    assert _same_weights(_weights(batched.checkpoint), _weights(items.checkpoint))
    augmenting = Uint8Squares(48, augment=True)
    first = train(_config(kind="lfi", augment="none"), augmenting, tmp_path / "aug1")
    second = train(_config(kind="lfi", augment="none"), augmenting, tmp_path / "aug2")
    assert _same_weights(_weights(first.checkpoint), _weights(second.checkpoint))
    assert not _same_weights(_weights(first.checkpoint), _weights(batched.checkpoint))


def test_mixed_precision_path_trains(tmp_path):
    # CPU autocast (bf16) exercises the same code path as CUDA's autocast
    result = train(_config(kind="lfi", epochs=1, amp=True), Squares(32), tmp_path)
    assert torch.isfinite(torch.tensor(result.train_loss)) and load_model(result.checkpoint).config["kind"] == "lfi"


def test_bad_inputs_error_clearly(tmp_path):
    data = Squares(32)
    with pytest.raises(ValueError, match="schedule"):
        train(_config(schedule="linear"), data, tmp_path / "a")
    with pytest.raises(ValueError, match="num_classes"):
        train(_config(), ItemsOnlyNoClasses(data), tmp_path / "b")
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        train(_config(num_classes=3, model_options={"class_names": None}), data, tmp_path / "c")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "checkpoint.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        train(_config(), data, tmp_path / "d")


class ItemsOnlyNoClasses(ItemsOnly):
    classes = None

    def __init__(self, base):
        self.base = base


def test_augment_batch_crops_and_flips_each_image_as_a_window():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    gen = torch.Generator().manual_seed(0)
    out = augment_batch(x, "crop_flip", gen)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(2):  # every output is one 8x8 window of the padded (possibly flipped) image
        windows = [src[i, :, dy : dy + 8, dx : dx + 8] for src in (padded, torch.nn.functional.pad(x.flip(3), (1, 1, 1, 1)))
                   for dy in range(3) for dx in range(3)]
        assert any(torch.equal(out[i], w) for w in windows)
    again = augment_batch(x, "crop_flip", torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(augment_batch(x, "none", gen), x)


def test_learning_rate_schedules():
    cfg = TrainConfig(lr=0.1, schedule="cosine")
    assert learning_rate(cfg, 0, 100) == pytest.approx(0.1) and learning_rate(cfg, 100, 100) == pytest.approx(0.0)
    assert learning_rate(cfg, 50, 100) == pytest.approx(0.05)
    step = TrainConfig(lr=0.1, schedule="step", milestones=(0.5, 0.75), gamma=0.1)
    assert [round(learning_rate(step, s, 100), 6) for s in (0, 49, 50, 75, 99)] == [0.1, 0.1, 0.01, 0.001, 0.001]


def test_cli_train_resolves_the_dataset_through_camzoo_data(tmp_path, monkeypatch):
    calls = []

    def load(name, split, root=None, image_size=None):
        calls.append((name, split, root, image_size))
        return Squares(32, seed=0 if split == "train" else 1)

    monkeypatch.setitem(sys.modules, "camzoo.data", types.SimpleNamespace(load=load))
    from camzoo.cli import main

    out = tmp_path / "run"
    args = ["train", "--kind", "lfi", "--backbone", "resnet8", "--dataset", "squares", "--seed", "0", "--epochs", "1",
            "--batch-size", "16", "--out", str(out), "--image-size", str(SIZE), "--model-option", "fin_width=16", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert calls == [("squares", "train", None, SIZE), ("squares", "test", None, SIZE)]
    assert "test acc" in result.output and str(out / "model.pt") in result.output
    model = load_model(out / "model.pt")
    assert model.config["options"]["fin_width"] == 16
    bad = CliRunner().invoke(main, ["train", "--kind", "lfi", "--backbone", "nope_net", "--out", str(tmp_path / "x"),
                                    "--epochs", "1"])
    assert bad.exit_code != 0 and "unknown backbone 'nope_net'" in bad.output


def test_ctrl_c_during_train_says_what_was_kept(tmp_path, monkeypatch):
    import camzoo.train

    out = tmp_path / "run"

    def interrupted(config, train_set, out_dir, **kwargs):
        (out / "checkpoint.pt").write_bytes(b"")
        (out / "train_log.json").write_text('{"history": [{}, {}]}')
        raise KeyboardInterrupt

    monkeypatch.setattr(camzoo.train, "train", interrupted)
    result = cli("train", "--kind", "baseline", "--backbone", "resnet8", "--data-root", tmp_path / "cache",
                 "--dataset-option", "num_images=32", "--image-size", "32", "--epochs", "5", "--out", out, "--no-progress")
    assert result.exit_code == 130
    assert "checkpoint.pt keeps 2 of 5 epochs; rerun the same command" in result.output


def test_augmenting_twice_is_an_error_and_the_result_carries_the_checkpointed_model(tmp_path):
    with pytest.raises(ValueError, match="augment twice"):
        train(_config(kind="baseline", augment="flip"), Uint8Squares(32, augment=True), tmp_path / "twice")
    result = train(_config(kind="lfi", epochs=1), Squares(32), tmp_path / "run")
    assert not result.model.training
    saved = _weights(result.checkpoint)
    assert _same_weights({k: v.detach().cpu() for k, v in result.model.state_dict().items()}, saved)
    again = train(_config(kind="lfi", epochs=1), Squares(32), tmp_path / "run")  # finished: loaded, not trained
    assert again.resumed_from_epoch == 1 and _same_weights(
        {k: v.detach().cpu() for k, v in again.model.state_dict().items()}, saved)

    def conv_format(model) -> bool:
        return all(m.weight.is_contiguous(memory_format=torch.channels_last)
                   for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))

    # a loaded finished run is in the memory format training leaves, so a resumed bench scores alike
    assert conv_format(result.model) and conv_format(again.model)
    plain = train(_config(kind="lfi", epochs=1, channels_last=False), Squares(32), tmp_path / "plain")
    plain_again = train(_config(kind="lfi", epochs=1, channels_last=False), Squares(32), tmp_path / "plain")
    assert not conv_format(plain.model) and not conv_format(plain_again.model)


def test_the_trainer_and_the_dataset_share_one_augmentation():
    # TrainConfig.augment="flip" and a dataset's augment=True flip the same images for the same draws
    from camzoo.data.transforms import augment_batch, hflip_where

    images = torch.randn(6, 3, 8, 8)
    draw = torch.Generator().manual_seed(3)
    flipped = augment_batch(images, "flip", draw)
    expected_flip = torch.rand(6, generator=torch.Generator().manual_seed(3)) < 0.5
    assert torch.equal(flipped, hflip_where(expected_flip, images)[0])
    with pytest.raises(ValueError, match="augment must be one of"):
        augment_batch(images, "rotate", draw)
