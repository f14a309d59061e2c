"""The run directory: the record of one training run, enough to resume, sample and evaluate it."""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:  # the resolved config, TOML
        return self.root / "config.toml"

    @property
    def samples(self) -> Path:  # image_at_epoch_NNNN.png: the fixed-noise grids
        return self.root / "samples"

    @property
    def losses(self) -> Path:  # step, epoch, d_loss, g_loss, d_real, d_fake
        return self.root / "losses.csv"

    @property
    def loss_curves(self) -> Path:
        return self.root / "loss_curves.png"

    @property
    def progress_gif(self) -> Path:
        return self.root / "progress.gif"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best_checkpoint(self) -> Path:  # lowest Fréchet distance seen by evaluation during training
        return self.checkpoints / "best.pt"

    @property
    def generator(self) -> Path:  # final generator weights, safetensors
        return self.root / "generator.safetensors"

    @property
    def metrics_csv(self) -> Path:  # evaluation during training, one row per evaluated epoch
        return self.root / "metrics.csv"

    @property
    def metric_curves(self) -> Path:
        return self.root / "metric_curves.png"

    @property
    def metrics_json(self) -> Path:  # written by `mnistgan evaluate`
        return self.root / "metrics.json"

    def sample_image(self, epoch: int) -> Path:
        return self.samples / f"image_at_epoch_{epoch:04d}.png"

    def sample_images(self) -> list[Path]:
        return sorted(self.samples.glob("image_at_epoch_*.png"))


def new_run_dir(base: Path, name: str) -> Path:
    """``base/NNN-name`` with NNN one more than the highest number already there."""
    base = Path(base)
    numbers = [int(m.group(1)) for p in base.glob("*") if (m := re.match(r"(\d+)-", p.name))] if base.is_dir() else []
    return base / f"{max(numbers, default=0) + 1:03d}-{name}"


def check_output_dir(path: Path) -> None:
    """Prove that the run directory can be made (or written, if it exists), or fail with one clear line.

    Nothing is created: a run that stops before it starts (bad data, Ctrl-C) leaves no empty folder.
    """
    existing = Path(path)
    while not existing.exists():  # the nearest folder that exists: the run's folders go there
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write to the output directory {path}: {existing} is a file; choose another with --out")
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()  # what the run will do there: make a folder, write in it
    except OSError as error:
        raise UserError(f"cannot write to the output directory {path} ({error.strerror}); choose another with --out") from None


def require_run_dir(path: Path) -> RunPaths:
    """The paths of an existing run, or a clear error if ``path`` is not one."""
    paths = RunPaths(Path(path))
    if not paths.root.is_dir():
        raise UserError(f"{path} is not a directory; give a run directory made by `mnistgan train` (e.g. runs/001-...)")
    if not paths.config.is_file():
        raise UserError(f"{path} is not a run directory (no config.toml); give a directory made by `mnistgan train`")
    return paths
