"""Photos in sRGB, whatever colour space their file declares.

zsw's training images are sRGB, and so are the vertex colours every viewer shows. A photo read as
sRGB when it is not shifts every saturated colour: Display P3 (phones), Adobe RGB (cameras) or
print CMYK by up to 40 % of the range. A file declares its space in one of two ways, and
:func:`to_srgb` converts by either:

* an embedded **ICC profile** (JPEG, PNG, TIFF, WebP, and HEIF's ``colr`` box of type ``prof``):
  converted with LittleCMS through Pillow's :mod:`PIL.ImageCms`, for RGB, CMYK and grey photos, with the
  relative colorimetric intent (a print's paper white is the screen's white, as image editors
  show it);
* a HEIF **nclx** description (``colr`` of type ``nclx``: code points for the primaries and
  the transfer curve, as video does; pillow-heif reports it with the primaries' chromaticities):
  converted here on linear light by the 3x3 matrix between the two sets of primaries (with a
  Bradford adaptation where the white points differ), the standard way for SDR transfers. AVIF
  shares the box, but Pillow, which reads AVIF, does not report it: :func:`avif_nclx` reads it
  from the file's ``meta`` box, for the primary image.

An nclx description with an HDR transfer curve (PQ, HLG: an HDR still from a camera or an
editor) is tone-mapped to sRGB: decoded to light relative to BT.2408's reference white (203 nits),
HLG through its display gamma, converted to sRGB's primaries, highlights above 0.75 of reference
white compressed smoothly towards white, hues kept.

Photos without either, or declared sRGB, are left as they are; a declaration zsw cannot use (a
broken profile, an unknown transfer curve) leaves the pixels as stored and says so in a note.
"""

from __future__ import annotations

import functools
import io

import numpy as np

from zsw.errors import reason

__all__ = ["avif_nclx", "linear_to_srgb8", "srgb8_to_linear", "to_srgb"]

#: sRGB's (= BT.709's) primaries and white point: red, green, blue, white (x, y)
SRGB_XY = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06), (0.3127, 0.3290))
#: nclx transfer characteristics (ITU-T H.273) that are SDR curves close enough to sRGB's that
#: displays and browsers show them as sRGB: BT.709, unspecified, BT.601 (6), sRGB (13), BT.2020
HEIF_SDR_TRANSFERS = {1, 2, 6, 13, 14, 15}
_HDR_TRANSFERS = {16: "PQ", 18: "HLG"}
#: names of the nclx colour primaries code points a photo may carry
_PRIMARIES = {1: "BT.709/sRGB", 4: "BT.470M", 5: "BT.601 (PAL)", 6: "BT.601 (NTSC)", 9: "BT.2020", 11: "DCI-P3",
              12: "Display P3", 22: "EBU 3213"}  # fmt: skip
#: chromaticities (red, green, blue, white as (x, y)) of the nclx primaries code points (H.273 table 2)
_PRIMARIES_XY = {
    1: SRGB_XY,
    4: ((0.67, 0.33), (0.21, 0.71), (0.14, 0.08), (0.310, 0.316)),
    5: ((0.64, 0.33), (0.29, 0.60), (0.15, 0.06), (0.3127, 0.3290)),
    6: ((0.630, 0.340), (0.310, 0.595), (0.155, 0.070), (0.3127, 0.3290)),
    7: ((0.630, 0.340), (0.310, 0.595), (0.155, 0.070), (0.3127, 0.3290)),
    8: ((0.681, 0.319), (0.243, 0.692), (0.145, 0.049), (0.310, 0.316)),
    9: ((0.708, 0.292), (0.170, 0.797), (0.131, 0.046), (0.3127, 0.3290)),
    11: ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060), (0.314, 0.351)),
    12: ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060), (0.3127, 0.3290)),
    22: ((0.630, 0.340), (0.295, 0.605), (0.155, 0.077), (0.3127, 0.3290)),
}
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])
#: pixels converted per step of the matrix path (bounds its float memory on a 48 MP photo)
_CHUNK = 1 << 20


def to_srgb(img, notes: list[str]):
    """``img`` (a PIL image, any mode) with its pixels in sRGB: an RGB(A), CMYK or grey (L, LA)
    photo with a non-sRGB ICC profile converted by it (CMYK and grey to RGB(A)), an RGB(A) one with a non-sRGB nclx
    description by :func:`_nclx_matrix`. Other modes and undeclared photos are returned as they
    are; what was done goes to ``notes``."""
    if icc := img.info.get("icc_profile"):
        return _by_profile(img, icc, notes)
    if (nclx := img.info.get("nclx_profile")) and img.mode in ("RGB", "RGBA"):
        return _by_nclx(img, nclx, notes)
    return img


def _by_profile(img, icc: bytes, notes: list[str]):
    from PIL import ImageCms

    space = {"RGB": "RGB", "RGBA": "RGB", "CMYK": "CMYK", "L": "GRAY", "LA": "GRAY"}.get(img.mode)
    if space is None:  # other modes: Pillow's conversion is what zsw has
        return img
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if profile.profile.xcolor_space.strip() != space:  # e.g. a grey profile kept by a conversion
            return img
        name = " ".join(ImageCms.getProfileDescription(profile).split()) or "unnamed"
        if "srgb" in name.lower():
            return img
        source = img.getchannel("L") if img.mode == "LA" else img  # LittleCMS has no grey + alpha
        out = ImageCms.profileToProfile(
            source, profile, _srgb_profile(), renderingIntent=1,  # relative colorimetric
            outputMode="RGBA" if img.mode == "RGBA" else "RGB",
        )  # fmt: skip
        if img.mode == "LA":
            out.putalpha(img.getchannel("A"))
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as e:
        notes.append(f"embedded colour profile unreadable ({reason(e)}): colours taken as sRGB")
        return img
    notes.append(f"colours converted from the embedded profile '{name}' to sRGB")
    out.info.pop("icc_profile", None)  # its pixels are sRGB now: a later look must not convert them again
    return out


@functools.cache
def _srgb_profile():
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _by_nclx(img, nclx: dict, notes: list[str]):
    primaries, transfer = nclx.get("color_primaries", 2), nclx.get("transfer_characteristics", 2)
    name = _PRIMARIES.get(primaries, f"primaries {primaries}")
    try:
        xy = [(float(nclx[f"color_primary_{c}_x"]), float(nclx[f"color_primary_{c}_y"]))
              for c in ("red", "green", "blue", "white")]  # fmt: skip
        matrix = _nclx_matrix(xy)
    except (KeyError, TypeError, ValueError, np.linalg.LinAlgError) as e:
        notes.append(f"nclx colour description unusable ({reason(e)}): colours taken as sRGB")
        return img
    hdr = _HDR_TRANSFERS.get(transfer)
    if hdr is None and np.abs(matrix - np.eye(3)).max() < 2e-3:  # sRGB/BT.709 primaries (or unspecified ones)
        return img
    if hdr is None and transfer not in HEIF_SDR_TRANSFERS:
        notes.append(f"nclx transfer curve {transfer} unknown to zsw: colours taken as sRGB")
        return img
    from PIL import Image

    a = np.asarray(img)
    out = a.copy()
    flat, rgb = out.reshape(-1, a.shape[-1]), a.reshape(-1, a.shape[-1])[:, :3]
    decode = _srgb_curves()[0] if hdr is None else _hdr_relative(transfer)
    rows = matrix.T.astype(np.float32)
    # HLG's signal is scene light: the display's system gamma, by the photo's luminance, makes it display light
    luminance = _rgb_to_xyz(xy)[1].astype(np.float32) if hdr == "HLG" else None
    for start in range(0, len(rgb), _CHUNK):
        linear = decode[rgb[start : start + _CHUNK]]
        if luminance is not None:
            linear = _hlg_display(linear, luminance)
        linear = linear @ rows
        flat[start : start + _CHUNK, :3] = _encoded(linear if hdr is None else _tone_mapped(linear))
    if hdr is None:
        notes.append(f"colours converted from the photo's nclx description ({name} primaries) to sRGB")
    else:
        notes.append(
            f"an HDR photo ({hdr} transfer, {name} primaries): tone-mapped to sRGB (reference white "
            f"{REFERENCE_WHITE_NITS:g} nits as white, highlights compressed)"
        )
    converted = Image.fromarray(out, img.mode)
    converted.info = {k: v for k, v in img.info.items() if k != "nclx_profile"}
    return converted


def avif_nclx(f) -> dict | None:
    """The nclx colour description of an AVIF's primary image, from the open binary file ``f``, in
    pillow-heif's form (code points and the primaries' chromaticities); None when the file has no
    readable one, or its primaries are unspecified or not in H.273's table.

    The ``colr`` box sits among the item properties (``meta`` / ``iprp`` / ``ipco``); ``ipma`` says
    which belong to the primary item (``pitm``), which matters when an alpha plane or a grid's
    tiles carry their own. Only the ``meta`` box is read (top-level boxes are skipped by seeking).
    """
    try:
        meta = _top_level_box(f, b"meta")
        if meta is None:
            return None
        children = dict(_boxes(meta[4:]))  # a full box: version and flags first
        iprp = dict(_boxes(children.get(b"iprp", b"")))
        properties = list(_boxes(iprp.get(b"ipco", b"")))
        candidates = [i for i, (kind, body) in enumerate(properties) if kind == b"colr" and body[:4] == b"nclx"]
        if not candidates:
            return None
        primary = _primary_item(children.get(b"pitm"))
        linked = _item_properties(iprp.get(b"ipma"), primary) if primary is not None else None
        chosen = [i for i in candidates if linked is None or i in linked]
        body = properties[(chosen or candidates)[0]][1]
    except (OSError, ValueError, IndexError):
        return None
    if len(body) < 11:
        return None
    primaries, transfer, matrix = (int.from_bytes(body[i : i + 2], "big") for i in (4, 6, 8))
    if primaries not in _PRIMARIES_XY:
        return None
    out = {"color_primaries": primaries, "transfer_characteristics": transfer,
           "matrix_coefficients": matrix, "full_range_flag": body[10] >> 7}  # fmt: skip
    for name, (x, y) in zip(("red", "green", "blue", "white"), _PRIMARIES_XY[primaries], strict=True):
        out[f"color_primary_{name}_x"], out[f"color_primary_{name}_y"] = x, y
    return out


def _top_level_box(f, kind: bytes, limit: int = 1 << 24) -> bytes | None:
    """The body of the first top-level box ``kind`` of ``f`` (seeking past the others; bodies over
    ``limit`` bytes are not read), or None."""
    f.seek(0)
    while header := f.read(8):
        if len(header) < 8:
            return None
        size, found = int.from_bytes(header[:4], "big"), header[4:]
        start = 8
        if size == 1:
            size, start = int.from_bytes(f.read(8), "big"), 16
        if size == 0:  # the box runs to the end of the file
            size = 1 << 62
        if size < start:
            raise ValueError(f"box {found!r} of {size} bytes")
        if found == kind:
            if size - start > limit:
                return None
            body = f.read(size - start)
            return body if len(body) == size - start else None
        f.seek(size - start, 1)
    return None


def _boxes(data: bytes):
    """``(type, body)`` of the boxes laid end to end in ``data``."""
    at = 0
    while at + 8 <= len(data):
        size, kind, start = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8], 8
        if size == 1:
            size, start = int.from_bytes(data[at + 8 : at + 16], "big"), 16
        elif size == 0:
            size = len(data) - at
        if size < start or at + size > len(data):
            raise ValueError(f"box {kind!r} of {size} bytes at {at}")
        yield kind, data[at + start : at + size]
        at += size


def _primary_item(pitm: bytes | None) -> int | None:
    if not pitm or len(pitm) < 6:
        return None
    return int.from_bytes(pitm[4:6] if pitm[0] == 0 else pitm[4:8], "big")


def _item_properties(ipma: bytes | None, item: int) -> set[int] | None:
    """0-based indices into ``ipco`` of the properties ``ipma`` associates with ``item`` (None
    when ``ipma`` is missing or does not list the item)."""
    if not ipma or len(ipma) < 8:
        return None
    version, wide = ipma[0], ipma[3] & 1
    count, at = int.from_bytes(ipma[4:8], "big"), 8
    id_size = 2 if version < 1 else 4
    for _ in range(count):
        found = int.from_bytes(ipma[at : at + id_size], "big")
        n = ipma[at + id_size]
        at += id_size + 1
        step = 2 if wide else 1
        indices = {
            (int.from_bytes(ipma[at + k * step : at + (k + 1) * step], "big") & (0x7FFF if wide else 0x7F)) - 1
            for k in range(n)
        }
        at += n * step
        if found == item:
            return indices
    return None


#: BT.2408's HDR reference white (diffuse white, a sheet of paper), in cd/m^2: SDR white in the tone mapping
REFERENCE_WHITE_NITS = 203.0
#: the tone curve's knee: luminance up to it (relative to reference white) is kept, above it compressed
_KNEE = 0.75
#: HLG's nominal display peak (BT.2100) and its system gamma there
_HLG_PEAK_NITS, _HLG_GAMMA = 1000.0, 1.2


@functools.cache
def _hdr_relative(transfer: int) -> np.ndarray:
    """An 8-bit HDR code -> linear light (float32 [256]) relative to reference white: PQ's
    absolute luminance (SMPTE ST 2084) over :data:`REFERENCE_WHITE_NITS`; for HLG (ARIB STD-B67) the
    normalised scene light of its inverse OETF (:func:`_hlg_display` makes it display light)."""
    e = np.arange(256, dtype=np.float64) / 255.0
    if transfer == 16:
        m1, m2 = 2610 / 16384, 2523 / 4096 * 128
        c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
        p = e ** (1 / m2)
        nits = 10000.0 * (np.maximum(p - c1, 0.0) / (c2 - c3 * p)) ** (1 / m1)
        return (nits / REFERENCE_WHITE_NITS).astype(np.float32)
    a = 0.17883277
    b, c = 1 - 4 * a, 0.5 - a * np.log(4 * a)
    return np.where(e <= 0.5, e * e / 3, (np.exp((e - c) / a) + b) / 12).astype(np.float32)


def _hlg_display(scene: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """HLG scene light [N, 3] -> display light relative to reference white: BT.2100's OOTF on a
    1000-nit display (luminance, by the photo's primaries' ``weights``, to the power 1.2)."""
    luminance = np.maximum(scene @ weights, 1e-12)
    nits = _HLG_PEAK_NITS * scene * (luminance ** (_HLG_GAMMA - 1))[:, None]
    return nits / np.float32(REFERENCE_WHITE_NITS)


def _tone_mapped(linear: np.ndarray) -> np.ndarray:
    """Linear sRGB-primaries light [N, 3] relative to reference white -> SDR [0, 1]: luminance kept
    up to :data:`_KNEE` and compressed above it towards 1 (a rational curve, smooth at the knee,
    so highlights keep their gradation and reference white lands at 0.875), every channel scaled
    by the luminance's ratio (hues kept), then clipped."""
    y = np.maximum(linear @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32), 0.0)
    x = np.maximum(y - _KNEE, 0.0) / (1.0 - _KNEE)
    mapped = np.where(y > _KNEE, _KNEE + (1.0 - _KNEE) * x / (1.0 + x), y)
    return linear * (mapped / np.maximum(y, 1e-12))[:, None]


def linear_to_srgb8(linear: np.ndarray) -> np.ndarray:
    """Scene-linear RGB in sRGB's primaries (``[..., 3]``, 1.0 = diffuse white, as a renderer's
    OpenEXR holds it) -> 8-bit sRGB levels: highlights above :data:`_KNEE` compressed as an HDR
    still's are (:func:`_tone_mapped`), then sRGB's curve."""
    shape = linear.shape
    return _encoded(_tone_mapped(np.asarray(linear, dtype=np.float32).reshape(-1, 3))).reshape(shape)


def srgb8_to_linear(levels: np.ndarray) -> np.ndarray:
    """8-bit sRGB levels (any shape, uint8) -> linear light in [0, 1] (float32), by sRGB's curve."""
    return _srgb_curves()[0][np.asarray(levels, dtype=np.uint8)]


def _encoded(linear: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] (clipped) -> 8-bit sRGB levels, by :func:`_srgb_curves`' table."""
    return _srgb_curves()[1][np.rint(np.clip(linear, 0.0, 1.0) * 65535.0).astype(np.int32)]


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
