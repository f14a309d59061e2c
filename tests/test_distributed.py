"""torchrun with 2 CPU processes (gloo): identical weights on both ranks, one complete run directory."""

import os
import subprocess
import sys

import pytest

from conftest import TINY_MLP


@pytest.mark.slow
@pytest.mark.parametrize("out", ["ddp", None], ids=["out", "numbered-folder"])
def test_two_processes_train_one_run(tmp_path, out):
    sets = [f"--set={key}={value}" for key, value in TINY_MLP.items() if key.startswith("model.")]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29617",
               "-m", "mnistgan", "train", "--preset", "mlp-gan", "--subset", "256", "--batch-size", "32", "--epochs", "2",
               "--set=train.sample_every=1", "--set=train.log_every=2", "--device", "cpu", "--no-progress", *sets]
    if out is not None:
        command += ["--out", str(tmp_path / out)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "all 2 processes hold identical weights" in result.stdout
    assert result.stdout.count("epoch    2/2") == 1  # rank 0 alone reports
    assert "8 steps of 32 per epoch" in result.stdout  # 128 images per rank, 16 per rank and step
    folders = [tmp_path / out] if out is not None else list((tmp_path / "runs").iterdir())
    assert len(folders) == 1  # one run folder, whichever process looked for a free number
    run_dir = folders[0]
    for name in ("config.toml", "losses.csv", "loss_curves.png", "progress.gif", "generator.safetensors",
                 "checkpoints/last.pt", "samples/image_at_epoch_0001.png", "samples/image_at_epoch_0002.png"):
        assert (run_dir / name).is_file(), name
    with open(run_dir / "losses.csv") as handle:
        assert len(handle.readlines()) == 1 + 2 * 4  # header + 2 epochs x (8 steps / log_every 2)
