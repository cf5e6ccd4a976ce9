"""The GPU path. Tests marked ``cuda`` skip without a CUDA device; `make gpu-check`
(benchmarks/gpu_check.sh) runs them on one. The last test runs that script's CPU path, as CI must."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import torch

import camzoo
from camzoo.methods import get_method
import forked

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()


def _tiny_shapes(tmp_path: Path, split: str, count: int):
    from camzoo import data

    return data.load("shapes", split, root=tmp_path / "cache", image_size=32, num_classes=4, num_images=count)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (make gpu-check)")
@pytest.mark.parametrize("kind", ["baseline", "lfi"])
def test_amp_channels_last_fused_training_on_cuda(tmp_path, kind):
    from camzoo.models import load_model
    from camzoo.train import TrainConfig, train

    config = TrainConfig(kind=kind, backbone="resnet8", epochs=1, batch_size=32, device="cuda", amp=True,
                         channels_last=True, progress=False)
    result = train(config, _tiny_shapes(tmp_path, "train", 128), tmp_path / "run")
    assert torch.isfinite(torch.tensor(result.train_loss))
    assert next(result.model.parameters()).device.type == "cuda"
    loaded = load_model(result.checkpoint, map_location="cpu")  # a CUDA checkpoint loads on the CPU
    x = torch.randn(2, 3, 32, 32)
    expected = result.model.cpu()(x)
    torch.testing.assert_close(loaded(x), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (make gpu-check)")
def test_every_method_on_cuda_tensors_matches_the_cpu():
    torch.manual_seed(0)
    model = camzoo.build_model("lfi", "resnet8", num_classes=4).eval()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    masks = torch.zeros(4, 32, 32, dtype=torch.bool)
    masks[:, 8:20, 10:24] = True
    for name in camzoo.methods():
        method = get_method(name)
        if not method.applies_to(type(model)):
            continue
        truth = {"mask": masks} if method.needs_ground_truth else None
        on_cpu = method(model)(images, labels, ground_truth=truth).maps
        gpu_truth = {"mask": masks.cuda()} if truth else None
        on_gpu = method(model.cuda())(images.cuda(), labels.cuda(), ground_truth=gpu_truth).maps
        model.cpu()
        assert on_gpu.device.type == "cuda" and on_gpu.shape == (4, 32, 32), name
        assert torch.isfinite(on_gpu).all() and on_gpu.min() >= 0 and on_gpu.max() <= 1, name
        torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=2e-3, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (make gpu-check)")
def test_autocast_deletion_insertion_on_cuda_is_close_to_float32():
    from camzoo.metrics import deletion_insertion

    torch.manual_seed(0)
    model = camzoo.build_model("baseline", "resnet8", num_classes=4).eval().cuda()
    images = torch.randn(8, 3, 32, 32, device="cuda")
    maps = torch.rand(8, 32, 32, device="cuda")
    full = deletion_insertion(model, images, maps, steps=8)
    mixed = deletion_insertion(model, images, maps, steps=8, autocast=True)
    for mode in ("deletion", "insertion"):
        assert mixed[mode].device.type == "cuda"
        torch.testing.assert_close(mixed[mode].float(), full[mode].float(), atol=0.02, rtol=0)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs 2+ CUDA devices (one per rank)")
def test_distributed_bench_with_nccl_on_every_gpu(tmp_path):
    from helpers import TINY_RANKS as TINY

    config = tmp_path / "tiny.toml"
    config.write_text(TINY.format(cache=tmp_path / "cache").replace('device = "cpu"', 'device = "cuda"'),
                      encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "camzoo", "bench", "--config", str(config), "--out", str(tmp_path / "out"),
               "--nproc", str(torch.cuda.device_count()), "--no-progress", "--no-html"]
    result = forked.run(command, timeout=900, env=env, text=True)  # on a timeout, its ranks are killed too
    assert result.returncode == 0, result.stderr[-3000:]
    from camzoo.bench.store import ResultsStore

    with ResultsStore(tmp_path / "out") as store:
        (run,) = store.runs()
        workers = set(store.workers(run["run_id"]).values())
    assert len({w.rsplit(":", 1)[1] for w in workers}) == 2  # both ranks computed cells


@pytest.mark.skipif(HAS_CUDA, reason="the CPU path of the script; on a GPU machine run make gpu-check")
def test_gpu_check_script_without_cuda_skips_and_writes_nothing(tmp_path):
    out = tmp_path / "gpu-check.md"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_OUT": str(out),
           "GPU_CHECK_TESTS": str(Path(__file__).resolve())}
    result = forked.run(["bash", ROOT / "benchmarks" / "gpu_check.sh"], timeout=300, env=env, text=True)  # and its pytest
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipped" in result.stdout and "torch sees no CUDA device" in result.stdout
    assert not out.exists()


def test_gpu_check_doc_keeps_its_procedure_above_the_scripts_marker():
    """The script replaces only what follows its marker line: the doc must hold that exact line, after
    the procedure and the targets, or a GPU run would overwrite them."""
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text(encoding="utf-8")
    (mark,) = re.findall(r"^MARK='(.+)'$", script, flags=re.MULTILINE)
    doc = (ROOT / "docs" / "gpu-check.md").read_text(encoding="utf-8").splitlines()
    assert mark in doc, "docs/gpu-check.md lost the line benchmarks/gpu_check.sh writes below"
    above = "\n".join(doc[:doc.index(mark)])
    assert "## Procedure" in above and "## Targets" in above
