"""The run report: written by training, refreshed by evaluation, self-contained, escaped."""

import base64
import html
import json
import os
import re
import shutil
from pathlib import Path

import pytest

import mnistgan
from mnistgan.checkpoint import load_checkpoint, save_checkpoint
from mnistgan.cli import main
from mnistgan.config import tomllib
from mnistgan.errors import UserError
from mnistgan.report import render_report, write_report
from mnistgan.rundir import RunPaths

from conftest import TINY_MLP


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One trained run for the module; tests never touch it, they get their own copy (``run_dir``)."""
    out = tmp_path_factory.mktemp("report") / "run"
    mnistgan.train("vanilla-gan", overrides={**TINY_MLP, "train.epochs": 2, "train.sample_every": 1}, out=out)
    return out


@pytest.fixture
def run_dir(trained_run, tmp_path):
    """This test's own copy of the trained run: what one test writes (metrics.json, a refreshed
    report) no other test sees, whatever the order they run in."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def assert_one_line_naming(error: str, *words: str) -> None:
    assert error.count("\n") == 0 and "Traceback" not in error, error
    for word in words:
        assert word in error, (word, error)


def embedded_images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/\w+;base64,([^"]+)"', page)]


def test_training_writes_a_self_contained_report(run_dir):
    page = (run_dir / "report.html").read_text()
    assert "<h1>vanilla-gan: run</h1>" in page and "<th>epochs</th><td>2 of 2</td>" in page
    images = embedded_images(page)
    # Every picture the run made is inside the page, byte for byte: the last grid, the GIF, the curves.
    for name in ("samples/image_at_epoch_0002.png", "progress.gif", "loss_curves.png"):
        assert (run_dir / name).read_bytes() in images, name
    assert "fixed noise after epoch 2" in page
    assert "Not evaluated yet" in page and "src=\"http" not in page and "<script" not in page


def test_the_config_is_the_file_with_each_list_on_one_line(run_dir):
    page = (run_dir / "report.html").read_text()
    assert "generator_widths = [32, 64]" in page and "discriminator_widths = [64, 32]" in page
    assert "<pre>[model]\narchitecture = &quot;mlp&quot;" in page  # each table a block of its own
    blocks = [html.unescape(block) for block in re.findall(r"<pre>(.*?)</pre>", page, re.DOTALL)]
    assert tomllib.loads("\n".join(blocks)) == tomllib.loads((run_dir / "config.toml").read_text())  # nothing lost


def test_digits_keep_their_pixels_and_curves_their_lines(run_dir):
    """Sample grids keep hard pixel edges when a high-density screen enlarges them; curves are
    smoothed (shrunk pixel by pixel to fit a narrow window, a thin line breaks up)."""
    page = (run_dir / "report.html").read_text()
    assert re.findall(r'<figure( class="pixels")?><img src="data:image/\w+;base64,[^"]+" alt="([^"]+)"', page) == [
        (' class="pixels"', "fixed noise after epoch 2"), (' class="pixels"', "the grids over training"),
        ("", "losses and D&#x27;s outputs")]
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page  # phones lay it out at their width


def test_the_epoch_means_are_those_of_losses_csv(run_dir):
    losses = mnistgan.load(run_dir).losses
    last = losses["epoch"] == 2
    expected = f"d_loss {losses['d_loss'][last].mean():.4f}, g_loss {losses['g_loss'][last].mean():.4f}"
    assert expected in (run_dir / "report.html").read_text()


def test_evaluating_a_run_adds_its_quality(run_dir, capsys):
    assert main(["evaluate", "--run", str(run_dir), "--n", "300", "--device", "cpu"]) == 0
    assert "refreshed" in capsys.readouterr().out
    result = json.loads((run_dir / "metrics.json").read_text())
    page = (run_dir / "report.html").read_text()
    assert f"<th>Fréchet distance</th><td class=\"number\">{result['fd']:.4g}</td>" in page
    assert "Not evaluated yet" not in page and "300 samples against the test set" in page
    assert f"Share of each digit: 0: {result['class_histogram'][0]:.3f}, 1: " in page


def test_a_final_evaluation_shows_the_real_floor_beside_each_number(run_dir, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "config.toml").write_text((run_dir / "config.toml").read_text())
    (copy / "metrics.json").write_text(json.dumps({"fd": 12.5, "recall": 0.25, "n": 10000, "epoch": 2,
                                                   "real_floor": {"fd": 0.3, "recall": 0.85}}))
    page = render_report(RunPaths(copy))
    assert "<td class=\"number\">this run</td><td class=\"number\">real data</td>" in page
    assert "<th>Fréchet distance</th><td class=\"number\">12.5</td><td class=\"number\">0.3</td>" in page
    assert "(the generator after epoch 2)" in page


def test_text_from_the_run_is_escaped(run_dir, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    config = (run_dir / "config.toml").read_text().replace('description = "', 'description = "<script>alert(1)</script> ', 1)
    (copy / "config.toml").write_text(config)
    page = render_report(RunPaths(copy))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "No pictures yet" in page


@pytest.mark.parametrize("case, row", [("bf16", "bf16 (set in the config)"), ("auto", "auto (chosen when training starts"),
                                       ("auto chose bf16", "bf16 (chosen by auto"), ("auto chose fp32", "fp32 (chosen by auto")])
def test_the_precision_trained_in_is_shown_and_a_bf16_drift_flagged(run_dir, tmp_path, case, row):
    flagged = case in ("bf16", "auto chose bf16")
    setting = case
    copy = tmp_path / "copy"
    copy.mkdir()
    if case.startswith("auto chose"):  # what auto chose is in the run's checkpoint
        state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        state["precision"] = case.split()[-1]
        (copy / "checkpoints").mkdir()
        save_checkpoint(state, copy / "checkpoints" / "last.pt")
        setting = "auto"
    config = (run_dir / "config.toml").read_text()
    config = re.sub(r'(?m)^adversarial = ".*"$', 'adversarial = "relativistic"', config)
    config = re.sub(r'(?m)^precision = ".*"$', f'precision = "{setting}"', config)
    (copy / "config.toml").write_text(config)
    # Epoch 1 near 0; epoch 2 near -27.7, where bf16 numbers are 0.125 apart and the gap is 0.05.
    (copy / "losses.csv").write_text("step,epoch,d_loss,g_loss,d_real,d_fake\n"
                                     "10,1,0.6,0.8,0.3,-0.2\n20,2,0.69,0.70,-27.7,-27.75\n")
    page = html.unescape(render_report(RunPaths(copy)))
    assert f"<th>precision</th><td>{row}" in page
    if flagged:
        assert "broke down at epoch 2: D's scores sit near -27.7" in page
    else:  # fp32, or 'auto' with no checkpoint to say what it chose: bf16's check does not apply
        assert "broke down" not in page


def test_the_report_command(run_dir, tmp_path, capsys):
    assert main(["report", "--run", str(run_dir), "--out", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out.strip()
    assert "wrote" in out and str(tmp_path / "r.html") in out
    assert (tmp_path / "r.html").read_text() == render_report(RunPaths(run_dir))  # the run's page, written elsewhere
    assert main(["report", "--run", str(tmp_path / "nowhere")]) == 2
    assert_one_line_naming(capsys.readouterr().err.strip(), str(tmp_path / "nowhere"), "not a directory")
    assert write_report(run_dir) == run_dir / "report.html"


def test_an_unreadable_metrics_json_is_said_once(run_dir):
    (run_dir / "metrics.json").mkdir()  # reading it fails; the page says so and nothing else about quality
    page = render_report(RunPaths(run_dir))
    assert "metrics.json cannot be read" in page
    assert "Measured during training only" not in page and "Not evaluated yet" not in page


def test_damaged_logs_give_a_report_and_never_end_a_command(run_dir, capsys):
    with open(run_dir / "losses.csv", "a") as handle:
        handle.write("41,4,0.5")  # a row cut short by a kill
    (run_dir / "metrics.json").write_text('{"fd": 1.5, "n": "<script>x</script>", "conditional_accuracy": null')  # cut short
    page = render_report(RunPaths(run_dir))
    assert "metrics.json cannot be read" in page and "<script>" not in page
    with pytest.raises(UserError, match="is damaged"):  # the API says so too, in one line
        mnistgan.load(run_dir).metrics
    (run_dir / "metrics.json").write_text(json.dumps({"fd": 1.5, "n": "<script>x</script>", "conditional_accuracy": None}))
    page = render_report(RunPaths(run_dir))
    assert "&lt;script&gt;x&lt;/script&gt; samples" in page and "<td class=\"number\">None</td>" in page
    assert main(["evaluate", "--run", str(run_dir), "--n", "200", "--device", "cpu"]) == 0  # the report is a view: no traceback
    assert "Fréchet distance" in (run_dir / "report.html").read_text()


@pytest.mark.parametrize("written_as", ["relative to the run", "absolute", "relative to another folder (older records)"])
def test_quality_measured_before_more_training_is_marked_stale(run_dir, written_as):
    weights = {"relative to the run": "generator.safetensors", "absolute": run_dir / "generator.safetensors"}.get(
        written_as, "runs/001-mlp-gan/generator.safetensors")
    (run_dir / "metrics.json").write_text(json.dumps({"fd": 1.5, "n": 300, "weights": str(weights)}))
    assert "Stale" not in render_report(RunPaths(run_dir))
    later = (run_dir / "metrics.json").stat().st_mtime + 10
    os.utime(run_dir / "generator.safetensors", (later, later))  # the generator was written again since
    page = render_report(RunPaths(run_dir))
    assert "Stale:" in page and "trained on after this evaluation" in page


def test_staleness_follows_the_file_that_was_scored(run_dir, tmp_path):
    """Scored with another run's generator: training this run on does not make that score stale; a newer
    file of the other run does."""
    other = tmp_path / "other" / "generator.safetensors"
    other.parent.mkdir()
    shutil.copy(run_dir / "generator.safetensors", other)
    assert main(["evaluate", "--run", str(run_dir), "--checkpoint", str(other), "--n", "100", "--device", "cpu"]) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["weights"] == str(other.resolve())
    later = (run_dir / "metrics.json").stat().st_mtime + 10
    os.utime(run_dir / "generator.safetensors", (later, later))
    assert "Stale" not in render_report(RunPaths(run_dir))
    os.utime(other, (later, later))
    assert "Stale:" in render_report(RunPaths(run_dir))


@pytest.mark.parametrize("out, words", [(".", ("is a folder", "give the report's file name")),
                                        ("missing/r.html", ("missing", "does not exist"))])
def test_report_out_errors_are_one_line(run_dir, tmp_path, capsys, out, words):
    assert main(["report", "--run", str(run_dir), "--out", str(tmp_path / out)]) == 2
    assert_one_line_naming(capsys.readouterr().err.strip(), "--out", *words)
    assert not (tmp_path / "missing").exists()


def test_each_test_gets_its_own_unevaluated_run(run_dir, trained_run):
    """The copy is fresh: no metrics.json from another test, and a different folder from the shared run."""
    assert run_dir != trained_run and not (run_dir / "metrics.json").exists() and not (trained_run / "metrics.json").exists()


@pytest.mark.parametrize("alike", [None, "within class 3, the samples are nearly alike (0.21 of the training images' spread)"])
def test_a_failed_collapse_check_is_a_warning_row(run_dir, alike):
    # The collapse check's findings live in the last checkpoint (metrics/spread.py, training.TrainingState).
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    state["alike"], state["alike_since"] = alike, (2 if alike else None)
    save_checkpoint(state, run_dir / "checkpoints" / "last.pt")
    page = html.unescape(render_report(RunPaths(run_dir)))
    if alike:
        assert f"<th>warning</th><td>at the latest grid, and since epoch 2, {alike}: G has collapsed" in page
    else:
        assert "collapsed" not in page
