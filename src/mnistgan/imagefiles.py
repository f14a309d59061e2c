"""Image files and arrays: samples made by any tool (``mnistgan evaluate --samples FILE``), the
header checks that your own images (``folder.py``) share, and animations written from pictures.

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

import math
import os
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from numpy.lib import format as npy_format
from PIL import Image, UnidentifiedImageError

from .data import IMAGE_SIZE
from .errors import UserError
from .files import write_atomically

RANGE_TOLERANCE = 1e-3  # floats may overshoot their range by this much (rounding); they are clipped
ACCEPTED_SHAPES = "(N, 28, 28), (N, 1, 28, 28) or (N, 784)"
CHUNK_IMAGES = 4096  # images checked and converted at a time
# Memory a loaded image costs: 4 bytes a pixel of float32, 1 of the evaluator's finiteness check, 1 to spare.
BYTES_PER_PIXEL = 6
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
    """Check a ``.npy`` file's header (dtype, shape, the bytes it promises, the memory they need), then read it."""
    try:
        with open(path, "rb") as handle:
            if handle.read(6) != b"\x93NUMPY":  # numpy itself would call any other file "pickled data"
                raise UserError(f"samples {path} is not a .npy file (no NumPy header); save the samples with numpy.save")
            handle.seek(0)
            version = npy_format.read_magic(handle)
            if version not in ((1, 0), (2, 0), (3, 0)):
                raise UserError(f"samples {path} is not a readable .npy file (unknown format version "
                                f"{version[0]}.{version[1]}); save the samples with numpy.save")
            # 3.0 differs from 2.0 only in a UTF-8 header, needed for non-Latin field names: refused below anyway
            read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(handle)
            data_offset = handle.tell()
            file_size = os.fstat(handle.fileno()).st_size
    except UserError:
        raise
    except OSError as error:
        raise UserError(f"samples {path} cannot be read ({error.strerror or error})") from None
    except Exception as error:  # a malformed header: ValueError mostly, tokenize.TokenError, ...
        detail = first_line(error) if isinstance(error, ValueError) else "its header is malformed"
        raise UserError(f"samples {path} is not a readable .npy file ({detail})") from None
    name = str(path)
    if dtype.hasobject:  # never unpickle: a .npy can carry code
        raise UserError(f"samples {path} holds Python objects, not numbers; save a numeric array (uint8 or float)")
    _check_shape(tuple(shape), name)
    check_dtype(dtype, name)
    promised = data_offset + math.prod(shape) * dtype.itemsize
    if file_size < promised:
        raise UserError(f"samples {path} is truncated ({file_size:,} bytes, its header promises {promised:,}); "
                        "save the samples again")
    if file_size > promised:
        raise UserError(f"samples {path} has {file_size - promised:,} bytes beyond the array its header describes "
                        "(several arrays saved into one file?); save one array with numpy.save")
    count = shape[0]
    needed = count * IMAGE_SIZE * IMAGE_SIZE * BYTES_PER_PIXEL + (promised - data_offset if fortran_order else 0)
    available = available_memory()
    if available is not None and needed > available:
        raise UserError(f"samples {path} holds {count:,} images, which need about {needed / 2**30:.1f} GiB of memory, "
                        f"more than the {available / 2**30:.1f} GiB available; evaluate fewer samples (10,000 is the convention)")
    try:
        array = np.memmap(path, dtype=dtype, mode="r", offset=data_offset, shape=tuple(shape),
                          order="F" if fortran_order else "C")
    except (OSError, ValueError):  # a file system without mmap: read it, its size is checked above
        with open(path, "rb") as handle:
            handle.seek(data_offset)
            array = np.fromfile(handle, dtype=dtype, count=math.prod(shape))
        array = array.reshape(shape[::-1]).T if fortran_order else array.reshape(shape)
    if fortran_order:  # column-major: one copy in row-major order, counted above, instead of strided chunks
        array = np.ascontiguousarray(array)
    return array_to_images(array, name)


def available_memory() -> int | None:
    """Bytes a new allocation can have: ``MemAvailable`` (else physical memory), less in a cgroup with a
    lower memory limit (a container, a batch job); None where neither is known."""
    known = []
    try:
        with open("/proc/meminfo") as meminfo:
            known += [int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    if not known:
        try:
            known.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            pass
    try:  # cgroup v2: this process's group limit less its usage ("max": no limit)
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            known.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(0, min(known)) if known else None


def first_line(error: Exception, limit: int = 120) -> str:
    lines = str(error).strip().splitlines()
    line = lines[0].strip() if lines else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _check_shape(shape: tuple, name: str) -> None:
    pixels = IMAGE_SIZE * IMAGE_SIZE
    if shape in ((IMAGE_SIZE, IMAGE_SIZE), (1, IMAGE_SIZE, IMAGE_SIZE), (pixels,)):
        raise UserError(f"{name} has shape {shape}, a single image; add a leading axis for the count: {ACCEPTED_SHAPES}")
    if not (
        (len(shape) == 3 and shape[1:] == (IMAGE_SIZE, IMAGE_SIZE))
        or (len(shape) == 4 and shape[1:] == (1, IMAGE_SIZE, IMAGE_SIZE))
        or (len(shape) == 2 and shape[1] == pixels)
    ):
        raise UserError(f"{name} has shape {shape}; expected {ACCEPTED_SHAPES} for N 28x28 greyscale digits")
    if shape[0] <= 0:  # a negative count only in a hand-made .npy header
        raise UserError(f"{name} holds no images (shape {shape}); evaluate at least one")


def check_dtype(dtype: np.dtype, name: str) -> None:
    if dtype.kind not in "iuf":  # signed or unsigned integers, floats; not bool, complex, timedelta, fields, ...
        raise UserError(f"{name} has dtype {dtype}; use uint8 (0..255) or float ([-1, 1] or [0, 1])")


def array_to_images(array: np.ndarray, name: str = "samples") -> torch.Tensor:
    """Check one array of digits and scale it to float32 (N, 1, 28, 28) in [-1, 1].

    The array is read in blocks of ``CHUNK_IMAGES`` (twice: the range, then the conversion), so a
    memory-mapped file costs no more than the float32 result.
    """
    _check_shape(tuple(array.shape), name)
    check_dtype(array.dtype, name)
    count = array.shape[0]

    def chunks():
        for start in range(0, count, CHUNK_IMAGES):
            yield start, array[start : start + CHUNK_IMAGES].reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)

    output = np.empty((count, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    if array.dtype.kind in "iu":
        ranges = [(int(chunk.min()), int(chunk.max())) for _, chunk in chunks()]
        low, high = min(low for low, _ in ranges), max(high for _, high in ranges)
        if low < 0 or high > 255:
            raise UserError(f"{name}: integer pixels must be grey levels 0..255, found {low}..{high}")
        for start, chunk in chunks():
            output[start : start + len(chunk)] = chunk.astype(np.float32) / 127.5 - 1.0
        return torch.from_numpy(output)

    bad, low, high = 0, math.inf, -math.inf
    for _, chunk in chunks():
        chunk = chunk.astype(np.float64)
        finite = np.isfinite(chunk)
        if not finite.all():
            bad += int((~finite).any(axis=(1, 2, 3)).sum())
        elif not bad:
            low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
    if bad:
        raise UserError(f"{name}: {bad} image(s) contain NaN or infinity; check the generator's output")
    if low < 0:  # negative values: the [-1, 1] convention
        if low < -1 - RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
            raise UserError(f"{name}: float pixels span {low:.3g}..{high:.3g}; with negative values they must lie in [-1, 1]")
    elif high > 1 + RANGE_TOLERANCE:  # no negative value: the [0, 1] convention
        raise UserError(
            f"{name}: float pixels span {low:.3g}..{high:.3g}; floats must lie in [-1, 1] or [0, 1] "
            "(for grey levels 0..255, save the array as uint8)"
        )
    for start, chunk in chunks():
        unit = chunk.astype(np.float64) if low < 0 else chunk.astype(np.float64) * 2.0 - 1.0
        output[start : start + len(chunk)] = np.clip(unit, -1.0, 1.0)
    return torch.from_numpy(output)


def declared_png_size(file: Path) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk, read without Pillow; None for anything else."""
    with open(file, "rb") as handle:
        start = handle.read(24)
    if len(start) == 24 and start[:8] == PNG_SIGNATURE and start[12:16] == b"IHDR":
        return int.from_bytes(start[16:20], "big"), int.from_bytes(start[20:24], "big")
    return None


def load_png_folder(folder: Path) -> torch.Tensor:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    if not files:
        raise UserError(f"samples folder {folder} has no .png files; put one 28x28 greyscale PNG per digit there")
    images = np.empty((len(files), 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)  # (N, 1, ...): one file is one image
    for i, file in enumerate(files):
        images[i, 0] = _read_png(file)
    return array_to_images(images, str(folder))


def _read_png(file: Path) -> np.ndarray:
    """One 28 x 28 digit as uint8; its size is checked from the file's header before any pixel is decoded."""
    def wrong_size(width, height):
        return UserError(f"{file} is {width}x{height} pixels; every sample must be {IMAGE_SIZE}x{IMAGE_SIZE} (resize the images first)")

    try:
        declared = declared_png_size(file)
        if declared is not None and declared != (IMAGE_SIZE, IMAGE_SIZE):
            raise wrong_size(*declared)
        with warnings.catch_warnings():  # Pillow warns of (or refuses) huge images in open(): ours is the one message
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as image:  # lazy: reads the header, decodes nothing yet
                if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                    raise wrong_size(*image.size)
                if image.mode not in ("L", "1", "P", "LA", "RGB", "RGBA"):
                    raise UserError(f"{file} has PNG mode {image.mode}; use 8-bit greyscale (mode L)")
                return np.asarray(image.convert("L"))
    except Image.DecompressionBombError:  # not a PNG inside (Pillow reads other formats too), and huge
        raise UserError(f"{file} declares an image far larger than {IMAGE_SIZE}x{IMAGE_SIZE} pixels; "
                        f"every sample must be {IMAGE_SIZE}x{IMAGE_SIZE} (resize the images first)") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError, zlib.error) as error:
        # truncated, damaged, not an image, or a compressed chunk Pillow will not inflate
        raise UserError(f"{file} is not a readable PNG image ({first_line(error)}); replace or remove it") from None


def save_animation(frames: list[Image.Image], path: str | os.PathLike, milliseconds_per_frame: int | list[int] = 100) -> None:
    """``frames`` as one GIF that loops forever, written atomically (a reader never sees half of it);
    ``milliseconds_per_frame``: one duration for all, or one per frame."""
    write_atomically(path, lambda temp: frames[0].save(temp, format="GIF", save_all=True, append_images=frames[1:],
                                                       duration=milliseconds_per_frame, loop=0))
