"""torchrun with 2 CPU processes (gloo): identical weights on both ranks, one complete run directory."""

import os
import subprocess
import sys

import pytest

from conftest import TINY_MLP


@pytest.mark.slow
def test_two_processes_train_one_run(tmp_path):
    out = tmp_path / "ddp"
    sets = [f"--set={key}={value}" for key, value in TINY_MLP.items() if key.startswith("model.")]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29617",
               "-m", "mnistgan", "train", "--preset", "mlp-gan", "--subset", "256", "--batch-size", "32", "--epochs", "2",
               "--set=train.sample_every=1", "--set=train.log_every=2", "--device", "cpu", "--no-progress", "--out", str(out), *sets]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "all 2 processes hold identical weights" in result.stdout
    assert result.stdout.count("epoch    2/2") == 1  # rank 0 alone reports
    assert "8 steps of 32 per epoch" in result.stdout  # 128 images per rank, 16 per rank and step
    for name in ("config.toml", "losses.csv", "loss_curves.png", "progress.gif", "generator.safetensors",
                 "checkpoints/last.pt", "samples/image_at_epoch_0001.png", "samples/image_at_epoch_0002.png"):
        assert (out / name).is_file(), name
    with open(out / "losses.csv") as handle:
        assert len(handle.readlines()) == 1 + 2 * 4  # header + 2 epochs x (8 steps / log_every 2)
