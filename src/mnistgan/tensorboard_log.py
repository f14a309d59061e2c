"""A run's curves for TensorBoard (``train.tensorboard``, ``--tensorboard``): event files in RUN/tensorboard/.

    tensorboard --logdir runs/

They show what the run folder's own logs hold, against the training step: losses.csv's rows
(``train/d_loss``, ``train/g_loss``, ``train/d_real`` = mean D(x), ``train/d_fake`` = mean D(G(z))),
each epoch's ``train/images_per_second``, learning rates (``train/generator_lr``,
``train/discriminator_lr``) and EMA decay (``train/ema_decay``), each evaluation's numbers
(``eval/fd``, ...; the finished generator's as ``final/fd``, ...) and the fixed-noise grid of each
sampling epoch (``samples``).

TensorBoard is an optional extra: ``pip install "mnistgan[tensorboard]"``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UserError


def require_tensorboard() -> None:
    """One clear error, before training starts, where the optional package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (raises ImportError without tensorboard)
    except ImportError:
        raise UserError('train.tensorboard needs the tensorboard package, which is not installed: '
                        'pip install "mnistgan[tensorboard]"') from None


class TensorBoardLog:
    """The event files of one training process; ``first_step``: the first training step it logs.

    A resumed run continues the same curves. It restarts from its checkpoint, so events a crash left
    written past that point would appear twice; the writer is opened with ``purge_step`` at the first
    step after the last completed epoch (everything from there on is logged again, the way resuming
    trims losses.csv back to that epoch), and TensorBoard hides every older event at or after it.
    """

    def __init__(self, folder: Path, first_step: int):
        from torch.utils.tensorboard import SummaryWriter

        _wait_for_a_later_second(folder)
        self.writer = SummaryWriter(str(folder), purge_step=first_step)

    def scalars(self, section: str, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(f"{section}/{name}", value, step)

    def image(self, tag: str, picture: Image.Image, step: int) -> None:
        pixels = np.asarray(picture)  # (H, W) grey or (H, W, 3) colour, uint8
        self.writer.add_image(tag, pixels, step, dataformats="HW" if pixels.ndim == 2 else "HWC")

    def flush(self) -> None:
        """Write what is queued: called before each checkpoint, so no event before one can be lost."""
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _wait_for_a_later_second(folder: Path) -> None:
    """TensorBoard reads a folder's event files in name order, and a name starts with the second it was
    opened in (events.out.tfevents.SECONDS.HOST...): a run resumed within the second its last file was
    opened waits for the next, so that its file (and its purge) is read after the older ones."""
    opened = [int(parts[3]) for path in folder.glob("events.out.tfevents.*")
              if len(parts := path.name.split(".")) > 3 and parts[3].isdigit()]
    while opened and time.time() < max(opened) + 1:
        time.sleep(0.05)
