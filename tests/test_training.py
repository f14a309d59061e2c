import csv
import json
import os
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import mnistgan
from mnistgan import rundir
from mnistgan import step as step_module
from mnistgan import training as train_module
from mnistgan.checkpoint import load_checkpoint, read_generator_file, save_checkpoint
from mnistgan.errors import UserError
from mnistgan.metrics import evaluator as evaluator_module
from mnistgan.step import STAT_COLUMNS

from conftest import TINY, TINY_DCGAN, TINY_MLP, interrupt_after_steps


def weights_of(run_dir):
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    return {**{f"g.{k}": v for k, v in state["generator"].items()}, **{f"d.{k}": v for k, v in state["discriminator"].items()}}


def assert_bitwise_equal(first, second):
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"weights differ: {different[:5]}"


def test_a_run_writes_every_output(tmp_path):
    run = mnistgan.train("tf-dcgan-tutorial", overrides={**TINY_DCGAN, "train.epochs": 2}, out=tmp_path / "run")
    root = run.dir
    for name in ("config.toml", "losses.csv", "loss_curves.png", "progress.gif", "generator.safetensors",
                 "checkpoints/last.pt", "samples/image_at_epoch_0001.png", "samples/image_at_epoch_0002.png"):
        assert (root / name).is_file(), name
    with open(root / "losses.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["step", "epoch", "d_loss", "g_loss", "d_real", "d_fake"]
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10, 12, 14, 16]  # 8 steps per epoch, a row per 2
    assert {r["epoch"] for r in rows} == {"1", "2"}
    weights = load_file(root / "generator.safetensors")
    assert "project.0.weight" in weights


def test_resume_after_one_epoch_equals_an_uninterrupted_run(tmp_path):
    settings = {**TINY_MLP, "train.epochs": 2}
    mnistgan.train("mlp-gan-dropout", overrides=settings, out=tmp_path / "straight")
    mnistgan.train("mlp-gan-dropout", overrides={**settings, "train.epochs": 1}, out=tmp_path / "resumed")
    mnistgan.train(resume=tmp_path / "resumed", epochs=2)
    assert_bitwise_equal(weights_of(tmp_path / "straight"), weights_of(tmp_path / "resumed"))
    assert (tmp_path / "straight" / "losses.csv").read_text() == (tmp_path / "resumed" / "losses.csv").read_text()


def test_ctrl_c_mid_epoch_checkpoints_and_resumes_exactly(tmp_path, monkeypatch):
    settings = {**TINY_DCGAN, "train.epochs": 2, "train.ema_decay": 0.9}
    mnistgan.train("keras-dcgan", overrides=settings, out=tmp_path / "straight")

    interrupt_after_steps(monkeypatch, 11)  # in the second epoch (8 steps per epoch)
    with pytest.raises(train_module.TrainingInterrupted, match="interrupted at epoch 2, step 3; checkpoint saved"):
        mnistgan.train("keras-dcgan", overrides=settings, out=tmp_path / "interrupted")
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / "interrupted" / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 3)

    mnistgan.train(resume=tmp_path / "interrupted")
    assert_bitwise_equal(weights_of(tmp_path / "straight"), weights_of(tmp_path / "interrupted"))
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["ema"]
    resumed = load_checkpoint(tmp_path / "interrupted" / "checkpoints" / "last.pt")["ema"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert (tmp_path / "straight" / "losses.csv").read_text() == (tmp_path / "interrupted" / "losses.csv").read_text()


@pytest.mark.parametrize("tail", ["999,3,1,1,0.5,0.5\n", "99", "999,3,1,1,0.5,0."])  # whole, and cut short by a full disk
def test_resume_drops_loss_rows_written_after_the_checkpoint(tmp_path, tail):
    settings = {**TINY_MLP, "train.epochs": 2, "train.checkpoint_every": 2}
    mnistgan.train("vanilla-gan", overrides={**settings, "train.epochs": 2}, out=tmp_path / "run")
    reference = (tmp_path / "run" / "losses.csv").read_text()
    # Pretend the run crashed during epoch 3 after writing rows for it, checkpoint still at epoch 2.
    with open(tmp_path / "run" / "losses.csv", "a") as handle:
        handle.write(tail)
    mnistgan.train(resume=tmp_path / "run", epochs=2)
    assert (tmp_path / "run" / "losses.csv").read_text() == reference


def test_a_full_disk_stops_training_with_one_error_and_the_run_resumes(tmp_path, monkeypatch):
    import errno

    from mnistgan import checkpoint, files

    settings = {**TINY_MLP, "train.epochs": 3, "train.checkpoint_every": 1}
    mnistgan.train("vanilla-gan", overrides=settings, out=tmp_path / "straight")
    real_write, checkpoints_written = checkpoint.write_bytes_atomically, []

    def disk_full_at_the_second_checkpoint(path, data, durable=False):
        if path.name == "last.pt":
            checkpoints_written.append(path)
            if len(checkpoints_written) == 2:
                def half_then_no_space(temp):
                    with open(temp, "wb") as handle:
                        handle.write(bytes(data)[:1000])
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return files.write_atomically(path, half_then_no_space, durable)
        return real_write(path, data, durable)

    monkeypatch.setattr(checkpoint, "write_bytes_atomically", disk_full_at_the_second_checkpoint)
    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"^training stopped: No space left on device \(.*last\.pt\); free some space, "
                                        r"then continue with: mnistgan train --resume "):
        mnistgan.train("vanilla-gan", overrides=settings, out=run)
    monkeypatch.undo()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1  # the one before is whole
    assert not list((run / "checkpoints").glob(".*.tmp"))
    mnistgan.train(resume=run)
    assert_bitwise_equal(weights_of(tmp_path / "straight"), weights_of(run))
    assert (tmp_path / "straight" / "losses.csv").read_text() == (run / "losses.csv").read_text()


def test_resuming_a_finished_run_rewrites_its_final_outputs(tmp_path):
    # A process killed after the last checkpoint but before the last outputs: stale weights file, no GIF.
    run_dir = tmp_path / "run"
    mnistgan.train("vanilla-gan", overrides={**TINY_MLP, "train.epochs": 2}, out=run_dir)
    final = load_file(run_dir / "generator.safetensors")
    stale = {name: torch.zeros_like(tensor) for name, tensor in final.items()}
    save_file(stale, run_dir / "generator.safetensors")
    (run_dir / "progress.gif").unlink()
    (run_dir / ".loss_curves.png.0123456789ab.tmp").write_bytes(b"half")
    mnistgan.train(resume=run_dir)
    rewritten = load_file(run_dir / "generator.safetensors")
    assert all(torch.equal(final[name], rewritten[name]) for name in final)
    assert (run_dir / "progress.gif").is_file()
    assert not list(run_dir.glob(".*.tmp"))


def test_a_resume_that_cannot_start_leaves_the_config_alone(tmp_path):
    run_dir = tmp_path / "run"
    mnistgan.train("vanilla-gan", overrides={**TINY_MLP, "train.epochs": 2}, out=run_dir)
    config = (run_dir / "config.toml").read_text()
    with pytest.raises(UserError, match="'epochs' must be at least 2"):
        mnistgan.train(resume=run_dir, epochs=1)
    with pytest.raises(UserError, match="lacks the MNIST file"):
        mnistgan.train(resume=run_dir, epochs=3, data_dir=tmp_path)
    assert (run_dir / "config.toml").read_text() == config


def test_simultaneous_update_changes_both_networks_from_one_batch(tmp_path):
    run = mnistgan.train("tf-dcgan-tutorial", overrides={**TINY_DCGAN, "train.subset": 32}, out=tmp_path / "one-step")
    state = load_checkpoint(run.dir / "checkpoints" / "last.pt")
    assert int(state["g_optimizer"]["state"][0]["step"]) == 1 and int(state["d_optimizer"]["state"][0]["step"]) == 1


def test_the_learning_rates_decay_by_epoch_and_a_resumed_run_follows_the_same_schedule(tmp_path, capsys):
    settings = {**TINY_MLP, "train.epochs": 3, "optim.lr_decay_epochs": 2, "optim.lr_final_fraction": 0.25}
    mnistgan.train("mlp-gan", overrides=settings, out=tmp_path / "straight")
    said = capsys.readouterr().out
    mnistgan.train("mlp-gan", overrides={**settings, "train.epochs": 1}, out=tmp_path / "resumed")
    capsys.readouterr()
    lr = mnistgan.train("mlp-gan", overrides={**TINY_MLP, "train.epochs": 3}, out=tmp_path / "constant").config.optim.generator_lr
    assert " lr " not in capsys.readouterr().out  # constant rates: not repeated on every line

    def rate_in_checkpoint(run):
        state = load_checkpoint(tmp_path / run / "checkpoints" / "last.pt")
        return state["g_optimizer"]["param_groups"][0]["lr"], state["d_optimizer"]["param_groups"][0]["lr"]

    first_epoch = lr * (0.25 + 0.75 * 0.8535534)  # the cosine a quarter of the way down
    assert f"lr {first_epoch:.3g}  " in said and f"lr {0.25 * lr:.3g}  " in said  # each epoch's line says its rate
    assert rate_in_checkpoint("resumed") == pytest.approx((first_epoch, first_epoch))
    mnistgan.train(resume=tmp_path / "resumed", epochs=3)
    assert rate_in_checkpoint("resumed") == pytest.approx((0.25 * lr, 0.25 * lr))
    assert_bitwise_equal(weights_of(tmp_path / "straight"), weights_of(tmp_path / "resumed"))
    assert rate_in_checkpoint("constant") == (lr, lr)
    decayed, constant = weights_of(tmp_path / "straight"), weights_of(tmp_path / "constant")
    assert all(not torch.equal(decayed[name], constant[name]) for name in decayed if name.endswith("weight"))


def test_d_steps_update_d_more_often(tmp_path):
    run = mnistgan.train("mlp-gan", overrides={**TINY_MLP, "train.d_steps": 2}, out=tmp_path / "d2")
    state = load_checkpoint(run.dir / "checkpoints" / "last.pt")
    g_steps = int(state["g_optimizer"]["state"][0]["step"])
    d_steps = int(state["d_optimizer"]["state"][0]["step"])
    assert (g_steps, d_steps) == (4, 8)  # 256 images / (32 x 2) = 4 G steps, each after 2 D steps


@pytest.mark.parametrize("loss, real_batches", [("non-saturating", 1), ("relativistic", 3)])
def test_g_steps_update_g_more_often_and_resume_exactly(tmp_path, loss, real_batches):
    settings = {**TINY_MLP, "train.g_steps": 2, "train.epochs": 2, "loss.adversarial": loss}
    run = mnistgan.train("mlp-gan", overrides=settings, out=tmp_path / "straight")
    state = load_checkpoint(run.dir / "checkpoints" / "last.pt")
    steps = 2 * (256 // (32 * real_batches))  # 2 epochs; each relativistic G update reads a fresh real batch too
    assert int(state["d_optimizer"]["state"][0]["step"]) == steps
    assert int(state["g_optimizer"]["state"][0]["step"]) == 2 * steps
    mnistgan.train("mlp-gan", overrides={**settings, "train.epochs": 1}, out=tmp_path / "resumed")
    mnistgan.train(resume=tmp_path / "resumed", epochs=2)
    assert_bitwise_equal(weights_of(tmp_path / "straight"), weights_of(tmp_path / "resumed"))


def test_subset_smaller_than_a_batch_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no full batch"):
        mnistgan.train("mlp-gan", overrides={**TINY_MLP, "train.subset": 10}, out=tmp_path / "x")


def test_out_that_already_holds_a_run_is_refused(tmp_path):
    mnistgan.train("mlp-gan", overrides={**TINY_MLP, "train.subset": 32}, out=tmp_path / "run")
    with pytest.raises(UserError, match="already holds a run"):
        mnistgan.train("mlp-gan", overrides={**TINY_MLP, "train.subset": 32}, out=tmp_path / "run")


def test_a_run_killed_before_its_first_checkpoint_says_how_to_start_over(tmp_path, monkeypatch):
    mnistgan.train("mlp-gan", overrides={**TINY_MLP, "train.subset": 32}, out=tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "last.pt").unlink()
    # No process holds the run's lock (training_now is False), so the run is known to have stopped.
    with pytest.raises(UserError, match="stopped before its first checkpoint .*; delete the folder to train there again"):
        mnistgan.train("mlp-gan", overrides={**TINY_MLP, "train.subset": 32}, out=tmp_path / "run")
    with pytest.raises(UserError, match="stopped before its first checkpoint .*; delete the folder and train again"):
        mnistgan.train(resume=tmp_path / "run")
    # Under torchrun only the first process takes the lock; the others cannot know, and say so.
    monkeypatch.setattr(mnistgan.api, "is_main_process", lambda: False)
    with pytest.raises(UserError, match="no checkpoint yet .* if it is not running, delete the folder and train again"):
        mnistgan.train(resume=tmp_path / "run")


def test_run_api_samples_grids_and_losses(tmp_path):
    run = mnistgan.train("mlp-gan", overrides={**TINY_MLP, "train.subset": 64}, out=tmp_path / "run")
    loaded = mnistgan.load(run.dir)
    images = loaded.sample(10, seed=3)
    assert images.shape == (10, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, loaded.sample(10, seed=3)) and not torch.equal(images, loaded.sample(10, seed=4))
    assert loaded.grid(16).size == (2 * (4 * 30 + 2), 2 * (4 * 30 + 2))
    assert set(loaded.losses) == {"step", "epoch", "d_loss", "g_loss", "d_real", "d_fake"}


# -- every loss, regulariser and trick of the config: trains, stays finite, reports what it says ----

from mnistgan import losses as loss_functions  # noqa: E402
from mnistgan.config import load_preset  # noqa: E402
from mnistgan.data import load_mnist  # noqa: E402


@pytest.mark.parametrize("overrides", [
    {"loss.adversarial": "minimax"},
    {"loss.adversarial": "non-saturating", "loss.label_smoothing": 0.1},
    {"loss.adversarial": "least-squares"},
    {"loss.adversarial": "hinge", "model.spectral_norm": True},
    {"loss.adversarial": "wasserstein-gp", "loss.gp_lambda": 10.0, "train.d_steps": 2},
    {"loss.r1_gamma": 1.0},
    {"train.ema_decay": 0.99, "optim.generator_lr": 1e-3, "optim.discriminator_lr": 4e-4},
    {"model.conditional": True},
])
@pytest.mark.parametrize("preset, tiny", [("keras-dcgan", TINY_DCGAN), ("mlp-gan", TINY_MLP)])
def test_each_training_option_trains_without_nan(tmp_path, preset, tiny, overrides):
    run = mnistgan.train(preset, overrides={**tiny, "train.subset": 96, **overrides}, out=tmp_path / "run")
    columns = run.losses
    assert all(np.isfinite(columns[name]).all() for name in ("d_loss", "g_loss", "d_real", "d_fake"))
    assert run.sample(4).isfinite().all()


@pytest.mark.parametrize("kind", ["minimax", "non-saturating", "least-squares", "hinge", "wasserstein-gp"])
def test_the_reported_losses_are_the_configured_losses(kind):
    """Record D's outputs during one step and recompute both losses from them by the loss functions."""
    config = load_preset("mlp-gan").replace({**TINY_MLP, "loss.adversarial": kind, "loss.gp_lambda": 0.0,
                                             "loss.label_smoothing": 0.0 if kind in ("hinge", "wasserstein-gp") else 0.2})
    split = load_mnist("train")
    parts = step_module.build_training(config, torch.device("cpu"), split.images[:64], split.labels[:64], 32, 2, "fp32")
    parts.step.order.copy_(torch.arange(64))
    outputs = []
    parts.discriminator.register_forward_hook(lambda module, inputs, output: outputs.append(output.detach().clone()))
    parts.runner.run(1)
    joint, g_scores = outputs  # the D update's pass over [real; fake], then the G update's pass over fake
    real_scores, fake_scores = joint[:32], joint[32:]
    d_loss, g_loss = parts.step.stats[0, :2].tolist()
    assert d_loss == pytest.approx(loss_functions.discriminator_loss(kind, real_scores, fake_scores, config.loss.label_smoothing).item(), rel=1e-5)
    assert g_loss == pytest.approx(loss_functions.generator_loss(kind, g_scores).item(), rel=1e-5)


def test_ema_weights_differ_from_raw_and_are_what_sample_uses(tmp_path):
    run = mnistgan.train("mlp-gan", overrides={**TINY_MLP, "train.ema_decay": 0.9}, out=tmp_path / "ema")
    state = load_checkpoint(run.dir / "checkpoints" / "last.pt")
    assert any(not torch.equal(state["ema"][k], state["generator"][k]) for k in state["generator"])
    shared = load_file(run.dir / "generator.safetensors")
    assert all(torch.equal(shared[k], state["ema"][k].cpu()) for k in shared)
    assert all(torch.equal(mnistgan.load(run.dir).generator.state_dict()[k], state["ema"][k]) for k in state["ema"])


def test_an_ema_generator_with_batchnorm_samples_alike_from_its_checkpoint_and_its_file(tmp_path, monkeypatch):
    # keras-dcgan's G has BatchNorm. Stopped mid-epoch, the checkpoint's EMA carries G's statistics (the
    # step copies them), while the generator file holds ones measured for the averaged weights; loading
    # the checkpoint measures them the same way.
    interrupt_after_steps(monkeypatch, 11)
    with pytest.raises(train_module.TrainingInterrupted):
        mnistgan.train("keras-dcgan", overrides={**TINY_DCGAN, "train.epochs": 2, "train.ema_decay": 0.9}, out=tmp_path / "ema")
    monkeypatch.undo()
    run = tmp_path / "ema"
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    means = [k for k in state["ema"] if k.endswith("running_mean")]
    from_file = mnistgan.load(run).generator.state_dict()
    from_checkpoint = mnistgan.load(run, checkpoint=run / "checkpoints" / "last.pt").generator.state_dict()
    assert means and any(not torch.allclose(from_file[k], state["ema"][k]) for k in means)
    for key in from_file:
        torch.testing.assert_close(from_checkpoint[key], from_file[key], rtol=1e-4, atol=1e-5)


def test_conditional_sampling_returns_the_requested_digits_in_order(tmp_path):
    run = mnistgan.train("keras-dcgan", overrides={**TINY_DCGAN, "train.subset": 96}, conditional=True, out=tmp_path / "cond")
    grid = load_file(run.dir / "generator.safetensors")
    assert "label_input.embedding.weight" in grid
    sevens = run.sample(6, seed=1, digit=7)
    assert sevens.shape == (6, 1, 28, 28)
    per_digit = run.sample_digits(3, seed=1)
    assert per_digit.shape == (30, 1, 28, 28)
    # Row 7 of the digit grid is what asking for sevens with the same noise gives.
    z_generator = torch.Generator().manual_seed(1)
    z = mnistgan.sampling.sample_latent(run.config.model, 3, "cpu", z_generator)
    expected = run.generator(z, torch.full((3,), 7))
    torch.testing.assert_close(per_digit[21:24], expected.detach())
    from PIL import Image
    assert run.grid(4, digit="all").size == (2 * (4 * 30 + 2), 2 * (10 * 30 + 2))
    assert Image.open(run.dir / "samples" / "image_at_epoch_0001.png").size == (4 * (8 * 30 + 2), 4 * (10 * 30 + 2))


def test_evaluation_during_training_writes_metrics_and_keeps_the_best(tmp_path):
    run = mnistgan.train("mlp-gan", overrides={**TINY_MLP, "train.epochs": 2, "train.eval_every": 1, "train.eval_samples": 100},
                         out=tmp_path / "eval")
    with open(run.dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert all(float(row["fd"]) > 0 and 0 <= float(row["precision"]) <= 1 for row in rows)
    assert (run.dir / "metric_curves.png").is_file()
    # best.pt is chosen on the training images: the test images' FD is reported, never chosen by.
    assert all(float(row["fd_train"]) > 0 and row["fd_train"] != row["fd"] for row in rows)
    best = load_checkpoint(run.dir / "checkpoints" / "best.pt")
    assert best["best_quality"] == pytest.approx(min(float(row["fd_train"]) for row in rows), rel=1e-4)
    assert "conditional_accuracy" not in rows[0]  # unconditional: nothing to ask for


def test_evaluating_during_training_does_not_change_what_it_trains(tmp_path):
    # The noise is drawn from the random stream that train.seed seeds; loading the evaluator (its
    # first use in this process, hence the cleared cache) must not draw from it.
    settings = {**TINY_MLP, "train.epochs": 2}
    plain = mnistgan.train("mlp-gan", overrides=settings, out=tmp_path / "plain")
    evaluator_module._evaluator_of.cache_clear()
    watched = mnistgan.train("mlp-gan", overrides={**settings, "train.eval_every": 1, "train.eval_samples": 100},
                             out=tmp_path / "watched")
    assert (watched.dir / "metrics.csv").is_file()
    assert (plain.dir / "losses.csv").read_text() == (watched.dir / "losses.csv").read_text()
    assert_bitwise_equal(weights_of(plain.dir), weights_of(watched.dir))


def test_a_checkpoint_that_calls_its_best_score_best_fd_resumes_with_it(tmp_path):
    settings = {**TINY_MLP, "train.eval_every": 1, "train.eval_samples": 100}
    run = mnistgan.train("mlp-gan", overrides=settings, out=tmp_path / "run").dir
    last = run / "checkpoints" / "last.pt"
    state = {key: value for key, value in load_checkpoint(last).items() if key not in ("format", "content_sha256")}
    state["best_fd"] = -1.0  # a best no evaluation can beat, under the key's earlier name
    del state["best_quality"]
    save_checkpoint(state, last)
    best_before = (run / "checkpoints" / "best.pt").read_bytes()
    mnistgan.train(resume=run, epochs=2)
    assert load_checkpoint(last)["best_quality"] == -1.0
    assert (run / "checkpoints" / "best.pt").read_bytes() == best_before  # epoch 2 was no new best


def test_evaluation_during_a_conditional_run_records_its_accuracy(tmp_path):
    run = mnistgan.train("mlp-gan", overrides={**TINY_MLP, "model.conditional": True, "train.epochs": 1, "train.eval_every": 1,
                                               "train.eval_samples": 100}, out=tmp_path / "conditional")
    with open(run.dir / "metrics.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert 0 <= float(row["conditional_accuracy"]) <= 1


# -- the final evaluation: every finished run knows its quality ---------------------------------------

FINAL = {**TINY_MLP, "train.final_eval_samples": 100}  # 10,000 is the convention; 100 keeps these runs short


def test_a_finished_run_is_scored_beside_the_real_data(tmp_path, capsys):
    run = mnistgan.train("vanilla-gan", overrides={**FINAL, "train.ema_decay": 0.9}, out=tmp_path / "run")
    scores = run.metrics
    assert (scores["n"], scores["epoch"], scores["reference"]) == (100, 1, "test")
    assert scores["weights"] == "generator.safetensors"  # relative to the run: the record survives a move
    assert scores["real_floor"]["n"] == 100 and 0 < scores["real_floor"]["fd"] < scores["fd"]
    assert 0 < run.trained_seconds == load_checkpoint(run.dir / "checkpoints" / "last.pt")["trained_seconds"]
    # The generator file's (EMA) weights on the same noise as `mnistgan evaluate --run RUN --n 100 --seed 1`.
    assert run.evaluate(n=100, seed=1, device="cpu", save=False)["fd"] == pytest.approx(scores["fd"], rel=1e-6)
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("final evaluation")]
    assert line.startswith("final evaluation of the EMA generator on 100 samples (real data's in brackets): ")
    assert f"fd {scores['fd']:.4g} ({scores['real_floor']['fd']:.4g})" in line
    report = (run.dir / "report.html").read_text()
    assert "100 samples against the test set" in report and "Stale" not in report


def test_each_line_reaches_a_redirected_stdout_as_it_is_said(tmp_path, monkeypatch):
    # Redirected to a file (`nohup mnistgan train > log`), print buffers: each line must be flushed.
    import io

    class Recorder(io.StringIO):
        def __init__(self):
            super().__init__()
            self.flushed = []

        def flush(self):
            self.flushed.append(self.getvalue())

    recorder = Recorder()
    monkeypatch.setattr("sys.stdout", recorder)
    mnistgan.train("vanilla-gan", overrides={**TINY_MLP, "train.epochs": 2}, out=tmp_path / "run")
    lines = recorder.getvalue().splitlines()
    assert any(line.startswith("epoch    2/2") for line in lines)
    for count in range(1, len(lines) + 1):  # after every line there was a flush with it, before the next
        assert any(text.count("\n") == count for text in recorder.flushed), lines[count - 1]


def test_a_conditional_runs_final_evaluation_is_what_evaluate_measures_on_the_same_seed(tmp_path):
    # One scoring function: the same noise, the same drawn classes, the same accuracy from the same pass.
    run = mnistgan.train("mlp-gan", overrides={**FINAL, "model.conditional": True}, out=tmp_path / "conditional")
    scores = run.metrics
    again = run.evaluate(n=100, seed=scores["seed"], device="cpu", save=False)
    for key in ("fd", "precision", "recall", "conditional_accuracy"):
        assert again[key] == pytest.approx(scores[key], rel=1e-6), key
    assert run.evaluate(n=100, seed=scores["seed"] + 1, device="cpu", save=False)["fd"] != pytest.approx(scores["fd"], rel=1e-6)


def test_the_final_evaluation_leaves_training_and_resume_exact(tmp_path):
    settings = {**FINAL, "train.epochs": 2}
    mnistgan.train("vanilla-gan", overrides={**settings, "train.final_eval_samples": 0}, out=tmp_path / "unscored")
    scored = mnistgan.train("vanilla-gan", overrides=settings, out=tmp_path / "scored")
    mnistgan.train("vanilla-gan", overrides={**settings, "train.epochs": 1}, out=tmp_path / "resumed")  # scored after epoch 1 too
    resumed = mnistgan.train(resume=tmp_path / "resumed", epochs=2)
    for other in ("unscored", "resumed"):
        assert_bitwise_equal(weights_of(tmp_path / "scored"), weights_of(tmp_path / other))
        assert (tmp_path / "scored" / "losses.csv").read_text() == (tmp_path / other / "losses.csv").read_text()
    assert resumed.metrics == scored.metrics


def test_the_last_epochs_evaluation_is_not_repeated_at_the_same_count(tmp_path, monkeypatch):
    counts, score = [], train_module.RunOutputs._score
    monkeypatch.setattr(train_module.RunOutputs, "_score",
                        lambda self, samples, **options: counts.append(samples) or score(self, samples, **options))
    run = mnistgan.train("vanilla-gan", overrides={**FINAL, "train.eval_every": 1, "train.eval_samples": 100}, out=tmp_path / "run")
    assert counts == [100]  # epoch 1's evaluation is the final one
    with open(run.dir / "metrics.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert float(row["fd"]) == pytest.approx(run.metrics["fd"], rel=1e-5)
    assert "fd_train" not in run.metrics  # the record reports the test images' numbers only


def test_a_stopped_run_is_scored_only_once_it_finishes(tmp_path, monkeypatch):
    interrupt_after_steps(monkeypatch, 3)
    run = tmp_path / "run"
    with pytest.raises(train_module.TrainingInterrupted, match="interrupted at epoch 1, step 3"):
        mnistgan.train("vanilla-gan", overrides=FINAL, out=run)
    monkeypatch.undo()
    assert not (run / "metrics.json").exists()
    assert read_generator_file(run / "generator.safetensors").epoch is None  # from inside epoch 1: not "0 epochs", not "1"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["trained_seconds"] > 0  # the 3 steps' seconds
    mnistgan.train(resume=run)
    assert read_generator_file(run / "generator.safetensors").epoch == 1
    scores = json.loads((run / "metrics.json").read_text())
    # Killed while scoring: resuming the finished run rewrites its final outputs and scores it again, the same.
    (run / "metrics.json").unlink()
    mnistgan.train(resume=run)
    assert json.loads((run / "metrics.json").read_text()) == scores
    assert "Stale" not in (run / "report.html").read_text()  # newer than the generator file it rewrote
    # Resumed once more, finished and scored: the record stands, and nothing is scored again.
    monkeypatch.setattr(train_module.RunOutputs, "_score", lambda self, samples: pytest.fail("scored again"))
    mnistgan.train(resume=run)
    assert json.loads((run / "metrics.json").read_text()) == scores
    assert "Stale" not in (run / "report.html").read_text()


def test_own_images_without_an_evaluator_finish_with_one_line_saying_why(tmp_path, capsys):
    np.save(tmp_path / "own.npy", np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8))
    dataset = f"folder:{tmp_path / 'own.npy'}"
    run = mnistgan.train("vanilla-gan", overrides={**FINAL, "data.dataset": dataset, "train.subset": 64}, out=tmp_path / "run")
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "final evaluation" in line]
    assert line.startswith(f"no final evaluation: {dataset} has no evaluator yet; make one with `mnistgan train-evaluator")
    assert f"`mnistgan evaluate --run {run.dir}`" in line
    assert not (run.dir / "metrics.json").exists()


def test_a_final_evaluation_of_too_few_samples_is_refused(tmp_path):
    settings = {key: value for key, value in TINY_MLP.items() if key != "train.final_eval_samples"}
    with pytest.raises(UserError, match=r"train.final_eval_samples = 50 is too few to score; use at least 100 .*or 0 for no"):
        mnistgan.train("vanilla-gan", overrides=settings, final_eval_samples=50, out=tmp_path / "run")


def test_a_run_written_before_feature_order_existed_samples_and_resumes_as_it_trained(tmp_path):
    """Its config.toml lacks model.feature_order: sampling and resuming must read it as "chw"."""
    settings = {**TINY_DCGAN, "model.feature_order": "chw"}
    run = mnistgan.train("tf-dcgan-tutorial", overrides=settings, out=tmp_path / "run")
    expected = run.sample(8, seed=3)
    config_file = run.dir / "config.toml"
    config_file.write_text(config_file.read_text().replace('feature_order = "chw"\n', ""))
    assert "feature_order" not in config_file.read_text()
    torch.testing.assert_close(mnistgan.load(run.dir).sample(8, seed=3), expected)
    resumed = mnistgan.train(resume=run.dir, epochs=2)
    assert resumed.config.model.feature_order == "chw"


def test_a_closed_pipe_anywhere_in_training_still_checkpoints(tmp_path, monkeypatch):
    # The progress bar's stream rather than the epoch lines (those only ask training to stop).
    import tqdm.auto

    original_update, updates = tqdm.auto.tqdm.update, []

    def update_into_a_closed_pipe(self, n=1):
        updates.append(n)
        if len(updates) == 10:  # epoch 2, step 2 (8 steps per epoch)
            raise BrokenPipeError()
        return original_update(self, n)

    monkeypatch.setattr(tqdm.auto.tqdm, "update", update_into_a_closed_pipe)
    with pytest.raises(train_module.TrainingInterrupted) as stopped:
        mnistgan.train("vanilla-gan", overrides={**TINY_MLP, "train.epochs": 3}, out=tmp_path / "run", progress=True)
    assert stopped.value.exit_status == 141
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)


@pytest.mark.parametrize("content", ["", "step,epo", "step,epoch,d_loss\n1,1,0.5\n2,2,0.4\n3,3,0."])
def test_a_log_cut_short_by_a_full_disk_is_repaired_on_resume(tmp_path, content):
    path = tmp_path / "losses.csv"
    path.write_text(content)
    rundir.truncate_csv(path, completed_epochs=1)
    if "\n" in content:  # a whole header: the rows after the checkpoint and the cut row go
        assert path.read_text() == "step,epoch,d_loss\n1,1,0.5\n"
    else:  # no whole header: the file starts again, header first
        assert not path.exists()
        rundir.append_csv(path, ("step", "epoch") + STAT_COLUMNS, train_module.loss_rows(torch.ones(2, 4), epoch=1, log_every=1))
        assert path.read_text().splitlines()[0] == "step,epoch,d_loss,g_loss,d_real,d_fake"


# -- faults: divergence, broken runs, kills, edited files ---------------------------------------------


def _poison_generator_after(monkeypatch, steps: int, then_signal: int | None = None):
    """Make G's weights NaN after ``steps`` more steps (a divergence), optionally then send a signal."""
    original_run, calls = step_module.StepRunner.run, []

    def run_then_poison(self, remaining):
        ran = original_run(self, remaining)
        calls.append(ran)
        if len(calls) == steps:
            with torch.no_grad():
                next(self.step.generator.parameters()).fill_(float("nan"))
            if then_signal is not None:
                os.kill(os.getpid(), then_signal)
        return ran

    monkeypatch.setattr(step_module.StepRunner, "run", run_then_poison)


def test_a_stop_while_diverging_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    mnistgan.train("vanilla-gan", overrides=TINY_MLP, out=run)  # one good epoch, checkpointed
    good_checkpoint, good_generator = (run / "checkpoints" / "last.pt").read_bytes(), (run / "generator.safetensors").read_bytes()
    _poison_generator_after(monkeypatch, 3, then_signal=signal.SIGINT)  # Ctrl-C mid-epoch, weights NaN
    with pytest.raises(UserError, match=r"diverged at epoch 2 .*nothing diverged was saved.* last good checkpoint is .*last\.pt"):
        mnistgan.train(resume=run, epochs=3)
    assert (run / "checkpoints" / "last.pt").read_bytes() == good_checkpoint
    assert (run / "generator.safetensors").read_bytes() == good_generator


def test_divergence_before_the_first_checkpoint_names_no_checkpoint(tmp_path, monkeypatch):
    _poison_generator_after(monkeypatch, 2)
    with pytest.raises(UserError, match="diverged at epoch 1 .*no checkpoint was written before it") as error:
        mnistgan.train("vanilla-gan", overrides=TINY_MLP, out=tmp_path / "run")
    assert "last.pt" not in str(error.value)
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_sampling_a_diverged_generator_is_refused(tmp_path):
    run = mnistgan.train("vanilla-gan", overrides=TINY_MLP, out=tmp_path / "run")
    from safetensors import safe_open

    weights = load_file(run.dir / "generator.safetensors")
    with safe_open(str(run.dir / "generator.safetensors"), framework="pt") as handle:
        metadata = {k: v for k, v in handle.metadata().items() if k != "weights_sha256"}
    first = next(iter(weights))
    weights[first] = torch.full_like(weights[first], float("nan"))
    save_file(weights, run.dir / "generator.safetensors", metadata=metadata)
    with pytest.raises(UserError, match="NaN or infinite weights .*diverged"):
        mnistgan.load(run.dir).sample(4)


def test_exploding_losses_are_flagged_in_the_epoch_line_report_and_end(tmp_path, capsys):
    run = mnistgan.train("mlp-gan", overrides={**TINY_MLP, "train.epochs": 2}, lr=10.0, out=tmp_path / "run")
    out = capsys.readouterr().out
    assert "warning: the losses exploded" in out and "warning: training broke down at epoch" in out
    assert "training broke down at epoch" in (run.dir / "report.html").read_text()


def test_stop_on_breakdown_stops_without_checkpointing_the_broken_epoch(tmp_path):
    with pytest.raises(UserError, match="broke down at epoch 1.*stop_on_breakdown.*no checkpoint was written"):
        mnistgan.train("mlp-gan", overrides={**TINY_MLP, "train.epochs": 2, "train.stop_on_breakdown": True}, lr=10.0,
                       out=tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def recording_saves(monkeypatch) -> list:
    """Every checkpoint training writes from now on: (file name, epochs done, steps into the next, its clock)."""
    saved = []
    original_save = train_module.TrainingState.save

    def recording_save(self, path, *args, **kwargs):
        original_save(self, path, *args, **kwargs)
        saved.append((path.name, self.completed_epochs, self.step_in_epoch, load_checkpoint(path)["trained_seconds"]))

    monkeypatch.setattr(train_module.TrainingState, "save", recording_save)
    return saved


def test_checkpoints_come_by_time_as_well_as_by_epochs(tmp_path, monkeypatch):
    saved = recording_saves(monkeypatch)
    # An hour per look, from far past the real clock: the state's start time was read before the patch.
    monkeypatch.setattr(train_module.time, "monotonic", iter(range(10**9, 10**9 + 10**7, 3600)).__next__)
    mnistgan.train("vanilla-gan", overrides={**TINY_MLP, "train.epochs": 2, "train.checkpoint_every": 100}, out=tmp_path / "run")
    mid_epoch = [entry for entry in saved if entry[2] > 0]
    assert mid_epoch and all(entry[0] == "last.pt" for entry in saved)
    assert ("last.pt", 1, 0) in [entry[:3] for entry in saved]  # an epoch end due by time, though not by checkpoint_every
    # A checkpoint inside the first epoch keeps the seconds that epoch has trained so far: a resume adds to them.
    first_epoch = [seconds for _, epochs, steps, seconds in mid_epoch if epochs == 0]
    assert first_epoch and all(seconds > 0 for seconds in first_epoch)


def test_a_new_best_checkpoint_does_not_put_off_the_timed_one(tmp_path, monkeypatch):
    saved = recording_saves(monkeypatch)
    clock = [train_module.time.monotonic()]
    monkeypatch.setattr(train_module.time, "monotonic", lambda: clock[0])

    def four_minutes_and_better(self, epoch):  # each evaluation takes 4 minutes and finds a new best
        clock[0] += 240
        return {"fd": 100.0 - epoch, "fd_train": 100.0 - epoch}

    monkeypatch.setattr(train_module.RunOutputs, "_evaluate", four_minutes_and_better)
    overrides = {**TINY_MLP, "train.epochs": 3, "train.eval_every": 1, "train.checkpoint_every": 100,
                 "train.checkpoint_minutes": 5.0}
    mnistgan.train("vanilla-gan", overrides=overrides, out=tmp_path / "run")
    # best.pt after every evaluation; last.pt once 5 minutes have passed since training began (epoch 2), not
    # 5 minutes after the last best.pt (which would put it off to the final epoch).
    assert [(name, epochs) for name, epochs, _, _ in saved] == [("best.pt", 1), ("best.pt", 2), ("last.pt", 2),
                                                                ("best.pt", 3), ("last.pt", 3)]


def test_a_resume_refuses_a_config_edited_against_its_checkpoint(tmp_path):
    run = tmp_path / "run"
    mnistgan.train("vanilla-gan", overrides=TINY_MLP, out=run)
    config = run / "config.toml"
    original = config.read_text()
    config.write_text(original.replace("batch_size = 32", "batch_size = 64"))
    with pytest.raises(UserError, match="train.batch_size = 64.* trained with 32.*restore"):
        mnistgan.train(resume=run, epochs=2)
    config.write_text(original.replace("sample_every = 1", "sample_every = 2"))  # outputs may change
    mnistgan.train(resume=run, epochs=2)


def test_a_resume_on_another_thread_count_says_so(tmp_path, capsys):
    threads = torch.get_num_threads()
    run = tmp_path / "run"
    try:
        mnistgan.train("vanilla-gan", overrides={**TINY_MLP, "performance.threads": 1}, out=run)
        config = run / "config.toml"
        config.write_text(config.read_text().replace("threads = 1", f"threads = {threads + 1}"))
        capsys.readouterr()
        mnistgan.train(resume=run, epochs=2)
    finally:
        torch.set_num_threads(threads)
    assert f"trained on 1 CPU threads and continues on {threads + 1}" in capsys.readouterr().out


@pytest.mark.parametrize("damage", [b"999,x,1,1,0.5,0.5\n", b"\xff\xfe\x00garbage\x00\n"])
def test_a_damaged_loss_log_does_not_break_resume(tmp_path, damage):
    run = tmp_path / "run"
    mnistgan.train("vanilla-gan", overrides={**TINY_MLP, "train.epochs": 2}, out=tmp_path / "straight")
    mnistgan.train("vanilla-gan", overrides=TINY_MLP, out=run)
    with open(run / "losses.csv", "ab") as handle:
        handle.write(damage)
    mnistgan.train(resume=run, epochs=2)
    assert (run / "losses.csv").read_text() == (tmp_path / "straight" / "losses.csv").read_text()


def test_sigterm_during_the_last_checkpoint_ends_with_143_and_a_complete_run(tmp_path, monkeypatch):
    original_save = train_module.TrainingState.save

    def save_then_terminated(self, path):
        original_save(self, path)
        if self.completed_epochs == self.config.train.epochs:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(train_module.TrainingState, "save", save_then_terminated)
    with pytest.raises(train_module.TrainingInterrupted, match="complete") as stopped:
        mnistgan.train("vanilla-gan", overrides=TINY_MLP, out=tmp_path / "run")
    assert stopped.value.exit_status == 128 + signal.SIGTERM
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 1
    assert (tmp_path / "run" / "generator.safetensors").is_file()


@pytest.mark.slow
def test_random_kills_never_corrupt_a_run_and_it_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL (no handler runs) at random moments, checkpoint writes included, until the run finishes."""
    import random
    import shutil
    import subprocess
    import sys
    import time

    from mnistgan.checkpoint import read_generator_file
    from mnistgan.config import load_toml

    settings = ["--subset", "256", "--batch-size", "32", "--epochs", "6", "--device", "cpu", "--no-progress",
                "--final-eval-samples", "0",
                "--set=performance.threads=2", "--set=performance.precision=fp32", "--set=train.checkpoint_minutes=0", "--set=model.generator_widths=[32, 64]",
                "--set=model.discriminator_widths=[64, 32]"]
    start = [sys.executable, "-m", "mnistgan", "train", "--preset", "vanilla-gan", *settings]
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert subprocess.run(start + ["--out", str(straight)], capture_output=True).returncode == 0
    chooser, kills = random.Random(0), 0
    for attempt in range(8):
        if (run / "checkpoints" / "last.pt").is_file():
            command = [sys.executable, "-m", "mnistgan", "train", "--resume", str(run), "--no-progress"]
        else:  # killed before its first checkpoint: that run starts over
            shutil.rmtree(run, ignore_errors=True)
            command = start + ["--out", str(run)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if attempt >= 6:  # six attempts are killed, then the run may finish
            process.communicate(timeout=600)
            assert process.returncode == 0
            break
        # The kill falls a random moment after a random line: in start-up, during an epoch, or while
        # the epoch's grid, generator file and checkpoint are written (they follow the epoch line).
        for _ in range(chooser.randrange(3)):
            if not process.stdout.readline():
                break
        time.sleep(chooser.uniform(0.0, 0.3))
        process.kill()
        process.communicate()
        kills += 1
        # Whatever the moment of the kill, every file on disk is whole.
        if (run / "config.toml").is_file():  # a kill during start-up may come before the folder is claimed
            load_toml(run / "config.toml", stored=True)
        if (run / "checkpoints" / "last.pt").is_file():
            load_checkpoint(run / "checkpoints" / "last.pt")
        if (run / "generator.safetensors").is_file():
            read_generator_file(run / "generator.safetensors")
    assert kills == 6 and process.returncode == 0
    assert_bitwise_equal(weights_of(straight), weights_of(run))
    assert (straight / "losses.csv").read_text() == (run / "losses.csv").read_text()


@pytest.mark.parametrize("interval", [1, 3])
def test_the_relativistic_loss_with_r1_and_r2_trains_and_resumes_exactly(tmp_path, interval):
    settings = {**TINY_MLP, "train.epochs": 2, "loss.adversarial": "relativistic", "loss.r1_gamma": 1.0, "loss.r2_gamma": 1.0,
                "optim.beta1": 0.0, "loss.penalty_interval": interval}
    straight = mnistgan.train("mlp-gan", overrides=settings, out=tmp_path / "straight")
    # The G update reads a fresh real batch: 256 images / (32 x 2 batches) = 4 steps an epoch. With
    # penalties every 3rd step the resumed epoch starts mid-interval: the run must keep its place.
    assert int(load_checkpoint(straight.dir / "checkpoints" / "last.pt")["g_optimizer"]["state"][0]["step"]) == 8
    mnistgan.train("mlp-gan", overrides={**settings, "train.epochs": 1}, out=tmp_path / "resumed")
    mnistgan.train(resume=tmp_path / "resumed", epochs=2)
    assert_bitwise_equal(weights_of(tmp_path / "straight"), weights_of(tmp_path / "resumed"))
    assert np.isfinite(np.loadtxt(straight.dir / "losses.csv", delimiter=",", skiprows=1)).all()
    if interval > 1:  # the interval changes training: the same run with penalties every step differs
        every_step = mnistgan.train("mlp-gan", overrides={**settings, "loss.penalty_interval": 1}, out=tmp_path / "every")
        first, second = weights_of(every_step.dir), weights_of(straight.dir)
        assert any(not torch.equal(first[key], second[key]) for key in first)


@pytest.mark.parametrize("dataset", ["mnist", "stacked-mnist"])
def test_the_r3gan_recipe_trains_in_bf16_on_the_cpu_with_finite_losses(tmp_path, dataset):
    # R3GAN's authors found fp16 broke their recipe and bf16 worked: the penalties' double backward
    # runs under autocast here, with the real and generated batches needing gradients.
    settings = {**TINY, "data.dataset": dataset, "model.architecture": "resnet",
                "model.generator_widths": [8, 4], "model.discriminator_widths": [4, 8], "model.blocks_per_resolution": 1,
                "model.generator_batchnorm": False, "model.init": "pytorch", "loss.adversarial": "relativistic",
                "loss.r1_gamma": 0.1, "loss.r2_gamma": 0.1, "optim.beta1": 0.0, "train.ema_decay": 0.9,
                "performance.precision": "bf16"}
    run = mnistgan.train("r3gan", overrides=settings, out=tmp_path / "run")
    losses = np.loadtxt(run.dir / "losses.csv", delimiter=",", skiprows=1)
    assert load_checkpoint(run.dir / "checkpoints" / "last.pt")["precision"] == "bf16"  # forced, even where emulated
    assert len(losses) > 0 and np.isfinite(losses).all()
    assert torch.isfinite(run.sample(8)).all()
    if dataset == "stacked-mnist":  # its modes are counted, not compared with real images: no reference to choose
        with pytest.raises(UserError, match="scored by its modes.*leave out 'reference'"):
            run.evaluate(reference="train")


def test_resnet_networks_with_the_relativistic_loss_train_and_resume_exactly(tmp_path):
    settings = {**TINY, "train.epochs": 2, "model.architecture": "resnet", "model.generator_widths": [8, 4],
                "model.discriminator_widths": [4, 8], "model.blocks_per_resolution": 1, "model.generator_batchnorm": False,
                "model.init": "pytorch", "loss.adversarial": "relativistic", "loss.r1_gamma": 0.1, "loss.r2_gamma": 0.1,
                "optim.beta1": 0.0, "train.ema_decay": 0.9}
    mnistgan.train("mlp-gan", overrides=settings, out=tmp_path / "straight")
    mnistgan.train("mlp-gan", overrides={**settings, "train.epochs": 1}, out=tmp_path / "resumed")
    mnistgan.train(resume=tmp_path / "resumed", epochs=2)
    assert_bitwise_equal(weights_of(tmp_path / "straight"), weights_of(tmp_path / "resumed"))


def test_a_resumed_run_keeps_its_precision_and_a_bf16_run_of_a_level_blind_loss_is_cautioned():
    cpu = torch.device("cpu")
    r3gan = load_preset("r3gan")
    assert train_module._precision_trained_in(r3gan, cpu, {"precision": "fp32", "device_type": "cpu"}) == \
        ("fp32", "as this run trained so far")
    # A bf16 run that needs full fp32 is cautioned: r3gan's spaced penalties, or no drift term to hold the level.
    precision, reason = train_module._precision_trained_in(r3gan, cpu, {"precision": "bf16", "device_type": "cpu"})
    assert precision == "bf16" and reason.startswith("as this run trained so far, though bf16 broke"), reason
    assert reason.endswith("(resume with --set performance.precision=fp32 to switch)"), reason
    stacked = load_preset("stacked-r3gan")
    assert train_module._precision_trained_in(stacked, cpu, {"precision": "bf16", "device_type": "cpu"}) == \
        ("bf16", "as this run trained so far")
    unheld = r3gan.replace({"loss.drift_penalty": 0.0})
    precision, reason = train_module._precision_trained_in(unheld, cpu, {"precision": "bf16", "device_type": "cpu"})
    assert precision == "bf16" and reason.startswith("as this run trained so far, though the relativistic loss")
    dcgan = load_preset("tf-dcgan-tutorial")
    assert train_module._precision_trained_in(dcgan, cpu, {"precision": "bf16", "device_type": "cpu"}) == \
        ("bf16", "as this run trained so far")
    # Another kind of device, or a precision set by the config: chosen afresh.
    assert train_module._precision_trained_in(r3gan, cpu, {"precision": "bf16", "device_type": "cuda"}) is None
    assert train_module._precision_trained_in(r3gan.replace({"performance.precision": "fp32"}), cpu,
                                              {"precision": "bf16", "device_type": "cpu"}) is None


def test_a_collapse_is_flagged_after_the_first_quarter_and_at_the_end(tmp_path, capsys, monkeypatch):
    class OneNoise(train_module.SpreadCheck):  # every checked sample drawn from one noise vector: identical samples
        def __init__(self, *args):
            super().__init__(*args)
            self.z[:] = self.z[0]

    monkeypatch.setattr(train_module, "SpreadCheck", OneNoise)
    mnistgan.train("vanilla-gan", overrides={**TINY_MLP, "train.epochs": 4, "train.sample_every": 1}, out=tmp_path / "run")
    mnistgan.train(resume=tmp_path / "run", epochs=5)  # the series goes on across a resume
    lines = capsys.readouterr().out.splitlines()
    alike = "the samples are nearly alike (0.00 of the training images' spread)"
    warned = [line.split()[1] for line in lines if line.startswith("epoch") and f"since epoch 1, {alike}: G has collapsed" in line]
    assert warned == ["2/4", "3/4", "4/4", "5/5"]  # not in the first quarter, where collapse often passes
    assert sum(f"warning: in the final samples, {alike}: G has collapsed" in line for line in lines) == 2


def test_a_passing_check_ends_the_series(tmp_path, capsys, monkeypatch):
    spreads = iter([{None: 0.1}, {None: 0.1}, {None: 0.9}, {None: 0.1}])  # alike, then not, then alike again
    monkeypatch.setattr(train_module.SpreadCheck, "ratios", lambda self, generator: next(spreads))
    mnistgan.train("vanilla-gan", overrides={**TINY_MLP, "train.epochs": 4, "train.sample_every": 1}, out=tmp_path / "run")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("since epoch")[1][:3] for line in lines if "since epoch" in line] == [" 1,", " 4,"]
    assert "warning: in the final samples, the samples are nearly alike (0.10 of the training images' spread)" in lines[-1]
