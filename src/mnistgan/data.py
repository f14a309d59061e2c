"""MNIST and Fashion-MNIST: find the four IDX files, check them, download them if they are nowhere, load them.

Both are published as the same four IDX files; ``IdxSource`` says where each is looked for, in order:
  1. the ``data_dir`` argument (``--data-dir``),
  2. its environment variable (``$MNISTGAN_DATA_DIR``, ``$MNISTGAN_FASHION_MNIST_DIR``),
  3. the folders it ships in: the repository's own ``data/mnist/`` (a clone trains offline), Debian's
     package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``),
  4. the per-user cache (``$MNISTGAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/mnistgan/mnist``, else
     ``~/.cache/mnistgan/mnist``; Fashion-MNIST beside it in ``fashion-mnist/``), where a download lands.
Every file is checked twice: its IDX structure (magic number, dimensions, length, label range)
and the SHA-256 of its decompressed content against the official files.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import math
import os
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import UserError, option
from .files import write_bytes_atomically

IMAGE_MAGIC = 2051  # IDX: unsigned bytes, 3 dimensions
LABEL_MAGIC = 2049  # IDX: unsigned bytes, 1 dimension
IMAGE_SIZE = 28
NUM_CLASSES = 10  # MNIST's digits (and Fashion-MNIST's ten kinds of clothing)
MAX_ITEMS = 60_000  # images or labels in the largest file (train)
MAX_IDX_BYTES = 16 + MAX_ITEMS * IMAGE_SIZE * IMAGE_SIZE  # the largest valid IDX file: 47,040,016 bytes
MAX_DOWNLOAD_BYTES = 64 * 2**20  # a mirror's .gz (the largest is about 26 MB) is refused beyond this

FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
REPO_DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "mnist"


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity (the loader's cache key)
class IdxSource:
    """A dataset published as MNIST's four IDX files: its checksums, mirrors and where it is looked for."""

    name: str  # as people write it: "MNIST"
    key: str  # as the config writes it: "mnist"
    sha256: dict  # file name -> SHA-256 of the decompressed official file (gzip containers differ between mirrors)
    mirrors: tuple[str, ...]
    environment: str  # the variable naming a folder with the files
    shipped: tuple[Path, ...]  # folders the files come in, looked in before the cache
    class_names: tuple[str, ...]

    def cache(self) -> Path:
        return cache_dir() if self.key == "mnist" else cache_dir().parent / self.key


MNIST = IdxSource(
    name="MNIST", key="mnist",
    sha256={
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/",
             "http://yann.lecun.com/exdb/mnist/"),
    environment="MNISTGAN_DATA_DIR", shipped=(REPO_DATA_DIR,),
    class_names=tuple(str(digit) for digit in range(10)),
)
FASHION_MNIST = IdxSource(
    name="Fashion-MNIST", key="fashion-mnist",
    # The decompressed contents of Zalando's release (github.com/zalandoresearch/fashion-mnist), as
    # Debian's dataset-fashion-mnist ships them.
    sha256={
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
             "https://ossci-datasets.s3.amazonaws.com/fashion-mnist/"),
    environment="MNISTGAN_FASHION_MNIST_DIR", shipped=(Path("/usr/share/datasets/fashion-mnist"),),
    class_names=("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"),
)
IDX_SOURCES = {source.key: source for source in (MNIST, FASHION_MNIST)}
SHA256 = MNIST.sha256  # the MNIST files' digests (tests and tools refer to them by this name)


def cache_dir() -> Path:
    """The per-user directory where downloaded MNIST files are kept (other datasets sit beside it)."""
    if os.environ.get("MNISTGAN_CACHE_DIR"):
        return Path(os.environ["MNISTGAN_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mnistgan" / "mnist"


def _file_in(directory: Path, name: str) -> Path | None:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def _has_all_files(directory: Path) -> bool:
    return all(_file_in(directory, name) for name in FILES.values())


def find_data_dir(data_dir: str | os.PathLike | None = None, download: bool = True, source: IdxSource | None = None) -> Path:
    """Return the directory holding the four files of ``source`` (default MNIST), downloading them if they are nowhere.

    An explicitly named directory (argument or environment variable) must hold the files: a typo
    there is an error, not a silent download.
    """
    source = source or MNIST
    for explicit, origin in ((data_dir, option("data_dir")), (os.environ.get(source.environment), f"${source.environment}")):
        if explicit:
            directory = Path(explicit).expanduser()
            if not directory.is_dir():
                raise UserError(f"{origin} {directory} is not a folder; point it at the folder with the four {source.name} IDX files")
            if not _has_all_files(directory):
                missing = [n for n in FILES.values() if not _file_in(directory, n)]
                raise UserError(
                    f"{origin} {directory} lacks the {source.name} file(s) {', '.join(missing)} (.gz or "
                    "decompressed); put the four IDX files there or point it at the folder that has them"
                )
            return directory
    for directory in (*source.shipped, source.cache()):
        if _has_all_files(directory):
            return directory
    if not download:
        raise UserError(f"{source.name} not found; put the four IDX files in {source.cache()} or pass {option('data_dir')}")
    download_idx(source.cache(), source)
    return source.cache()


def download_idx(target: Path, source: IdxSource = MNIST) -> None:
    """Download the four files into ``target`` from the first mirror that answers, checking each."""
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the cache directory {target}: {error.strerror}; set MNISTGAN_CACHE_DIR") from None
    for name in FILES.values():
        if _file_in(target, name):
            continue
        failures = []
        for mirror in source.mirrors:
            url = f"{mirror}{name}.gz"
            try:
                with urllib.request.urlopen(url, timeout=30) as response:
                    payload = response.read(MAX_DOWNLOAD_BYTES + 1)
                if len(payload) > MAX_DOWNLOAD_BYTES:
                    failures.append(f"{url}: larger than any {source.name} file")
                    continue
                with gzip.GzipFile(fileobj=io.BytesIO(payload)) as stream:
                    content = stream.read(MAX_IDX_BYTES + 1)  # bounded: a gzip bomb is never inflated
            except Exception as error:  # network errors, HTTP errors, a broken gzip: try the next mirror
                failures.append(f"{url}: {error}")
                continue
            if hashlib.sha256(content).hexdigest() != source.sha256[name]:
                failures.append(f"{url}: checksum mismatch")
                continue
            write_bytes_atomically(target / f"{name}.gz", payload)
            break
        else:
            raise UserError(
                f"could not download {name}.gz from any mirror ({failures[-1] if failures else 'no mirror'}); "
                f"offline? put the four {source.name} IDX files in {target} or pass {option('data_dir')}"
            )


def read_idx(path: Path, expected_magic: int, verify_sha256: str | None = None) -> np.ndarray:
    """Read one IDX file (.gz or raw) into a uint8 array, checking its structure and checksum.

    The header is read first and checked against the largest MNIST file; then exactly the bytes it
    promises are read (and one more, to notice trailing data), so a damaged header or a gzip bomb
    costs no more memory than a real MNIST file.
    """
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as stream:
            return _read_idx_stream(path, stream, expected_magic, verify_sha256)
    except (zlib.error, EOFError, gzip.BadGzipFile) as error:  # inside a .gz: bad header, damaged deflate data, cut short, CRC
        raise UserError(f"{path}: cannot read it, its gzip data is damaged ({error}); replace the file") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read it ({error.strerror or error}); replace the file") from None


def _read_idx_stream(path: Path, stream, expected_magic: int, verify_sha256: str | None) -> np.ndarray:
    start = stream.read(4)
    if len(start) < 4:
        raise UserError(f"{path}: truncated ({len(start)} bytes, no IDX header); replace the file")
    magic = int.from_bytes(start, "big")
    if magic != expected_magic:
        raise UserError(f"{path}: wrong magic number {magic} (expected {expected_magic}); not an MNIST IDX file of this kind")
    ndim = start[3]
    header_length = 4 + 4 * ndim
    dimensions = stream.read(4 * ndim)
    if len(dimensions) < 4 * ndim:
        raise UserError(f"{path}: truncated header; replace the file")
    shape = tuple(int.from_bytes(dimensions[4 * i : 4 + 4 * i], "big") for i in range(ndim))
    if ndim == 3 and shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise UserError(f"{path}: images are {shape[1]}x{shape[2]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    if ndim and shape[0] > MAX_ITEMS:
        kind = "images" if ndim == 3 else "labels"
        raise UserError(f"{path}: its header promises {shape[0]:,} {kind}, but an MNIST file holds at most {MAX_ITEMS:,}; "
                        "the file is damaged or not MNIST, replace it")
    body_length = math.prod(shape)
    body = stream.read(body_length + 1)  # one byte more than promised: trailing data shows, a bomb is never inflated
    if len(body) != body_length:
        expected_length = header_length + body_length
        if len(body) < body_length:
            raise UserError(f"{path}: truncated ({header_length + len(body)} bytes, the header promises {expected_length}); "
                            "replace the file")
        raise UserError(f"{path}: has trailing bytes (more than the {expected_length} bytes the header promises); replace the file")
    if verify_sha256 is not None:
        hasher = hashlib.sha256(start)
        hasher.update(dimensions)
        hasher.update(body)
        if hasher.hexdigest() != verify_sha256:
            raise UserError(f"{path}: content does not match the official MNIST file (SHA-256 differs); replace the file")
    array = np.frombuffer(body, dtype=np.uint8).reshape(shape)
    if ndim == 1 and array.size and array.max() >= NUM_CLASSES:
        raise UserError(f"{path}: label {int(array.max())} is out of range 0-9")
    return array


@dataclass(frozen=True)
class Split:
    """One split of a dataset held as uint8 tensors: ``images`` (N, C, 28, 28) and ``labels`` (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@functools.lru_cache(maxsize=4)
def _load_split(directory: Path, split: str, verify: bool, source: IdxSource) -> Split:
    paths = {kind: _file_in(directory, FILES[(split, kind)]) for kind in ("images", "labels")}
    for kind, path in paths.items():
        if path is None:
            raise UserError(f"{directory} lacks {FILES[(split, kind)]}(.gz); put the four {source.name} IDX files there")
    images = read_idx(paths["images"], IMAGE_MAGIC, source.sha256[FILES[(split, "images")]] if verify else None)
    labels = read_idx(paths["labels"], LABEL_MAGIC, source.sha256[FILES[(split, "labels")]] if verify else None)
    if len(images) != len(labels):
        raise UserError(
            f"{paths['images']} holds {len(images)} images but {paths['labels']} holds {len(labels)} labels; "
            "the files do not belong together"
        )
    return Split(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def load_idx(source: IdxSource, split: str = "train", data_dir: str | os.PathLike | None = None, verify: bool = True) -> Split:
    """Load the ``"train"`` (60,000) or ``"test"`` (10,000) split as uint8 images and int64 labels.

    ``verify`` compares the content with the official files' SHA-256; switch it off only for
    IDX files that are not the official ones (tests write their own).
    """
    if split not in ("train", "test"):
        raise UserError(f"unknown split {split!r}; use 'train' or 'test'")
    return _load_split(find_data_dir(data_dir, source=source), split, verify, source)


def load_mnist(split: str = "train", data_dir: str | os.PathLike | None = None, verify: bool = True) -> Split:
    """MNIST's ``split`` (see ``load_idx``)."""
    return load_idx(MNIST, split, data_dir, verify)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 -> float in [-1, 1], the range the generators' tanh produces."""
    return images.float().div_(127.5).sub_(1.0)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip if the name ends in .gz); used to build test fixtures."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = IMAGE_MAGIC if array.ndim == 3 else LABEL_MAGIC
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    content = header + array.tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as handle:
        handle.write(content)

