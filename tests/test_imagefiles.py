"""Loading samples made by other tools: every accepted form, and every error a user can run into."""

import numpy as np
import pytest
import torch
from PIL import Image

from mnistgan.errors import UserError
from mnistgan.imagefiles import load_samples

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


# -- hostile files: refused from their headers, before anything large is read or decoded --------

def png_declaring(width, height, extra_chunks=b""):
    """A PNG whose header declares width x height pixels, with almost no pixel data behind it."""
    import struct
    import zlib

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + extra_chunks
            + chunk(b"IDAT", zlib.compress(bytes(29))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (10_000, 10_000), (29, 28)],
                         ids=["bomb-error", "bomb-warning", "one-column-more"])
def test_a_png_of_another_size_is_refused_from_its_header(tmp_path, width, height):
    import warnings

    folder = tmp_path / "digits"
    folder.mkdir()
    Image.fromarray(GREY[0]).save(folder / "0.png")
    (folder / "1.png").write_bytes(png_declaring(width, height))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not reach the user either
        with pytest.raises(UserError) as caught:
            load_samples(folder)
    message = str(caught.value)
    assert str(folder / "1.png") in message and f"{width}x{height} pixels" in message and "28x28" in message


def test_a_png_that_pillow_refuses_to_inflate_is_one_error(tmp_path):
    import zlib

    folder = tmp_path / "digits"
    folder.mkdir()
    text_bomb = b"comment\0\0" + zlib.compress(bytes(20_000_000))  # a compressed text chunk beyond Pillow's limit
    import struct
    chunk = struct.pack(">I", len(text_bomb)) + b"zTXt" + text_bomb + struct.pack(">I", zlib.crc32(b"zTXt" + text_bomb))
    (folder / "0.png").write_bytes(png_declaring(28, 28, chunk))
    with pytest.raises(UserError) as caught:
        load_samples(folder)
    assert str(folder / "0.png") in str(caught.value) and "not a readable PNG" in str(caught.value)


def test_a_truncated_png_is_one_error_naming_it(tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    Image.fromarray(GREY[0]).save(folder / "0.png")
    (folder / "0.png").write_bytes((folder / "0.png").read_bytes()[:-300])
    with pytest.raises(UserError) as caught:
        load_samples(folder)
    message = str(caught.value)
    assert str(folder / "0.png") in message and "not a readable PNG" in message and "\n" not in message


def test_a_folder_with_one_png_is_one_image(tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    Image.fromarray(GREY[0]).save(folder / "0.png")
    torch.testing.assert_close(load_samples(folder), EXPECTED[:1])


def npy_with_header(path, shape, descr="|u1", data_bytes=0, fortran_order=False):
    """A .npy file whose header promises ``shape``, followed by ``data_bytes`` zero bytes."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": descr, "fortran_order": fortran_order, "shape": shape})
        handle.write(bytes(data_bytes))
    return path


def test_a_npy_header_promising_billions_of_images_is_refused_at_once(tmp_path):
    path = npy_with_header(tmp_path / "huge.npy", (4_000_000_000, 28, 28), data_bytes=3 * 784)
    with pytest.raises(UserError) as caught:
        load_samples(path)
    message = str(caught.value)
    assert str(path) in message and "truncated" in message and "\n" not in message


@pytest.mark.parametrize("extra, word", [(-1, "truncated"), (1, "beyond the array")], ids=["short", "long"])
def test_a_npy_whose_size_differs_from_its_header_is_refused(tmp_path, extra, word):
    path = save(tmp_path, GREY)
    content = path.read_bytes()
    path.write_bytes(content[:extra] if extra < 0 else content + bytes(extra))
    with pytest.raises(UserError) as caught:
        load_samples(path)
    assert str(path) in str(caught.value) and word in str(caught.value)


def test_a_npy_too_large_for_memory_is_refused_before_reading(tmp_path, monkeypatch):
    from mnistgan import imagefiles as samples

    path = save(tmp_path, np.zeros((1000, 28, 28), np.uint8))
    monkeypatch.setattr(samples, "available_memory", lambda: 1_000_000)
    monkeypatch.setattr(np, "memmap", None)  # nothing may be mapped or read
    with pytest.raises(UserError) as caught:
        load_samples(path)
    message = str(caught.value)
    assert str(path) in message and "1,000 images" in message and "memory" in message and "fewer" in message


@pytest.mark.parametrize(
    "array",
    [np.asfortranarray(GREY), GREY.astype(">f4") / 255, np.asfortranarray(GREY.reshape(5, 784))],
    ids=["fortran-order", "big-endian-float", "fortran-flat"],
)
def test_npy_layouts_numpy_writes_give_the_same_images(tmp_path, array):
    torch.testing.assert_close(load_samples(save(tmp_path, array)), EXPECTED, atol=2e-3, rtol=0)


@pytest.mark.parametrize(
    "descr, message",
    [("|O", "Python objects"), ([("a", "|O")], "Python objects"), ("<c8", "dtype complex64"), ("|b1", "dtype bool"),
     ([("x", "|u1")], "dtype"), ("|S4", "dtype"), ("<m8[s]", "dtype timedelta64")],
    ids=["object", "struct-with-object", "complex", "bool", "struct", "bytes", "timedelta"],
)
def test_dtypes_are_refused_from_the_header(tmp_path, descr, message, monkeypatch):
    path = npy_with_header(tmp_path / "bad.npy", (3, 28, 28), descr=descr, data_bytes=3 * 784 * np.dtype(descr).itemsize)
    monkeypatch.setattr(np, "load", None)  # decided from the header alone
    with pytest.raises(UserError, match=message):
        load_samples(path)


def test_a_npy_in_format_3_is_read_and_refused_for_its_dtype(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy says it writes format 3.0
        path = save(tmp_path, np.zeros((3, 28, 28), dtype=[("é", "u1")]))
    with pytest.raises(UserError) as caught:
        load_samples(path)
    assert str(path) in str(caught.value) and "has dtype" in str(caught.value)


def test_the_range_convention_spans_blocks(tmp_path, monkeypatch):
    """Arrays are checked and converted in blocks; the sign of the minimum of the whole set still decides."""
    from mnistgan import imagefiles as samples

    monkeypatch.setattr(samples, "CHUNK_IMAGES", 2)
    signed = GREY.astype(np.float32) / 255  # [0, 1] in the first blocks ...
    signed[4, 0, 0] = -1.0  # ... one negative pixel in the last: the whole set is [-1, 1]
    images = load_samples(save(tmp_path, signed))
    torch.testing.assert_close(images[0], torch.from_numpy(signed[:1]))
    torch.testing.assert_close(load_samples(save(tmp_path, GREY)), EXPECTED)
    nan = GREY.astype(np.float32) / 255
    nan[[1, 3], 5, 5] = np.nan
    with pytest.raises(UserError, match="2 image\\(s\\) contain NaN"):
        load_samples(save(tmp_path, nan))
    with pytest.raises(UserError, match="found 0..300"):
        load_samples(save(tmp_path, np.where(np.arange(5)[:, None, None] == 4, 300, GREY.astype(np.int64))))


def test_a_huge_image_of_another_format_named_png_is_one_error(tmp_path):
    """Pillow reads any format under a .png name; a GIF declaring 65535 x 65535 pixels is refused as too large."""
    import io

    folder = tmp_path / "digits"
    folder.mkdir()
    buffer = io.BytesIO()
    Image.fromarray(GREY[0]).save(buffer, "GIF")
    gif = bytearray(buffer.getvalue())
    gif[6:10] = b"\xff\xff\xff\xff"  # the logical screen: 65535 x 65535
    (folder / "0.png").write_bytes(bytes(gif))
    with pytest.raises(UserError) as caught:
        load_samples(folder)
    assert str(folder / "0.png") in str(caught.value) and "far larger than 28x28" in str(caught.value)


def test_available_memory_is_known_here():
    from mnistgan.imagefiles import available_memory

    memory = available_memory()
    assert memory is None or (isinstance(memory, int) and memory > 0)
