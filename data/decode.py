"""Image files -> uint8 arrays at the model's geometry: every PIL mode, EXIF orientation, the
decompression-bomb limit, and fitting to a square (pad, resize or crop, centred or at a given offset).

:func:`decode_image` is the one function that reads an image file in vqldm's data path (the folder index
validates with it, the loaders read with it); a file it cannot use raises ValueError with a short reason.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
MAX_IMAGE_PIXELS = 64_000_000  # decompression-bomb limit: 64 megapixels (8000 x 8000)


def pil_to_array(img: Image.Image, channels: int) -> np.ndarray:
    """Any PIL mode (1, L, LA, P, RGB, RGBA, CMYK, I;16, I, F) -> uint8 HxWxC array with ``channels``."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F":
            peak = 1.0 if arr.size and arr.max() <= 1.0 else 255.0
        else:
            peak = 65535.0 if (mode.startswith("I;16") or (arr.size and arr.max() > 255)) else 255.0
        arr = np.clip(np.round(arr / peak * 255.0), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
        mode = "L"
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("LA", "RGBA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # alpha composited over white
        img = Image.alpha_composite(background, rgba).convert("RGB")
    img = img.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def fit_array(arr: np.ndarray, size: int, fit: str, pad_value: int = 0, offset: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """HxWxC uint8 -> size x size x C, by centered pad/crop or resize-shorter-side + crop. ``offset``
    (top, left) in [0, 1] places the crop where the image is larger: 0.5 = centred, random for the
    random crops of training (``data.random_crop``)."""
    h, w, c = arr.shape
    if fit == "resize" and (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        img = Image.fromarray(arr[:, :, 0] if c == 1 else arr)
        img = img.resize((nw, nh), Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)
        arr = np.asarray(img, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        h, w = nh, nw
    # crop where larger (centred unless an offset says otherwise)
    top, left = int(max(0, h - size) * offset[0]), int(max(0, w - size) * offset[1])
    arr = arr[top : top + size, left : left + size]
    h, w = arr.shape[:2]
    if (h, w) != (size, size):  # center pad where smaller
        out = np.full((size, size, c), pad_value, dtype=np.uint8)
        t, l = (size - h) // 2, (size - w) // 2
        out[t : t + h, l : l + w] = arr
        arr = out
    return arr


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (photos from phones/cameras), as diffusers' ``load_image`` does."""
    try:
        return ImageOps.exif_transpose(img) or img
    except Exception:  # a malformed EXIF block is not worth losing the image over
        return img


def _open_loaded(source: str | os.PathLike | bytes, use):
    """Open ``source`` (a path or an encoded file's bytes), decode it fully and return ``use(image)``;
    every way a file can be unusable becomes a ValueError with a short reason."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ValueError("zero-byte file")
        fp = io.BytesIO(source)
    else:
        fp = Path(source)
        try:
            if fp.stat().st_size == 0:
                raise ValueError("zero-byte file")
        except OSError as err:
            raise ValueError(f"unreadable ({err.strerror})") from None
    previous = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise ValueError(f"too large ({img.width}x{img.height} pixels, limit {MAX_IMAGE_PIXELS})")
                img.load()
                return use(img)
    except ValueError as err:
        if str(err).startswith("too large"):
            raise
        raise ValueError(f"corrupt (ValueError: {err})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(f"too large (over {MAX_IMAGE_PIXELS} pixels; decompression-bomb limit)") from None
    except UnidentifiedImageError:
        raise ValueError("not an image") from None
    except (OSError, SyntaxError, struct.error, EOFError) as err:
        msg = str(err).lower()
        reason = "truncated" if "truncat" in msg or "incomplete" in msg or "eof" in msg else "corrupt"
        raise ValueError(f"{reason} ({err})") from None
    except MemoryError:
        raise ValueError("too large (out of memory while decoding)") from None
    except Exception as err:  # PIL's decoders raise many types on malformed files (IndexError, ...)
        raise ValueError(f"corrupt ({type(err).__name__}: {err})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def decode_image(source: str | os.PathLike | bytes, channels: int) -> np.ndarray:
    """Decode one file (a path, or its bytes) fully to uint8 H x W x ``channels`` at its own size, upright
    (EXIF orientation applied); raises ValueError with a short reason for anything unusable (zero-byte, not
    an image, truncated, corrupt, too large)."""
    return _open_loaded(source, lambda img: pil_to_array(_upright(img), channels))


def probe_image(path: str | os.PathLike | bytes) -> tuple[int, int, int]:
    """(height, width, colour bands) of an image file (a path, or its bytes: a tar shard's member), after
    decoding it fully (the folder and shard indexes' check that an image is usable); ValueError as
    :func:`decode_image`."""
    def shape(img: Image.Image) -> tuple[int, int, int]:
        img = _upright(img)
        colour = img.mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
        return img.height, img.width, 3 if colour else 1

    return _open_loaded(path, shape)


def load_image(path: str | os.PathLike, channels: int, size: int, fit: str, offset: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """Decode one file and fit it to ``size`` x ``size`` (:func:`fit_array`); ValueError if unusable."""
    return fit_array(decode_image(path, channels), size, fit, offset=offset)
