"""Reading 2D images and binary masks, writing masks, atomic file output.

Images come back as HxWx3 uint8 RGB arrays and masks as HxW bool arrays, both
in array order: row (y) first, column (x) second, row 0 at the top of the
picture as the file stores it. SimpleITK reads every format (PNG, JPEG, BMP,
NRRD, NIfTI, DICOM, ...). Pillow re-reads PNG, JPEG and BMP files in full
first, because SimpleITK 2.5 returns a JPEG that was cut short as a picture
whose lower part is flat grey, with only a libjpeg warning on stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import SimpleITK as sitk
from PIL import Image

from ApplePerturbLib.errors import InvalidInputError

logger = logging.getLogger(__name__)

# SimpleITK ImageIO classes of plain raster formats. Pillow can decode these
# files in full, and their spacing is a print resolution (DPI), not a size in mm.
_RASTER_IMAGE_IOS = {"PNGImageIO", "JPEGImageIO", "BMPImageIO", "TIFFImageIO"}
_PILLOW_VERIFIED_IOS = {"PNGImageIO", "JPEGImageIO", "BMPImageIO"}

MASK_EXTENSIONS = (".png", ".nrrd", ".nii", ".nii.gz")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a 2D image file as an HxWx3 uint8 RGB array.

    A grey image is repeated into the 3 channels, the alpha channel of an
    RGBA or grey+alpha image is dropped, and a 3D image with a single slice
    is read as its slice. An image of any other pixel type than uint8
    (16-bit, float, signed) is rescaled linearly so that its minimum becomes
    0 and its maximum 255; a constant image becomes all 0.

    Raises:
        FileNotFoundError: the file does not exist.
        InvalidInputError: the file is not a readable image, is truncated,
            is a volume of several slices, or has an unsupported pixel type.
    """
    path = Path(path)
    pixels = _read_2d_pixels(path)

    if pixels.ndim == 3:
        pixels = _drop_alpha(pixels, path)
        if pixels.shape[2] == 1:
            pixels = pixels[..., 0]
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., np.newaxis], 3, axis=2)

    return _rescale_to_uint8(pixels, path)


def read_image_spacing(path: str | os.PathLike) -> tuple[float, float] | None:
    """Return the pixel spacing (x, y) in mm stored in an image file, or None.

    NRRD, NIfTI and DICOM files carry a spacing. PNG, JPEG, BMP and TIFF files
    give None: the value SimpleITK reports for them comes from the print
    resolution (1.0 without one, 0.2646 mm for 96 DPI), which does not
    measure the anatomy.

    NOTE: a NRRD or NIfTI file written without a spacing reads as (1.0, 1.0)
    and cannot be distinguished from a real 1 mm spacing.
    """
    path = Path(path)
    image_io = _image_io_for(path)
    if image_io in _RASTER_IMAGE_IOS:
        return None

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO(image_io)
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise InvalidInputError(f"cannot read image {path}: {_sitk_reason(error)}") from error

    spacing_x, spacing_y = (float(value) for value in reader.GetSpacing()[:2])
    if not (np.isfinite(spacing_x) and np.isfinite(spacing_y) and spacing_x > 0 and spacing_y > 0):
        return None
    return (spacing_x, spacing_y)


def read_mask(path: str | os.PathLike, expected_shape: Sequence[int] | None = None) -> np.ndarray:
    """Read a binary mask file as an HxW bool array.

    Accepted values are 0 and 1 or 0 and 255 (a mask holding only one of
    these values is accepted too). An RGB or RGBA mask is accepted when its
    colour channels are identical. ``expected_shape`` is the (H, W) or
    (H, W, C) shape of the mask's image.

    Raises:
        FileNotFoundError: the file does not exist.
        InvalidInputError: the file is unreadable or truncated, is not
            binary, has differing colour channels, or does not have
            ``expected_shape``.
    """
    path = Path(path)
    pixels = _read_2d_pixels(path)

    if pixels.ndim == 3:
        pixels = _drop_alpha(pixels, path)
        if not np.all(pixels == pixels[..., :1]):
            raise InvalidInputError(
                f"mask {path} has {pixels.shape[2]} colour channels with different values; "
                "save the mask as a grey image (one channel) with values 0 and 1 or 0 and 255."
            )
        pixels = pixels[..., 0]

    _check_binary_values(pixels, path)

    if expected_shape is not None:
        expected_height, expected_width = int(expected_shape[0]), int(expected_shape[1])
        height, width = pixels.shape
        if (height, width) != (expected_height, expected_width):
            raise InvalidInputError(
                f"mask {path} is {width} x {height} pixels (W x H) but its image is "
                f"{expected_width} x {expected_height}; the mask must have the size of its image."
            )

    return pixels != 0


def write_mask(
    path: str | os.PathLike,
    mask: np.ndarray,
    spacing: tuple[float, float] | None = None,
) -> None:
    """Write an HxW binary mask atomically.

    A ``.png`` file stores 0 and 255 and no spacing (``spacing`` is checked
    but not written). A ``.nrrd``, ``.nii`` or ``.nii.gz`` file stores 0 and
    1 and the pixel spacing (x, y) in mm when given. ``mask`` is a bool array
    or a numeric array with values 0 and 1 or 0 and 255.

    Raises:
        InvalidInputError: the mask is not 2D or not binary, the spacing is
            not two positive numbers, or the extension is not supported.
    """
    path = Path(path)
    extension = _mask_extension(path)

    array = np.asarray(mask)
    if array.ndim != 2 or array.size == 0:
        raise InvalidInputError(
            f"cannot write mask {path}: expected a non-empty HxW array, got shape {array.shape}."
        )
    if array.dtype != bool:
        _check_binary_values(array, path)
    foreground = array != 0

    if spacing is not None:
        spacing = _validated_spacing(spacing, path)

    if extension == ".png":
        image = sitk.GetImageFromArray(foreground.astype(np.uint8) * 255)
    else:
        image = sitk.GetImageFromArray(foreground.astype(np.uint8))
        if spacing is not None:
            image.SetSpacing(spacing)

    with atomic_output(path) as temp_path:
        sitk.WriteImage(image, str(temp_path), useCompression=True)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` and move it onto ``path`` on success.

    The temporary file is created empty in the same folder as
    ``.NAME.tmp-XXXXXXXX.EXT``, keeping the real extension (``.nii.gz``
    counts as one) so writers that pick the format from the extension work.
    Missing parent folders are created. When the body raises any exception,
    KeyboardInterrupt included, the temporary file is removed and ``path``
    keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_path = _create_temp_file(path)
    try:
        yield temp_path
        # Some writers (safetensors) recreate the file as 0600: give it the usual umask-based mode.
        os.chmod(temp_path, 0o666 & ~_UMASK)
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise


def _create_temp_file(path: Path) -> Path:
    """Create an empty, unique temporary file for ``atomic_output``."""
    extension = _full_extension(path.name)
    base = path.name[: len(path.name) - len(extension)]
    for _ in range(100):
        candidate = path.with_name(f".{base}.tmp-{secrets.token_hex(4)}{extension}")
        try:
            descriptor = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(descriptor)
        return candidate
    raise FileExistsError(f"could not create a temporary file next to {path}; remove old .tmp- files there.")


def _full_extension(name: str) -> str:
    """Return the extension of a file name, with a compression suffix kept whole (``.nii.gz``)."""
    suffixes = Path(name).suffixes
    if not suffixes:
        return ""
    if len(suffixes) >= 2 and suffixes[-1].lower() in {".gz", ".bz2", ".xz", ".zst"}:
        return "".join(suffixes[-2:])
    return suffixes[-1]


def _mask_extension(path: Path) -> str:
    name = path.name.lower()
    for extension in sorted(MASK_EXTENSIONS, key=len, reverse=True):
        if name.endswith(extension):
            return extension
    raise InvalidInputError(
        f"cannot write mask {path}: unsupported extension; use one of {', '.join(MASK_EXTENSIONS)}."
    )


def _validated_spacing(spacing: Sequence[float], path: Path) -> tuple[float, float]:
    values = tuple(float(value) for value in spacing)
    if len(values) != 2 or not all(np.isfinite(value) and value > 0 for value in values):
        raise InvalidInputError(
            f"invalid pixel spacing {tuple(spacing)} for {path}: expected two positive numbers (x, y) in mm."
        )
    return values


def _image_io_for(path: Path) -> str:
    """Return the SimpleITK ImageIO name that reads ``path`` (it looks at the file's content)."""
    if not path.exists():
        raise FileNotFoundError(f"image file {path} not found; check the path.")
    if not path.is_file():
        raise InvalidInputError(f"{path} is a folder, not an image file.")

    image_io = sitk.ImageFileReader.GetImageIOFromFileName(str(path))
    if not image_io:
        raise InvalidInputError(
            f"cannot read {path}: not an image format SimpleITK recognises "
            "(PNG, JPEG, BMP, TIFF, NRRD, NIfTI, DICOM); the file may be damaged or of another kind."
        )
    return image_io


def _read_2d_pixels(path: Path) -> np.ndarray:
    """Read a 2D image (or a 3D image of one slice) as an HxW or HxWxC array of its own dtype."""
    image_io = _image_io_for(path)
    if image_io in _PILLOW_VERIFIED_IOS:
        _verify_complete(path)

    try:
        image = sitk.ReadImage(str(path), sitk.sitkUnknown, image_io)
    except RuntimeError as error:
        raise InvalidInputError(f"cannot read image {path}: {_sitk_reason(error)}") from error

    size = image.GetSize()
    if image.GetDimension() == 3 and size[2] == 1:
        image = image[:, :, 0]
    elif image.GetDimension() != 2:
        raise InvalidInputError(
            f"{path} is a {image.GetDimension()}D image of size {' x '.join(str(s) for s in size)}; "
            "this tool takes 2D images or one frame: save the frame to segment as a 2D image."
        )

    pixels = sitk.GetArrayFromImage(image)
    if np.iscomplexobj(pixels):
        raise InvalidInputError(f"{path} has complex pixels ({image.GetPixelIDTypeAsString()}); save a real-valued image.")
    return pixels


def _verify_complete(path: Path) -> None:
    """Decode the whole file with Pillow, which raises on a truncated PNG, JPEG or BMP."""
    try:
        with Image.open(path) as picture:
            picture.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidInputError(
            f"cannot read image {path}: {error}; the file is damaged or truncated, copy it again."
        ) from error


def _drop_alpha(pixels: np.ndarray, path: Path) -> np.ndarray:
    """Drop the alpha channel of a grey+alpha (2) or RGBA (4) HxWxC array."""
    channels = pixels.shape[2]
    if channels in (2, 4):
        return pixels[..., : channels - 1]
    if channels in (1, 3):
        return pixels
    raise InvalidInputError(
        f"{path} has {channels} channels per pixel; expected grey (1), RGB (3) or RGBA (4)."
    )


def _rescale_to_uint8(pixels: np.ndarray, path: Path) -> np.ndarray:
    """Return uint8 pixels unchanged and map any other type linearly from [min, max] to [0, 255]."""
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels)
    if pixels.dtype == bool:
        return pixels.astype(np.uint8) * 255

    values = pixels.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        logger.warning("Image %s has no finite pixel value; reading it as black.", path)
        return np.zeros(pixels.shape, dtype=np.uint8)

    low, high = float(values[finite].min()), float(values[finite].max())
    logger.debug("Rescaling %s (%s) from [%g, %g] to [0, 255].", path, pixels.dtype, low, high)
    if high == low:
        return np.zeros(pixels.shape, dtype=np.uint8)
    scaled = np.where(finite, (values - low) / (high - low) * 255.0, 0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _check_binary_values(pixels: np.ndarray, path: Path) -> None:
    values = np.unique(pixels)
    value_set = set(values.tolist())
    if value_set <= {0, 1} or value_set <= {0, 255}:
        return

    listed_values = ", ".join(f"{value:g}" for value in values[:10].tolist())
    if values.size > 10:
        listed_values += f", ... ({values.size} distinct values)"
    raise InvalidInputError(
        f"mask {path} is not binary: values [{listed_values}] found; expected 0 and 1 or 0 and 255."
    )


def _sitk_reason(error: RuntimeError) -> str:
    """Return the readable part of a SimpleITK exception message, without ITK's source locations."""
    message = str(error).strip()
    marker = "ERROR:"
    if marker in message:
        message = message.rsplit(marker, 1)[1]
    return " ".join(message.split())
