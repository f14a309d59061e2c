"""The run report: written by training, refreshed by evaluation, self-contained, escaped."""

import base64
import json
import re

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
