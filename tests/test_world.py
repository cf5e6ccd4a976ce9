"""The torchrun world (camzoo.world): a rank's place from torchrun's variables, its device, the one
timeout policy of the process group, and the no-op barrier of a single process."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

from camzoo import world
from camzoo.world import Place, WorldError, place_from_env, rank_device


@pytest.mark.parametrize("env, place", [
    ({}, None),
    ({"RANK": "0"}, None),  # torchrun sets both; one alone is not a group
    ({"RANK": "0", "WORLD_SIZE": "1"}, None),  # a group of one is one process
    ({"RANK": "1", "WORLD_SIZE": "2"}, Place(1, 2, 0)),
    ({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, Place(5, 8, 1)),
    ({"RANK": " 3 ", "WORLD_SIZE": "4", "LOCAL_RANK": "3"}, Place(3, 4, 3)),
])
def test_a_place_is_read_from_rank_world_size_and_local_rank(env, place):
    assert place_from_env(env) == place


@pytest.mark.parametrize("env, words", [
    ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK='one' is not an integer"),
    ({"RANK": "0", "WORLD_SIZE": "2.5"}, "WORLD_SIZE='2.5' is not an integer"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "x"}, "LOCAL_RANK='x' is not an integer"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 is outside a world of WORLD_SIZE=2 ranks (0..1)"),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK=-1 is outside"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be at least 1"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "-1"}, "LOCAL_RANK=-1 must be at least 0"),
])
def test_a_bad_torchrun_variable_is_an_error_that_names_it(env, words):
    with pytest.raises(WorldError) as caught:
        place_from_env(env)
    assert words in str(caught.value)


def test_the_environment_is_read_when_none_is_given(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert place_from_env() == Place(1, 3, 1)


def _gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize("requested, gpus, local, device", [
    ("cpu", 4, 2, "cpu"), ("auto", 0, 2, "cpu"), ("auto", 4, 2, "cuda:2"), ("cuda", 4, 3, "cuda:3"),
    ("cuda:1", 4, 3, "cuda:1"), ("CUDA", 2, 0, "cuda:0"),
])
def test_a_rank_s_device(monkeypatch, requested, gpus, local, device):
    _gpus(monkeypatch, gpus)
    assert rank_device(requested, local) == torch.device(device)


def test_a_rank_s_device_reads_local_rank_from_the_environment(monkeypatch):
    _gpus(monkeypatch, 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_device("cuda") == torch.device("cuda:1")


@pytest.mark.parametrize("requested, gpus, local, words", [
    ("cuda", 0, 0, "torch sees no CUDA device"),
    ("cuda:1", 1, 0, "does not exist: torch sees 1 CUDA device(s) (cuda:0..cuda:0)"),
    ("cuda", 2, 2, "LOCAL_RANK=2 has no GPU of its own: torch sees 2 CUDA device(s)"),
    ("gpu", 2, 0, "'gpu' is not a device"),
])
def test_a_device_a_rank_cannot_use_is_an_error(monkeypatch, requested, gpus, local, words):
    _gpus(monkeypatch, gpus)
    with pytest.raises(WorldError) as caught:
        rank_device(requested, local)
    assert words in str(caught.value)


def test_one_timeout_policy_default_48_hours_or_the_variable(monkeypatch):
    monkeypatch.delenv(world.TIMEOUT_VARIABLE, raising=False)
    assert world.timeout() == timedelta(hours=48)
    monkeypatch.setenv(world.TIMEOUT_VARIABLE, "0.5")
    assert world.timeout() == timedelta(minutes=30)
    for bad in ("0", "-1", "soon", "nan", "inf"):
        monkeypatch.setenv(world.TIMEOUT_VARIABLE, bad)
        with pytest.raises(WorldError, match=world.TIMEOUT_VARIABLE):
            world.timeout()


def test_join_uses_the_backend_of_the_device_and_the_one_timeout(monkeypatch):
    import torch.distributed as dist

    calls = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw["timeout"])))
    monkeypatch.setenv(world.TIMEOUT_VARIABLE, "2")
    world.join(torch.device("cpu"))
    assert calls == [("gloo", timedelta(hours=2))]
    monkeypatch.setenv(world.TIMEOUT_VARIABLE, "never")
    with pytest.raises(WorldError):
        world.join(torch.device("cpu"))
    assert len(calls) == 1  # a bad timeout fails before the group is joined


def test_without_a_group_a_process_is_rank_0_of_1_and_the_barrier_returns():
    assert world.current() == (0, 1)
    world.barrier("cpu")
    world.barrier()
