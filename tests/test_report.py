"""The run report: written by training, refreshed by evaluation, self-contained, escaped."""

import base64
import json
import os
import re
from pathlib import Path

import pytest

import mnistgan
from mnistgan.cli import main
from mnistgan.report import render_report, write_report
from mnistgan.rundir import RunPaths

from conftest import TINY_MLP


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    mnistgan.train("vanilla-gan", overrides={**TINY_MLP, "train.epochs": 2, "train.sample_every": 1}, out=out)
    return out


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


def test_text_from_the_run_is_escaped(run_dir, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    config = (run_dir / "config.toml").read_text().replace('description = "', 'description = "<script>alert(1)</script> ', 1)
    (copy / "config.toml").write_text(config)
    page = render_report(RunPaths(copy))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "No pictures yet" in page


def test_the_report_command(run_dir, tmp_path, capsys):
    assert main(["report", "--run", str(run_dir), "--out", str(tmp_path / "r.html")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'r.html'}"
    assert (tmp_path / "r.html").read_text() == (run_dir / "report.html").read_text()
    assert main(["report", "--run", str(tmp_path / "nowhere")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "is not a directory" in error
    assert write_report(run_dir) == run_dir / "report.html"


def copy_of(run_dir, tmp_path):
    import shutil

    return Path(shutil.copytree(run_dir, tmp_path / "copy"))


def test_damaged_logs_give_a_report_and_never_end_a_command(run_dir, tmp_path, capsys):
    copy = copy_of(run_dir, tmp_path)
    with open(copy / "losses.csv", "a") as handle:
        handle.write("41,4,0.5")  # a row cut short by a kill
    (copy / "metrics.json").write_text('{"fd": 1.5, "n": "<script>x</script>", "conditional_accuracy": null')  # cut short
    page = render_report(RunPaths(copy))
    assert "metrics.json cannot be read" in page and "<script>" not in page
    (copy / "metrics.json").write_text(json.dumps({"fd": 1.5, "n": "<script>x</script>", "conditional_accuracy": None}))
    page = render_report(RunPaths(copy))
    assert "&lt;script&gt;x&lt;/script&gt; samples" in page and "<td class=\"number\">None</td>" in page
    assert main(["evaluate", "--run", str(copy), "--n", "200", "--device", "cpu"]) == 0  # the report is a view: no traceback
    assert "Fréchet distance" in (copy / "report.html").read_text()


def test_quality_measured_before_more_training_is_marked_stale(run_dir, tmp_path):
    copy = copy_of(run_dir, tmp_path)
    (copy / "metrics.json").write_text(json.dumps({"fd": 1.5, "n": 300, "weights": str(copy / "generator.safetensors")}))
    assert "Stale" not in render_report(RunPaths(copy))
    later = (copy / "metrics.json").stat().st_mtime + 10
    os.utime(copy / "generator.safetensors", (later, later))  # the generator was written again since
    assert "<strong>Stale:</strong> the run trained on after this evaluation" in render_report(RunPaths(copy))


@pytest.mark.parametrize("out, message", [(".", "is a folder; give the report's file name"),
                                          ("missing/r.html", "does not exist")])
def test_report_out_errors_are_one_line(run_dir, tmp_path, capsys, out, message):
    assert main(["report", "--run", str(run_dir), "--out", str(tmp_path / out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and message in error
    assert not (tmp_path / "missing").exists()
