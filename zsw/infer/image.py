"""Reading photos for reconstruction: any common format, mode, size and orientation.

:func:`load_image` turns a file, a PIL image or an array into what the model sees: an RGB
``[size, size, 3]`` uint8 image. In order:

1. decode fully (a truncated or non-image file is a one-line :class:`~zsw.errors.InputError`);
2. apply the EXIF orientation (phone photos);
3. convert the mode: 16-bit and 32-bit grayscale are rescaled to 8 bits, palette and
   grayscale-with-alpha become RGBA, CMYK/YCbCr/LAB become RGB, and colours declared in another
   space than sRGB (an ICC profile, a HEIF nclx description) are converted to sRGB
   (:mod:`zsw.infer.colorspace`);
4. composite transparency on white (ZeroShape's background colour); a partly transparent alpha
   channel is also kept as a visible-mask hint (:attr:`LoadedImage.alpha`);
5. pad to a square around the centre and resize to ``size`` (Lanczos). An opaque photo is padded
   with itself mirrored at its edges (:data:`MIRROR`): the model never saw a band of white next to
   a textured photo in training and outlined the edge between the two as an object (on textured
   scenes the visible mask's IoU fell from 0.50 on square photos to 0.33 on others; mirrored: 0.46,
   bench/results/padding/). A cut-out (transparency composited on white) is padded with white.

The photo itself is kept (:attr:`LoadedImage.pixels`), so :func:`reframe` can later cut a
different square of it -- the one around the object, at the framing the model was trained on
(:func:`object_window`) -- without reading the file again. :attr:`LoadedImage.window` says which
square of the photo the model input shows, and :func:`zsw.infer.result.original_intrinsics`
maps K back to the photo through it.

:func:`find_images` expands files, folders and glob patterns given on the command line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import glob
import json
import os
import re
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zsw.errors import InputError, OptionError, reason
from zsw.infer.colorspace import avif_nclx, linear_to_srgb8, to_srgb
from zsw.io import IMAGE_SUFFIXES

__all__ = [
    "LoadedImage",
    "load_image",
    "read_boxes",
    "box_for",
    "load_mask",
    "find_images",
    "object_window",
    "reframe",
    "reframe_mask",
    "IMAGE_SUFFIXES",
    "MIN_SIDE",
    "OBJECT_FILL",
]

#: camera RAW files: most are TIFF containers whose first image, the one Pillow reads, is a small
#: preview; zsw refuses them rather than reconstruct from a thumbnail
RAW_SUFFIXES = (
    ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf",
    ".pef", ".srw", ".x3f", ".3fr", ".erf", ".kdc", ".mrw", ".iiq", ".raw", ".rwl", ".mef", ".mos",
)  # fmt: skip
#: ISO media brands of HEIF still images (the ``ftyp`` box at byte 4), which Pillow reads only through pillow-heif
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1")
#: the first bytes of the files :func:`_container` names beyond ISO media: JPEG XL (a bare
#: codestream, or the container's signature box), OpenEXR, TIFF and BigTIFF in either byte order
_SIGNATURES = {
    "jxl": (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \x0d\x0a\x87\x0a"),
    "exr": (b"v/1\x01",),
    "tiff": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
}
#: videos, which a user may hand over for a photo: told to extract a frame
VIDEO_SUFFIXES = (
    ".mp4",
    ".mov",
    ".m4v",
    ".avi",
    ".mkv",
    ".webm",
    ".mts",
    ".m2ts",
    ".3gp",
    ".wmv",
    ".flv",
    ".mpg",
    ".mpeg",
)
#: an image whose longer side is shorter than this is rejected: upsampled to 224 px it holds no shape
MIN_SIDE = 16
#: a photo whose pixels differ by no more than this in any channel shows no object (a blank frame)
FLAT_SPAN = 2
_WHITE = (255, 255, 255)
#: the fill of :func:`_cut` that continues a photo beyond its edges by mirroring it there (``numpy.pad``'s
#: ``symmetric``: the edge pixel repeated, then the photo backwards, as often as the window needs)
MIRROR = "mirror"
#: a photo many times the model input's size is first box-averaged by a whole factor, down to at
#: least this many times that size, then resampled (Pillow's ``reducing_gap``): ``load_image`` of a 12 or
#: 48 MP photo 2.2x faster, the input 0.04 of 255 levels from the exact resize on average (at most 2;
#: bench/results/photo-sizes.md). Images under 6x the input size are resized exactly as before.
REDUCING_GAP = 3.0
#: the object's longer side as a fraction of the model input's side when :func:`reframe` frames it:
#: the training renders crop the object's silhouette with a margin of 1.15-1.35 (0.74-0.87)
OBJECT_FILL = 0.8
_EXIF_ORIENTATION = 0x0112


def check_box(box) -> tuple[float, float, float, float]:
    """``box`` as four floats (x0, y0, x1, y1) with x0 < x1 and y0 < y1; a string "x0,y0,x1,y1"
    is read too. An :class:`~zsw.errors.OptionError` naming ``--box`` otherwise."""
    text = box
    if isinstance(box, str):
        box = [part.strip() for part in box.split(",")]
    try:
        values = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 4 or not all(np.isfinite(values)):
        raise OptionError(f"--box: expected four numbers x0,y0,x1,y1 (photo pixels), got {text!r}")
    if not (values[0] < values[2] and values[1] < values[3]):
        raise OptionError(f"--box: {text!r} is empty: x0 < x1 and y0 < y1, in photo pixels from the top left")
    return values  # type: ignore[return-value]


def read_boxes(path: str | os.PathLike) -> dict[str, tuple[float, float, float, float]]:
    """The boxes of a ``--box FILE``: one rectangle per photo, by the photo's file name or stem.

    Either JSON, an object ``{"IMG_1.jpg": [x0, y0, x1, y1], "IMG_2": "x0,y0,x1,y1", ...}``, or
    text (``.csv``, ``.txt``, ...), a line ``name,x0,y0,x1,y1`` per photo (commas or spaces; blank
    lines and ``#`` comments skipped). Each box as :func:`check_box` reads one. An
    :class:`~zsw.errors.OptionError` naming the file, and the line or the entry, otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise OptionError(f"--box {path}: cannot read it: {getattr(e, 'strerror', None) or e}") from None
    entries: list[tuple[str, object, str]] = []  # (name, box, where)
    if path.suffix.lower() == ".json":
        try:
            table = json.loads(text)
        except ValueError as e:
            raise OptionError(f"--box {path}: not JSON ({e})") from None
        if not isinstance(table, dict):
            raise OptionError(f'--box {path}: must hold an object {{"photo.jpg": [x0, y0, x1, y1], ...}}')
        entries = [(str(name), box, f"entry {name!r}") for name, box in table.items()]
    else:
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = [part for part in re.split(r"[,\s]+", line) if part]
            if len(parts) != 5:
                raise OptionError(f"--box {path}: line {number}: expected name,x0,y0,x1,y1, got {line!r}")
            entries.append((parts[0], ",".join(parts[1:]), f"line {number}"))
    boxes = {}
    for name, box, where in entries:
        if name in boxes:
            raise OptionError(f"--box {path}: {where}: {name!r} has a box already")
        try:
            boxes[name] = check_box(box)
        except OptionError as e:
            raise OptionError(f"--box {path}: {where}: {str(e).removeprefix('--box: ')}") from None
    if not boxes:
        raise OptionError(f"--box {path}: holds no box")
    return boxes


def box_for(boxes: dict[str, tuple], photo: str | os.PathLike) -> tuple[float, float, float, float] | None:
    """The box of ``photo`` in a :func:`read_boxes` table: by its file name, else its stem; the
    exact spelling first, then any case. None when the table has none for it."""
    photo = Path(photo)
    for key in (photo.name, photo.stem):
        if key in boxes:
            return boxes[key]
    folded = {name.casefold(): box for name, box in boxes.items()}
    for key in (photo.name, photo.stem):
        if key.casefold() in folded:
            return folded[key.casefold()]
    return None


#: the share of a photo edge's pixels a predicted mask must cover to count as reaching it
#: (:meth:`LoadedImage.edges_reached`)
EDGE_FRACTION = 0.3


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
    # [H, W, 3] uint8: the upright photo composited on white at its own size, for reframe();
    # None: ``image`` is the whole photo (original_size == (S, S), no padding)
    pixels: np.ndarray | None = field(default=None, repr=False)
    # [H, W] bool: the photo's alpha > 50 % where it was partly transparent (None: opaque)
    pixel_alpha: np.ndarray | None = field(default=None, repr=False)
    # (x0, y0, side): the square of the photo the model input shows, in photo pixels (it may reach
    # outside the photo, where the input is the photo mirrored, or white for a cut-out: :func:`_cut`);
    # None: the photo padded to a square (``pad``)
    window: tuple[int, int, int] | None = None
    # (x0, y0, x1, y1): the rectangle of the photo, in photo pixels, that the user says holds the
    # object (``--box``); the predicted masks are kept inside it. None: anywhere
    box: tuple[float, float, float, float] | None = None

    @property
    def size(self) -> int:
        return self.image.shape[0]

    @property
    def square(self) -> tuple[int, int, int]:
        """(x0, y0, side) of the photo's square the model input shows, in photo pixels."""
        if self.window is not None:
            return self.window
        return -self.pad[0], -self.pad[1], max(self.original_size)

    @property
    def colour_span(self) -> int:
        """The largest difference between two of the photo's pixels in one channel (0: one colour)."""
        photo = self.image if self.pixels is None else self.pixels
        return int(max(photo[..., c].max() - photo[..., c].min() for c in range(3)))

    @property
    def crop_scale(self) -> float:
        """Model-input pixels per original pixel."""
        return self.size / self.square[2]

    def _within(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:  # [S, S] bool
        """The model-input pixels whose centre lies in the photo's rectangle [x0, x1) x [y0, y1)."""
        left, top, side = self.square
        centres = (np.arange(self.size) + 0.5) * side / self.size
        xs, ys = left + centres, top + centres
        return ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]

    @property
    def photo_area(self) -> np.ndarray:  # [S, S] bool
        """The model-input pixels that show the photo (False on padding or outside the photo)."""
        w, h = self.original_size
        return self._within(0, 0, w, h)

    def edges_reached(self, mask: np.ndarray, fraction: float = EDGE_FRACTION) -> list[str]:
        """The sides of the photo (``left``, ``top``, ``right``, ``bottom``) along which ``mask``
        ([S, S] bool, model-input pixels) covers more than ``fraction`` of the photo's edge, as far
        as the input shows that edge: the input's pixels next to it, inside the photo. A side the
        input does not show (a window inside the photo) is never reached."""
        left, top, side = self.square
        w, h = self.original_size
        step = side / self.size  # photo pixels per input pixel
        area = self.photo_area
        xs = left + (np.arange(self.size) + 0.5) * step
        ys = top + (np.arange(self.size) + 0.5) * step
        reached = []
        for name, centres, edge, axis in (
            ("left", xs, 0.0, 1),
            ("top", ys, 0.0, 0),
            ("right", xs, w, 1),
            ("bottom", ys, h, 0),
        ):
            inside = np.flatnonzero((centres >= 0) & (centres < (w if axis == 1 else h)))
            if not len(inside):
                continue
            i = inside[0] if edge == 0.0 else inside[-1]
            if abs(centres[i] - edge) > step:  # the input starts inside the photo on this side
                continue
            line, shown = (mask[:, i], area[:, i]) if axis == 1 else (mask[i], area[i])
            if shown.sum() and (line & shown).sum() > fraction * shown.sum():
                reached.append(name)
        return reached

    @property
    def box_area(self) -> np.ndarray | None:  # [S, S] bool
        """The model-input pixels whose centre lies in :attr:`box` (None without a box)."""
        return None if self.box is None else self._within(*self.box)

    def to_dict(self) -> dict:
        x0, y0, side = self.square
        out = {
            "source": self.source,
            "original_size": list(self.original_size),
            "padding_left_top": [-x0, -y0],
            "window": [x0, y0, side],
            "scale": self.crop_scale,
            "notes": self.notes,
        }
        if self.box is not None:
            out["box"] = list(self.box)
        return out

    def with_box(self, box) -> LoadedImage:
        """This image with the object said to lie in ``box`` (x0, y0, x1, y1 in photo pixels, after
        the EXIF rotation), clipped to the photo; an :class:`InputError` naming the image when it
        is not four finite numbers with x0 < x1 and y0 < y1, or misses the photo."""
        box = check_box(box)
        w, h = self.original_size
        x0, y0, x1, y1 = max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(w)), min(box[3], float(h))
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise InputError(f"{self.source or self.name}: the box {list(box)} is outside the {w} x {h} photo")
        return dataclasses.replace(self, box=(x0, y0, x1, y1))


def _open(path: Path, notes: list[str] | None = None):
    """Open and decode ``path`` (:func:`_decoded`)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    container = _container(path)
    if container == "exr":  # a renderer's scene-linear image: Pillow reads none
        return _open_exr(path, notes)
    if container == "jxl":
        with contextlib.suppress(ImportError):
            import pillow_jxl  # noqa: F401  (JPEG XL for Pillow, when installed: the `jxl` extra)
    if container == "heif":
        try:
            _read_heif()
        except ImportError:
            raise InputError(
                f"{path}: a HEIC/HEIF photo, which needs pillow-heif to be read: pip install pillow-heif"
            ) from None
    try:
        with warnings.catch_warnings(record=True) as caught, _pixel_limit():  # a huge image warns here
            warnings.simplefilter("always")
            img = Image.open(path)
    except UnidentifiedImageError:
        if path.suffix.lower() in RAW_SUFFIXES:
            raise InputError(_raw(path, preview=False)) from None
        if path.suffix.lower() in VIDEO_SUFFIXES:
            raise InputError(
                f"{path}: a video, not a photo: take one frame first (e.g. `ffmpeg -i {path.name} -frames:v 1 "
                f"{path.stem}.png`)"
            ) from None
        if container == "tiff":  # float or other sample formats Pillow does not read (a renderer's 32-bit TIFF)
            return _tiff_by_tifffile(path, notes)
        if container == "avif":
            raise InputError(
                f"{path}: an AVIF photo, which Pillow {Image.__version__} cannot read: pip install 'pillow>=11.3'"
            ) from None
        if container == "jxl":
            raise InputError(
                f"{path}: a JPEG XL image, which needs pillow-jxl-plugin: pip install pillow-jxl-plugin"
            ) from None
        if kind := _document(path):
            raise InputError(f"{path}: {kind}") from None
        raise InputError(f"{path}: not an image file PIL can read") from None
    except Image.DecompressionBombError as e:
        raise InputError(f"{path}: image too large ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: corrupt or truncated image ({reason(e)})") from None
    if path.suffix.lower() in RAW_SUFFIXES and img.format == "TIFF":  # a RAW's container: its preview
        img.close()
        raise InputError(_raw(path, preview=True))
    if notes is not None:
        notes.extend(f"PIL: {str(w.message).splitlines()[0]}" for w in caught)
    if img.format == "JPEG" and max(img.size) > DECODE_SIDE:
        w, h = img.size
        scale = _reduction(w, h)
        # the JPEG decoder scales by 1/2, 1/4 or 1/8 (Pillow picks the scale from the floor of the ratio)
        img.draft(img.mode, (max(1, w // scale), max(1, h // scale)))
        if notes is not None and img.size != (w, h):
            notes.append(f"decoded at 1/{scale} of its {w}x{h} pixels ({img.size[0]}x{img.size[1]})")
    if container == "avif" and "icc_profile" not in img.info and "nclx_profile" not in img.info:
        # Pillow does not report an AVIF's nclx colour description (HEIF's reader does)
        with open(path, "rb") as f:
            if nclx := avif_nclx(f):
                img.info["nclx_profile"] = nclx
    return _decoded(img, str(path), notes)


def _reduced(img, notes: list[str]):
    """An RGB(A) photo still over :data:`DECODE_SIDE` pixels on its longer side once decoded (a
    huge PNG, TIFF, WebP or HEIC: only JPEG decodes smaller) box-reduced by 2, 4 or 8, as a JPEG's
    decoder scales it, before anything else works on its pixels (colour conversion, compositing,
    padding, the kept photo); a ``--masks`` mask at the full size fits it as it fits a JPEG's."""
    w, h = img.size
    if max(w, h) <= DECODE_SIDE:
        return img
    scale = _reduction(w, h)
    out = img.reduce(scale)  # Pillow: RGBA by its premultiplied colours; the profile is kept
    notes.append(f"reduced to 1/{scale} of its {w}x{h} pixels ({out.size[0]}x{out.size[1]})")
    return out


def _reduction(w: int, h: int) -> int:
    """The factor, 2, 4 or 8, a photo of ``w`` x ``h`` pixels over :data:`DECODE_SIDE` is read
    smaller by: the smallest that brings it within, 8 at most (a JPEG decoder's finest step)."""
    scale = 2
    while max(-(-w // scale), -(-h // scale)) > DECODE_SIDE and scale < 8:
        scale *= 2
    return scale


def _raw(path: Path, preview: bool) -> str:
    why = " (Pillow would read its small preview)" if preview else ""
    return (
        f"{path}: a camera RAW file, which zsw does not develop{why}: "
        "export it as JPEG, PNG or TIFF from your RAW developer, or develop it with rawpy"
    )


#: Pillow refuses images over twice its ``MAX_IMAGE_PIXELS`` (89 MP: 179 MP) as decompression bombs,
#: which refused a 200 MP phone's photo (16320 x 12240). zsw warns over this many pixels and refuses
#: over twice as many (537 MP, about 1.6 GB decoded), unless the process allows more.
MAX_PIXELS = 1 << 28
#: a JPEG over this many pixels on its longer side (a 100 or 200 MP phone photo) is decoded at 1/2, 1/4
#: or 1/8 of its size by the JPEG decoder itself, down to at most this: plenty for a 224-pixel model
#: input, a reframed window and the mesh's colours. A 200 MP photo: zsw.reconstruct 5.5x faster, half
#: the peak memory (bench/results/photo-sizes.md). Masks of such a photo may come at either size.
DECODE_SIDE = 8192
_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _pixel_limit():
    """Pillow's image-size limit raised to :data:`MAX_PIXELS` while a photo is opened (where
    Pillow checks it); a limit the process set higher, or None (no limit), is kept."""
    from PIL import Image

    with _LIMIT_LOCK:
        before = Image.MAX_IMAGE_PIXELS
        if before is not None and before < MAX_PIXELS:
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def _document(path: Path) -> str | None:
    """What to do with a drawing, document or 3D model given as a photo, or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError:
        return None
    from zsw.data.eval_sets import FOLDER_MESHES, OTHER_3D_FORMATS

    name, stem = path.name, path.stem
    if path.suffix.lower() in (*FOLDER_MESHES, *OTHER_3D_FORMATS) or head.startswith(b"glTF"):
        return (
            "a 3D model, not a photo: zsw reconstruct makes one from a photo (to score a photo's mesh "
            "against this one, put both in a folder for `zsw eval --format folder`)"
        )
    if path.suffix.lower() in (".svg", ".svgz") or b"<svg" in head:
        how = f"rsvg-convert -w 1024 {name} -o {stem}.png"
        return f"a vector drawing (SVG), not a photo: render it to PNG first (e.g. `{how}`)"
    if head.startswith(b"%PDF"):
        how = f"pdftoppm -png -r 150 -singlefile {name} {stem}"
        return f"a PDF document, not an image: export its page as PNG first (e.g. `{how}`)"
    if head.startswith(b"%!PS"):
        how = f"gs -sDEVICE=png16m -o {stem}.png {name}"
        return f"a PostScript drawing, not a photo: render it to PNG first (e.g. Ghostscript, `{how}`)"
    return None


def _container(path: Path) -> str | None:
    """What the file's first bytes say it is, whatever it is called: ``"heif"`` or ``"avif"`` (an
    ISO media still image, by its ``ftyp`` brand), ``"jxl"``, ``"exr"`` or ``"tiff"``; None for
    anything else (Pillow's own formats are Pillow's to recognise)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return None
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return "avif" if brand in (b"avif", b"avis") else "heif" if brand in _HEIF_BRANDS else None
    for kind, signatures in _SIGNATURES.items():
        if head.startswith(signatures):
            return kind
    return None


def _tiff_by_tifffile(path: Path, notes: list[str] | None):
    """The first image of a TIFF that Pillow cannot read (32-bit float or integer RGB, as
    renderers write them), read by tifffile and brought to 8 bits as 16-bit and float grayscale
    are (:func:`_8_bit`): grey, RGB or RGBA."""
    import tifffile
    from PIL import Image

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if int(np.prod(page.shape[:2] if page.shape[-1] in (1, 3, 4) else page.shape[-2:])) > MAX_PIXELS:
                raise InputError(f"{path}: image too large ({page.shape} samples, over {MAX_PIXELS} pixels)")
            a = np.asarray(page.asarray())
    except InputError:
        raise
    except Exception as e:  # tifffile raises many kinds for a broken file
        raise InputError(f"{path}: not an image file PIL or tifffile can read ({reason(e)})") from None
    if a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[-1] not in (3, 4):  # planar: channels first
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))) or a.dtype.kind not in "uif":
        raise InputError(f"{path}: a TIFF of {a.dtype} samples shaped {a.shape}, not a grey, RGB or RGBA image")
    if notes is not None:
        notes.append(f"{a.dtype} TIFF read by tifffile, rescaled to 8 bits")
    mode = "L" if a.ndim == 2 else "RGB" if a.shape[-1] == 3 else "RGBA"
    return Image.fromarray(_8_bit(a, float_samples=a.dtype.kind == "f"), mode)


def _open_exr(path: Path, notes: list[str] | None):
    """An OpenEXR image (its first part; through the OpenEXR package, the `exr` extra) as an 8-bit
    sRGB PIL image: its R, G, B (or Y) channels, of the first layer that has them (a multilayer
    render's ``ViewLayer.Combined.R``), are scene-linear light; premultiplied colour is divided by
    alpha, highlights are compressed and sRGB's curve applied (:func:`linear_to_srgb8`)."""
    from PIL import Image

    try:
        import OpenEXR
    except ImportError:
        raise InputError(f"{path}: an OpenEXR image, which needs the OpenEXR package: pip install OpenEXR") from None
    try:
        with OpenEXR.File(str(path), header_only=True) as f:
            (x0, y0), (x1, y1) = f.header()["dataWindow"]
        if (x1 - x0 + 1) * (y1 - y0 + 1) > MAX_PIXELS:
            raise InputError(f"{path}: image too large ({x1 - x0 + 1}x{y1 - y0 + 1} pixels, over {MAX_PIXELS})")
        with OpenEXR.File(str(path), separate_channels=True) as f:
            channels = {name: np.asarray(c.pixels) for name, c in f.channels().items()}
    except InputError:
        raise
    except Exception as e:  # the bindings raise RuntimeError and others for a broken file
        raise InputError(f"{path}: corrupt or truncated OpenEXR image ({reason(e)})") from None
    prefixes = sorted({name[: -len(c)] for name in channels for c in ("R", "Y") if name.endswith(c)}, key=len)
    prefix = next((p for p in prefixes if all(p + c in channels for c in "RGB") or p + "Y" in channels), None)
    if prefix is None:
        raise InputError(f"{path}: an OpenEXR image without R, G, B or Y channels ({', '.join(sorted(channels)[:6])})")
    names = [prefix + c for c in "RGB"] if prefix + "R" in channels else [prefix + "Y"] * 3
    rgb = np.stack([channels[n].astype(np.float32) for n in names], axis=-1)
    alpha = channels[prefix + "A"].astype(np.float32) if prefix + "A" in channels else None
    if bad := int((~np.isfinite(rgb)).sum() + (0 if alpha is None else (~np.isfinite(alpha)).sum())):
        raise InputError(f"{path}: the image holds {bad} non-finite pixel value(s) (NaN or inf)")
    if alpha is not None:  # OpenEXR stores colour premultiplied by alpha
        rgb = np.where(alpha[..., None] > 1e-6, rgb / np.maximum(alpha, 1e-6)[..., None], 0.0)
    levels = linear_to_srgb8(np.maximum(rgb, 0.0))
    if notes is not None:
        notes.append("OpenEXR scene-linear light tone-mapped to sRGB (1.0 as white, highlights compressed)")
    if alpha is None:
        return Image.fromarray(levels, "RGB")
    a8 = np.clip(np.rint(alpha * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(np.concatenate([levels, a8[..., None]], axis=-1), "RGBA")


@functools.cache
def _read_heif() -> None:
    """Teach Pillow HEIC/HEIF (pillow-heif's opener), once; ImportError without pillow-heif."""
    import pillow_heif

    pillow_heif.register_heif_opener()


def _decoded(img, label: str, notes: list[str] | None):
    """``img`` decoded now, so that a truncated file (or a PIL image whose file was closed) fails
    here in one line, not halfway through a batch; PIL's warnings (huge image, odd palette, bad
    EXIF) become ``notes`` for result.json instead of raw lines on the user's terminal."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            img.load()
    except Image.DecompressionBombError as e:
        raise InputError(f"{label}: image too large ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{label}: corrupt or truncated image ({reason(e)})") from None
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
        gray = _8_bit(np.asarray(img), float_samples=mode == "F")
        notes.append(f"{mode} grayscale rescaled to 8 bits")
        return Image.fromarray(gray, "L").convert("RGB")
    if mode in ("CMYK", "L", "LA") and (converted := to_srgb(img, notes)).mode in ("RGB", "RGBA"):  # by its profile
        return converted
    if mode in ("LA", "La", "PA", "RGBa") or (mode == "P" and "transparency" in img.info):
        notes.append(f"{mode} converted to RGBA")
        return (img.convert("LA") if mode == "La" else img).convert("RGBA")  # Pillow has no La -> RGBA
    notes.append(f"{mode} converted to RGB")
    out = img.convert("RGB")
    if mode in ("CMYK", "L"):  # a profile it could not be converted by says nothing of the RGB
        out.info.pop("icc_profile", None)
    return out


def _8_bit(a: np.ndarray, float_samples: bool) -> np.ndarray:
    """Samples of any depth as uint8 levels: floats in [0, 1] scaled by 255, values up to 255
    kept, larger ones scaled from 16 bits (or from their largest value beyond 16 bits). Non-finite
    samples (a float TIFF can hold NaN and inf) are an :class:`InputError`."""
    a = np.asarray(a, dtype=np.float64)
    if bad := int((~np.isfinite(a)).sum()):
        raise InputError(f"the image holds {bad} non-finite pixel value(s) (NaN or inf)")
    hi = float(a.max()) if a.size else 0.0
    if float_samples and hi <= 1.0:
        a = a * 255.0
    elif hi > 255.0:
        a = a / (65535.0 if hi <= 65535.0 else hi) * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _padding(transparent: bool):
    """What fills the model input beyond the photo: white for a cut-out (its transparency is
    composited on white), the photo mirrored otherwise (:data:`MIRROR`)."""
    return _WHITE if transparent else MIRROR


def _pad_resize(img, size: int, fill, resample):
    """Pad ``img`` to a square around its centre with ``fill`` (a colour, or :data:`MIRROR`), then
    resize to ``size``."""
    w, h = img.size
    side = max(w, h)
    left, top = (side - w) // 2, (side - h) // 2
    return _cut(img, (-left, -top, side), fill, size, resample), (left, top)


def _tensor(source) -> bool:
    """Whether ``source`` is a PyTorch tensor (without importing torch for the other inputs)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(source, torch.Tensor)


def _from_tensor(t, what: str) -> np.ndarray:
    """A tensor laid out as torchvision's images and masks are (``[C, H, W]``, C = 1, 3 or 4, or
    ``[H, W]``; any device, dtype and autograd state) as the array the rest reads: ``[H, W, C]``,
    or ``[H, W]`` for one channel."""
    import torch

    a = t.detach().cpu()
    a = (a.float() if a.is_floating_point() and a.dtype != torch.float64 else a).numpy()
    if a.ndim == 3:
        if a.shape[0] not in (1, 3, 4):
            layout = "[C, H, W] with C = 1, 3 or 4 (torchvision's layout) or [H, W]"
            raise InputError(f"{what} tensor must be {layout}, got {tuple(a.shape)}")
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
    return a


def _from_array(a: np.ndarray):
    from PIL import Image

    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise InputError(f"image array must be [H, W], [H, W, 3] or [H, W, 4], got {a.shape}")
    if a.dtype == np.uint16:  # 16-bit, as OpenCV reads a 16-bit PNG or TIFF
        a = a / 65535.0
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(f"image array must be uint8, uint16 or float in [0, 1], got {a.dtype}")
        if not np.isfinite(a).all():
            raise InputError(f"image array holds {int((~np.isfinite(a)).sum())} non-finite values (NaN or inf)")
        lo, hi = float(a.min(initial=0.0)), float(a.max(initial=0.0))
        if lo < -0.01 or hi > 1.01:  # a float image in 0-255 would be clipped to white
            raise InputError(
                f"a float image array must hold values in [0, 1], got {lo:g} to {hi:g} "
                "(divide by 255, or pass it as uint8)"
            )
        a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[a.shape[-1] if a.ndim == 3 else 2]
    return Image.fromarray(np.ascontiguousarray(a), mode)


def load_image(source, size: int = 224, name: str | None = None, cutout=None) -> LoadedImage:
    """Read and prepare one photo for the model.

    Args:
        source: a path, a ``PIL.Image.Image``, an array ``[H, W]`` / ``[H, W, 3|4]`` (uint8, uint16,
            or float in [0, 1]), or a tensor as torchvision lays images out (``[C, H, W]``, C = 1, 3
            or 4, or ``[H, W]``; the same dtypes, any device).
        size: side of the model input.
        name: output name; defaults to the file stem (``"image"`` for in-memory input).
        cutout: a background remover (``rgb [H, W, 3] uint8 -> alpha [H, W]``, such as
            :func:`zsw.infer.cutout.open_cutout`'s) whose mask becomes the photo's alpha channel,
            so that the photo goes on as an RGBA file would; not used on a photo with transparency.

    Raises:
        InputError: unreadable, corrupt or truncated file; unsupported array; image too small.
    """
    from PIL import Image

    notes: list[str] = []
    path = None
    if isinstance(source, (str, os.PathLike)):
        if not str(source).strip():  # Path("") is the current folder
            raise InputError("an empty path names no image")
        if not Path(source).exists() and (why := _missing(str(source), "")):
            raise InputError(f"{source}: {why}")
        path = Path(source)
        img = _open(path, notes)
    elif isinstance(source, Image.Image):
        img = _decoded(source, "image", notes)
    elif isinstance(source, np.ndarray):
        img = _from_array(source)
    elif _tensor(source):
        img = _from_array(_from_tensor(source, "image"))
    else:
        raise InputError(f"image must be a path, a PIL image, a numpy array or a tensor, got {type(source).__name__}")
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

    img = to_srgb(_reduced(_to_rgb_or_rgba(img, notes), notes), notes)
    if cutout is not None:
        img = _cut_out(img, cutout, label, notes)
    alpha = pixel_alpha = None
    if img.mode == "RGBA":
        a = img.getchannel("A")
        if (transparency := _transparency(img)) is not None:
            if transparency.max() <= 127:
                raise InputError(
                    f"{label}: the image is transparent everywhere (alpha <= 50 %): no object to reconstruct; "
                    "drop its alpha channel to use its colours"
                )
            notes.append("transparency composited on white")
            alpha_sq, _ = _pad_resize(a, size, 0, Image.Resampling.BILINEAR)
            alpha = np.asarray(alpha_sq) > 127
            pixel_alpha = transparency > 127
        white = Image.new("RGB", img.size, _WHITE)
        white.paste(img, mask=a)
        img = white
    fill = _padding(alpha is not None)
    square, pad = _pad_resize(img, size, fill, Image.Resampling.LANCZOS)
    if pad != (0, 0):
        how = "white" if fill == _WHITE else "the photo mirrored"
        notes.append(f"padded to a square with {how}")
    if name is None:
        name = path.stem if path is not None else "image"
    arr = np.array(square, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only)
    # the absolute path: a rerun from another working folder must know which file this was
    source = str(Path(path).absolute()) if path else None
    return LoadedImage(name, arr, img.size, source, alpha, pad, notes, np.asarray(img), pixel_alpha)


def _transparency(img) -> np.ndarray | None:
    """The alpha channel ``[H, W]`` uint8 of an RGBA image that is transparent somewhere; None for
    an opaque one (an RGBA file whose alpha is 255 everywhere is an RGB photo)."""
    if img.mode != "RGBA":
        return None
    a = np.asarray(img.getchannel("A"))
    return a if a.min() < 255 else None


def _cut_out(img, cutout, label: str, notes: list[str]):
    """``img`` with the background remover's mask as its alpha channel (:mod:`zsw.infer.cutout`)."""
    from PIL import Image

    from zsw.infer.cutout import apply_cutout

    name = getattr(cutout, "name", None) or getattr(cutout, "__name__", "the given remover")
    if _transparency(img) is not None:
        notes.append(f"not cut out by {name}: the photo has its own transparency")
        return img
    rgb = img.convert("RGB")
    if (skip := getattr(cutout, "skip", None)) is not None and (why := skip(np.asarray(rgb))):
        notes.append(f"not cut out by {name}: {why}")
        return rgb
    alpha = apply_cutout(np.asarray(rgb), cutout, label)
    if alpha is None:
        notes.append(f"{name} found no object: the photo is used whole")
        return rgb
    rgb.putalpha(Image.fromarray(alpha))
    notes.append(f"background removed by {name}")
    return rgb


def object_window(
    mask: np.ndarray, image: LoadedImage, fill: float = OBJECT_FILL, min_part: float = 0.05
) -> tuple[int, int, int] | None:
    """The square of the photo, (x0, y0, side) in photo pixels, that shows the object of ``mask``
    centred with its longer side at ``fill`` of the square's.

    Args:
        mask: ``[S, S]`` bool, the object's visible pixels in ``image``'s model input.
        image: the image the mask belongs to.
        fill: the object's longer side as a fraction of the window's.
        min_part: connected parts of the mask smaller than this fraction of the largest are
            ignored (specks of a predicted mask would otherwise widen the box).

    Returns:
        None when the mask holds less than 0.1 % of the input within the photo: nothing to frame.
    """
    from scipy import ndimage

    if not 0.0 < fill <= 1.0:
        raise ValueError(f"fill must be in (0, 1], got {fill}")
    S = image.size
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (S, S):
        raise ValueError(f"mask must be {S}x{S} like its image, got {mask.shape}")
    mask = mask & image.photo_area  # the input's padding (the photo mirrored) holds no object
    if mask.sum() < 1e-3 * S * S:
        return None
    labels, n = ndimage.label(mask)
    if n > 1:
        areas = np.bincount(labels.ravel())[1:]
        mask = np.isin(labels, 1 + np.flatnonzero(areas >= min_part * areas.max()))
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    x0, y0, side = image.square
    px = side / S  # photo pixels per input pixel
    left, right = x0 + cols[0] * px, x0 + (cols[-1] + 1) * px
    top, bottom = y0 + rows[0] * px, y0 + (rows[-1] + 1) * px
    new = max(1, int(round(max(right - left, bottom - top) / fill)))
    return int(round((left + right - new) / 2)), int(round((top + bottom - new) / 2)), new


def search_windows(image: LoadedImage, zoom: float = 2.0) -> list[tuple[int, int, int]]:
    """Squares (x0, y0, side, photo pixels) that cover ``image``'s photo at ``zoom`` times the
    whole photo's scale: side = the photo's longer side / ``zoom``, overlapping by half a side, so
    an object under half a side across lies wholly inside one of them (rows, then columns). A
    photo shorter than a side on an axis is centred on it."""
    import math

    w, h = image.original_size
    side = max(1, int(round(max(w, h) / zoom)))

    def starts(n: int) -> list[int]:
        if n <= side:
            return [(n - side) // 2]
        k = math.ceil((n - side) / (side / 2)) + 1
        return [int(round(v)) for v in np.linspace(0, n - side, k)]

    return [(x, y, side) for y in starts(h) for x in starts(w)]


def _cut(a, box: tuple[int, int, int], fill, size: int, resample):
    """The square ``box`` (x0, y0, side) of the PIL image ``a`` at ``size``; outside ``a``,
    ``fill`` (a colour, or :data:`MIRROR`: ``a`` mirrored at its edges)."""
    from PIL import Image

    x0, y0, side = box
    w, h = a.size
    inner = (max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h))
    if (x0, y0, x0 + side, y0 + side) == inner:  # inside the image: no fill
        canvas = a if inner == (0, 0, w, h) else a.crop(inner)
    elif fill == MIRROR:
        # padded by what the window needs on each side (np.pad repeats the mirroring for a window
        # wider than the photo), then cut: rows and columns copied as slices, ~10 ms at 12 MP
        top, left = max(0, -y0), max(0, -x0)
        pads = ((top, max(0, y0 + side - h)), (left, max(0, x0 + side - w)))
        arr = np.asarray(a)
        arr = np.pad(arr, pads + ((0, 0),) * (arr.ndim - 2), mode="symmetric")
        canvas = Image.fromarray(np.ascontiguousarray(arr[y0 + top : y0 + top + side, x0 + left : x0 + left + side]))
    else:
        canvas = Image.new(a.mode, (side, side), fill)
        if inner[0] < inner[2] and inner[1] < inner[3]:
            canvas.paste(a.crop(inner), (inner[0] - x0, inner[1] - y0))
    return canvas.resize((size, size), resample, reducing_gap=REDUCING_GAP) if side != size else canvas


def reframe(image: LoadedImage, window: tuple[int, int, int], note: str | None = None) -> LoadedImage:
    """``image`` with the model input cut from ``window`` (x0, y0, side, photo pixels) of its photo:
    resized with Lanczos; where the window reaches outside the photo, the photo mirrored (white for
    a cut-out, whose transparency was composited on white)."""
    from PIL import Image

    x0, y0, side = (int(v) for v in window)
    if side < 1:
        raise ValueError(f"window side must be >= 1, got {side}")
    pixels, pixel_alpha = image.pixels, image.pixel_alpha
    if pixels is None:  # the model input is the whole photo
        if image.window is not None or image.pad != (0, 0) or tuple(image.original_size) != (image.size,) * 2:
            raise ValueError(f"{image.name}: no photo pixels to reframe from (LoadedImage.pixels is None)")
        pixels, pixel_alpha = image.image, image.alpha
    fill = _padding(pixel_alpha is not None)
    arr = np.array(_cut(Image.fromarray(pixels), (x0, y0, side), fill, image.size, Image.Resampling.LANCZOS))
    alpha = None
    if pixel_alpha is not None:
        a = Image.fromarray(pixel_alpha.astype(np.uint8) * 255)
        alpha = np.asarray(_cut(a, (x0, y0, side), 0, image.size, Image.Resampling.BILINEAR)) > 127
    notes = [*image.notes] + ([note] if note else [])
    return LoadedImage(
        image.name, arr, image.original_size, image.source, alpha, image.pad, notes, pixels, pixel_alpha,
        (x0, y0, side), image.box,
    )  # fmt: skip


def reframe_mask(mask: np.ndarray, image: LoadedImage, window: tuple[int, int, int]) -> np.ndarray:  # [S, S] bool
    """A mask of ``image``'s model input, cut like :func:`reframe` cuts the photo (bilinear, > 50 %)."""
    from PIL import Image

    S = image.size
    x0, y0, side = image.square
    nx0, ny0, nside = window
    px = S / side  # input pixels per photo pixel
    box = ((nx0 - x0) * px, (ny0 - y0) * px, (nx0 - x0 + nside) * px, (ny0 - y0 + nside) * px)
    m = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    out = m.transform((S, S), Image.Transform.EXTENT, box, Image.Resampling.BILINEAR, fillcolor=0)
    return np.asarray(out) > 127


def load_mask(source, like: LoadedImage) -> np.ndarray:  # [S, S] bool
    """A visible mask (file, PIL image, ``[H, W]`` array or ``[(1,) H, W]`` tensor; > 50 % = visible)
    padded and resized like ``like``."""
    from PIL import Image

    label = str(source) if isinstance(source, (str, os.PathLike)) else "mask"
    if _tensor(source):
        source = _from_tensor(source, "mask")
    if isinstance(source, (str, os.PathLike)):
        m = _mask_plane(_exif_upright(_open(Path(source)), []))
    elif isinstance(source, Image.Image):
        m = _mask_plane(source)
    elif isinstance(source, np.ndarray):
        if source.ndim != 2:
            raise InputError(f"mask array must be [H, W], got {source.shape}")
        labels = source.dtype == np.uint8 and source.max(initial=0) == 1  # a 0/1 label image
        on = source > 127 if source.dtype == np.uint8 and not labels else source > 0.5
        m = Image.fromarray(on.astype(np.uint8) * 255)
    else:
        raise InputError(f"mask must be a path, a PIL image, a numpy array or a tensor, got {type(source).__name__}")
    if m.size != like.original_size and _decoded_at(m.size, like.original_size):  # the photo was decoded smaller
        m = m.resize(like.original_size, Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP)
    if m.size != like.original_size:
        iw, ih = like.original_size
        raise InputError(f"{label}: mask is {m.size[0]}x{m.size[1]} pixels but its image is {iw}x{ih}")
    square, _ = _pad_resize(m, like.size, 0, Image.Resampling.BILINEAR)
    mask = np.asarray(square) > 127
    if not mask.any():
        raise InputError(f"{label}: the mask marks no pixel as the object (white, or opaque, is the object)")
    return mask


def _decoded_at(full: tuple[int, int], size: tuple[int, int]) -> bool:
    """Whether a photo of ``full`` pixels is read at ``size`` when :data:`DECODE_SIDE` scales it
    (a JPEG's decoder or :func:`_reduced`)."""
    return any(size == (-(-full[0] // s), -(-full[1] // s)) for s in (2, 4, 8)) and max(full) > DECODE_SIDE


def _mask_plane(m):  # PIL image -> its "L" plane, 255 = object
    """A mask file's object plane: the alpha of a cut-out (RGBA, LA, or a palette with
    transparency) that is transparent somewhere, else the grey levels; a 0/1 label image
    (nothing above 1) is scaled to 0/255."""
    if m.mode == "P" and "transparency" in m.info or m.mode == "PA":
        m = m.convert("RGBA")
    if m.mode in ("RGBA", "LA"):
        alpha = m.getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha
    plane = _scaled_plane(m) if m.mode.startswith("I") or m.mode == "F" else m.convert("L")
    if plane.getextrema() == (0, 1):
        plane = plane.point(lambda v: 255 * v)
    return plane


def _scaled_plane(m):  # a 16-bit, 32-bit or float mask, scaled by its own largest value
    from PIL import Image

    arr = np.nan_to_num(np.asarray(m, dtype=np.float64))
    top = max(float(arr.max(initial=0)), 1.0)  # 0/1, 0/255, 0/4095, 0/65535 masks alike
    return Image.fromarray((np.clip(arr / top, 0, 1) * 255).astype(np.uint8))


def find_images(
    inputs: Sequence[str | os.PathLike], passed_over: list[Path] | None = None
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, folders (their images, not recursive) and glob patterns.

    Returns:
        The image paths in order, without duplicates, and ``(input, reason)`` for every input that
        named nothing (a missing file, a pattern that matches nothing, a folder without images).
        ``passed_over``, when given, receives the files of a folder with images that are not
        images by their suffix (a PDF, an SVG, a camera RAW file beside the JPEGs), hidden ones
        aside: what a run says it left out.
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
        if not text.strip():  # Path("") is the current folder: an unset "$IMG" must not mean "."
            problems.append((repr(text), "an empty path names no image"))
        elif p.is_dir():
            listing = sorted(f for f in p.iterdir() if not f.name.startswith("."))
            images = [f for f in listing if f.suffix.lower() in IMAGE_SUFFIXES]
            files = [f for f in images if f.is_file()]
            problems += [(str(f), _broken_link(f)) for f in images if f.is_symlink() and not f.exists()]
            if not images:
                raws = sum(f.suffix.lower() in RAW_SUFFIXES for f in listing)
                hint = f"; its {raws} camera RAW file(s) need exporting as JPEG, PNG or TIFF first" if raws else ""
                if not hint and (subs := _image_subfolders(p)):
                    named = ", ".join(f"{d}/" for d in subs[:3]) + (
                        f" and {len(subs) - 3} more" if len(subs) > 3 else ""
                    )
                    hint = f"; images are in its subfolder(s) {named}: name them (a folder is read one level deep)"
                problems.append((text, f"folder has no images ({', '.join(IMAGE_SUFFIXES)}){hint}"))
            for f in files:
                add(f)
            if images and passed_over is not None:
                passed_over += [f for f in listing if f.suffix.lower() not in IMAGE_SUFFIXES and f.is_file()]
        elif p.is_file():
            add(p)
        elif p.exists() or text == "-":  # a pipe (<(curl ...)), a device, stdin: read once, and zsw reads twice
            what = "standard input" if text == "-" else "not a file but a pipe or device"
            problems.append((text, f"{what}: zsw reads image files; save the image to a file and give its path"))
        elif glob.has_magic(text):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file())
            if not matches:
                problems.append((text, "pattern matches no file"))
            for m in matches:
                add(m)
        elif p.is_symlink():
            problems.append((text, _broken_link(p)))
        else:
            problems.append((text, _missing(text, "no such file or folder")))
    return found, problems


def _image_subfolders(folder: Path) -> list[str]:
    """The names of ``folder``'s subfolders that hold images themselves (unreadable ones skipped)."""
    names = []
    for d in sorted(folder.iterdir()):
        try:
            if (
                d.is_dir()
                and not d.name.startswith(".")
                and any(f.suffix.lower() in IMAGE_SUFFIXES for f in d.iterdir())
            ):
                names.append(d.name)
        except OSError:
            continue
    return names


def _missing(text: str, reason: str) -> str:
    """``reason``, or for an address what to do instead: zsw reads files, never the network."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        return "zsw reads image files, not addresses: download the photo first and give its path"
    return reason


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
