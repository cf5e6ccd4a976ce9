"""The up-front checks every command shares (camzoo.cli.checks): a ``--device`` that does not exist and
an ``--out`` that cannot be written are usage errors before any work, in ``camzoo explain``, ``camzoo
train`` and ``camzoo datasets preview`` alike."""

from __future__ import annotations

import os

import pytest
import torch

from helpers import camzoo_checkpoint, cli, picture, usage_error


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return camzoo_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_usage_error(tmp_path, checkpoint):
    usage_error(cli("explain", picture(tmp_path / "a.png"), "--checkpoint", checkpoint, "--device", "cuda",
                    "--out", tmp_path / "o"), "torch sees no CUDA device")
    usage_error(cli("train", "--kind", "baseline", "--device", "cuda", "--out", tmp_path / "t"), "torch sees no CUDA device")


def test_train_device_gpu_is_a_usage_error(tmp_path):
    usage_error(cli("train", "--kind", "baseline", "--device", "gpu", "--out", tmp_path / "t"), "'gpu' is not a device")
    usage_error(cli("train", "--kind", "baseline", "--device", "cuda:7x", "--out", tmp_path / "t"), "is not a device")


def test_out_that_is_a_file_or_unwritable_is_a_usage_error(tmp_path, checkpoint):
    image = picture(tmp_path / "a.png")
    existing = tmp_path / "taken.txt"
    existing.write_text("x")
    usage_error(cli("explain", image, "--checkpoint", checkpoint, "--out", existing), "is a file; give a directory")
    usage_error(cli("explain", image, "--checkpoint", checkpoint, "--out", existing / "sub"), "is a file, not a folder")
    usage_error(cli("datasets", "preview", "shapes", "--out", tmp_path), "is a directory; give a file name")
    usage_error(cli("datasets", "preview", "shapes", "--out", existing / "grid.png"), "is a file, not a folder")
    assert existing.read_text() == "x"


def test_an_unwritable_out_is_a_usage_error(tmp_path, checkpoint, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)  # what a read-only folder does (root ignores chmod)
    usage_error(cli("explain", picture(tmp_path / "a.png"), "--checkpoint", checkpoint, "--out", tmp_path / "ro"),
                f"cannot write to '{tmp_path / 'ro'}': Permission denied")
    usage_error(cli("datasets", "preview", "shapes", "--out", tmp_path / "ro" / "grid.png"), "Permission denied")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write to read-only folders")
def test_a_read_only_out_is_a_usage_error(tmp_path, checkpoint):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        usage_error(cli("explain", picture(tmp_path / "a.png"), "--checkpoint", checkpoint, "--out", locked),
                    "Permission denied")
    finally:
        locked.chmod(0o700)
