"""Read samples made by any tool, for ``mnistgan evaluate --samples FILE``.

Accepted:
  * a ``.npy`` array of shape (N, 28, 28), (N, 1, 28, 28) or (N, 784), holding either
      - unsigned or signed integers: grey levels 0..255 (uint8 is the usual type), or
      - floats: in [-1, 1] if any value is below 0, else in [0, 1];
    so an image set in [-1, 1] that happens to have no negative value at all would be read as
    [0, 1]; MNIST-like digits always have a dark background well below 0, so this does not arise;
  * a folder of ``.png`` files, each a 28 x 28 greyscale digit (colour and palette images are
    converted to grey), read in file-name order.
Returned: float32 (N, 1, 28, 28) in [-1, 1], the range of ``mnistgan.data.to_unit_range``.
Anything else (another size, NaN or infinity, values out of range, an empty set, an unreadable
file) is a ``UserError`` that names the problem.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..data import IMAGE_SIZE
from ..errors import UserError

RANGE_TOLERANCE = 1e-3  # floats may overshoot their range by this much (rounding); they are clipped
ACCEPTED_SHAPES = "(N, 28, 28), (N, 1, 28, 28) or (N, 784)"


def load_samples(path: str | os.PathLike) -> torch.Tensor:
    """Load a ``.npy`` file or a folder of PNGs as float32 (N, 1, 28, 28) images in [-1, 1]."""
    path = Path(path)
    if path.is_dir():
        return load_png_folder(path)
    if not path.exists():
        raise UserError(f"samples {path} not found; pass a .npy file or a folder of PNG images")
    if path.suffix.lower() != ".npy":
        raise UserError(f"samples {path}: unsupported file type {path.suffix or '(none)'!r}; pass a .npy file or a folder of PNG images")
    return load_npy(path)


def load_npy(path: Path) -> torch.Tensor:
    try:
        with open(path, "rb") as handle:
            header = handle.read(6)
    except OSError as error:
        raise UserError(f"samples {path} cannot be read ({error.strerror})") from None
    if header != b"\x93NUMPY":  # numpy itself would call any other file "pickled data"
        raise UserError(f"samples {path} is not a .npy file (no NumPy header); save the samples with numpy.save")
    try:
        array = np.load(path, allow_pickle=False)  # never unpickle: a .npy can carry code
    except ValueError as error:
        if "pickle" in str(error):
            raise UserError(f"samples {path} holds Python objects, not numbers; save a numeric array (uint8 or float)") from None
        raise UserError(f"samples {path} is not a readable .npy file ({error})") from None
    except (OSError, EOFError) as error:
        raise UserError(f"samples {path} is not a readable .npy file ({error})") from None
    if not isinstance(array, np.ndarray):
        raise UserError(f"samples {path} is not a single array; save one array with numpy.save")
    return array_to_images(array, str(path))


def array_to_images(array: np.ndarray, name: str = "samples") -> torch.Tensor:
    """Check one array of digits and scale it to float32 (N, 1, 28, 28) in [-1, 1]."""
    pixels = IMAGE_SIZE * IMAGE_SIZE
    shape = tuple(array.shape)
    if shape in ((IMAGE_SIZE, IMAGE_SIZE), (1, IMAGE_SIZE, IMAGE_SIZE), (pixels,)):
        raise UserError(f"{name} has shape {shape}, a single image; add a leading axis for the count: {ACCEPTED_SHAPES}")
    if not (
        (array.ndim == 3 and shape[1:] == (IMAGE_SIZE, IMAGE_SIZE))
        or (array.ndim == 4 and shape[1:] == (1, IMAGE_SIZE, IMAGE_SIZE))
        or (array.ndim == 2 and shape[1] == pixels)
    ):
        raise UserError(f"{name} has shape {shape}; expected {ACCEPTED_SHAPES} for N 28x28 greyscale digits")
    if shape[0] == 0:
        raise UserError(f"{name} holds no images (shape {shape}); evaluate at least one")
    array = array.reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)

    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise UserError(f"{name} has dtype {array.dtype}; use uint8 (0..255) or float ([-1, 1] or [0, 1])")
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise UserError(f"{name}: integer pixels must be grey levels 0..255, found {low}..{high}")
        return torch.from_numpy(array.astype(np.float32) / 127.5 - 1.0)

    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).any(axis=(1, 2, 3)).sum())
        raise UserError(f"{name}: {bad} image(s) contain NaN or infinity; check the generator's output")
    low, high = float(array.min()), float(array.max())
    if low < 0:  # negative values: the [-1, 1] convention
        if low < -1 - RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
            raise UserError(f"{name}: float pixels span {low:.3g}..{high:.3g}; with negative values they must lie in [-1, 1]")
        unit = array
    else:  # no negative value: the [0, 1] convention
        if high > 1 + RANGE_TOLERANCE:
            raise UserError(
                f"{name}: float pixels span {low:.3g}..{high:.3g}; floats must lie in [-1, 1] or [0, 1] "
                "(for grey levels 0..255, save the array as uint8)"
            )
        unit = array * 2.0 - 1.0
    return torch.from_numpy(np.clip(unit, -1.0, 1.0).astype(np.float32))


def load_png_folder(folder: Path) -> torch.Tensor:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    if not files:
        raise UserError(f"samples folder {folder} has no .png files; put one 28x28 greyscale PNG per digit there")
    images = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i, file in enumerate(files):
        try:
            with Image.open(file) as image:
                if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                    raise UserError(
                        f"{file} is {image.size[0]}x{image.size[1]} pixels; every sample must be 28x28 (resize the images first)"
                    )
                if image.mode not in ("L", "1", "P", "LA", "RGB", "RGBA"):
                    raise UserError(f"{file} has PNG mode {image.mode}; use 8-bit greyscale (mode L)")
                images[i] = np.asarray(image.convert("L"))
        except (OSError, UnidentifiedImageError, SyntaxError) as error:
            raise UserError(f"{file} is not a readable PNG image ({error})") from None
    return array_to_images(images, str(folder))
