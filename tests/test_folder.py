"""A user's own images as a training set: folders of PNG/JPEG files and .npy arrays, and every bad input."""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnistgan import folder as folder_module
from mnistgan.errors import UserError, command_line_names, option
from mnistgan.folder import FolderImages, read_image_array, read_image_folder, read_own_images

RNG = np.random.default_rng(0)
GREY = RNG.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)  # the reference content in every form
RGB = RNG.integers(0, 256, size=(4, 28, 28, 3), dtype=np.uint8)  # channels last, as Pillow holds it


def save_image(path: Path, pixels: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A small PNG whose header (with a valid CRC) claims another size: nothing that large is ever decoded."""
    buffer = io.BytesIO()
    Image.new("L", (28, 28)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


def user_error(call, *args, **kwargs) -> str:
    """The message of the one UserError the call raises; it must be a single line."""
    with pytest.raises(UserError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- folders -------------------------------------------------------------------------------------


def test_grey_folder_in_sorted_order_ignoring_other_and_hidden_files(tmp_path):
    for name, index in (("b.png", 1), ("c.PNG", 2), ("a.png", 0), ("d.Png", 3)):  # written out of order
        save_image(tmp_path / name, GREY[index])
    (tmp_path / "notes.txt").write_text("not an image")
    save_image(tmp_path / ".hidden.png", RGB[0])  # colour: read, it would make the folder mixed
    save_image(tmp_path / ".thumbnails" / "x.png", RGB[1])  # a hidden folder is no class
    (tmp_path / "empty").mkdir()  # a subfolder without images beside top-level images is ignored
    data = read_image_folder(tmp_path)
    assert isinstance(data, FolderImages) and len(data) == 4
    assert data.images.dtype == torch.uint8 and data.images.shape == (4, 1, 28, 28)
    assert torch.equal(data.images[:, 0], torch.from_numpy(GREY))
    assert data.labels is None and data.class_names is None


def test_rgb_folder_png_and_jpeg(tmp_path):
    save_image(tmp_path / "0.png", RGB[0])
    save_image(tmp_path / "1.png", RGB[1])
    flat = np.empty((28, 28, 3), np.uint8)
    flat[...] = (200, 40, 90)  # a flat colour survives JPEG almost exactly
    save_image(tmp_path / "2.JPEG", flat, quality=95)
    save_image(tmp_path / "3.jpg", flat, quality=95)
    data = read_image_folder(tmp_path)
    assert data.images.dtype == torch.uint8 and data.images.shape == (4, 3, 28, 28)
    assert torch.equal(data.images[:2], torch.from_numpy(RGB[:2]).permute(0, 3, 1, 2))  # R, G, B planes in order
    jpeg = data.images[2:].permute(0, 2, 3, 1).int()
    assert (jpeg - torch.tensor([200, 40, 90])).abs().max() <= 3


def test_class_subfolders_give_labels_and_sorted_class_names(tmp_path):
    layout = {"cat": ["b.png", "a.png"], "ant": ["z.png"], "bee": ["c.png", "a.png", "b.png"]}  # written out of order
    values = iter(range(10, 250, 30))  # a distinct grey level per file
    for name, files in layout.items():
        for file in files:
            save_image(tmp_path / name / file, np.full((28, 28), next(values), np.uint8))
    (tmp_path / "readme.md").write_text("classes in subfolders")  # not an image: does not count as top-level images
    data = read_image_folder(tmp_path)
    assert data.class_names == ("ant", "bee", "cat")
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == [0, 1, 1, 1, 2, 2]
    order = ["ant/z.png", "bee/a.png", "bee/b.png", "bee/c.png", "cat/a.png", "cat/b.png"]  # sorted relative paths
    expected = [np.asarray(Image.open(tmp_path / relative))[0, 0] for relative in order]
    assert data.images[:, 0, 0, 0].tolist() == expected and data.images.shape == (6, 1, 28, 28)


def test_a_single_class_subfolder_is_one_class(tmp_path):
    save_image(tmp_path / "only" / "a.png", GREY[0])
    save_image(tmp_path / "only" / "b.png", GREY[1])
    data = read_image_folder(tmp_path)
    assert data.class_names == ("only",) and data.labels.tolist() == [0, 0]


def square_pattern() -> tuple[np.ndarray, np.ndarray]:
    """A 64 wide, 40 high image and the 28 x 28 it must become (shorter side 40 -> 28: factor 0.7).

    The centre square kept is columns 12..52 of the source; a 20x20 white square in the middle
    becomes 14x14 at [7, 21); a 10x10 marker at the crop's top-left corner becomes 7x7 at [0, 7);
    white stripes in the cropped-off columns must vanish.
    """
    source = np.zeros((40, 64), np.uint8)
    source[10:30, 22:42] = 255  # centred square
    source[0:10, 12:22] = 255  # top-left marker of the kept square: catches flips and shifts
    source[:, 0:12] = source[:, 52:64] = 255  # outside the centre crop
    expected = np.zeros((28, 28), np.uint8)
    expected[7:21, 7:21] = 255
    expected[0:7, 0:7] = 255
    return source, expected


@pytest.mark.parametrize("portrait", [False, True], ids=["64x40", "40x64"])
def test_larger_image_is_resized_then_centre_cropped(tmp_path, portrait):
    source, expected = square_pattern()
    if portrait:
        source, expected = source.T.copy(), expected.T.copy()
    save_image(tmp_path / "big.png", source)
    data = read_image_folder(tmp_path)
    assert data.images.shape == (1, 1, 28, 28)
    np.testing.assert_array_equal(data.images[0, 0].numpy(), expected)


def test_smaller_image_is_upscaled(tmp_path):
    save_image(tmp_path / "small.png", np.full((10, 14), 200, np.uint8))  # 14 wide, 10 high
    pixels = read_image_folder(tmp_path).images
    assert pixels.shape == (1, 1, 28, 28) and (pixels.int() - 200).abs().max() <= 1


def make_mixed(folder: Path) -> tuple[Path, Path]:
    grey = save_image(folder / "a_grey.png", GREY[0])
    colour = save_image(folder / "b_colour.png", RGB[0])
    return grey, colour


def test_mixed_grey_and_colour_need_channels(tmp_path):
    grey, colour = make_mixed(tmp_path)
    message = user_error(read_image_folder, tmp_path)
    assert str(grey) in message and str(colour) in message and option("channels") in message
    assert message.index(str(grey)) < message.index("is grey") < message.index(str(colour)) < message.index("is colour")
    with command_line_names():
        assert "--channels" in user_error(read_own_images, tmp_path)


def test_mixed_message_names_the_kinds_whichever_comes_first(tmp_path):
    colour = save_image(tmp_path / "a_colour.png", RGB[0])
    grey = save_image(tmp_path / "b_grey.png", GREY[0])
    message = user_error(read_image_folder, tmp_path)
    assert f"{grey} is grey" in message and f"{colour} is colour" in message


def test_channels_convert_mixed_folders(tmp_path):
    make_mixed(tmp_path)
    grey = read_image_folder(tmp_path, channels=1).images
    assert grey.shape == (2, 1, 28, 28)
    assert torch.equal(grey[0, 0], torch.from_numpy(GREY[0]))
    assert torch.equal(grey[1, 0], torch.from_numpy(np.array(Image.fromarray(RGB[0]).convert("L"))))
    colour = read_image_folder(tmp_path, channels=3).images
    assert colour.shape == (2, 3, 28, 28)
    assert all(torch.equal(colour[0, c], torch.from_numpy(GREY[0])) for c in range(3))  # grey repeated into R, G, B
    assert torch.equal(colour[1], torch.from_numpy(RGB[0]).permute(2, 0, 1))


def test_alpha_is_flattened_onto_black(tmp_path):
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = 255  # white, fully transparent: background, black
    rgba[0, 0] = (200, 100, 50, 128)  # half transparent: half its value
    rgba[1, 1] = (10, 20, 30, 255)  # opaque: unchanged
    save_image(tmp_path / "rgba.png", rgba)
    pixels = read_image_folder(tmp_path).images[0].permute(1, 2, 0).int()
    assert pixels.shape == (28, 28, 3)
    assert (pixels[0, 0] - torch.tensor([100, 50, 25])).abs().max() <= 1
    assert pixels[1, 1].tolist() == [10, 20, 30]
    assert pixels.sum() == pixels[0, 0].sum() + pixels[1, 1].sum()


def test_grey_alpha_and_palette_transparency(tmp_path):
    la = np.zeros((28, 28, 2), np.uint8)
    la[..., 0] = 240
    la[..., 1] = 0
    la[5, 5] = (240, 255)
    save_image(tmp_path / "la.png", la)
    palette = Image.new("P", (28, 28), 1)
    palette.putpalette([0, 0, 0, 255, 255, 255])
    palette.putpixel((3, 4), 0)
    palette.save(tmp_path / "p.png", transparency=1)  # index 1 (white) transparent: only black remains
    data = read_image_folder(tmp_path)
    assert data.images.shape == (2, 1, 28, 28)  # both grey
    assert data.images[0].sum() == 240 and data.images[0, 0, 5, 5] == 240
    assert data.images[1].sum() == 0


def test_palette_images_grey_or_colour_by_their_colours(tmp_path):
    grey_palette = Image.fromarray(GREY[0]).convert("P")  # an adaptive palette of greys
    grey_palette.save(tmp_path / "a.png")
    save_image(tmp_path / "b.png", GREY[1])
    data = read_image_folder(tmp_path)
    assert data.images.shape == (2, 1, 28, 28)  # a grey palette is grey: no mixed-folder error
    assert torch.equal(data.images[0, 0], torch.from_numpy(np.array(grey_palette.convert("L"))))
    colour = tmp_path / "colour"
    colour.mkdir()
    colour_palette = Image.new("P", (28, 28), 0)
    colour_palette.putpalette([255, 0, 0, 0, 0, 255])
    colour_palette.putpixel((0, 0), 1)
    colour_palette.save(colour / "c.png")
    pixels = read_image_folder(colour).images
    assert pixels.shape == (1, 3, 28, 28)
    assert pixels[0, :, 0, 0].tolist() == [0, 0, 255] and pixels[0, :, 1, 1].tolist() == [255, 0, 0]


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    deep = np.zeros((28, 28), np.uint16)
    deep[0, :3] = (65535, 32896, 257)
    save_image(tmp_path / "deep.png", deep)
    pixels = read_image_folder(tmp_path).images
    assert pixels.shape == (1, 1, 28, 28) and pixels[0, 0, 0, :4].tolist() == [255, 128, 1, 0]


# --- bad folders and images: one UserError naming the file ---------------------------------------


def test_missing_path_and_not_a_folder(tmp_path):
    missing = tmp_path / "nowhere"
    for call in (read_image_folder, read_own_images, read_image_array):
        assert str(missing) in user_error(call, missing)
    file = save_image(tmp_path / "one.png", GREY[0])
    assert str(file) in user_error(read_image_folder, file)
    assert str(file) in user_error(read_own_images, file)  # a single image is neither a folder nor a .npy
    assert str(tmp_path) in user_error(read_image_array, tmp_path)


def test_folder_without_images(tmp_path):
    assert str(tmp_path) in user_error(read_image_folder, tmp_path)
    (tmp_path / "notes.txt").write_text("no images here")
    save_image(tmp_path / ".hidden.png", GREY[0])
    assert "no images" in user_error(read_image_folder, tmp_path)


def test_images_only_two_levels_down_are_not_read(tmp_path):
    save_image(tmp_path / "a" / "deeper" / "x.png", GREY[0])
    message = user_error(read_image_folder, tmp_path)
    assert str(tmp_path) in message and "one level" in message


@pytest.mark.parametrize("kind", ["truncated-png", "truncated-jpeg", "text", "gif-named-png", "empty-file"])
def test_unreadable_images(tmp_path, kind):
    save_image(tmp_path / "good.png", GREY[0])
    bad = tmp_path / ("bad.jpg" if "jpeg" in kind else "bad.png")
    if kind.startswith("truncated"):
        save_image(bad, RGB[0].mean(axis=2).astype(np.uint8), format="JPEG" if "jpeg" in kind else "PNG")
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    elif kind == "text":
        bad.write_text("not an image at all")
    elif kind == "gif-named-png":
        Image.fromarray(GREY[1]).save(bad, format="GIF")
    else:
        bad.write_bytes(b"")
    message = user_error(read_image_folder, tmp_path)
    assert str(bad) in message and "replace or remove it" in message


@pytest.mark.parametrize("size", [(5000, 5000), (4097, 4096), (30000, 30000)])
def test_huge_images_are_refused_before_decoding(tmp_path, size):
    save_image(tmp_path / "good.png", GREY[0])
    bomb = png_declaring(tmp_path / "bomb.png", *size)  # decoding it would fail as truncated instead
    message = user_error(read_image_folder, tmp_path)
    assert str(bomb) in message and f"{size[0]}x{size[1]}" in message and "4096x4096" in message


def test_empty_class_subfolder(tmp_path):
    save_image(tmp_path / "cats" / "a.png", GREY[0])
    (tmp_path / "dogs").mkdir()
    (tmp_path / "dogs" / "list.txt").write_text("forgot the images")
    message = user_error(read_image_folder, tmp_path)
    assert str(tmp_path / "dogs") in message and "no images" in message


def test_top_level_images_beside_class_subfolders(tmp_path):
    top = save_image(tmp_path / "loose.png", GREY[0])
    save_image(tmp_path / "cats" / "a.png", GREY[1])
    message = user_error(read_image_folder, tmp_path)
    assert str(top) in message and str(tmp_path / "cats") in message


@pytest.mark.parametrize("channels", [0, 2, 4, True, "3"])
def test_channels_must_be_1_or_3(tmp_path, channels):
    save_image(tmp_path / "a.png", GREY[0])
    np.save(tmp_path / "a.npy", GREY)
    for call, path in ((read_image_folder, tmp_path), (read_image_array, tmp_path / "a.npy")):
        assert option("channels") in user_error(call, path, channels=channels)
    with command_line_names():
        assert "--channels" in user_error(read_own_images, tmp_path, channels=channels)


def test_not_enough_memory(tmp_path, monkeypatch):
    save_image(tmp_path / "a.png", GREY[0])
    np.save(tmp_path / "a.npy", GREY)
    monkeypatch.setattr(folder_module, "available_memory", lambda: 100)  # fewer bytes than one 28x28 image
    assert str(tmp_path) in user_error(read_image_folder, tmp_path)
    assert str(tmp_path / "a.npy") in user_error(read_image_array, tmp_path / "a.npy")


# --- arrays ---------------------------------------------------------------------------------------


def save_npy(tmp_path: Path, array: np.ndarray, name: str = "images.npy") -> Path:
    path = tmp_path / name
    np.save(path, array)
    return path


@pytest.mark.parametrize(
    "array",
    [
        GREY,
        GREY.reshape(4, 1, 28, 28),
        GREY.astype(np.int64),
        GREY.astype(np.float32) / 255,
        GREY.astype(np.float64) / 127.5 - 1,
        GREY.astype(np.float16) / 255,
        np.asfortranarray(GREY.astype(np.float32) / 127.5 - 1),
    ],
    ids=["uint8", "uint8-channel", "int64", "float-unit", "float-signed", "float16-unit", "fortran-signed"],
)
def test_grey_npy_forms_give_the_same_uint8(tmp_path, array):
    data = read_own_images(save_npy(tmp_path, array))
    assert data.images.dtype == torch.uint8 and data.images.shape == (4, 1, 28, 28)
    assert torch.equal(data.images[:, 0], torch.from_numpy(GREY))
    assert data.labels is None and data.class_names is None


CHANNELS_FIRST = np.ascontiguousarray(RGB.transpose(0, 3, 1, 2))


@pytest.mark.parametrize(
    "array",
    [
        CHANNELS_FIRST,
        RGB,
        RGB.astype(np.float32) / 255,
        CHANNELS_FIRST.astype(np.float32) / 127.5 - 1,
        RGB.astype(np.float64) / 127.5 - 1,
    ],
    ids=["uint8-first", "uint8-last", "float-unit-last", "float-signed-first", "float-signed-last"],
)
def test_rgb_npy_forms_give_the_same_uint8(tmp_path, array):
    images = read_image_array(save_npy(tmp_path, array)).images
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 28, 28)
    assert torch.equal(images, torch.from_numpy(CHANNELS_FIRST))


def test_npy_channels_conversion_matches_pillow(tmp_path):
    grey = read_image_array(save_npy(tmp_path, RGB), channels=1).images
    expected = np.stack([np.asarray(Image.fromarray(image).convert("L")) for image in RGB])
    assert grey.shape == (4, 1, 28, 28) and torch.equal(grey[:, 0], torch.from_numpy(expected))
    colour = read_image_array(save_npy(tmp_path, GREY), channels=3).images
    assert colour.shape == (4, 3, 28, 28) and all(torch.equal(colour[:, c], torch.from_numpy(GREY)) for c in range(3))


def test_npy_and_folder_agree(tmp_path):
    for index, image in enumerate(RGB):
        save_image(tmp_path / "png" / f"{index}.png", image)
    for channels in (None, 1, 3):
        from_folder = read_image_folder(tmp_path / "png", channels).images
        assert torch.equal(from_folder, read_image_array(save_npy(tmp_path, RGB), channels).images)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_npy_not_finite(tmp_path, value):
    array = GREY.astype(np.float32) / 255
    array[2, 3, 4] = value
    path = save_npy(tmp_path, array)
    message = user_error(read_image_array, path)
    assert str(path) in message and "NaN or infinity" in message and "1 image(s)" in message


@pytest.mark.parametrize(
    "shape",
    [(4, 784), (4, 2, 28, 28), (4, 28, 28, 1), (4, 28, 28, 4), (28, 28), (4, 1, 1, 28, 28)],
)
def test_npy_wrong_shapes(tmp_path, shape):
    path = save_npy(tmp_path, np.zeros(shape, np.uint8))
    message = user_error(read_image_array, path)
    assert str(path) in message and str(shape) in message and "(N, 28, 28, 3)" in message


@pytest.mark.parametrize("shape", [(4, 64, 64), (4, 1, 32, 32), (4, 3, 64, 40), (4, 64, 64, 3)])
def test_npy_other_sizes_are_not_resized(tmp_path, shape):
    path = save_npy(tmp_path, np.zeros(shape, np.uint8))
    message = user_error(read_image_array, path)
    size = f"{shape[-2]}x{shape[-1]}" if shape[-1] != 3 else f"{shape[1]}x{shape[2]}"
    assert str(path) in message and size in message and "not resized" in message


class WritesWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_npy_object_arrays_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "objects.npy"
    np.save(path, np.array([WritesWhenUnpickled(marker)], dtype=object), allow_pickle=True)
    assert not marker.exists()
    message = user_error(read_own_images, path)
    assert str(path) in message and "objects" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda data: data[:-100], "truncated"),
        (lambda data: data + b"\0" * 10, "bytes beyond"),
        (lambda data: b"just some text, saved as .npy", "not a .npy file"),
        (lambda data: b"", "not a .npy file"),
        (lambda data: data[:12], "not a readable .npy"),
    ],
    ids=["truncated", "trailing", "text", "empty-file", "header-cut"],
)
def test_npy_damaged_files(tmp_path, damage, words):
    path = save_npy(tmp_path, GREY)
    path.write_bytes(damage(path.read_bytes()))
    message = user_error(read_image_array, path)
    assert str(path) in message and words in message


@pytest.mark.parametrize(
    "array, words",
    [
        (np.zeros((0, 28, 28), np.uint8), "no images"),
        (np.full((2, 28, 28), 300, np.int64), "0..255"),
        (np.full((2, 28, 28), -1, np.int16), "0..255"),
        (np.full((2, 28, 28), 2.0, np.float32), "[0, 1]"),
        (np.full((2, 28, 28), -1.5, np.float32), "[-1, 1]"),
        (np.zeros((2, 28, 28), bool), "dtype bool"),
        (np.zeros((2, 28, 28), np.complex64), "dtype complex64"),
    ],
    ids=["empty", "above-255", "negative-int", "float-above-1", "float-below-minus-1", "bool", "complex"],
)
def test_npy_bad_values(tmp_path, array, words):
    path = save_npy(tmp_path, array)
    message = user_error(read_image_array, path)
    assert str(path) in message and words in message


def test_npy_float_range_is_decided_by_the_sign_of_the_minimum(tmp_path):
    # no negative value: [0, 1], so 0 is black
    assert read_image_array(save_npy(tmp_path, np.zeros((2, 28, 28), np.float32))).images.max() == 0
    # one slightly negative value: the whole array is [-1, 1], so 0 is mid-grey
    signed = np.zeros((2, 28, 28), np.float32)
    signed[0, 0, 0] = -0.25
    images = read_image_array(save_npy(tmp_path, signed)).images
    assert images[1].unique().tolist() == [128] and images[0, 0, 0, 0] == 96


def test_npy_slight_overshoot_is_clipped(tmp_path):
    array = np.full((2, 28, 28), -1.0, np.float32)
    array[0, 0, 0] = 1.0004  # a tanh output rounded upwards
    images = read_image_array(save_npy(tmp_path, array)).images
    assert images.max() == 255 and images.min() == 0


def test_other_files_are_neither(tmp_path):
    npz = tmp_path / "images.npz"
    np.savez(npz, GREY)
    message = user_error(read_own_images, npz)
    assert str(npz) in message and "numpy.save" in message


# --- the user's folder is only read --------------------------------------------------------------


def listing(root: Path) -> dict:
    """Every path under root (root included) with its size and modification time."""
    entries = {}
    for directory, folders, files in os.walk(root):
        for name in ["."] + folders + files:
            path = Path(directory) / name
            status = path.stat()
            entries[str(path.relative_to(root))] = (status.st_size if path.is_file() else None, status.st_mtime_ns)
    return entries


def test_nothing_is_written_into_the_users_folder(tmp_path):
    labelled, loose = tmp_path / "labelled", tmp_path / "loose"
    for index, image in enumerate(GREY):
        save_image(labelled / str(index % 2) / f"{index}.png", image)
        save_image(loose / f"{index}.jpg", RGB[index])
    save_npy(loose, RGB, "array.npy")
    before = listing(tmp_path)
    read_own_images(labelled)
    read_own_images(loose, channels=1)
    read_own_images(loose / "array.npy", channels=1)
    assert listing(tmp_path) == before
