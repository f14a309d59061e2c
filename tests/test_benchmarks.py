"""The benchmark scripts whose numbers rest on an equivalence: benchmarks/ema_schedules.py's extra EMA
copies must be the EMA a run made with their settings would have kept, benchmarks/profile_step.py's
FLOP count must be torch's own, also through the double backward of R1 and R2, and
benchmarks/time_to_quality.py must stop where it is told."""

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode

import mnistgan

from conftest import TINY_MLP

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from ema_schedules import ExtraEMAs  # noqa: E402
from profile_step import FlopCount  # noqa: E402
from time_to_quality import finished  # noqa: E402

SETTINGS = {**TINY_MLP, "train.subset": 64, "train.ema_decay": 0.9}


def test_an_extra_ema_copy_is_the_ema_of_a_run_with_its_settings(tmp_path):
    schedules = {"ramped": (0.999, 0.5), "fixed": (0.5, 0.0)}
    with ExtraEMAs(schedules, {2}, tmp_path / "snapshots"):
        compared = mnistgan.train("mlp-gan", overrides={**SETTINGS, "train.epochs": 2}, out=tmp_path / "compared")
    for name, (decay, rampup) in schedules.items():
        alone = mnistgan.train("mlp-gan", overrides={**SETTINGS, "train.epochs": 2, "train.ema_decay": decay,
                                                     "train.ema_rampup": rampup}, out=tmp_path / name)
        assert (alone.dir / "losses.csv").read_bytes() == (compared.dir / "losses.csv").read_bytes()
        copy, own = load_file(tmp_path / "snapshots" / f"{name}-e2.safetensors"), load_file(alone.dir / "generator.safetensors")
        assert copy.keys() == own.keys() and all(copy[key].equal(own[key]) for key in own), name
    run_copy = load_file(tmp_path / "snapshots" / "run-e2.safetensors")
    run_own = load_file(compared.dir / "generator.safetensors")
    assert all(run_copy[key].equal(run_own[key]) for key in run_own)
    # The patches are gone once the comparison is over: a run after it keeps no extra copies.
    mnistgan.train("mlp-gan", overrides={**SETTINGS, "train.epochs": 2}, out=tmp_path / "after")
    assert sorted(path.name for path in (tmp_path / "snapshots").iterdir()) == ["fixed-e2.safetensors", "ramped-e2.safetensors", "run-e2.safetensors"]


def test_the_flop_count_is_torchs_where_torch_counts():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.LeakyReLU(0.2), torch.nn.Flatten(),
                                  torch.nn.Linear(4 * 8 * 8, 1))
    images = torch.randn(5, 1, 8, 8)
    counts = []
    for counter in (FlopCounterMode(display=False), FlopCount()):
        with counter:
            network(images).sum().backward()
        counts.append(counter.get_total_flops() if isinstance(counter, FlopCounterMode) else counter.total)
    assert counts[0] == counts[1] > 0


def test_the_flop_count_follows_a_penalty_through_its_double_backward():
    # D(x) = x W, n x k by k x 1: the scores, their gradient in x (ones times W's transpose), and the
    # squared gradient's backward into W are one matrix product of 2nk FLOPs each.
    n, k = 8, 5
    weights, images = torch.randn(k, 1, requires_grad=True), torch.randn(n, k, requires_grad=True)
    with FlopCount() as counter:
        scores = images @ weights
        (gradient,) = torch.autograd.grad(scores.sum(), images, create_graph=True)
        gradient.pow(2).sum().backward()
    assert counter.total == 3 * 2 * n * k


def test_time_to_quality_stops_at_the_fd_the_minutes_or_the_epoch_cap():
    args = argparse.Namespace(fd=2.0, minutes=10.0, epochs=None)
    assert not finished({"epoch": 40, "minutes": 9.9, "fd": 2.01}, args)
    assert finished({"epoch": 4, "minutes": 1.0, "fd": 2.0}, args)
    assert finished({"epoch": 4, "minutes": 10.0, "fd": 5.0}, args)
    capped = argparse.Namespace(fd=0.5, minutes=100.0, epochs=20)
    assert not finished({"epoch": 18, "minutes": 16.0, "fd": 1.1}, capped)
    assert finished({"epoch": 20, "minutes": 17.0, "fd": 1.1}, capped)
