"""A user's own images as a training set: a folder of PNG/JPEG files, or a ``.npy`` array.

    mnistgan train --dataset folder:PATH [--channels 1|3]
    read_own_images("my_images/")   # FolderImages: uint8 (N, C, 28, 28), labels, class names

A folder
  * holds ``.png``, ``.jpg`` or ``.jpeg`` files (any case); other files, and hidden files and
    folders (names starting with "."), are ignored;
  * is unlabelled when its images lie at its top level. When it has no images at its top level
    but subfolders with images, each subfolder is a class, whose index is the subfolder name's
    place in sorted order (plain string order: "10" sorts before "9"). Only one level of
    subfolders is read. Images at the top level beside class subfolders, or a class subfolder
    without images, are errors;
  * is read in the sorted order of the files' paths relative to it, and is never written to.
Each image
  * is refused if its header declares more than 4096 x 4096 pixels, before any pixel is decoded;
  * is flattened onto black where it is transparent (an alpha channel, or a palette's transparent
    colour): transparency is background, and MNIST's background is black (0); a pixel of 50%
    alpha keeps half its value. So black ink on a transparent background vanishes: such
    drawings need an opaque background;
  * counts as grey when stored as grey (modes 1, L, LA, 16-bit grey, which is scaled to 8 bits)
    or as a palette image whose used colours are all grey; every other image is colour (RGB,
    RGBA, CMYK JPEGs, colour palettes). Without ``channels`` a folder must be all grey (C = 1)
    or all colour (C = 3); ``channels=1`` converts colour to grey (Pillow's mode L, ITU-R 601-2
    luma) and ``channels=3`` repeats grey into R, G and B;
  * is scaled so that its shorter side is 28 pixels and its centre 28 x 28 is kept. Downscaling
    averages the source area each output pixel covers (Pillow's BOX filter: no ringing halos
    around strokes); upscaling is bicubic; an image whose shorter side is 28 is only cropped.
    It is done in one step on the centre square of the source (Pillow's ``resize`` with a box),
    which is resizing the whole image then cropping its centre without the full-size copy.
A ``.npy`` array is read without unpickling (object arrays are refused) and memory-mapped after
its size is checked against the file and the free memory. It holds N images of 28 x 28 pixels as
(N, 28, 28) or (N, 1, 28, 28) grey, (N, 3, 28, 28) or (N, 28, 28, 3) RGB; integers are grey
levels 0..255, floats are read as [-1, 1] when any value is negative, else as [0, 1] (the rule of
``mnistgan.imagefiles``), and rounded to uint8. Arrays are never resized, and are unlabelled.
Every problem is one ``UserError`` that names the file and what to do.
"""

from __future__ import annotations

import math
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.lib import format as npy_format
from PIL import Image

from .data import IMAGE_SIZE
from .errors import UserError, option
from .imagefiles import RANGE_TOLERANCE, available_memory, check_dtype, declared_png_size, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_FORMATS = ("PNG", "JPEG")  # what Pillow may decode; a .png holding a GIF or WebP is refused
MAX_SIDE = 4096
MAX_PIXELS = MAX_SIDE * MAX_SIDE  # an image declaring more is refused before decoding
ARRAY_SHAPES = "(N, 28, 28), (N, 1, 28, 28), (N, 3, 28, 28) or (N, 28, 28, 3)"
CHUNK_IMAGES = 4096  # array images checked and converted at a time
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N")


@dataclass(frozen=True)
class FolderImages:
    """A user's training images: ``images`` uint8 (N, C, 28, 28) with C = 1 (grey) or 3 (RGB);
    ``labels`` int64 (N,) and ``class_names`` (index = place in the tuple) for a folder of class
    subfolders, else both None."""

    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: tuple[str, ...] | None

    def __len__(self) -> int:
        return len(self.images)


def read_own_images(path: str | os.PathLike, channels: int | None = None) -> FolderImages:
    """A folder of PNG/JPEG images or a ``.npy`` array, by what ``path`` is."""
    path = Path(path).expanduser()
    if path.is_dir():
        return read_image_folder(path, channels)
    if path.suffix.lower() == ".npy" and path.exists():
        return read_image_array(path, channels)
    if not path.exists():
        raise UserError(f"{path} not found; give a folder of PNG/JPEG images or a .npy array of 28x28 images")
    raise UserError(f"{path} is neither a folder nor a .npy file; put the images (PNG/JPEG) in a folder "
                    "and give the folder, or save them as one array with numpy.save")


def read_image_folder(path: str | os.PathLike, channels: int | None = None) -> FolderImages:
    """The PNG/JPEG images of a folder (or of its class subfolders), each fitted to 28 x 28."""
    _check_channels(channels)
    folder = Path(path).expanduser()
    if not folder.is_dir():
        if folder.exists():
            raise UserError(f"{folder} is not a folder; give the folder that holds the images")
        raise UserError(f"image folder {folder} not found; give the folder that holds the images")
    files, labels, class_names = _list_images(folder)
    images = None
    first = None  # (file, grey) of the first image: without channels, every image must be of its kind
    with warnings.catch_warnings():  # Pillow warns of huge images in open(): the size check below is the one message
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for index, file in enumerate(files):
            pixels, grey = _read_image(file, channels)
            if first is None:
                first = (file, grey)
                images = _allocate(len(files), 1 if pixels.ndim == 2 else 3, folder)
            elif channels is None and grey != first[1]:
                grey_file, colour_file = (first[0], file) if first[1] else (file, first[0])
                raise UserError(
                    f"{folder} mixes grey and colour images ({grey_file} is grey, {colour_file} is colour); "
                    f"pass {option('channels')} 1 to train on all of them in grey, or {option('channels')} 3 in colour"
                )
            images[index] = pixels if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return FolderImages(
        torch.from_numpy(images.reshape(len(files), -1, IMAGE_SIZE, IMAGE_SIZE)),
        None if labels is None else torch.from_numpy(labels),
        class_names,
    )


def read_image_array(path: str | os.PathLike, channels: int | None = None) -> FolderImages:
    """A ``.npy`` array of 28 x 28 images, grey or RGB, as uint8 (N, C, 28, 28); unlabelled."""
    _check_channels(channels)
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a .npy file; read it as an image folder")
    array = _open_npy(path)
    name = str(path)
    stored_channels, channels_last = _array_layout(tuple(array.shape), name)
    check_dtype(array.dtype, name)
    count = array.shape[0]
    out_channels = channels or stored_channels
    copy_bytes = 0 if array.flags.c_contiguous else array.nbytes
    _check_memory(count * out_channels * IMAGE_SIZE * IMAGE_SIZE + copy_bytes, count, path)
    if copy_bytes:  # Fortran order: one row-major copy, counted above, instead of strided chunks
        array = np.ascontiguousarray(array)
    # a view as (N, C, 28, 28), whatever the stored layout
    array = array.transpose(0, 3, 1, 2) if channels_last else array.reshape(count, stored_channels, IMAGE_SIZE, IMAGE_SIZE)
    to_uint8 = _pixel_scale(array, name)
    images = np.empty((count, out_channels, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for start in range(0, count, CHUNK_IMAGES):
        chunk = to_uint8(array[start : start + CHUNK_IMAGES])
        if out_channels == 1 and stored_channels == 3:
            chunk = _luma(chunk)
        images[start : start + len(chunk)] = chunk  # a grey chunk broadcasts into R, G and B
    return FolderImages(torch.from_numpy(images), None, None)


# --- folders -------------------------------------------------------------------------------------


def _check_channels(channels) -> None:
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise UserError(f"{option('channels')} must be 1 (grey) or 3 (RGB), not {channels!r}")


def _entries(folder: Path) -> tuple[list[str], list[str]]:
    """The sorted names of the images and of the subfolders in ``folder``, hidden ones left out."""
    images, folders = [], []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    folders.append(entry.name)
                elif entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file():
                    images.append(entry.name)
    except OSError as error:
        raise UserError(f"cannot list the folder {folder} ({error.strerror or error}); check its permissions") from None
    return sorted(images), sorted(folders)


def _list_images(folder: Path) -> tuple[list[Path], np.ndarray | None, tuple[str, ...] | None]:
    """The image files in reading order, their labels and the class names (None, None when unlabelled)."""
    top_images, subfolders = _entries(folder)
    classes, empty = [], []  # (name, image names); (name, has subfolders of its own)
    for name in subfolders:
        images, deeper = _entries(folder / name)
        if images:
            classes.append((name, images))
        else:
            empty.append((name, bool(deeper)))
    if top_images and classes:
        raise UserError(
            f"{folder} has images both at its top level ({folder / top_images[0]}) and in subfolders "
            f"({folder / classes[0][0]}{os.sep}); put all images at the top level for an unlabelled set, "
            "or each image in the subfolder of its class"
        )
    one_level = " (only one level of subfolders is read)"
    if top_images:
        return [folder / name for name in top_images], None, None
    if not classes:
        raise UserError(f"{folder} holds no images (.png, .jpg or .jpeg files) at its top level or in its subfolders"
                        f"{one_level if any(deeper for _, deeper in empty) else ''}; put the training images there")
    if empty:
        name, deeper = empty[0]
        raise UserError(f"class subfolder {folder / name} has no images (.png, .jpg or .jpeg files)"
                        f"{one_level if deeper else ''}; put its class's images in it, or remove it")
    files = [folder / name / image for name, images in classes for image in images]
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), [len(images) for _, images in classes])
    return files, labels, tuple(name for name, _ in classes)


def _allocate(count: int, channels: int, where: Path) -> np.ndarray:
    _check_memory(count * channels * IMAGE_SIZE * IMAGE_SIZE, count, where)
    return np.empty((count, channels, IMAGE_SIZE, IMAGE_SIZE) if channels == 3 else (count, IMAGE_SIZE, IMAGE_SIZE),
                    dtype=np.uint8)


def _check_memory(needed: int, count: int, where: Path) -> None:
    available = available_memory()
    if available is not None and needed > available:
        raise UserError(f"{where} holds {count:,} images, which need about {needed / 2**30:.1f} GiB of memory, "
                        f"more than the {available / 2**30:.1f} GiB available; train on fewer images")


def _read_image(file: Path, channels: int | None) -> tuple[np.ndarray, bool]:
    """One image fitted to 28 x 28 as uint8 (28, 28) grey or (28, 28, 3) RGB, and whether it is stored as grey."""
    try:
        with Image.open(file, formats=IMAGE_FORMATS) as image:  # lazy: reads the header, decodes nothing yet
            if image.width * image.height > MAX_PIXELS:
                raise _too_large(file, image.size)
            image, grey = _eight_bit(image)
            mode = "L" if channels == 1 or (channels is None and grey) else "RGB"
            image = _onto_black(image)
            return np.asarray(_fit(image if image.mode == mode else image.convert(mode))), grey
    except Image.DecompressionBombError:  # so large that Pillow refuses to open it
        try:
            size = declared_png_size(file)
        except OSError:
            size = None
        raise _too_large(file, size) from None
    except UserError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as error:
        # unreadable, truncated, damaged, not a PNG or JPEG inside, or a chunk Pillow will not inflate
        reason = error.strerror if isinstance(error, OSError) and error.strerror else first_line(error)
        raise UserError(f"{file} is not a readable PNG or JPEG image ({reason}); replace or remove it") from None


def _too_large(file: Path, size: tuple[int, int] | None) -> UserError:
    declared = f"declares {size[0]}x{size[1]} pixels" if size else "declares a huge image"
    return UserError(f"{file} {declared}, more than the {MAX_SIDE}x{MAX_SIDE} read here; "
                     "shrink it (28x28 is all that is kept) or remove it")


def _eight_bit(image: Image.Image) -> tuple[Image.Image, bool]:
    """The image in mode L, LA, RGB or RGBA, and whether it counts as grey."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return image, mode in GREY_MODES
    if mode == "1":
        return image.convert("L"), True
    if mode.startswith("I"):  # 16-bit grey PNG: scale 0..65535 to 0..255 (Pillow's convert("L") would clip at 255)
        values = np.asarray(image).astype(np.int64).clip(0, 65535)
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8)), True
    if mode in ("P", "PA"):
        palette = np.asarray(image.getpalette("RGB") or [0, 0, 0], dtype=np.uint8).reshape(-1, 3)
        used = np.unique(np.asarray(image.getchannel(0) if mode == "PA" else image))
        used = palette[used[used < len(palette)]]
        grey = bool((used == used[:, :1]).all())
        transparent = mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if transparent else "RGB")
        return (image.convert("LA" if transparent else "L") if grey else image), grey
    return image.convert("RGB"), False  # CMYK or YCbCr JPEG, and any other colour mode


def _onto_black(image: Image.Image) -> Image.Image:
    """An image with alpha flattened onto black: each pixel keeps alpha/255 of its value."""
    if image.mode not in ("LA", "RGBA"):
        return image
    base = image.mode[:-1]
    flat = Image.new(base, image.size, 0)
    flat.paste(image.convert(base), None, image.getchannel("A"))
    return flat


def _fit(image: Image.Image) -> Image.Image:
    """The shorter side scaled to 28 and the centre 28 x 28 kept, in one step on the centre square."""
    width, height = image.size
    if width == height == IMAGE_SIZE:
        return image
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    box = (left, top, left + side, top + side)
    if side == IMAGE_SIZE:
        return image.crop(box)
    resample = Image.Resampling.BOX if side > IMAGE_SIZE else Image.Resampling.BICUBIC
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), resample, box=box)


# --- arrays --------------------------------------------------------------------------------------


def _open_npy(path: Path) -> np.ndarray:
    """Memory-map a ``.npy`` file after checking that it is one; numpy parses the header (never unpickling)."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(6)
        file_size = path.stat().st_size
    except OSError as error:
        if not path.exists():
            raise UserError(f"{path} not found; give a .npy array of 28x28 images") from None
        raise UserError(f"{path} cannot be read ({error.strerror or error})") from None
    if start != b"\x93NUMPY":
        raise UserError(f"{path} is not a .npy file (no NumPy header); save the images with numpy.save")
    try:
        array = npy_format.open_memmap(path, mode="r")
    except OSError as error:
        raise UserError(f"{path} cannot be read ({error.strerror or first_line(error)})") from None
    except Exception as error:  # a malformed header, objects (numpy refuses to map them), more bytes promised than held
        detail = first_line(error) if isinstance(error, ValueError) else "its header is malformed"
        if isinstance(error, ValueError) and "mmap length" in str(error):
            detail = f"truncated: its header promises more than its {file_size:,} bytes"
        raise UserError(f"{path} is not a readable .npy array ({detail}); save one numeric array with numpy.save") from None
    promised = array.offset + array.nbytes
    if file_size > promised:
        raise UserError(f"{path} has {file_size - promised:,} bytes beyond the array its header describes "
                        "(several arrays saved into one file?); save one array with numpy.save")
    return array


def _array_layout(shape: tuple, name: str) -> tuple[int, bool]:
    """The stored channels (1 or 3) and whether they come last, for an accepted shape."""
    if len(shape) == 3:
        channels, channels_last, size = 1, False, shape[1:]
    elif len(shape) == 4 and shape[1] in (1, 3):
        channels, channels_last, size = shape[1], False, shape[2:]
    elif len(shape) == 4 and shape[3] == 3:
        channels, channels_last, size = 3, True, shape[1:3]
    else:
        raise UserError(f"{name} has shape {shape}; expected {ARRAY_SHAPES} (N grey or RGB images)")
    if size != (IMAGE_SIZE, IMAGE_SIZE):
        raise UserError(f"{name} has shape {shape}: images of {size[0]}x{size[1]} pixels, but arrays must hold "
                        f"{IMAGE_SIZE}x{IMAGE_SIZE} images (arrays are not resized); resize them first, or save them "
                        "as PNG files in a folder, whose images are resized")
    if shape[0] <= 0:
        raise UserError(f"{name} holds no images (shape {shape}); save at least one")
    return channels, channels_last


def _pixel_scale(array: np.ndarray, name: str):
    """Check the whole array's values, then return the function that turns a chunk of it into uint8."""
    count = array.shape[0]
    chunks = [array[start : start + CHUNK_IMAGES] for start in range(0, count, CHUNK_IMAGES)]
    if array.dtype.kind in "iu":
        low, high = min(int(chunk.min()) for chunk in chunks), max(int(chunk.max()) for chunk in chunks)
        if low < 0 or high > 255:
            raise UserError(f"{name}: integer pixels must be grey levels 0..255, found {low}..{high}")
        return lambda chunk: chunk.astype(np.uint8)
    bad, low, high = 0, math.inf, -math.inf
    for chunk in chunks:
        finite = np.isfinite(chunk)
        if not finite.all():
            bad += int((~finite).reshape(len(chunk), -1).any(axis=1).sum())
        elif not bad:
            low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
    if bad:
        raise UserError(f"{name}: {bad} image(s) contain NaN or infinity; remove them or save the array again")
    if low < 0:  # any negative value: the [-1, 1] convention
        if low < -1 - RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
            raise UserError(f"{name}: float pixels span {low:.3g}..{high:.3g}; with negative values they must lie in [-1, 1]")
        return lambda chunk: np.rint((np.clip(chunk.astype(np.float64), -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    if high > 1 + RANGE_TOLERANCE:
        raise UserError(f"{name}: float pixels span {low:.3g}..{high:.3g}; floats must lie in [-1, 1] or [0, 1] "
                        "(for grey levels 0..255, save the array as uint8)")
    return lambda chunk: np.rint(np.clip(chunk.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """uint8 (n, 3, H, W) to (n, 1, H, W) grey with Pillow's integer ITU-R 601-2 luma, as convert("L") computes it."""
    r, g, b = (rgb[:, i : i + 1].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)
