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
    with pytest.raises(UserError, match="--data-dir .* lacks"):
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
    monkeypatch.setattr(data, "REPO_DATA_DIR", tmp_path / "nowhere")

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

        def read(self):
            return self.payload

        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

    def fake_urlopen(url, timeout):
        name = url.rsplit("/", 1)[1][:-3]
        if url.startswith(data.MIRRORS[0]):
            return Response(gzip.compress(b"tampered"))
        return Response(good[name])

    monkeypatch.setattr(data.urllib.request, "urlopen", fake_urlopen)
    data.download_mnist(data.cache_dir())
    assert sorted(os.listdir(data.cache_dir())) == sorted(f"{n}.gz" for n in data.FILES.values())
    assert len(data._load_split(data.cache_dir(), "test", True)) == 10_000


def test_shipped_mnist_is_complete_and_verified():
    train, test = data.load_mnist("train"), data.load_mnist("test")
    assert (len(train), len(test)) == (60_000, 10_000)
    assert torch.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_unit_range():
    pixels = torch.tensor([0, 255, 128], dtype=torch.uint8)
    scaled = data.to_unit_range(pixels)
    assert scaled[0] == -1 and scaled[1] == 1 and abs(scaled[2] - 0.0039) < 1e-3
