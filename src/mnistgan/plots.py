"""Pictures of a run: digit grids, the GIF of grids over training, loss and metric curves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .files import write_atomically
from .imagefiles import save_animation


def image_grid(images: torch.Tensor, columns: int | None = None, padding: int = 2, scale: int = 1) -> Image.Image:
    """(N, C, 28, 28) in [-1, 1] -> one PIL image (grey for C = 1, RGB for C = 3), ``columns`` per row (default square)."""
    images = images.detach().float().cpu().clamp(-1, 1)
    count, channels = images.shape[0], images.shape[1]
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    height, width = images.shape[-2:]
    canvas = np.zeros((rows * (height + padding) + padding, columns * (width + padding) + padding, channels), dtype=np.uint8)
    pixels = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + column * (width + padding)
        canvas[top : top + height, left : left + width] = pixels[index]
    picture = Image.fromarray(canvas[:, :, 0], mode="L") if channels == 1 else Image.fromarray(canvas, mode="RGB")
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    return picture


def save_image(picture: Image.Image, path: Path) -> None:
    write_atomically(path, lambda tmp: picture.save(tmp, format=Path(path).suffix.lstrip(".").upper() or "PNG"))


def save_gif(frames: list[Path], path: Path, milliseconds_per_frame: int = 200) -> None:
    """The sample grids over training as one looping GIF (the last frame held longer)."""
    if not frames:
        return
    images = [Image.open(frame).convert("L") for frame in frames]
    save_animation(images, path, [milliseconds_per_frame] * (len(images) - 1) + [2000])


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_losses(losses: dict[str, np.ndarray], path: Path, title: str = "") -> None:
    """G and D losses per logged step (thin) and averaged per epoch (thick), plus D's outputs."""
    plt = _figure()
    figure, (loss_axis, score_axis) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True, height_ratios=[2, 1])
    steps, epochs = losses["step"], losses["epoch"]
    for name, colour in (("d_loss", "tab:blue"), ("g_loss", "tab:orange")):
        loss_axis.plot(steps, losses[name], color=colour, alpha=0.25, linewidth=0.6)
        epoch_steps, epoch_means = _per_epoch(steps, epochs, losses[name])
        loss_axis.plot(epoch_steps, epoch_means, color=colour, linewidth=2, label=f"{name} (epoch mean)")
    loss_axis.set_ylabel("loss")
    loss_axis.legend(loc="upper right")
    loss_axis.grid(alpha=0.3)
    for name, label, colour in (("d_real", "D(x)", "tab:green"), ("d_fake", "D(G(z))", "tab:red")):
        epoch_steps, epoch_means = _per_epoch(steps, epochs, losses[name])
        score_axis.plot(epoch_steps, epoch_means, color=colour, label=f"mean {label} (epoch mean)")
    score_axis.set_xlabel("training step")
    score_axis.legend(loc="upper right")
    score_axis.grid(alpha=0.3)
    if title:
        loss_axis.set_title(title)
    _save_figure(plt, figure, path)


def _per_epoch(steps: np.ndarray, epochs: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique = np.unique(epochs)
    last_steps = np.array([steps[epochs == e].max() for e in unique])
    means = np.array([values[epochs == e].mean() for e in unique])
    return last_steps, means


def plot_metrics(metrics: dict[str, np.ndarray], path: Path, title: str = "") -> None:
    """Quality over training: FD (log scale) and precision/recall/density/coverage (and conditional
    accuracy, when there) per evaluated epoch; for Stacked MNIST the reverse KL and the modes covered."""
    plt = _figure()
    figure, (fd_axis, pr_axis) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    epochs = metrics["epoch"]
    lower = "fd" if "fd" in metrics else "reverse_kl"
    fd_axis.plot(epochs, metrics[lower], marker="o", color="tab:purple", label="against the test images")
    if "fd_train" in metrics:  # what best.pt is chosen by
        fd_axis.plot(epochs, metrics["fd_train"], linestyle="--", color="tab:gray", label="against training images (chooses best.pt)")
        fd_axis.legend(loc="upper right")
    fd_axis.set_yscale("log")
    fd_axis.set_ylabel("Fréchet distance (lower is better)" if lower == "fd" else "reverse KL, nats (lower is better)")
    fd_axis.grid(alpha=0.3, which="both")
    for name in ("precision", "recall", "density", "coverage", "conditional_accuracy", "modes_covered"):
        if name in metrics:
            pr_axis.plot(epochs, metrics[name], marker=".", label=name)
    pr_axis.set_xlabel("epoch")
    stacked = lower == "reverse_kl"  # Stacked MNIST: the modes alone, counted, not a share
    pr_axis.set_ylabel("modes covered, of 1000 (higher is better)" if stacked else "share (higher is better)")
    pr_axis.legend(loc="lower right")
    pr_axis.grid(alpha=0.3)
    if title:
        fd_axis.set_title(title)
    _save_figure(plt, figure, path)


def _save_figure(plt, figure, path: Path) -> None:
    figure.tight_layout()
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)
