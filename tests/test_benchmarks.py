"""The benchmark scripts whose numbers rest on an equivalence: benchmarks/ema_schedules.py's extra EMA
copies must be the EMA a run made with their settings would have kept."""

import sys
from pathlib import Path

from safetensors.torch import load_file

import mnistgan

from conftest import TINY_MLP

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from ema_schedules import ExtraEMAs  # noqa: E402

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
