"""Tests of ApplePerturbLib.imageio on real files written in tmp_path."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from ApplePerturbLib.errors import InvalidInputError
from ApplePerturbLib.imageio import (
    atomic_output,
    read_image,
    read_image_spacing,
    read_mask,
    write_mask,
)


def _random_mask(shape=(48, 64), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) > 0.6


def _textured_picture(width=320, height=240) -> np.ndarray:
    """Return an HxWx3 uint8 picture with enough detail that its JPEG is tens of kB."""
    rng = np.random.default_rng(1)
    rows, cols = np.mgrid[0:height, 0:width]
    base = (np.sin(rows / 7.0) * np.cos(cols / 11.0) * 100 + 128).astype(np.int16)
    noise = rng.integers(-40, 40, size=(height, width))
    grey = np.clip(base + noise, 0, 255).astype(np.uint8)
    return np.stack([grey, grey // 2, 255 - grey], axis=2)


def _truncate(path, keep_fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])


def _leftovers(folder):
    return sorted(path.name for path in folder.iterdir() if ".tmp-" in path.name)


# --- masks -----------------------------------------------------------------


def test_mask_png_round_trip(tmp_path):
    mask = _random_mask()
    path = tmp_path / "mask.png"

    write_mask(path, mask)

    stored = np.asarray(Image.open(path))
    assert stored.dtype == np.uint8
    assert set(np.unique(stored).tolist()) == {0, 255}
    np.testing.assert_array_equal(read_mask(path), mask)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["mask.nrrd", "mask.nii", "mask.nii.gz"])
def test_mask_volume_formats_round_trip_with_spacing(tmp_path, name):
    mask = _random_mask(seed=2)
    path = tmp_path / name

    write_mask(path, mask, spacing=(0.25, 0.5))

    stored = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert set(np.unique(stored).tolist()) == {0, 1}
    np.testing.assert_array_equal(read_mask(path), mask)
    assert read_image_spacing(path) == pytest.approx((0.25, 0.5))
    assert _leftovers(tmp_path) == []


def test_mask_accepts_zero_one_uint8_array(tmp_path):
    mask = _random_mask(seed=3).astype(np.uint8)
    write_mask(tmp_path / "m.png", mask)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask.astype(bool))


def test_mask_single_value_files(tmp_path):
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "empty.png")
    Image.fromarray(np.full((10, 12), 255, np.uint8)).save(tmp_path / "full.png")

    assert not read_mask(tmp_path / "empty.png").any()
    assert read_mask(tmp_path / "full.png").all()


def test_mask_not_binary_rejected(tmp_path):
    pixels = np.zeros((20, 30), np.uint8)
    pixels[2:5, 2:5] = 1
    pixels[10:12, 10:12] = 2
    path = tmp_path / "labels.png"
    Image.fromarray(pixels).save(path)

    with pytest.raises(InvalidInputError) as caught:
        read_mask(path)

    message = str(caught.value)
    assert "labels.png" in message
    assert "not binary" in message
    assert "[0, 1, 2]" in message
    assert "expected 0 and 1 or 0 and 255" in message


def test_mask_rgb_identical_channels_accepted(tmp_path):
    mask = _random_mask(seed=4)
    grey = mask.astype(np.uint8) * 255
    Image.fromarray(np.stack([grey] * 3, axis=2)).save(tmp_path / "rgb.png")

    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png"), mask)


def test_mask_rgb_different_channels_rejected(tmp_path):
    pixels = np.zeros((10, 10, 3), np.uint8)
    pixels[2:4, 2:4, 0] = 255
    Image.fromarray(pixels).save(tmp_path / "red.png")

    with pytest.raises(InvalidInputError, match="red.png.*channels"):
        read_mask(tmp_path / "red.png")


def test_mask_wrong_size_rejected(tmp_path):
    path = tmp_path / "small.png"
    write_mask(path, _random_mask(shape=(40, 50)))

    with pytest.raises(InvalidInputError) as caught:
        read_mask(path, expected_shape=(60, 80, 3))

    message = str(caught.value)
    assert "small.png" in message
    assert "50 x 40" in message
    assert "80 x 60" in message


def test_write_mask_rejects_bad_input(tmp_path):
    with pytest.raises(InvalidInputError, match="extension"):
        write_mask(tmp_path / "mask.jpg", _random_mask())
    with pytest.raises(InvalidInputError, match="not binary"):
        write_mask(tmp_path / "mask.png", np.arange(12).reshape(3, 4))
    with pytest.raises(InvalidInputError, match="HxW"):
        write_mask(tmp_path / "mask.png", np.zeros((2, 3, 4), bool))
    with pytest.raises(InvalidInputError, match="spacing"):
        write_mask(tmp_path / "mask.nrrd", _random_mask(), spacing=(0.0, 1.0))
    assert list(tmp_path.iterdir()) == []


# --- images ----------------------------------------------------------------


def test_read_image_rgb_jpeg(tmp_path):
    picture = _textured_picture()
    path = tmp_path / "picture.jpg"
    Image.fromarray(picture).save(path, quality=95, subsampling=0)

    image = read_image(path)
    decoded = np.asarray(Image.open(path).convert("RGB")).astype(int)

    assert image.shape == (240, 320, 3)
    assert image.dtype == np.uint8
    # Two JPEG decoders may differ by a grey level or so (no chroma subsampling here), never by a channel swap.
    assert np.abs(image.astype(int) - decoded).mean() < 2
    for channel in range(3):
        assert abs(image[..., channel].mean() - picture[..., channel].mean()) < 3


def test_read_image_grey_and_rgba(tmp_path):
    grey = _textured_picture()[..., 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgba = np.dstack([_textured_picture(), np.full((240, 320), 7, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")

    grey_image = read_image(tmp_path / "grey.png")
    rgba_image = read_image(tmp_path / "rgba.png")

    assert grey_image.shape == (240, 320, 3)
    for channel in range(3):
        np.testing.assert_array_equal(grey_image[..., channel], grey)
    np.testing.assert_array_equal(rgba_image, rgba[..., :3])


def test_read_image_rescales_16_bit(tmp_path):
    pixels = np.linspace(100, 1100, 30 * 40).reshape(30, 40).astype(np.uint16)
    path = tmp_path / "deep.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(pixels), str(path))

    image = read_image(path)

    assert image.dtype == np.uint8
    assert image.min() == 0
    assert image.max() == 255
    assert image[0, 0, 0] == 0
    assert image[-1, -1, 0] == 255


def test_read_image_single_slice_volume_and_3d_rejected(tmp_path):
    slice_volume = sitk.GetImageFromArray(np.full((1, 20, 30), 9, np.uint8))
    sitk.WriteImage(slice_volume, str(tmp_path / "one.nrrd"))
    volume = sitk.GetImageFromArray(np.zeros((4, 20, 30), np.uint8))
    sitk.WriteImage(volume, str(tmp_path / "volume.nrrd"))

    assert read_image(tmp_path / "one.nrrd").shape == (20, 30, 3)
    with pytest.raises(InvalidInputError) as caught:
        read_image(tmp_path / "volume.nrrd")
    assert "volume.nrrd" in str(caught.value)
    assert "2D" in str(caught.value)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_image_rejected(tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    Image.fromarray(_textured_picture()).save(path)
    _truncate(path)

    with pytest.raises(InvalidInputError) as caught:
        read_image(path)

    assert str(path) in str(caught.value)
    assert "truncated" in str(caught.value)


def test_truncated_mask_rejected(tmp_path):
    path = tmp_path / "cut_mask.png"
    write_mask(path, _random_mask(shape=(200, 300)))
    _truncate(path)

    with pytest.raises(InvalidInputError, match="cut_mask.png"):
        read_mask(path)


def test_missing_and_junk_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.png"):
        read_image(tmp_path / "absent.png")
    with pytest.raises(FileNotFoundError, match="absent.png"):
        read_mask(tmp_path / "absent.png")

    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(InvalidInputError, match="junk.png"):
        read_image(junk)


def test_spacing_unknown_for_raster_formats(tmp_path):
    Image.fromarray(_textured_picture()).save(tmp_path / "dpi.jpg", dpi=(96, 96))
    Image.fromarray(_textured_picture()).save(tmp_path / "plain.png")
    image = sitk.GetImageFromArray(np.zeros((5, 6), np.uint8))
    image.SetSpacing((0.1, 0.2))
    sitk.WriteImage(image, str(tmp_path / "spaced.nrrd"))

    assert read_image_spacing(tmp_path / "dpi.jpg") is None
    assert read_image_spacing(tmp_path / "plain.png") is None
    assert read_image_spacing(tmp_path / "spaced.nrrd") == pytest.approx((0.1, 0.2))


# --- atomic output -----------------------------------------------------------


def test_atomic_output_replaces_on_success(tmp_path):
    target = tmp_path / "new" / "folder" / "result.nii.gz"

    with atomic_output(target) as temp_path:
        assert temp_path.parent == target.parent
        assert temp_path.name.startswith(".result.tmp-")
        assert temp_path.name.endswith(".nii.gz")
        temp_path.write_bytes(b"payload")

    assert target.read_bytes() == b"payload"
    assert _leftovers(target.parent) == []


@pytest.mark.parametrize("error", [RuntimeError("writer failed"), KeyboardInterrupt()])
def test_atomic_output_keeps_old_file_on_error(tmp_path, error):
    target = tmp_path / "result.csv"
    target.write_text("old content")

    with pytest.raises(type(error)):
        with atomic_output(target) as temp_path:
            temp_path.write_text("half-written")
            raise error

    assert target.read_text() == "old content"
    assert _leftovers(tmp_path) == []
