"""Loading samples made by other tools: every accepted form, and every error a user can run into."""

import numpy as np
import pytest
import torch
from PIL import Image

from mnistgan.errors import UserError
from mnistgan.metrics.samples import load_samples

RNG = np.random.default_rng(0)
GREY = RNG.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)  # the reference content in every form
EXPECTED = torch.from_numpy(GREY.astype(np.float32) / 127.5 - 1).unsqueeze(1)  # (5, 1, 28, 28) in [-1, 1]


def save(tmp_path, array, name="samples.npy"):
    path = tmp_path / name
    np.save(path, array)
    return path


@pytest.mark.parametrize(
    "array",
    [
        GREY,  # uint8 (N, 28, 28)
        GREY.reshape(5, 1, 28, 28),  # uint8 (N, 1, 28, 28)
        GREY.reshape(5, 784),  # uint8 (N, 784)
        GREY.astype(np.int64),  # integers of another width: still grey levels
        GREY.astype(np.float32) / 127.5 - 1,  # float in [-1, 1]
        (GREY.astype(np.float64) / 255).reshape(5, 784),  # float in [0, 1]
        (GREY.astype(np.float16) / 255),  # half precision in [0, 1]
    ],
    ids=["uint8", "uint8-channel", "uint8-flat", "int64", "float-signed", "float-unit-flat", "float16-unit"],
)
def test_npy_forms_give_the_same_images(tmp_path, array):
    images = load_samples(save(tmp_path, array))
    assert images.shape == (5, 1, 28, 28) and images.dtype == torch.float32
    torch.testing.assert_close(images, EXPECTED, atol=2e-3, rtol=0)


def test_float_range_is_decided_by_the_sign_of_the_minimum(tmp_path):
    # all pixels in [0, 1]: read as [0, 1], so 0 becomes -1 (black) and 1 stays 1 (white)
    assert load_samples(save(tmp_path, np.zeros((2, 28, 28), np.float32))).max() == -1
    # one negative value: the whole set is read as [-1, 1]
    signed = np.zeros((2, 28, 28), np.float32)
    signed[0, 0, 0] = -1
    assert load_samples(save(tmp_path, signed))[1].max() == 0


def test_slight_overshoot_is_clipped(tmp_path):
    array = np.full((2, 28, 28), -1.0, np.float32)
    array[0, 0, 0] = 1.0004  # a tanh output rounded upwards
    images = load_samples(save(tmp_path, array))
    assert images.max() == 1.0 and images.min() == -1.0


def test_png_folder(tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    for i, image in enumerate(GREY):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    Image.fromarray(np.stack([GREY[0]] * 3, axis=-1)).save(folder / "005.png")  # colour: read as grey
    (folder / "notes.txt").write_text("not an image, ignored")
    images = load_samples(folder)
    assert images.shape == (6, 1, 28, 28)
    torch.testing.assert_close(images[:5], EXPECTED)  # in file-name order
    torch.testing.assert_close(images[5], EXPECTED[0], atol=1 / 127.5, rtol=0)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((5, 32, 32), np.uint8), "shape \\(5, 32, 32\\)"),
        (np.zeros((5, 3, 28, 28), np.uint8), "shape"),
        (np.zeros((28, 28), np.uint8), "single image"),
        (np.zeros((0, 28, 28), np.uint8), "no images"),
        (np.full((3, 28, 28), np.nan, np.float32), "NaN or infinity"),
        (np.full((3, 28, 28), np.inf, np.float32), "NaN or infinity"),
        (np.full((3, 28, 28), 255.0, np.float32), "save the array as uint8"),
        (np.full((3, 28, 28), -2.0, np.float32), "\\[-1, 1\\]"),
        (np.full((3, 28, 28), 300, np.int64), "0..255"),
        (np.zeros((3, 28, 28), bool), "dtype bool"),
        (np.zeros((3, 28, 28), np.complex64), "dtype complex64"),
    ],
    ids=["size", "channels", "single", "empty", "nan", "inf", "float-0..255", "below-minus-one", "int-range", "bool", "complex"],
)
def test_bad_arrays_are_one_clear_error(tmp_path, array, message):
    with pytest.raises(UserError, match=message):
        load_samples(save(tmp_path, array))


def test_pickled_npy_is_refused_without_unpickling(tmp_path):
    path = save(tmp_path, np.array([{"a": 1}], dtype=object))
    with pytest.raises(UserError, match="Python objects"):
        load_samples(path)


def test_unreadable_files(tmp_path):
    garbage = tmp_path / "broken.npy"
    garbage.write_bytes(b"\x93NUMPY but not really")
    with pytest.raises(UserError, match="not a readable .npy"):
        load_samples(garbage)
    random_bytes = tmp_path / "random.npy"
    random_bytes.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(UserError, match="not a .npy file"):
        load_samples(random_bytes)
    with pytest.raises(UserError, match="not found"):
        load_samples(tmp_path / "missing.npy")
    other = tmp_path / "samples.pt"
    other.write_bytes(b"")
    with pytest.raises(UserError, match="unsupported file type"):
        load_samples(other)


BAD_PNG_FOLDERS = {  # what a folder holds -> the error it must give
    "empty": (lambda folder: None, "no .png files"),
    "wrong_size": (lambda folder: Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / "0.png"),
                   "64x64 pixels; every sample must be 28x28"),
    "broken": (lambda folder: (folder / "0.png").write_bytes(b"not a png"), "not a readable PNG"),
    "sixteen_bit": (lambda folder: Image.fromarray(np.zeros((28, 28), np.uint16)).save(folder / "0.png"), "mode"),
}


@pytest.mark.parametrize("name", sorted(BAD_PNG_FOLDERS))
def test_bad_png_folders(tmp_path, name):
    fill, message = BAD_PNG_FOLDERS[name]
    folder = tmp_path / name
    folder.mkdir()
    fill(folder)
    with pytest.raises(UserError, match=message):
        load_samples(folder)
