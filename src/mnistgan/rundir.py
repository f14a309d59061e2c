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


def claim_run_dir(out: str | Path | None, base: Path, name: str) -> tuple[Path, bool]:
    """The folder a new run trains into, made by this call when it did not exist: (path, made here).

    ``out`` None: the next ``base/NNN-name``. The folder is made at once and exclusively, so that two
    runs started together cannot share one; an existing folder is taken only if it holds no files.
    """
    if out is None:
        while True:  # another run may take a number between the look and the making
            path = new_run_dir(base, name)
            try:
                path.mkdir(parents=True)
                return path, True
            except FileExistsError:
                continue
            except OSError as error:
                raise UserError(f"cannot make the run folder {path} ({error.strerror}); choose one with --out") from None
    if not str(out).strip():
        raise UserError("--out is empty; give the folder for the run (or leave it out for a new one under runs/)")
    path = Path(out)
    if (path / "config.toml").exists():
        if not (path / "checkpoints" / "last.pt").is_file():
            raise UserError(f"{path} holds a run with no checkpoint yet (still in its first epochs, or stopped before its first "
                            "checkpoint); if it is not running, delete the folder to train there again, or choose another --out")
        raise UserError(f"{path} already holds a run; continue it with --resume {path} or choose another --out")
    if path.is_symlink() and not path.exists():
        raise UserError(f"--out {path} is a symbolic link to nothing; give a folder")
    if path.is_dir():
        try:
            visible = [entry.name for entry in path.iterdir() if not entry.name.startswith(".")]
        except OSError as error:
            raise UserError(f"cannot read the output directory {path} ({error.strerror}); choose another with --out") from None
        if visible:  # a run's files would mix with someone else's
            raise UserError(f"{path} already has files ({', '.join(sorted(visible)[:3])}) and holds no run; "
                            "give an empty or new folder as --out")
        return path, False
    try:
        path.mkdir(parents=True)
        return path, True
    except FileExistsError:
        raise UserError(f"{path} appeared while this run started (another run?) or is a file; choose another --out") from None
    except OSError as error:
        raise UserError(f"cannot write to the output directory {path} ({error.strerror}); choose another with --out") from None


def remove_if_empty(path: Path) -> None:
    """Remove a run folder that a run which never started made (it holds nothing)."""
    try:
        path.rmdir()
    except OSError:  # not empty (the run had started), or already gone
        pass


def check_output_dir(path: Path) -> None:
    """Prove that the run directory can be made (or written, if it exists), or fail with one clear line."""
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
