"""--tensorboard: the curves, quality and grids read back with TensorBoard's own reader; a resume logs no step twice."""

import csv
import shutil
import sys

import pytest

import mnistgan
from mnistgan import training as train_module
from mnistgan.cli import main
from mnistgan.step import ema_decay, learning_rates

from conftest import TINY_MLP, interrupt_after_steps

SETTINGS = {**TINY_MLP, "train.tensorboard": True, "train.sample_every": 1}  # 8 steps per epoch, a losses row per 2


def events(run_dir):
    """The run's TensorBoard log as TensorBoard reads it (older events past a resume's purge step hidden)."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    reader = accumulator.EventAccumulator(str(run_dir / "tensorboard"))
    reader.Reload()
    return reader


def scalars(reader, tag):
    return [(event.step, event.value) for event in reader.Scalars(tag)]


def test_a_run_logs_its_losses_speed_quality_and_grids(tmp_path):
    pytest.importorskip("tensorboard")
    run = mnistgan.train("vanilla-gan", overrides={**SETTINGS, "train.epochs": 2, "train.eval_every": 1,
                                                   "train.eval_samples": 100, "train.final_eval_samples": 100,
                                                   "optim.lr_decay_epochs": 2, "train.ema_decay": 0.999,
                                                   "train.ema_rampup": 0.5},
                         out=tmp_path / "run")
    reader = events(run.dir)
    with open(run.dir / "losses.csv") as handle:
        rows = list(csv.DictReader(handle))
    for column in ("d_loss", "g_loss", "d_real", "d_fake"):  # losses.csv's rows, step for step
        logged = scalars(reader, f"train/{column}")
        assert [step for step, _ in logged] == [int(row["step"]) for row in rows]
        assert [value for _, value in logged] == pytest.approx([float(row[column]) for row in rows], rel=1e-6)
    assert [step for step, _ in scalars(reader, "train/images_per_second")] == [8, 16]
    rates = [learning_rates(run.config, epoch) for epoch in (1, 2)]  # decaying: each epoch's own
    assert rates[0] != rates[1]
    for network, tag in enumerate(("train/generator_lr", "train/discriminator_lr")):
        assert scalars(reader, tag) == [(8, pytest.approx(rates[0][network])), (16, pytest.approx(rates[1][network]))]
    decays = [ema_decay(run.config, epoch, 8) for epoch in (1, 2)]  # ramped up: each epoch's own
    assert decays[0] < decays[1] < 0.999
    assert scalars(reader, "train/ema_decay") == [(8, pytest.approx(decays[0])), (16, pytest.approx(decays[1]))]
    with open(run.dir / "metrics.csv") as handle:
        evaluated = list(csv.DictReader(handle))
    assert [step for step, _ in scalars(reader, "eval/fd")] == [8, 16]
    assert [value for _, value in scalars(reader, "eval/fd")] == pytest.approx([float(row["fd"]) for row in evaluated], rel=1e-5)
    ((step, final_fd),) = scalars(reader, "final/fd")
    assert step == 16 and final_fd == pytest.approx(run.metrics["fd"], rel=1e-6)
    assert [image.step for image in reader.Images("samples")] == [8, 16]


def test_a_resumed_run_continues_its_curves_and_logs_no_step_twice(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    straight = mnistgan.train("vanilla-gan", overrides={**SETTINGS, "train.epochs": 3}, out=tmp_path / "straight")

    # Ctrl-C in epoch 2, step 3: a mid-epoch checkpoint, kept aside.
    interrupt_after_steps(monkeypatch, 11)
    run = tmp_path / "run"
    with pytest.raises(train_module.TrainingInterrupted):
        mnistgan.train("vanilla-gan", overrides={**SETTINGS, "train.epochs": 2}, out=run)
    monkeypatch.undo()
    shutil.copy(run / "checkpoints" / "last.pt", tmp_path / "mid-epoch-2.pt")
    # Epoch 2 ends and is logged; a crash before its checkpoint leaves the mid-epoch one on disk.
    mnistgan.train(resume=run)
    shutil.copy(tmp_path / "mid-epoch-2.pt", run / "checkpoints" / "last.pt")
    mnistgan.train(resume=run, epochs=3)

    expected, resumed = events(straight.dir), events(run)
    for tag in ("train/d_loss", "train/g_loss", "train/d_real", "train/d_fake"):
        assert scalars(resumed, tag) == scalars(expected, tag)  # every step once, with the uninterrupted run's values
    assert [step for step, _ in scalars(resumed, "train/images_per_second")] == [8, 16, 24]
    assert [image.step for image in resumed.Images("samples")] == [8, 16, 24]


def test_a_run_resumed_with_tensorboard_logs_from_where_it_resumed(tmp_path):
    pytest.importorskip("tensorboard")
    unlogged = {**SETTINGS, "train.tensorboard": False, "train.epochs": 1}
    run = mnistgan.train("vanilla-gan", overrides=unlogged, out=tmp_path / "run").dir
    assert not (run / "tensorboard").exists()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--tensorboard", "--no-progress"]) == 0
    reader = events(run)
    assert [step for step, _ in scalars(reader, "train/images_per_second")] == [16]  # epoch 2 only: epoch 1 was not logged
    assert "tensorboard = true" in (run / "config.toml").read_text()


def test_tensorboard_without_its_package_is_one_clear_error_before_training(tmp_path, monkeypatch, capsys):
    loaded = [name for name in sys.modules if name.startswith(("tensorboard", "torch.utils.tensorboard"))]
    for module in loaded:  # as if never installed: importing it again fails
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard raises ImportError
    run = tmp_path / "run"
    code = main(["train", "--preset", "vanilla-gan", "--tensorboard", "--out", str(run), "--subset", "64", "--batch-size", "32",
                 "--device", "cpu", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert "tensorboard" in line and 'pip install "mnistgan[tensorboard]"' in line
    assert not run.exists()  # refused before the run started: nothing left behind
