"""Photos in sRGB, whatever colour space their file declares.

zsw's training images are sRGB, and so are the vertex colours every viewer shows. A photo read as
sRGB when it is not shifts every saturated colour: Display P3 (phones), Adobe RGB (cameras) or
print CMYK by up to 40 % of the range. A file declares its space in one of two ways, and
:func:`to_srgb` converts by either:

* an embedded **ICC profile** (JPEG, PNG, TIFF, WebP, and HEIF's ``colr`` box of type ``prof``):
  converted with LittleCMS through Pillow's :mod:`PIL.ImageCms`, for RGB and CMYK photos, with the
  relative colorimetric intent (a print's paper white is the screen's white, as image editors
  show it);
* a HEIF **nclx** description (``colr`` of type ``nclx``: code points for the primaries and
  the transfer curve, as video does; pillow-heif reports it with the primaries' chromaticities):
  converted here on linear light by the 3x3 matrix between the two sets of primaries (with a
  Bradford adaptation where the white points differ), the standard way for SDR transfers. (AVIF
  shares the box, but Pillow, which reads AVIF, does not report it: an AVIF is taken as sRGB unless
  it embeds a profile.)

Photos without either, or declared sRGB, are left as they are; a declaration zsw cannot use (a
broken profile, an HDR transfer curve, which would need tone mapping) leaves the pixels as stored
and says so in a note.
"""

from __future__ import annotations

import functools
import io

import numpy as np

from zsw.errors import reason

__all__ = ["to_srgb"]

#: sRGB's (= BT.709's) primaries and white point: red, green, blue, white (x, y)
SRGB_XY = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06), (0.3127, 0.3290))
#: nclx transfer characteristics (ITU-T H.273) that are SDR curves close enough to sRGB's that
#: displays and browsers show them as sRGB: BT.709, unspecified, BT.601 (6), sRGB (13), BT.2020
HEIF_SDR_TRANSFERS = {1, 2, 6, 13, 14, 15}
_HDR_TRANSFERS = {16: "PQ", 18: "HLG"}
#: names of the nclx colour primaries code points a photo may carry
_PRIMARIES = {1: "BT.709/sRGB", 4: "BT.470M", 5: "BT.601 (PAL)", 6: "BT.601 (NTSC)", 9: "BT.2020", 11: "DCI-P3",
              12: "Display P3", 22: "EBU 3213"}  # fmt: skip
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])
#: pixels converted per step of the matrix path (bounds its float memory on a 48 MP photo)
_CHUNK = 1 << 20


def to_srgb(img, notes: list[str]):
    """``img`` (a PIL image, any mode) with its pixels in sRGB: an RGB(A) or CMYK photo with a
    non-sRGB ICC profile converted by it (CMYK to RGB), an RGB(A) one with a non-sRGB nclx
    description by :func:`_nclx_matrix`. Other modes and undeclared photos are returned as they
    are; what was done goes to ``notes``."""
    if icc := img.info.get("icc_profile"):
        return _by_profile(img, icc, notes)
    if (nclx := img.info.get("nclx_profile")) and img.mode in ("RGB", "RGBA"):
        return _by_nclx(img, nclx, notes)
    return img


def _by_profile(img, icc: bytes, notes: list[str]):
    from PIL import ImageCms

    space = {"RGB": "RGB", "RGBA": "RGB", "CMYK": "CMYK"}.get(img.mode)
    if space is None:  # grey and others: Pillow's conversion is what zsw has
        return img
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if profile.profile.xcolor_space.strip() != space:  # e.g. a grey profile kept by a conversion
            return img
        name = " ".join(ImageCms.getProfileDescription(profile).split()) or "unnamed"
        if "srgb" in name.lower():
            return img
        out = ImageCms.profileToProfile(
            img, profile, _srgb_profile(), renderingIntent=1,  # relative colorimetric
            outputMode="RGB" if space == "CMYK" else img.mode,
        )  # fmt: skip
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as e:
        notes.append(f"embedded colour profile unreadable ({reason(e)}): colours taken as sRGB")
        return img
    notes.append(f"colours converted from the embedded profile '{name}' to sRGB")
    return out


@functools.cache
def _srgb_profile():
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _by_nclx(img, nclx: dict, notes: list[str]):
    primaries, transfer = nclx.get("color_primaries", 2), nclx.get("transfer_characteristics", 2)
    name = _PRIMARIES.get(primaries, f"primaries {primaries}")
    if transfer in _HDR_TRANSFERS:
        hdr = _HDR_TRANSFERS[transfer]
        notes.append(f"an HDR photo ({hdr} transfer, {name}): colours taken as they are, no tone mapping")
        return img
    try:
        xy = [(float(nclx[f"color_primary_{c}_x"]), float(nclx[f"color_primary_{c}_y"]))
              for c in ("red", "green", "blue", "white")]  # fmt: skip
        matrix = _nclx_matrix(xy)
    except (KeyError, TypeError, ValueError, np.linalg.LinAlgError) as e:
        notes.append(f"nclx colour description unusable ({reason(e)}): colours taken as sRGB")
        return img
    if np.abs(matrix - np.eye(3)).max() < 2e-3:  # sRGB/BT.709 primaries (or unspecified ones)
        return img
    if transfer not in HEIF_SDR_TRANSFERS:
        notes.append(f"nclx transfer curve {transfer} unknown to zsw: colours taken as sRGB")
        return img
    from PIL import Image

    a = np.asarray(img)
    out = a.copy()
    flat, rgb = out.reshape(-1, a.shape[-1]), a.reshape(-1, a.shape[-1])[:, :3]
    (decode, encode), rows = _srgb_curves(), matrix.T.astype(np.float32)
    for start in range(0, len(rgb), _CHUNK):
        linear = decode[rgb[start : start + _CHUNK]] @ rows
        flat[start : start + _CHUNK, :3] = encode[np.rint(np.clip(linear, 0.0, 1.0) * 65535.0).astype(np.int32)]
    notes.append(f"colours converted from the photo's nclx description ({name} primaries) to sRGB")
    converted = Image.fromarray(out, img.mode)
    converted.info = {k: v for k, v in img.info.items() if k != "nclx_profile"}
    return converted


def _nclx_matrix(xy) -> np.ndarray:
    """The 3x3 matrix from linear RGB in the primaries and white point ``xy`` (red, green, blue,
    white as (x, y)) to linear sRGB, through XYZ, Bradford-adapting the white to sRGB's D65."""
    src, dst = _rgb_to_xyz(xy), _rgb_to_xyz(SRGB_XY)
    adapt = np.eye(3)
    if max(abs(a - b) for a, b in zip(xy[3], SRGB_XY[3], strict=True)) > 1e-4:
        w_src, w_dst = _xyz(*xy[3]), _xyz(*SRGB_XY[3])
        cone_src, cone_dst = _BRADFORD @ w_src, _BRADFORD @ w_dst
        adapt = np.linalg.inv(_BRADFORD) @ np.diag(cone_dst / cone_src) @ _BRADFORD
    return np.linalg.inv(dst) @ adapt @ src


def _xyz(x: float, y: float) -> np.ndarray:
    """XYZ of chromaticity (x, y) at luminance 1."""
    return np.array([x / y, 1.0, (1.0 - x - y) / y])


def _rgb_to_xyz(xy) -> np.ndarray:
    """Linear RGB -> XYZ for primaries and white ``xy``: the primaries' XYZ columns scaled so that
    RGB (1, 1, 1) is the white at luminance 1."""
    primaries = np.stack([_xyz(*p) for p in xy[:3]], axis=1)
    return primaries * np.linalg.solve(primaries, _xyz(*xy[3]))


@functools.cache
def _srgb_curves() -> tuple[np.ndarray, np.ndarray]:
    """sRGB's curve as tables: 8-bit level -> linear light (float32 [256]), and linear light at
    1/65535 steps -> 8-bit level (uint8 [65536], within 0.05 level of the exact encoding)."""
    x = np.arange(256) / 255.0
    decode = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)
    v = np.arange(65536) / 65535.0
    encoded = np.where(v <= 0.0031308, 12.92 * v, 1.055 * v ** (1 / 2.4) - 0.055) * 255.0
    return decode, np.clip(np.rint(encoded), 0, 255).astype(np.uint8)
