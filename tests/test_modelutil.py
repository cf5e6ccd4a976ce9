"""The one device resolver (camzoo.modelutil.resolve_device) that the CLI, the bench plan, the
trainer and every rank use: what each name gives, and a ValueError that says what exists."""

from __future__ import annotations

import pytest
import torch

from camzoo.modelutil import resolve_device


def _gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize("name, gpus, device", [
    ("auto", 0, "cpu"), ("auto", 1, "cuda"), ("cpu", 1, "cpu"), ("cuda", 2, "cuda"), ("cuda:1", 2, "cuda:1"),
    (" CPU ", 0, "cpu"), ("Cuda:0", 1, "cuda:0"), ("AUTO", 0, "cpu"),
])
def test_a_name_resolves_to_a_device_that_exists(monkeypatch, name, gpus, device):
    _gpus(monkeypatch, gpus)
    assert resolve_device(name) == torch.device(device)


@pytest.mark.parametrize("name, gpus, words", [
    ("cuda", 0, "'cuda' was asked for, but torch sees no CUDA device; use cpu or auto"),
    ("cuda:0", 0, "torch sees no CUDA device"),
    ("cuda:2", 2, "'cuda:2' does not exist: torch sees 2 CUDA device(s) (cuda:0..cuda:1)"),
    ("gpu", 1, "'gpu' is not a device; use auto, cpu, cuda or cuda:N"),
    ("cuda:7x", 1, "is not a device"),
    ("", 0, "is not a device"),
    ("meta", 0, "'meta' is not supported; use auto, cpu, cuda or cuda:N"),
])
def test_a_name_that_cannot_work_here_is_a_value_error_saying_what_exists(monkeypatch, name, gpus, words):
    _gpus(monkeypatch, gpus)
    with pytest.raises(ValueError) as caught:
        resolve_device(name)
    assert words in str(caught.value)
