"""Shared fixtures: small, seeded, CPU-only runs on the repository's MNIST (or $MNISTGAN_DATA_DIR)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

# Small enough to train in a second or two on a 2-core CPU, large enough to exercise every path.
# fp32: "auto" may measure bf16 faster on one run and slower on the next (tests/test_devices_probe.py).
TINY = {
    "train.subset": 256,
    "train.batch_size": 32,
    "train.epochs": 1,
    "performance.device": "cpu",
    "performance.precision": "fp32",
    "train.log_every": 2,
    "train.final_eval_samples": 0,  # scoring 10,000 samples takes longer than these runs; its own tests turn it on
}
TINY_DCGAN = {  # the convolutional presets at a fraction of their width
    **TINY,
    "model.generator_widths": [16, 8, 4],
    "model.discriminator_widths": [8, 16],
}
TINY_MLP = {**TINY, "model.generator_widths": [32, 64], "model.discriminator_widths": [64, 32]}


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m mnistgan ARGS`` in a fresh process, as a user would run it."""
    environment = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "mnistgan", *args], capture_output=True, text=True,
                          env=environment, cwd=cwd, timeout=600)


@pytest.fixture
def tiny_overrides():
    return dict(TINY)


def interrupt_after_steps(monkeypatch, steps: int) -> None:
    """Ctrl-C (a real SIGINT to this process) right after training's ``steps``-th call of the step runner;
    ``monkeypatch.undo()`` or a new ``setattr`` of ``StepRunner.run`` lets the next run train on."""
    from mnistgan import step as step_module

    original_run, calls = step_module.StepRunner.run, []

    def run_then_interrupt(self, remaining):
        ran = original_run(self, remaining)
        calls.append(ran)
        if len(calls) == steps:
            os.kill(os.getpid(), signal.SIGINT)
        return ran

    monkeypatch.setattr(step_module.StepRunner, "run", run_then_interrupt)
