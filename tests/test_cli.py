"""The commands as a user types them: outputs, and one clean error line for each bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from mnistgan.checkpoint import CHECKPOINT_DIGEST_KEY, FORMAT_VERSION
from mnistgan.cli import main

from conftest import TINY_MLP, run_cli

TINY_ARGS = ["--subset", "128", "--batch-size", "32", "--set=train.sample_every=1", "--device", "cpu", "--no-progress",
             "--final-eval-samples", "0"] + [
    f"--set={key}={value}" for key, value in TINY_MLP.items() if key.startswith("model.")]
TINY_ARGS_LEAVING_PROGRESS_TO_THE_TERMINAL_CHECK = [arg for arg in TINY_ARGS if arg != "--no-progress"]


def assert_names(line: str, *words: str) -> None:
    """Key-word pins: the file or value the message is about, and the words that say what is wrong or what to do."""
    for word in words:
        assert word in line, (word, line)


def one_error_line(capsys, argv, code=2):
    """Run ``mnistgan ARGV`` in-process; assert it failed with exactly one line on stderr; return it."""
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture(scope="module")
def trained_process(tmp_path_factory):
    """``mnistgan train`` in a fresh process, with neither --progress nor --no-progress: it decides
    itself whether to draw a bar, and its stdout and stderr are pipes, not a terminal."""
    out = tmp_path_factory.mktemp("cli") / "run"
    result = run_cli("train", "--preset", "mlp-gan", "--epochs", "2", "--out", str(out),
                     *TINY_ARGS_LEAVING_PROGRESS_TO_THE_TERMINAL_CHECK)
    assert result.returncode == 0, result.stderr
    return out, result


@pytest.fixture(scope="module")
def trained_run(trained_process):
    return trained_process[0]


def test_no_progress_bar_when_stderr_is_not_a_terminal(trained_process):
    _, result = trained_process
    # The per-epoch plain lines, one each...
    for epoch in (1, 2):
        assert result.stdout.count(f"epoch    {epoch}/2") == 1, result.stdout
    # ...and no bar: tqdm's bar would be on stderr, redrawn with carriage returns, described
    # "epoch N/2" (one space) and rated in steps and images per second.
    for bar_text in ("\r", "epoch 1/2", "epoch 2/2", "step/s", "img/s", "it/s"):
        assert bar_text not in result.stderr, (bar_text, result.stderr[-2000:])
    assert "\r" not in result.stdout


def test_a_training_run_with_progress_draws_the_bar(tmp_path, capsys, monkeypatch):
    import mnistgan
    import mnistgan.training

    # Training's clock, sped up: a second passes between perf_counter readings, so the bar's rate
    # (refreshed every 0.5 s) comes at every step; the rest of the time module is the real one.
    import time
    import types

    clock = types.ModuleType("time")
    clock.__dict__.update(time.__dict__)
    readings = iter(range(1, 10**6))
    clock.perf_counter = lambda: float(next(readings))
    monkeypatch.setattr(mnistgan.training, "time", clock)
    mnistgan.train("mlp-gan", overrides={**TINY_MLP, "train.subset": 128, "train.epochs": 2}, out=tmp_path / "run",
                   progress=True)
    captured = capsys.readouterr()
    assert "epoch 1/2" in captured.err and "epoch 2/2" in captured.err  # tqdm's description, one bar per epoch
    assert "img/s" in captured.err and "d_loss" in captured.err and "g_loss" in captured.err  # the postfix
    assert "\r" in captured.err  # redrawn in place
    assert "epoch    2/2" in captured.out  # the epoch lines still come, on stdout


def test_train_from_the_command_line_writes_the_run(trained_run):
    for name in ("config.toml", "losses.csv", "loss_curves.png", "progress.gif", "generator.safetensors",
                 "checkpoints/last.pt", "samples/image_at_epoch_0001.png", "samples/image_at_epoch_0002.png"):
        assert (trained_run / name).is_file(), name


def test_sample_png_and_npy(trained_run, tmp_path):
    assert main(["sample", "--run", str(trained_run), "--n", "9", "--out", str(tmp_path / "grid.png")]) == 0
    assert Image.open(tmp_path / "grid.png").size == (2 * (3 * 30 + 2),) * 2
    assert main(["sample", "--run", str(trained_run), "--n", "7", "--seed", "5", "--out", str(tmp_path / "x.npy")]) == 0
    samples = np.load(tmp_path / "x.npy")
    assert samples.shape == (7, 1, 28, 28) and samples.dtype == np.float32
    assert samples.min() >= -1 and samples.max() <= 1
    assert main(["sample", "--checkpoint", str(trained_run / "checkpoints" / "last.pt"), "--n", "7", "--seed", "5",
                 "--out", str(tmp_path / "y.npy")]) == 0
    assert np.array_equal(samples, np.load(tmp_path / "y.npy"))  # same weights, same seed, same samples


def test_resume_from_the_command_line(trained_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    result = run_cli("train", "--resume", str(copy), "--epochs", "3", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "epoch    3/3" in result.stdout and "epoch    1/3" not in result.stdout
    assert (copy / "samples" / "image_at_epoch_0003.png").is_file()


def test_presets_lists_the_five_reference_designs(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("keras-dcgan", "tf-dcgan-tutorial", "mlp-gan", "vanilla-gan", "mlp-gan-dropout"):
        assert name in out


@pytest.mark.parametrize("argv, words", [
    (["train", "--preset", "nope"], ("'nope'", "unknown preset", "choose one of")),
    (["train", "--preset", "mlp-gan", "--set", "train.epoch=3"], ("train.epoch", "did you mean train.epochs")),
    (["train", "--preset", "mlp-gan", "--set", "train.epochs=three"], ("train.epochs", "three", "must be an integer")),
    (["train", "--preset", "mlp-gan", "--lr", "-0.001"], ("optim.generator_lr", "-0.001", "out of range")),
    (["train", "--preset", "mlp-gan", "--batch-size", "0"], ("--batch-size", "0", "at least 1")),
    (["train", "--preset", "mlp-gan", "--epochs", "0"], ("--epochs", "0", "at least 1")),
    (["train", "--preset", "mlp-gan", "--set", "model.leaky_slope=2"], ("model.leaky_slope", "2", "out of range")),
    (["train", "--preset", "mlp-gan", "--device", "tpu"], ("'tpu'", "unknown device", "cpu")),
    (["sample", "--out", "x.png"], ("give", "--run", "--checkpoint")),
    (["presets", "--show", "nope"], ("'nope'", "unknown preset")),
    (["train", "--preset", "mlp-gan", "--out", ""], ("--out", "empty")),
    (["train", "--preset", "mlp-gan", "--device", "cpu:5"], ("cpu:5", "takes no index")),
    (["train", "--preset", "mlp-gan", "--data-dir", "/nonexistent/mnist"], ("/nonexistent/mnist", "not a folder")),
    (["train-evaluator", "--out", "evaluator.txt"], ("evaluator.txt", "must end in .safetensors")),
    (["train-evaluator", "--device", "tpu"], ("'tpu'", "unknown device")),
    (["sample", "--checkpoint", "/", "--out", "x.png"], ("/", "is a directory", "give a checkpoint file")),
    (["sample", "--run", "r", "--pretrained", "p"], ("--pretrained", "not allowed with", "--run")),
    (["evaluate", "--pretrained", "nope"], ("'nope'", "unknown pretrained generator", "mnistgan pretrained")),
    (["pretrained", "--out", "x.safetensors"], ("--out", "goes with --export")),
    (["train", "--preset", "mlp-gan", "--epochs", "5", "--set", "train.epochs=10"],
     ("train.epochs", "given twice", "--epochs 5", "train.epochs=10", "give it once")),
    (["train", "--preset", "mlp-gan", "--set", f"optim.generator_lr={10**400}"], ("optim.generator_lr", "must be a number")),
    (["train", "--preset", "mlp-gan", "--seed", str(2**63)], ("train.seed", str(2**63), "out of range")),
    (["sample", "--pretrained", "recommended", "--seed", str(2**63), "--out", "x.png"], ("--seed", str(2**63), "at most")),
    (["evaluate", "--samples", "x.npy", "--n", "50"], ("--n", "does not apply to --samples", "--run")),
    (["evaluate", "--real", "--seed", "3"], ("--seed", "does not apply to --real")),
    (["evaluate", "--real", "--reference", "train"], ("--reference", "does not apply to --real")),
])
def test_bad_input_is_one_clear_line(capsys, argv, words):
    assert_names(one_error_line(capsys, argv), *words)


def test_missing_data_directory(capsys, tmp_path):
    line = one_error_line(capsys, ["train", "--preset", "mlp-gan", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")] + TINY_ARGS)
    assert_names(line, str(tmp_path), "lacks the MNIST file")
    assert not (tmp_path / "r").exists()  # a run that never started leaves no empty folder


def test_a_folder_with_other_files_is_not_a_run_folder(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    line = one_error_line(capsys, ["train", "--preset", "mlp-gan", "--out", str(tmp_path)] + TINY_ARGS)
    assert_names(line, str(tmp_path), "notes.txt", "already has files", "holds no run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_hidden_files_do_not_make_a_folder_taken(capsys, tmp_path):
    (tmp_path / ".gitkeep").write_text("")
    assert main(["train", "--preset", "mlp-gan", "--epochs", "1", "--out", str(tmp_path)] + TINY_ARGS) == 0
    assert (tmp_path / "config.toml").is_file()


def test_an_output_link_to_nothing_is_one_line(capsys, tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    line = one_error_line(capsys, ["train", "--preset", "mlp-gan", "--out", str(tmp_path / "link")] + TINY_ARGS)
    assert_names(line, str(tmp_path / "link"), "symbolic link to nothing", "choose another --out")


def test_runs_started_together_get_their_own_folders(tmp_path):
    # Without --out each run takes the next runs/NNN-name; the folder is made at once, so that a run
    # starting while another loads its data cannot pick the same number.
    command = [sys.executable, "-m", "mnistgan", "train", "--preset", "mlp-gan", "--epochs", "1", *TINY_ARGS]
    processes = [subprocess.Popen(command + ["--seed", str(seed)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for seed in (1, 2)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert folders == ["001-mlp-gan", "002-mlp-gan"]
    seeds = sorted((tmp_path / "runs" / folder / "config.toml").read_text().split("seed = ")[1].split()[0] for folder in folders)
    assert seeds == ["1", "2"]


def test_too_large_subset_keeps_an_existing_output_folder(capsys, tmp_path):
    (tmp_path / "r").mkdir()
    line = one_error_line(capsys, ["train", "--preset", "mlp-gan", "--out", str(tmp_path / "r")] + TINY_ARGS + ["--subset", "70000"])
    assert_names(line, "70000", "exceeds the 60000 training images")
    assert (tmp_path / "r").is_dir() and not any((tmp_path / "r").iterdir())  # left as the user made it


def test_corrupt_data(capsys, tmp_path):
    data_dir = tmp_path / "mnist"
    shutil.copytree(shutil.os.path.join(shutil.os.path.dirname(__file__), "..", "data", "mnist"), data_dir)
    path = data_dir / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1000])
    line = one_error_line(capsys, ["train", "--preset", "mlp-gan", "--data-dir", str(data_dir), "--out", str(tmp_path / "r")] + TINY_ARGS)
    assert "train-labels-idx1-ubyte.gz" in line


def test_unwritable_output_directory(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = one_error_line(capsys, ["train", "--preset", "mlp-gan", "--out", str(blocker / "run")] + TINY_ARGS)
    assert_names(line, str(blocker), "is a file", "choose another --out")


def test_resume_from_a_directory_that_is_not_a_run(capsys, tmp_path):
    assert_names(one_error_line(capsys, ["train", "--resume", str(tmp_path)]), str(tmp_path), "is not a run directory")
    assert_names(one_error_line(capsys, ["train", "--resume", str(tmp_path / "missing")]), str(tmp_path / "missing"),
                 "is not a directory")


def test_resume_cannot_change_the_config(capsys, trained_run):
    line = one_error_line(capsys, ["train", "--resume", str(trained_run), "--lr", "0.1"])
    assert_names(line, "--lr cannot change", "--epochs, --eval-every, --final-eval-samples, --tensorboard, --device")
    line = one_error_line(capsys, ["train", "--resume", str(trained_run), "--set", "train.batch_size=7"])
    assert_names(line, "train.batch_size cannot change", "performance.*")


def test_resume_may_change_the_outputs_with_set(trained_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    assert main(["train", "--resume", str(copy), "--epochs", "4", "--set", "train.sample_every=2", "--no-progress"]) == 0
    assert "sample_every = 2" in (copy / "config.toml").read_text()
    samples = copy / "samples"
    assert not (samples / "image_at_epoch_0003.png").exists() and (samples / "image_at_epoch_0004.png").is_file()


def test_checkpoint_from_a_different_architecture(capsys, trained_run, tmp_path):
    other = tmp_path / "other"
    assert main(["train", "--preset", "vanilla-gan", "--epochs", "1", "--out", str(other)] + TINY_ARGS[:5]) == 0
    capsys.readouterr()
    line = one_error_line(capsys, ["sample", "--run", str(trained_run), "--checkpoint", str(other / "checkpoints" / "last.pt"),
                                   "--out", str(tmp_path / "x.png")])
    assert "does not fit this architecture" in line
    # The same when a run's checkpoint is swapped for another run's and training resumes.
    shutil.copy(other / "checkpoints" / "last.pt", tmp_path / "swapped.pt")
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    shutil.copy(tmp_path / "swapped.pt", copy / "checkpoints" / "last.pt")
    # Resuming refuses it before any weights load: the checkpoint was trained with another config.
    line = one_error_line(capsys, ["train", "--resume", str(copy), "--epochs", "3"])
    assert_names(line, str(copy / "checkpoints" / "last.pt"), str(copy / "config.toml"), "model.generator_widths", "trained with")


def test_a_file_that_is_not_a_checkpoint(capsys, tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"\x80\x04not a checkpoint")
    line = one_error_line(capsys, ["sample", "--checkpoint", str(bogus), "--out", str(tmp_path / "x.png")])
    assert_names(line, str(bogus), "not a readable mnistgan checkpoint")


def test_a_run_whose_config_is_not_utf8_is_one_line(capsys, tmp_path):
    (tmp_path / "config.toml").write_bytes(b"\xff\xfe")
    line = one_error_line(capsys, ["sample", "--run", str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert_names(line, str(tmp_path / "config.toml"), "not UTF-8", "save it as UTF-8")


def write_malformed(path, content):
    """A .pt checkpoint of ``content`` (no digest: it loads unchecked), or a generator file with ``content`` as its metadata."""
    if path.suffix == ".safetensors":
        save_file({"weight": torch.zeros(2)}, path, metadata=content)
    else:
        torch.save(content, path)


@pytest.mark.parametrize("name, content, words", [
    ("config.pt", {"format": FORMAT_VERSION, "config": 5, "generator": {"weight": torch.zeros(2)}}, "its config is not a table"),
    ("no-generator.pt", {"format": FORMAT_VERSION, "config": {}}, "no generator weights"),
    ("ema.pt", {"format": FORMAT_VERSION, "config": {}, "generator": {"weight": torch.zeros(2)}, "ema": [1]}, "its ema entry"),
    ("no-config.safetensors", {"format": "mnistgan-generator"}, "not a valid mnistgan generator file"),
    ("bad-json.safetensors", {"format": "mnistgan-generator", "config": "{"}, "not a valid mnistgan generator file"),
    ("list.safetensors", {"format": "mnistgan-generator", "config": "[1, 2]"}, "not a valid mnistgan generator file"),
    ("bad-section.safetensors", {"format": "mnistgan-generator", "config": json.dumps({"model": 5})}, "'model' must be a table"),
])
def test_a_malformed_weights_file_is_one_line(capsys, tmp_path, name, content, words):
    path = tmp_path / name
    write_malformed(path, content)
    line = one_error_line(capsys, ["sample", "--checkpoint", str(path), "--out", str(tmp_path / "x.png")])
    assert_names(line, str(path), words)


@pytest.mark.parametrize("missing", ["rng", "g_optimizer", "discriminator", "generator"])
def test_resuming_from_an_incomplete_checkpoint_is_one_line(capsys, trained_run, tmp_path, missing):
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    last = copy / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    del state[CHECKPOINT_DIGEST_KEY], state[missing]  # without the digest it loads unchecked, as older files do
    torch.save(state, last)
    line = one_error_line(capsys, ["train", "--resume", str(copy), "--epochs", "3"])
    assert_names(line, str(last), "not a complete mnistgan checkpoint", "restore it from a copy")


def test_too_many_samples_for_memory_is_one_line(capsys, trained_run, tmp_path):
    line = one_error_line(capsys, ["sample", "--run", str(trained_run), "--n", str(10**10), "--out", str(tmp_path / "s.npy")])
    assert "memory" in line and "GiB" in line and "--n" in line  # refused up front, before any allocation


def test_digit_needs_a_conditional_run(capsys, trained_run, tmp_path):
    line = one_error_line(capsys, ["sample", "--run", str(trained_run), "--digit", "7", "--out", str(tmp_path / "x.png")])
    assert "--digit needs a conditional run" in line


def test_errors_in_a_fresh_process_have_no_traceback(tmp_path):
    result = run_cli("train", "--preset", "mlp-gan", "--set", "loss.adversarial=wgan")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "choose one of" in result.stderr


def test_sigterm_checkpoints_and_exits_with_its_own_status(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "mnistgan", "train", "--preset", "mlp-gan", "--epochs", "1000",
                                "--out", str(tmp_path / "run"), *TINY_ARGS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "epoch    1/1000" in process.stdout.readline() + process.stdout.readline()  # the start line, then epoch 1
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "checkpoint saved" in stderr and "Traceback" not in stderr
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_a_live_run_is_not_trained_in_twice(capsys, tmp_path):
    # A second `--resume` of a run that is still training would interleave both processes'
    # checkpoints and losses.csv rows; it is refused for as long as the first one lives.
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "mnistgan", "train", "--preset", "mlp-gan", "--epochs", "100000",
                                "--out", str(run), *TINY_ARGS, "--set=train.checkpoint_every=1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [process.stdout.readline() for _ in range(3)]  # the start line, epochs 1 and 2
        assert "epoch    2/100000" in lines[2], lines  # so epoch 1's checkpoint is written
        line = one_error_line(capsys, ["train", "--resume", str(run), "--no-progress"])
        assert_names(line, str(run), "training right now", "wait for it to end", "stop it")
        assert_names(one_error_line(capsys, ["train", "--out", str(run)] + TINY_ARGS), str(run), "training right now",
                     "choose another --out")
    finally:
        process.kill()  # no handler runs: the kernel drops the run's lock
        process.communicate(timeout=120)
    assert_names(one_error_line(capsys, ["train", "--out", str(run)] + TINY_ARGS), "already holds a run", f"--resume {run}")


def test_training_into_a_closed_pipe_checkpoints_and_stops(tmp_path):
    # `mnistgan train ... | head -1`: the epoch lines fill the pipe's buffer after the reader has gone.
    process = subprocess.Popen([sys.executable, "-m", "mnistgan", "train", "--preset", "mlp-gan", "--epochs", "100000",
                                "--out", str(tmp_path / "run"), *TINY_ARGS, "--set=train.sample_every=1000",
                                "--set=train.checkpoint_every=1000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 141, stderr
    assert "checkpoint saved. Resume with" in stderr and "Traceback" not in stderr
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_sigterm_while_the_data_loads_leaves_no_folder(capsys, tmp_path, monkeypatch):
    import mnistgan.training

    def terminated_while_loading(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to the handler main() installed
        raise AssertionError("SIGTERM did not interrupt the start")

    monkeypatch.setattr(mnistgan.training, "load_dataset", terminated_while_loading)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["train", "--preset", "mlp-gan", "--out", str(tmp_path / "a" / "run")] + TINY_ARGS) == 128 + signal.SIGTERM
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "terminated" in error and "Traceback" not in error
    assert not (tmp_path / "a").exists()  # the claimed folders went back
    assert signal.getsignal(signal.SIGTERM) is before


def test_output_into_a_closed_pipe_stops_quietly():
    # `mnistgan presets | head -1`: the reader leaves before the listing is written.
    process = subprocess.Popen([sys.executable, "-m", "mnistgan", "presets"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141
    assert stderr == ""


def test_evaluate_a_run_writes_metrics_json(capsys, trained_run):
    import json

    assert main(["evaluate", "--run", str(trained_run), "--n", "300", "--device", "cpu", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((trained_run / "metrics.json").read_text())
    assert printed == saved
    for key in ("fd", "kid", "classifier_score", "precision", "recall", "density", "coverage", "digits_covered",
                "class_kl", "class_histogram", "mean_confidence", "n"):
        assert key in saved, key
    assert saved["n"] == 300 and len(saved["class_histogram"]) == 10


def test_a_full_disk_while_evaluating_is_one_line(capsys, trained_run, monkeypatch):
    import errno

    import mnistgan.rundir

    def no_space(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(mnistgan.rundir, "write_text_atomically", no_space)  # metrics.json's writer
    line = one_error_line(capsys, ["evaluate", "--run", str(trained_run), "--n", "200", "--device", "cpu"])
    assert_names(line, "No space left on device", str(trained_run / "metrics.json"))


def test_evaluate_prints_a_table_with_the_real_floor(capsys, trained_run):
    assert main(["evaluate", "--run", str(trained_run), "--n", "300", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "Fréchet distance" in out and "real floor" in out and "digits covered" in out


def test_evaluate_repeats_a_runs_final_evaluation_and_keeps_its_floor(capsys, tmp_path):
    import json

    run = tmp_path / "run"
    assert main(["train", "--preset", "mlp-gan", "--out", str(run), "--epochs", "1", *TINY_ARGS, "--final-eval-samples", "200"]) == 0
    final = json.loads((run / "metrics.json").read_text())
    assert main(["evaluate", "--run", str(run), "--n", "200", "--device", "cpu"]) == 0  # the run's own seed by default
    again = json.loads((run / "metrics.json").read_text())
    assert again["seed"] == final["seed"] and again["fd"] == pytest.approx(final["fd"], rel=1e-6)
    assert again["real_floor"]["fd"] == pytest.approx(final["real_floor"]["fd"], rel=1e-6)
    assert "real floor" in capsys.readouterr().out


def test_evaluate_a_pretrained_generator_prints_its_floor(capsys):
    assert main(["evaluate", "--pretrained", "recommended", "--n", "200", "--device", "cpu", "--dataset", "mnist"]) == 0
    assert "real floor" in capsys.readouterr().out


def test_a_path_that_is_not_utf8_is_printed_escaped_not_a_traceback(tmp_path):
    out = os.fsencode(tmp_path) + b"/\xff-digits.png"
    completed = subprocess.run([sys.executable, "-m", "mnistgan", "sample", "--pretrained", "recommended", "--out", out],
                               capture_output=True, text=True, env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})
    assert completed.returncode == 0, completed.stderr
    assert os.path.isfile(out) and "\\udcff-digits.png" in completed.stdout


def test_evaluate_a_generator_file_on_another_dataset_is_refused_in_one_line(capsys, trained_run):
    generator_file = str(trained_run / "generator.safetensors")  # its config comes from the file itself
    line = one_error_line(capsys, ["evaluate", "--checkpoint", generator_file, "--n", "50", "--dataset", "fashion-mnist"])
    assert "this run trained on mnist" in line


def test_evaluate_samples_from_any_tool(capsys, tmp_path):
    import json

    from mnistgan.data import load_mnist

    digits = load_mnist("test").images[:200].numpy()  # uint8, (200, 1, 28, 28)
    np.save(tmp_path / "real.npy", digits)
    assert main(["evaluate", "--samples", str(tmp_path / "real.npy"), "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 200 and result["digits_covered"] == 10
    np.save(tmp_path / "bad.npy", np.full((20, 28, 28), np.nan, dtype=np.float32))
    assert "NaN" in one_error_line(capsys, ["evaluate", "--samples", str(tmp_path / "bad.npy"), "--device", "cpu"])


def test_evaluate_real_scores_real_digits_and_names_the_count_it_cannot_reach(capsys):
    import json

    assert main(["evaluate", "--real", "--n", "100", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 100 and result["digits_covered"] == 10
    assert "between 10 and 60000" in one_error_line(capsys, ["evaluate", "--real", "--n", "60001", "--device", "cpu"])


def test_evaluate_needs_a_source(capsys):
    assert "give --run" in one_error_line(capsys, ["evaluate"])

