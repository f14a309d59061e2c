import dataclasses
import gzip
import os

import numpy as np
import pytest
import torch

from mnistgan import data
from mnistgan.errors import UserError


def write_split(directory, images, labels, gz=True):
    """The same arrays as both splits, so that the directory is complete."""
    suffix = ".gz" if gz else ""
    for split in ("train", "test"):
        data.write_idx(directory / f"{data.FILES[(split, 'images')]}{suffix}", images)
        data.write_idx(directory / f"{data.FILES[(split, 'labels')]}{suffix}", labels)


def fake_dataset(directory, count=20, gz=True):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, count, dtype=np.uint8)
    write_split(directory, images, labels, gz)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_reads_what_it_wrote(tmp_path, gz):
    images, labels = fake_dataset(tmp_path, gz=gz)
    split = data.load_mnist("train", tmp_path, verify=False)
    assert split.images.shape == (20, 1, 28, 28) and split.images.dtype == torch.uint8
    assert np.array_equal(split.images[:, 0].numpy(), images)
    assert np.array_equal(split.labels.numpy(), labels)


def test_checksum_rejects_content_that_is_not_mnist(tmp_path):
    fake_dataset(tmp_path)
    with pytest.raises(UserError, match="SHA-256"):
        data.load_mnist("train", tmp_path)


def test_truncated_file(tmp_path):
    fake_dataset(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated"):
        data.load_mnist("train", tmp_path, verify=False)


def test_trailing_bytes(tmp_path):
    fake_dataset(tmp_path, gz=False)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(UserError, match="trailing"):
        data.load_mnist("train", tmp_path, verify=False)


def test_wrong_magic(tmp_path):
    fake_dataset(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    content = bytearray(path.read_bytes())
    content[2] = 0x0D  # float type code instead of unsigned byte
    path.write_bytes(bytes(content))
    with pytest.raises(UserError, match="magic"):
        data.load_mnist("train", tmp_path, verify=False)


def test_labels_swapped_for_images_is_wrong_magic(tmp_path):
    fake_dataset(tmp_path, gz=False)
    images, labels = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    content = images.read_bytes()
    images.write_bytes(labels.read_bytes())
    labels.write_bytes(content)
    with pytest.raises(UserError, match="wrong magic number 2049"):
        data.load_mnist("train", tmp_path, verify=False)


def test_mismatched_counts(tmp_path):
    rng = np.random.default_rng(1)
    write_split(tmp_path, rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), rng.integers(0, 10, 19, dtype=np.uint8))
    with pytest.raises(UserError, match="20 images but .* 19 labels"):
        data.load_mnist("train", tmp_path, verify=False)


def test_label_out_of_range(tmp_path):
    labels = np.zeros(20, dtype=np.uint8)
    labels[5] = 10
    write_split(tmp_path, np.zeros((20, 28, 28), dtype=np.uint8), labels)
    with pytest.raises(UserError, match="label 10 is out of range"):
        data.load_mnist("train", tmp_path, verify=False)


def test_wrong_image_size(tmp_path):
    write_split(tmp_path, np.zeros((20, 32, 32), dtype=np.uint8), np.zeros(20, dtype=np.uint8))
    with pytest.raises(UserError, match="32x32"):
        data.load_mnist("train", tmp_path, verify=False)


def test_corrupt_gzip(tmp_path):
    fake_dataset(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="cannot read"):
        data.load_mnist("train", tmp_path, verify=False)


def test_explicit_directory_without_files_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MNISTGAN_DATA_DIR", raising=False)
    with pytest.raises(UserError, match="data_dir.* lacks"):
        data.find_data_dir(tmp_path)
    monkeypatch.setenv("MNISTGAN_DATA_DIR", str(tmp_path))
    with pytest.raises(UserError, match=r"\$MNISTGAN_DATA_DIR"):
        data.find_data_dir()


def test_search_order_argument_then_environment(tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    fake_dataset(first), fake_dataset(second)
    monkeypatch.setenv("MNISTGAN_DATA_DIR", str(second))
    assert data.find_data_dir(first) == first
    assert data.find_data_dir() == second


def test_offline_download_fails_with_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MNISTGAN_DATA_DIR", raising=False)
    monkeypatch.setenv("MNISTGAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "MNIST", dataclasses.replace(data.MNIST, shipped=(tmp_path / "nowhere",)))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match="could not download .* offline\\? put the four MNIST IDX files in"):
        data.find_data_dir()


def test_download_checks_content(tmp_path, monkeypatch):
    """A mirror serving wrong bytes is skipped; the next mirror's good bytes are kept."""
    monkeypatch.setenv("MNISTGAN_CACHE_DIR", str(tmp_path / "cache"))
    good = {name: (data.REPO_DATA_DIR / f"{name}.gz").read_bytes() for name in data.FILES.values()}

    class Response:
        def __init__(self, payload):
            self.payload = payload

        def read(self, size=-1):
            return self.payload if size < 0 else self.payload[:size]

        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

    def fake_urlopen(url, timeout):
        name = url.rsplit("/", 1)[1][:-3]
        if url.startswith(data.MNIST.mirrors[0]):
            return Response(gzip.compress(b"tampered"))
        return Response(good[name])

    monkeypatch.setattr(data.urllib.request, "urlopen", fake_urlopen)
    data.download_idx(data.cache_dir())
    assert sorted(os.listdir(data.cache_dir())) == sorted(f"{n}.gz" for n in data.FILES.values())
    assert len(data._load_split(data.cache_dir(), "test", True, data.MNIST)) == 10_000


def test_shipped_mnist_is_complete_and_verified():
    train, test = data.load_mnist("train"), data.load_mnist("test")
    assert (len(train), len(test)) == (60_000, 10_000)
    assert torch.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_unit_range():
    pixels = torch.tensor([0, 255, 128], dtype=torch.uint8)
    scaled = data.to_unit_range(pixels)
    assert scaled[0] == -1 and scaled[1] == 1 and abs(scaled[2] - 0.0039) < 1e-3


@pytest.mark.parametrize("damage", ["inside-stream", "crc", "cut-short"])
def test_damaged_gzip_stream_is_one_error_naming_the_file(tmp_path, damage):
    write_split(tmp_path, np.zeros((20, 28, 28), np.uint8), np.zeros(20, np.uint8))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    if damage == "inside-stream":  # deflate block data: zlib.error
        middle = len(raw) // 2
        raw[middle:middle + 4] = b"\xff\xff\xff\xff"
    elif damage == "crc":  # the trailer's checksum
        raw[-8] ^= 0xFF
    else:
        del raw[-12:]
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError) as caught:
        data.load_mnist("train", tmp_path, verify=False)
    message = str(caught.value)
    rest = message.replace(str(path), "")  # the test's folder name holds words too
    assert str(path) in message and "damaged" in rest and "replace the file" in rest and "\n" not in message


def test_a_header_promising_billions_of_images_is_refused_from_the_header(tmp_path):
    fake_dataset(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    header = data.IMAGE_MAGIC.to_bytes(4, "big") + (4_000_000_000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    path.write_bytes(header + bytes(784))
    with pytest.raises(UserError) as caught:
        data.load_mnist("train", tmp_path, verify=False)
    message = str(caught.value)
    assert str(path) in message and "4,000,000,000 images" in message and "at most 60,000" in message


def test_a_gzip_bomb_is_refused_without_decompressing_it(tmp_path):
    """A valid IDX file followed by 300 MB of zeros in further gzip members: read no more than the header promises."""
    import time
    import tracemalloc

    fake_dataset(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    bomb_member = gzip.compress(bytes(10_000_000), compresslevel=9)  # 10 MB of zeros in ~10 kB
    path.write_bytes(path.read_bytes() + bomb_member * 30)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(UserError) as caught:
            data.load_mnist("train", tmp_path, verify=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(caught.value) and "trailing bytes" in str(caught.value)
    assert peak < 5_000_000 and time.perf_counter() - start < 0.5


def test_a_mirror_serving_a_gzip_bomb_is_skipped_without_inflating_it(tmp_path, monkeypatch):
    import tracemalloc

    monkeypatch.setenv("MNISTGAN_CACHE_DIR", str(tmp_path / "cache"))
    bomb = gzip.compress(bytes(10_000_000), compresslevel=9) * 30  # 300 MB of zeros in ~300 kB

    class Response:
        def read(self, size=-1):
            return bomb if size < 0 else bomb[:size]

        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: Response())
    one_mirror = dataclasses.replace(data.MNIST, mirrors=data.MNIST.mirrors[:1])
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="could not download"):
            data.download_idx(data.cache_dir(), one_mirror)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * data.MAX_IDX_BYTES
    assert not any((tmp_path / "cache").iterdir())
