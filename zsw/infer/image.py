"""Reading photos for reconstruction: any common format, mode, size and orientation.

:func:`load_image` turns a file, a PIL image or an array into what the model sees: an RGB
``[size, size, 3]`` uint8 image. In order:

1. decode fully (a truncated or non-image file is a one-line :class:`~zsw.errors.InputError`);
2. apply the EXIF orientation (phone photos);
3. convert the mode: 16-bit and 32-bit grayscale are rescaled to 8 bits, palette and
   grayscale-with-alpha become RGBA, CMYK/YCbCr/LAB become RGB;
4. composite transparency on white (ZeroShape's background colour); a partly transparent alpha
   channel is also kept as a visible-mask hint (:attr:`LoadedImage.alpha`);
5. pad to a square around the centre with white and resize to ``size`` (Lanczos).

:func:`find_images` expands files, folders and glob patterns given on the command line.
"""

from __future__ import annotations

import errno
import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zsw.errors import InputError

__all__ = ["LoadedImage", "load_image", "load_mask", "find_images", "IMAGE_SUFFIXES", "MIN_SIDE"]

#: suffixes picked up when a folder is given
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")  # GIF: its first frame
#: an image whose longer side is shorter than this is rejected: upsampled to 224 px it holds no shape
MIN_SIDE = 16
_WHITE = (255, 255, 255)
_EXIF_ORIENTATION = 0x0112


@dataclass
class LoadedImage:
    """A photo prepared for the model, and how it was prepared."""

    name: str  # output name (the file stem)
    image: np.ndarray  # [S, S, 3] uint8, padded and resized
    original_size: tuple[int, int]  # (width, height) after the EXIF rotation
    source: str | None = None  # the file it came from
    alpha: np.ndarray | None = None  # [S, S] bool: alpha > 50 % where the input was partly transparent
    pad: tuple[int, int] = (0, 0)  # (left, top) padding added, in original pixels
    notes: list[str] = field(default_factory=list)  # conversions applied, for result.json

    @property
    def size(self) -> int:
        return self.image.shape[0]

    @property
    def crop_scale(self) -> float:
        """Model-input pixels per original pixel."""
        return self.size / max(self.original_size)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "original_size": list(self.original_size),
            "padding_left_top": list(self.pad),
            "scale": self.crop_scale,
            "notes": self.notes,
        }


def _open(path: Path, notes: list[str] | None = None):
    """Open and decode ``path``; PIL's warnings (huge image, odd palette, bad EXIF) become
    ``notes`` for result.json instead of raw lines on the user's terminal."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            img = Image.open(path)
            img.load()  # decode now: truncated files fail here, not halfway through a batch
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image file PIL can read") from None
    except Image.DecompressionBombError as e:
        raise InputError(f"{path}: image too large ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{path}: corrupt or truncated image ({reason})") from None
    if notes is not None:
        notes.extend(f"PIL: {str(w.message).splitlines()[0]}" for w in caught)
    return img


def _exif_upright(img, notes: list[str]):
    from PIL import ImageOps

    try:
        orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        if orientation != 1:
            img = ImageOps.exif_transpose(img)
            notes.append(f"rotated by its EXIF orientation ({orientation})")
    except Exception:  # malformed EXIF: keep the pixels as stored
        notes.append("EXIF orientation unreadable, ignored")
    return img


def _to_rgb_or_rgba(img, notes: list[str]):
    """Any PIL mode -> 'RGB' or 'RGBA' (8 bits per channel)."""
    from PIL import Image

    mode = img.mode
    if mode in ("RGB", "RGBA"):
        return img
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = float(a.max()) if a.size else 0.0
        if mode == "F" and hi <= 1.0:
            a = a * 255.0
        elif hi > 255.0:
            a = a / (65535.0 if hi <= 65535.0 else hi) * 255.0
        notes.append(f"{mode} grayscale rescaled to 8 bits")
        gray = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        return gray.convert("RGB")
    if mode in ("LA", "La", "PA", "RGBa") or (mode == "P" and "transparency" in img.info):
        notes.append(f"{mode} converted to RGBA")
        return img.convert("RGBA")
    notes.append(f"{mode} converted to RGB")
    return img.convert("RGB")


def _pad_resize(img, size: int, fill, resample):
    """Pad ``img`` to a square around its centre with ``fill``, then resize to ``size``."""
    from PIL import Image

    w, h = img.size
    side = max(w, h)
    left, top = (side - w) // 2, (side - h) // 2
    canvas = Image.new(img.mode, (side, side), fill)
    canvas.paste(img, (left, top))
    if side != size:
        canvas = canvas.resize((size, size), resample)
    return canvas, (left, top)


def _from_array(a: np.ndarray):
    from PIL import Image

    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise InputError(f"image array must be [H, W], [H, W, 3] or [H, W, 4], got {a.shape}")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(f"image array must be uint8 or float in [0, 1], got {a.dtype}")
        a = np.clip(np.rint(np.nan_to_num(a) * 255.0), 0, 255).astype(np.uint8)
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[a.shape[-1] if a.ndim == 3 else 2]
    return Image.fromarray(np.ascontiguousarray(a), mode)


def load_image(source, size: int = 224, name: str | None = None) -> LoadedImage:
    """Read and prepare one photo for the model.

    Args:
        source: a path, a ``PIL.Image.Image``, or an array ``[H, W]`` / ``[H, W, 3|4]`` (uint8, or
            float in [0, 1]).
        size: side of the model input.
        name: output name; defaults to the file stem (``"image"`` for in-memory input).

    Raises:
        InputError: unreadable, corrupt or truncated file; unsupported array; image too small.
    """
    from PIL import Image

    notes: list[str] = []
    path = None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        img = _open(path, notes)
    elif isinstance(source, Image.Image):
        img = source
    elif isinstance(source, np.ndarray):
        img = _from_array(source)
    else:
        raise InputError(f"image must be a path, a PIL image or a numpy array, got {type(source).__name__}")
    label = str(path) if path is not None else "image"

    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
        notes.append("first frame of a multi-frame file")
    img = _exif_upright(img, notes)
    w, h = img.size
    if max(w, h) < MIN_SIDE:
        raise InputError(f"{label}: image is {w}x{h} pixels; zsw needs at least {MIN_SIDE} on the longer side")
    if max(w, h) / max(1, min(w, h)) > 4:
        notes.append(f"very elongated ({w}x{h}): the object fills a thin strip of the padded square")

    img = _to_rgb_or_rgba(img, notes)
    alpha = None
    if img.mode == "RGBA":
        a = img.getchannel("A")
        if np.asarray(a).min() < 255:
            notes.append("transparency composited on white")
            alpha_sq, _ = _pad_resize(a, size, 0, Image.Resampling.BILINEAR)
            alpha = np.asarray(alpha_sq) > 127
        white = Image.new("RGB", img.size, _WHITE)
        white.paste(img, mask=a)
        img = white
    square, pad = _pad_resize(img, size, _WHITE, Image.Resampling.LANCZOS)
    if pad != (0, 0):
        notes.append("padded to a square with white")
    if name is None:
        name = path.stem if path is not None else "image"
    arr = np.array(square, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only)
    return LoadedImage(name, arr, (w, h), str(path) if path else None, alpha, pad, notes)


def load_mask(source, like: LoadedImage) -> np.ndarray:  # [S, S] bool
    """A visible mask (file, PIL image or array; > 50 % = visible) padded and resized like ``like``."""
    from PIL import Image

    label = str(source) if isinstance(source, (str, os.PathLike)) else "mask"
    if isinstance(source, (str, os.PathLike)):
        m = _exif_upright(_open(Path(source)), [])
    elif isinstance(source, Image.Image):
        m = source
    elif isinstance(source, np.ndarray):
        if source.ndim != 2:
            raise InputError(f"mask array must be [H, W], got {source.shape}")
        on = source > 127 if source.dtype == np.uint8 else source > 0.5
        m = Image.fromarray(on.astype(np.uint8) * 255)
    else:
        raise InputError(f"mask must be a path, a PIL image or a numpy array, got {type(source).__name__}")
    if m.size != like.original_size:
        iw, ih = like.original_size
        raise InputError(f"{label}: mask is {m.size[0]}x{m.size[1]} pixels but its image is {iw}x{ih}")
    square, _ = _pad_resize(m.convert("L"), like.size, 0, Image.Resampling.BILINEAR)
    return np.asarray(square) > 127


def _is_image_name(f: Path) -> bool:
    return f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")


def find_images(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, folders (their images, not recursive) and glob patterns.

    Returns:
        The image paths in order, without duplicates, and ``(input, reason)`` for every input that
        named nothing (a missing file, a pattern that matches nothing, a folder without images).
    """
    found: list[Path] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            found.append(p)

    for item in inputs:
        text = str(item)
        p = Path(text)
        if p.is_dir():
            files = sorted(
                f
                for f in p.iterdir()
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
            )
            if not files:
                problems.append((text, f"folder has no images ({', '.join(IMAGE_SUFFIXES)})"))
            for f in files:
                add(f)
        elif p.exists():
            add(p)
        elif glob.has_magic(text):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file())
            if not matches:
                problems.append((text, "pattern matches no file"))
            for m in matches:
                add(m)
        elif p.is_symlink():
            problems.append((text, _broken_link(p)))
        else:
            problems.append((text, "no such file or folder"))
    return found, problems


def _broken_link(p: Path) -> str:
    """Why a symbolic link names nothing: a loop, or a missing target."""
    try:
        p.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports loops this way
        return "symbolic link loop"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"broken symbolic link (its target {os.readlink(p)} does not exist)"
    return "broken symbolic link"
