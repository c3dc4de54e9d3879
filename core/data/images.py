"""One untrusted image: limits, opening it safely as RGB, and thumbnails for the Data page.

Only the header is read before the size checks; JPEGs decode at the reduced scale the wanted size
allows (`Image.draft`). Pillow's own bomb limit is set to the same number of pixels.
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.data.dataset import Dataset, DatasetError

# --- limits for untrusted input --------------------------------------------------------------
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")  # Pillow format names open_image accepts
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
# 200 MP: the largest photos current phone sensors take (200 MP modes; 48-108 MP is common), far
# below a bomb's gigapixels. Only the header is read before this check; JPEGs then decode at the
# reduced scale that the wanted size allows (`Image.draft`), so a big photo costs little memory.
# Pillow's own bomb check (warning above its limit, error above twice it) uses the same number.
MAX_IMAGE_PIXELS = 200_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
CHECK_DRAFT = (512, 512)  # the scale at which a dataset's JPEGs are checked (decoded fully, at 1/8 size at least)
MAX_IMAGE_BYTES = 64 * 1024**2  # one image file

# --- one untrusted image -------------------------------------------------------------------------


def _read_bytes(source: Path | str | bytes | io.IOBase) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        try:
            if path.stat().st_size > MAX_IMAGE_BYTES:
                raise DatasetError(f"{path.name}: file is larger than {MAX_IMAGE_BYTES // 1024**2} MB")
            data = path.read_bytes()
        except OSError as exc:
            raise DatasetError(f"{path.name}: cannot read the file ({exc.strerror or exc})") from None
    else:  # file-like, e.g. a Streamlit UploadedFile
        data = source.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise DatasetError(f"image file is larger than {MAX_IMAGE_BYTES // 1024**2} MB")
    if not data:
        raise DatasetError("the file is empty")
    return data


def _check_pixels(img: Image.Image) -> None:
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        raise DatasetError(
            f"image is too large: {w}x{h} pixels (limit {MAX_IMAGE_PIXELS // 1_000_000} megapixels); "
            "a possible decompression bomb"
        )


def open_image(source: Path | str | bytes | io.IOBase, *, draft: tuple[int, int] | None = None) -> Image.Image:
    """Open ONE untrusted image as RGB, or raise `DatasetError` with a clear reason.

    Only JPEG, PNG, WebP, BMP and GIF (first frame) are parsed; the size is
    capped before any pixel is decoded (Pillow's decompression-bomb warning is
    an error here, and our own limit is lower); the file is `verify()`-ed, then
    reopened and fully loaded, so truncated or corrupt files fail here rather
    than in the middle of an epoch. EXIF orientation is applied. `draft` (w, h)
    lets JPEG decode at a reduced scale when only a small image is needed.
    """
    data = _read_bytes(source)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as probe:
                _check_pixels(probe)
                probe.verify()
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            _check_pixels(img)
            if draft is not None and img.format == "JPEG":
                img.draft("RGB", draft)
            img.load()
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # a malformed EXIF block is no reason to reject the pixels
                pass
            return _to_8bit(img).convert("RGB")
        except DatasetError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise DatasetError(
                f"image is too large (more than {Image.MAX_IMAGE_PIXELS:,} pixels declared); a possible decompression bomb"
            ) from None
        except UnidentifiedImageError:
            raise DatasetError("not an image in a supported format (JPEG, PNG, WebP, BMP or GIF)") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
            raise DatasetError(f"corrupt or truncated image ({exc})") from None


def _to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer) grayscale image scaled to 8 bits; other images as they are.

    Pillow's `convert("RGB")` clips such pixels at 255 instead of scaling them, so a 16-bit
    PNG would come out white.
    """
    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        return img
    x = np.asarray(img, dtype=np.float64) if img.mode == "I" else np.asarray(img).astype(np.float64)
    return Image.fromarray(np.clip(x / 257.0, 0, 255).round().astype(np.uint8), mode="L")


def preview(ds: Dataset, per_class: int = 5, max_classes: int = 12, size: int = 96) -> dict[str, list[Image.Image]]:
    """A few training images per class as small RGB thumbnails, for the Data page (first images, stable)."""
    out: dict[str, list[Image.Image]] = {}
    for label, name in enumerate(ds.classes[:max_classes]):
        picks = [s.path for s in ds.train if s.label == label][:per_class]
        thumbs = []
        for p in picks:
            try:
                img = open_image(p, draft=(size, size))
            except DatasetError:
                continue
            img.thumbnail((size, size))
            thumbs.append(img)
        out[name] = thumbs
    return out
