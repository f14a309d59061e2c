"""The datasets a run trains on, by name (``data.dataset``, ``--dataset``): one object each that
training, sampling grids, evaluation and the report share.

    mnist            the handwritten digits (data.py finds and checks the files)
    fashion-mnist    Zalando's ten kinds of clothing, MNIST's drop-in replacement
    stacked-mnist    three MNIST digits stacked as the channels of one colour image: 1000 modes,
                     the field's mode-collapse benchmark (VEEGAN, PacGAN, R3GAN)
    folder:PATH      your own images: a folder of PNG/JPEG files (subfolders are classes) or a .npy array

To add a dataset: a loader here that returns a ``Dataset``, and its name in ``NAMES``.
"""

from __future__ import annotations

import functools
import operator
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import FASHION_MNIST, IDX_SOURCES, IMAGE_SIZE, MNIST, Split, cache_dir, load_idx
from .errors import UserError, option
from .folder import read_own_images

NAMES = ("mnist", "fashion-mnist", "stacked-mnist", "folder:PATH")
STACKED_TRAIN_IMAGES = 60_000  # stacks in Stacked MNIST's training set, drawn from MNIST's training digits
STACKED_TEST_IMAGES = 10_000  # and in its test set, drawn from the test digits
STACKED_SEEDS = {"train": 0, "test": 1}  # the triples are a pure function of these seeds


@dataclass(frozen=True)
class Dataset:
    """A split of a dataset: its images, labels and class names, and the evaluator that scores its samples."""

    name: str  # as the config writes it: "fashion-mnist", "folder:/data/glyphs"
    title: str  # as people write it: "Fashion-MNIST"
    images: torch.Tensor  # uint8 (N, C, 28, 28), C = 1 (grey) or 3 (colour)
    labels: torch.Tensor | None  # int64 (N,), or None for unlabelled images
    class_names: tuple[str, ...] | None
    evaluator: str | None  # the evaluator that scores samples ("mnist", "fashion-mnist"), None if none is shipped

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 0

    def split(self) -> Split:
        labels = self.labels if self.labels is not None else torch.zeros(len(self.images), dtype=torch.long)
        return Split(self.images, labels)


def check_name(name: str) -> str:
    """``name`` if it names a dataset, else one clear error listing them."""
    if name in ("mnist", "fashion-mnist", "stacked-mnist") or (name.startswith("folder:") and name[len("folder:"):].strip()):
        return name
    raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(NAMES)} (see `mnistgan datasets`)")


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None, channels: int = 0) -> Dataset:
    """The ``split`` ("train" or "test") of the dataset ``name``; ``channels`` (1 or 3) converts own images."""
    check_name(name)
    if name.startswith("folder:"):
        if split != "train":
            raise UserError(f"{name} is one set of images, with no test split of its own")
        return _own_images(name, channels)
    return _named(name, split, None if data_dir is None else str(data_dir))


@functools.lru_cache(maxsize=4)
def _named(name: str, split: str, data_dir: str | None) -> Dataset:
    if name == "stacked-mnist":
        digits = load_idx(MNIST, split, data_dir)
        count = STACKED_TRAIN_IMAGES if split == "train" else STACKED_TEST_IMAGES
        images, labels = stack_digits(digits.images, digits.labels, count, STACKED_SEEDS[split])
        return Dataset(name, "Stacked MNIST", images, labels, tuple(f"{number:03d}" for number in range(1000)), None)
    source = IDX_SOURCES[name]
    loaded = load_idx(source, split, data_dir)
    return Dataset(name, source.name, loaded.images, loaded.labels, source.class_names, name)


@functools.lru_cache(maxsize=2)  # training and the API that starts it read a folder once
def _own_images(name: str, channels: int) -> Dataset:
    path = Path(name[len("folder:"):]).expanduser()
    found = read_own_images(path, channels or None)
    evaluator = name if user_evaluator_path(name).is_file() and found.labels is not None else None
    return Dataset(name, f"your images ({path})", found.images, found.labels, found.class_names, evaluator)


def user_evaluator_path(name: str) -> Path:
    """Where ``mnistgan train-evaluator --dataset NAME`` keeps an evaluator for a dataset that ships none."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return cache_dir().parent / "evaluators" / f"{safe}.safetensors"


def describe() -> list[tuple[str, str]]:
    """(name, what it is) for ``mnistgan datasets``."""
    return [
        ("mnist", f"{MNIST.name}: 60,000 + 10,000 grey handwritten digits, 10 classes; shipped evaluator"),
        ("fashion-mnist", f"{FASHION_MNIST.name}: 60,000 + 10,000 grey images of clothing, 10 classes; shipped evaluator"),
        ("stacked-mnist", f"Stacked MNIST: {STACKED_TRAIN_IMAGES:,} colour images, three MNIST digits as channels, "
                          "1000 modes; scored by modes covered and reverse KL"),
        ("folder:PATH", "your own PNG/JPEG images (subfolders are classes) or a .npy array, made 28x28; "
                        f"an evaluator with `mnistgan train-evaluator --dataset folder:PATH`, {option('channels')} 1 or 3 to convert"),
    ]


# ----------------------------------------------------------------------------------------------
# Stacked MNIST: three digits as the channels of one image

STACKED_CHANNELS = 3  # digits stacked per image, one per channel
DIGITS = 10


def place_values() -> torch.Tensor:
    """Channel k's digit counts 10 ** (2 - k) in the triple's number: (100, 10, 1)."""
    return torch.tensor([100, 10, 1])


def stack_digits(images: torch.Tensor, labels: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n Stacked MNIST images from a single-channel set: uint8 (n, 3, 28, 28), channel k an image drawn
    uniformly (with replacement) from `images` by a torch.Generator seeded with `seed`; label 100*a + 10*b + c
    (int64 (n,)) from the three digits' labels. Deterministic for a given seed.

    ``images``: uint8 (M, 1, 28, 28), as ``mnistgan.data.load_mnist`` returns them; ``labels``:
    integer digits 0..9, shape (M,). The three channels are drawn independently.
    """
    _check_digit_set(images, labels)
    n = whole_number(n, "n", minimum=1)
    seed = whole_number(seed, "seed")
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randint(len(images), (n, STACKED_CHANNELS), generator=generator)
    stacks = images[:, 0][indices]  # (n, 3, 28, 28): channel k is images[indices[:, k]]
    triples = (labels.long()[indices] * place_values().to(labels.device)).sum(dim=1)
    return stacks, triples


def _check_digit_set(images: torch.Tensor, labels: torch.Tensor) -> None:
    expected = (1, IMAGE_SIZE, IMAGE_SIZE)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != expected:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise UserError(f"images to stack must be single-channel MNIST digits of shape (M, 1, 28, 28), got {shape}")
    if images.dtype != torch.uint8:
        raise UserError(f"images to stack must be uint8 grey levels 0..255 (as load_mnist returns them), got {images.dtype}")
    if len(images) == 0:
        raise UserError("no images to stack; the digit set is empty")
    if (not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype.is_complex
            or labels.dtype == torch.bool or tuple(labels.shape) != (len(images),)):
        kind = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise UserError(f"labels must be integers of shape ({len(images)},), one per image, got {kind}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= DIGITS:
        raise UserError(f"labels span {low}..{high}; they must be digits 0..{DIGITS - 1}")


def whole_number(value, name: str, minimum: int | None = None) -> int:
    """``value`` as an int (Python or NumPy/torch integer scalars; not bool, not float)."""
    try:
        number = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        number = None
    if number is None or (minimum is not None and number < minimum):
        floor = f", at least {minimum}" if minimum is not None else ""
        raise UserError(f"{name} must be a whole number{floor}, got {value!r}")
    return number
