"""Image loading for reconstruction: formats, modes, EXIF, padding, odd and broken files."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from PIL import Image

from zsw.errors import InputError
from zsw.infer.image import find_images, load_image, load_mask


def test_square_rgb_passes_through_unchanged(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "x.png")
    im = load_image(tmp_path / "x.png")
    assert im.name == "x" and im.original_size == (224, 224) and im.notes == []
    np.testing.assert_array_equal(im.image, a)


def test_a_wide_photo_is_padded_with_itself_mirrored_around_the_centre(tmp_path):
    """The model never saw white bands beside a textured photo in training: it outlined their edge
    as an object. The padding continues the photo by mirroring it (numpy's ``symmetric`` pad)."""
    a = np.full((100, 400, 3), 90, np.uint8)
    a[:10] = (200, 30, 30)  # red along the top edge, blue along the bottom
    a[-10:] = (30, 30, 200)
    Image.fromarray(a).save(tmp_path / "wide.png")
    im = load_image(tmp_path / "wide.png")
    assert im.image.shape == (224, 224, 3) and im.pad == (0, 150)
    expected = np.pad(a, ((150, 150), (0, 0), (0, 0)), mode="symmetric")
    want = np.asarray(Image.fromarray(expected).resize((224, 224), Image.Resampling.LANCZOS)).astype(int)
    assert np.abs(im.image.astype(int) - want).max() <= 1
    # the bands beyond the top and bottom edges carry those edges' colours, mirrored
    assert (im.image[82, :, 0] > 150).all() and (im.image[141, :, 2] > 150).all()
    assert (np.abs(im.image[:20].astype(int) - 90) <= 2).all()  # far out: the photo's grey, mirrored again
    assert any("padded to a square with the photo mirrored" in n for n in im.notes)
    assert im.photo_area[:37].sum() == 0 and im.photo_area[112].all()  # the padding is not the photo


def test_a_wide_cut_out_is_padded_with_white_as_its_transparency_is(tmp_path):
    rgba = np.zeros((100, 400, 4), np.uint8)
    rgba[..., :3] = 40
    rgba[20:80, 150:250, 3] = 255  # an object in the middle, transparent around it
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    im = load_image(tmp_path / "cutout.png")
    assert (im.image[:40] == 255).all() and (im.image[-40:] == 255).all()  # white bands above and below
    assert (im.image[112, 100:124] < 60).all()  # the object
    assert any("padded to a square with white" in n for n in im.notes)


def test_an_image_transparent_everywhere_is_a_one_line_error(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 90
    rgba[..., 3] = 127  # under half opaque everywhere
    Image.fromarray(rgba, "RGBA").save(tmp_path / "ghost.png")
    with pytest.raises(InputError, match=r"ghost\.png: the image is transparent everywhere"):
        load_image(tmp_path / "ghost.png")
    rgba[0, 0, 3] = 128  # one pixel that is there: the image is read
    assert load_image(rgba).alpha is not None


def test_rgba_is_composited_on_white_and_keeps_its_alpha(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[16:48, 16:48, 3] = 255  # an opaque red square on a transparent background
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    im = load_image(tmp_path / "a.png")
    assert (im.image[5, 5] == 255).all()  # transparent -> white
    np.testing.assert_array_equal(im.image[112, 112], [200, 0, 0])
    assert im.alpha is not None and im.alpha[112, 112] and not im.alpha[5, 5]
    assert 0.2 < im.alpha.mean() < 0.3  # a quarter of the image


@pytest.mark.parametrize(
    "mode, value, expected",
    [("L", 128, 128), ("I;16", 65535, 255), ("I;16", 257 * 100, 100), ("F", 0.5, 128), ("1", 1, 255)],
)
def test_grayscale_and_high_bit_depths_become_8_bit_rgb(tmp_path, mode, value, expected):
    img = Image.new(mode, (32, 32), value)
    path = tmp_path / ("g.tif" if mode == "F" else "g.png")
    img.save(path)
    im = load_image(path)
    assert im.image.dtype == np.uint8 and im.image.shape == (224, 224, 3)
    assert abs(int(im.image[112, 112, 0]) - expected) <= 1
    assert (im.image[112, 112] == im.image[112, 112, 0]).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_float_image_with_non_finite_pixels_is_refused(tmp_path, bad):
    a = np.full((32, 32), 0.5, np.float32)
    a[3, 4] = bad  # inf turned the whole photo black, NaN printed numpy's warnings
    Image.fromarray(a, "F").save(tmp_path / "f.tif")
    with pytest.raises(InputError, match="1 non-finite pixel"):
        load_image(tmp_path / "f.tif")


def test_tiffs_pillow_cannot_read_are_read_by_tifffile(tmp_path):
    """A renderer's 32-bit float RGB(A) TIFF (Blender's, a compositor's) and 32-bit integer RGB are
    sample formats Pillow does not open ("cannot identify image file"); tifffile reads them, planar
    ones too, and they become 8 bits as 16-bit and float grayscale do. NaN is refused as there, and
    a file that only starts like a TIFF is one line naming both readers."""
    import tifffile

    rgb = np.random.default_rng(5).random((40, 64, 3)).astype(np.float32)
    alpha = np.ones((40, 64, 1), np.float32)
    alpha[:, :20] = 0
    tifffile.imwrite(tmp_path / "render.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "render-alpha.tif", np.concatenate([rgb, alpha], 2), photometric="rgb",
                     extrasamples=["unassalpha"])  # fmt: skip
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "u32.tif", (rgb * 65535).astype(np.uint32), photometric="rgb")
    expected = np.rint(rgb * 255)
    for name in ("render.tif", "render-alpha.tif", "planar.tif", "u32.tif"):
        with pytest.raises(Exception):  # noqa: B017 - what Pillow makes of it, whatever it raises
            Image.open(tmp_path / name).load()
        im = load_image(tmp_path / name, size=64)
        opaque = slice(20, None) if "alpha" in name else slice(None)  # the transparent part: on white
        assert np.abs(im.pixels[:, opaque].astype(float) - expected[:, opaque]).max() <= 1, name
        assert any("TIFF read by tifffile" in n for n in im.notes), im.notes
    im = load_image(tmp_path / "render-alpha.tif", size=64)
    assert not im.pixel_alpha[:, :18].any() and im.pixel_alpha[:, 22:].all()

    rgb[1, 2, 0] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", rgb, photometric="rgb")
    with pytest.raises(InputError, match="1 non-finite pixel"):
        load_image(tmp_path / "nan.tif")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00" + bytes(40))
    with pytest.raises(InputError, match=r"broken.tif: not an image file PIL or tifffile can read"):
        load_image(tmp_path / "broken.tif")


def test_an_openexr_render_is_read_as_srgb(tmp_path, monkeypatch):
    """A renderer's OpenEXR holds scene-linear light (1.0 = white), premultiplied by alpha, often
    in a multilayer file (Blender's ``ViewLayer.Combined.R``): it is read through the OpenEXR
    package (the `exr` extra) as sRGB -- below the highlight knee exactly sRGB's encoding of the
    light --, colour divided by alpha, half floats too. A file without colour channels, NaN, and a
    missing package are one line each."""
    import sys

    openexr = pytest.importorskip("OpenEXR")

    def write(path, channels):
        header = {"compression": openexr.ZIP_COMPRESSION, "type": openexr.scanlineimage}
        channels = {k: np.ascontiguousarray(v) for k, v in channels.items()}  # the writer takes raw buffers
        with openexr.File(header, channels) as f:
            f.write(str(path))

    rng = np.random.default_rng(6)
    rgb = rng.uniform(0.0, 0.5, (40, 64, 3)).astype(np.float32)  # below the knee: no compression
    expected = _srgb_encoded(rgb.astype(np.float64))
    alpha = np.ones((40, 64), np.float32)
    alpha[:, :20] = 0.0
    alpha[:, 40:] = 0.5
    write(tmp_path / "render.exr", {"R": rgb[..., 0], "G": rgb[..., 1], "B": rgb[..., 2]})
    write(tmp_path / "half.exr", {c: rgb[..., i].astype(np.float16) for i, c in enumerate("RGB")})
    layered = {f"ViewLayer.Combined.{c}": rgb[..., i] * alpha for i, c in enumerate("RGB")}
    write(tmp_path / "layers.exr", {**layered, "ViewLayer.Combined.A": alpha, "ViewLayer.Depth.Z": alpha})
    for name, tolerance in (("render.exr", 1), ("half.exr", 2), ("layers.exr", 1)):
        im = load_image(tmp_path / name, size=64)
        opaque = slice(20, 40) if name == "layers.exr" else slice(None)  # the rest: composited on white
        d = np.abs(im.pixels[:, opaque].astype(float) - expected[:, opaque])
        assert d.max() <= tolerance, (name, d.max())
        assert any("OpenEXR scene-linear" in n for n in im.notes), im.notes
    im = load_image(tmp_path / "layers.exr", size=64)
    assert not im.pixel_alpha[:, :20].any() and im.pixel_alpha[:, 20:].all()
    half_on_white = 0.5 * expected[:, 40:] + 0.5 * 255  # colour divided by alpha, then half over white
    assert np.abs(im.pixels[:, 40:].astype(float) - half_on_white).max() <= 2
    bright = np.full((40, 64), 4.0, np.float32)  # a highlight four times white: near white, not clipped flat
    write(tmp_path / "bright.exr", {"R": bright, "G": bright, "B": bright})
    assert 245 <= load_image(tmp_path / "bright.exr", size=64).pixels[0, 0, 0] < 255

    write(tmp_path / "depth.exr", {"Z": bright})
    with pytest.raises(InputError, match=r"depth.exr: an OpenEXR image without R, G, B or Y channels \(Z\)"):
        load_image(tmp_path / "depth.exr")
    rgb[0, 0, 0] = np.nan
    write(tmp_path / "nan.exr", {"R": rgb[..., 0], "G": rgb[..., 1], "B": rgb[..., 2]})
    with pytest.raises(InputError, match="1 non-finite pixel"):
        load_image(tmp_path / "nan.exr")
    monkeypatch.setitem(sys.modules, "OpenEXR", None)
    with pytest.raises(InputError, match=r"render.exr: an OpenEXR image, which needs the OpenEXR package"):
        load_image(tmp_path / "render.exr")


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((40, 80, 3), np.uint8)  # landscape, left half black, right half white
    a[:, 40:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(a).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    im = load_image(tmp_path / "phone.jpg")
    assert im.original_size == (40, 80)  # portrait once upright
    assert im.image[20, 112].mean() < 30 and im.image[200, 112].mean() > 225  # black on top after the turn
    assert any("EXIF" in n for n in im.notes)


def _display_p3_profile() -> bytes:
    """A Display P3 ICC profile (a phone's photos carry one): Pillow's built-in sRGB profile with
    P3's D50-adapted colorants (as in Apple's profile) and another name; both share sRGB's curve."""
    import struct

    from PIL import ImageCms

    b = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    tags = {}
    for i in range(struct.unpack(">I", b[128:132])[0]):
        sig, offset, size = struct.unpack(">4sII", b[132 + 12 * i : 144 + 12 * i])
        tags[sig] = (offset, size)
    for sig, xyz in ((b"rXYZ", (0.51512, 0.24120, -0.00105)), (b"gXYZ", (0.29198, 0.69225, 0.04189)),
                     (b"bXYZ", (0.15710, 0.06657, 0.78407))):  # fmt: skip
        offset, _ = tags[sig]
        b[offset + 8 : offset + 20] = struct.pack(">3i", *(round(v * 65536) for v in xyz))
    offset, size = tags[b"desc"]
    name = "sRGB built-in".encode("utf-16-be")
    at = bytes(b).index(name, offset, offset + size)
    b[at : at + len(name)] = "Display P3 13".encode("utf-16-be")  # the same length
    return bytes(b)


def test_photos_in_display_p3_or_other_profiles_are_read_in_srgb(tmp_path):
    """An iPhone's photo is in Display P3: read as sRGB its saturated colours moved by up to 107
    of 255 levels, in what the model saw and in the mesh's colours. Pixels are converted by the
    embedded profile, checked here against P3 -> sRGB done by hand (the standard matrix on linear
    light); sRGB profiles and photos without one are left as stored, a broken profile is a note."""
    a = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)

    def linear(x):
        x = x / 255.0
        return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)

    def encoded(x):
        x = np.clip(x, 0.0, 1.0)
        return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055) * 255.0

    p3_to_srgb = np.array([[1.2249, -0.2247, 0.0], [-0.0420, 1.0419, 0.0], [-0.0197, -0.0786, 1.0979]])
    p3 = _display_p3_profile()
    for suffix, extra in ((".png", {}), (".jpg", {"quality": 95})):
        Image.fromarray(a).save(tmp_path / f"p3{suffix}", icc_profile=p3, **extra)
        stored = np.asarray(Image.open(tmp_path / f"p3{suffix}").convert("RGB"), dtype=np.float64)  # P3 values
        expected = encoded(linear(stored) @ p3_to_srgb.T)
        assert np.abs(expected - stored).max() > 60  # what reading them as sRGB got wrong
        im = load_image(tmp_path / f"p3{suffix}", size=64)
        assert np.abs(im.pixels.astype(np.float64) - expected).max() <= 2, suffix  # the mesh's colours
        assert np.abs(im.image.astype(np.float64) - expected).max() <= 2, suffix  # what the model sees
        assert any("'Display P3 13' to sRGB" in n for n in im.notes), im.notes
    from zsw.infer.colorspace import to_srgb

    once, notes = to_srgb(Image.open(tmp_path / "p3.png"), []), []  # converted once, never twice
    assert "icc_profile" not in once.info and to_srgb(once, notes) is once and notes == []
    rgba = np.dstack([a, np.full((64, 64), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "p3a.png", icc_profile=p3)
    assert np.array_equal(load_image(tmp_path / "p3a.png", size=64).pixel_alpha, rgba[..., 3] > 127)

    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for name, profile in (("plain.png", None), ("srgb.png", srgb)):
        Image.fromarray(a).save(tmp_path / name, **({"icc_profile": profile} if profile else {}))
        im = load_image(tmp_path / name, size=64)
        assert np.array_equal(im.pixels, a) and not any("profile" in n for n in im.notes), name
    Image.fromarray(a).save(tmp_path / "broken.png", icc_profile=b"not a profile")
    im = load_image(tmp_path / "broken.png", size=64)
    assert np.array_equal(im.pixels, a) and any("colour profile unreadable" in n for n in im.notes), im.notes


@pytest.mark.parametrize("mode", ["1", "L", "P", "LA", "La", "PA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "I", "F"])
def test_every_pil_mode_loads_and_keeps_its_transparency(mode):
    """An in-memory image in any mode PIL makes (the premultiplied La and RGBa too, which Pillow
    cannot convert to RGBA directly) loads as 8-bit RGB, and a mode with alpha keeps it: the
    transparent left half is no object."""
    rng = np.random.default_rng(4)
    rgba = np.concatenate([rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), np.full((96, 128, 1), 255, np.uint8)], 2)
    rgba[:, :64, 3] = 0
    img, with_alpha = Image.fromarray(rgba, "RGBA"), mode in ("LA", "La", "PA", "RGBa")
    if with_alpha:
        img = img.convert("LA").convert("La") if mode == "La" else img.convert(mode)
    else:
        img = img.convert("RGB").convert(mode)
    im = load_image(img, size=64)
    assert im.pixels.dtype == np.uint8 and im.pixels.shape == (96, 128, 3), mode
    if with_alpha:
        assert im.pixel_alpha is not None and not im.pixel_alpha[:, :60].any() and im.pixel_alpha[:, 68:].all(), mode
    else:
        assert im.pixel_alpha is None


def _srgb_linear(x):
    x = np.asarray(x, dtype=np.float64) / 255.0
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _srgb_encoded(x):
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055) * 255.0


def test_a_heic_photo_described_in_display_p3_by_nclx_is_read_in_srgb(tmp_path):
    """Phones (and AVIF/HEIF encoders) may declare the colour space by an nclx box -- primaries and
    transfer code points -- instead of an ICC profile: P3 primaries with sRGB's curve are converted
    like the profile, checked against P3 -> sRGB by hand; sRGB's code points leave the pixels as
    decoded (HDR curves: the tone-mapping test below)."""
    pytest.importorskip("pillow_heif").register_heif_opener()
    a = np.repeat(np.repeat(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8), 8, 0), 8, 1)
    p3_to_srgb = np.array([[1.2249, -0.2247, 0.0], [-0.0420, 1.0419, 0.0], [-0.0197, -0.0786, 1.0979]])
    nclx = {"color_primaries": 12, "transfer_characteristics": 13, "matrix_coefficients": 6, "full_range_flag": 1}
    Image.fromarray(a).save(tmp_path / "p3.heic", quality=95, nclx_profile=nclx)
    stored = np.asarray(Image.open(tmp_path / "p3.heic").convert("RGB"), dtype=np.float64)  # P3 values, decoded
    expected = _srgb_encoded(_srgb_linear(stored) @ p3_to_srgb.T)
    assert np.abs(expected - stored).max() > 40  # what reading them as sRGB got wrong
    im = load_image(tmp_path / "p3.heic", size=64)
    assert np.abs(im.pixels.astype(np.float64) - expected).max() <= 1
    assert np.abs(im.image.astype(np.float64) - expected).max() <= 2
    assert any("nclx description (Display P3 primaries)" in n for n in im.notes), im.notes

    Image.fromarray(a).save(tmp_path / "srgb.heic", quality=95, nclx_profile={**nclx, "color_primaries": 1})
    im = load_image(tmp_path / "srgb.heic", size=64)
    assert np.array_equal(im.pixels, np.asarray(Image.open(tmp_path / "srgb.heic").convert("RGB")))
    assert not any("nclx" in n or "HDR" in n for n in im.notes)


def _avif_with_code_points(path, a, primaries: int, transfer: int = 13):
    """``a`` saved as AVIF by Pillow, then its nclx box's code points rewritten (Pillow cannot set
    them; the primaries and transfer do not enter the decoding of YUV to RGB)."""
    Image.fromarray(a).save(path, format="AVIF", quality=95)
    data = bytearray(path.read_bytes())
    at = data.index(b"colrnclx") + 8
    data[at : at + 4] = primaries.to_bytes(2, "big") + transfer.to_bytes(2, "big")
    path.write_bytes(bytes(data))


def test_an_avif_photo_described_in_display_p3_by_nclx_is_read_in_srgb(tmp_path):
    """Pillow reads AVIF but does not report its nclx box: zsw reads the box from the file, so an
    AVIF in P3 is converted like the HEIC above, one in sRGB is left as decoded, one with an HDR
    curve is tone-mapped."""
    a = np.repeat(np.repeat(np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8), 8, 0), 8, 1)
    p3_to_srgb = np.array([[1.2249, -0.2247, 0.0], [-0.0420, 1.0419, 0.0], [-0.0197, -0.0786, 1.0979]])
    _avif_with_code_points(tmp_path / "p3.avif", a, primaries=12)
    stored = np.asarray(Image.open(tmp_path / "p3.avif").convert("RGB"), dtype=np.float64)
    expected = _srgb_encoded(_srgb_linear(stored) @ p3_to_srgb.T)
    assert np.abs(expected - stored).max() > 40
    im = load_image(tmp_path / "p3.avif", size=64)
    assert np.abs(im.pixels.astype(np.float64) - expected).max() <= 1
    assert any("nclx description (Display P3 primaries)" in n for n in im.notes), im.notes

    _avif_with_code_points(tmp_path / "srgb.avif", a, 1, 13)
    im = load_image(tmp_path / "srgb.avif", size=64)
    assert np.array_equal(im.pixels, np.asarray(Image.open(tmp_path / "srgb.avif").convert("RGB")))
    assert not any("nclx" in n or "HDR" in n for n in im.notes)
    _avif_with_code_points(tmp_path / "pq.avif", a, 9, 16)
    im = load_image(tmp_path / "pq.avif", size=64)
    assert any("HDR photo (PQ transfer, BT.2020 primaries): tone-mapped" in n for n in im.notes), im.notes


def _pq_code(nits):
    """SMPTE ST 2084's inverse EOTF: luminance in cd/m^2 -> signal in [0, 1]."""
    m1, m2, c1, c2, c3 = 2610 / 16384, 2523 / 32, 3424 / 4096, 2413 / 128, 2392 / 128
    y = (np.asarray(nits, dtype=np.float64) / 10000.0) ** m1
    return ((c1 + c2 * y) / (1 + c3 * y)) ** m2


def _pq_nits(code):
    m1, m2, c1, c2, c3 = 2610 / 16384, 2523 / 32, 3424 / 4096, 2413 / 128, 2392 / 128
    p = (np.asarray(code, dtype=np.float64) / 255.0) ** (1 / m2)
    return 10000.0 * (np.maximum(p - c1, 0) / (c2 - c3 * p)) ** (1 / m1)


def test_hdr_photos_are_tone_mapped_to_srgb(tmp_path):
    """An HDR still (PQ or HLG, BT.2020 primaries) read as sRGB is dim and washed out: its codes
    are light on a curve made for 10,000 nits. It is tone-mapped: reference white (203 nits) is
    near white, darker greys are the sRGB levels of their light relative to it, brighter ones rise
    smoothly without clipping until well above it, and BT.2020 red stays the reddest sRGB red."""
    pytest.importorskip("pillow_heif").register_heif_opener()
    nits = np.array([0.0, 5.0, 20.0, 50.0, 100.0, 150.0, 203.0, 400.0, 1000.0, 4000.0])
    grey = np.repeat(np.rint(_pq_code(nits) * 255).astype(np.uint8), 3).reshape(1, -1, 3)
    red = np.rint(np.array([[_pq_code(203.0), 0.0, 0.0]]) * 255).astype(np.uint8).reshape(1, 1, 3)
    a = np.repeat(np.repeat(np.concatenate([grey, red], 1), 16, 0), 16, 1)  # 11 patches of 16x16
    code_points = {"color_primaries": 9, "transfer_characteristics": 16, "matrix_coefficients": 0,
                   "full_range_flag": 1}  # fmt: skip
    Image.fromarray(a).save(tmp_path / "pq.heic", quality=100, nclx_profile=code_points)
    stored = np.asarray(Image.open(tmp_path / "pq.heic").convert("RGB"))[8::16, 8::16][0]
    im = load_image(tmp_path / "pq.heic", size=64)
    got = im.pixels[8::16, 8::16][0].astype(np.float64)
    assert any("tone-mapped" in n for n in im.notes), im.notes
    levels = got[:10, 1]
    relative = _pq_nits(stored[:10, 1]) / 203.0  # light of the greys as stored, relative to reference white
    dark = relative < 0.7  # below the knee: sRGB's encoding of that light
    assert np.abs(levels[dark] - _srgb_encoded(relative[dark])).max() <= 2, (levels, relative)
    assert 230 <= levels[6] <= 248  # reference white: near white
    assert np.all(np.diff(levels) > 0) and levels[-1] <= 255 and levels[-2] < 255  # graded, 1000 nits unclipped
    assert np.abs(stored[:10, 1].astype(float) - levels).max() > 50  # what reading the codes as sRGB got wrong
    r, g, b = got[10]
    assert r > 200 and g < 30 and b < 30, got[10]

    hlg = {**code_points, "transfer_characteristics": 18}
    white = np.full((32, 32, 3), round(0.75 * 255), np.uint8)  # HLG's reference white signal
    Image.fromarray(white).save(tmp_path / "hlg.heic", quality=100, nclx_profile=hlg)
    im = load_image(tmp_path / "hlg.heic", size=64)
    assert any("HLG transfer" in n for n in im.notes) and 230 <= im.pixels[16, 16, 1] <= 248, im.pixels[16, 16]


def _box(kind: bytes, body: bytes) -> bytes:
    return (8 + len(body)).to_bytes(4, "big") + kind + body


def test_avif_nclx_is_the_primary_items_and_a_broken_file_gives_none():
    """The ``colr`` box is picked by ``ipma`` for the primary item (``pitm``), not by order: an
    alpha plane or a thumbnail may carry its own first. Boxes that overrun their parent, a
    truncated file and a file without ``meta`` give None, not an exception."""
    import io

    from zsw.infer.colorspace import avif_nclx

    def nclx(primaries):
        return _box(b"colr", b"nclx" + primaries.to_bytes(2, "big") + b"\x00\x0d\x00\x06\x80")

    ipco = _box(b"ipco", nclx(9) + _box(b"ispe", bytes(12)) + nclx(12))  # properties 1, 2, 3
    for version, flags, item, entries in (
        (0, 0, (2).to_bytes(2, "big"), [(1, [1]), (2, [2, 3])]),  # item 2 -> ispe, P3
        (1, 1, (2).to_bytes(4, "big"), [(1, [1]), (2, [0x8002, 0x8003])]),  # 32-bit ids, 16-bit (essential) indices
    ):
        id_size, index_size = (2, 1) if version == 0 else (4, 2)
        body = bytes([version, 0, 0, flags]) + len(entries).to_bytes(4, "big")
        for ident, indices in entries:
            body += ident.to_bytes(id_size, "big") + bytes([len(indices)])
            body += b"".join(i.to_bytes(index_size, "big") for i in indices)
        pitm = _box(b"pitm", bytes([version, 0, 0, 0]) + item)
        meta = _box(b"meta", bytes(4) + _box(b"hdlr", bytes(24)) + pitm + _box(b"iprp", ipco + _box(b"ipma", body)))
        data = _box(b"ftyp", b"avif" + bytes(4) + b"mif1") + _box(b"mdat", bytes(100)) + meta
        got = avif_nclx(io.BytesIO(data))
        assert got["color_primaries"] == 12 and got["transfer_characteristics"] == 13, (version, got)
        assert (got["color_primary_white_x"], got["color_primary_green_x"]) == (0.3127, 0.265)
        assert avif_nclx(io.BytesIO(data[: len(data) - 30])) is None  # truncated inside meta
    broken = _box(b"ftyp", b"avif") + (400).to_bytes(4, "big") + b"meta" + bytes(20)
    assert avif_nclx(io.BytesIO(broken)) is None
    assert avif_nclx(io.BytesIO(_box(b"ftyp", b"avif") + _box(b"mdat", bytes(10)))) is None
    unspecified = _box(b"meta", bytes(4) + _box(b"iprp", _box(b"ipco", nclx(2))))
    assert avif_nclx(io.BytesIO(_box(b"ftyp", b"avif") + unspecified)) is None


def test_nclx_primaries_give_the_standard_matrices():
    """sRGB's primaries give the identity, BT.2020's the matrix of ITU-R BT.2087, and DCI-P3's
    (another white) one that adapts its white to sRGB's: RGB (1, 1, 1) stays white."""
    from zsw.infer.colorspace import SRGB_XY, _nclx_matrix

    assert np.allclose(_nclx_matrix(SRGB_XY), np.eye(3), atol=1e-9)
    bt2020 = ((0.708, 0.292), (0.170, 0.797), (0.131, 0.046), (0.3127, 0.3290))
    bt2087 = [[1.6605, -0.5876, -0.0728], [-0.1246, 1.1329, -0.0083], [-0.0182, -0.1006, 1.1187]]
    assert np.allclose(_nclx_matrix(bt2020), bt2087, atol=2e-3)
    dci = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060), (0.314, 0.351))
    assert np.allclose(_nclx_matrix(dci).sum(axis=1), 1.0, atol=1e-9)
    assert not np.allclose(_nclx_matrix(dci), _nclx_matrix((*dci[:3], SRGB_XY[3])), atol=1e-2)


def _icc_profile(kind: bytes, name: str, sig: bytes, body: bytes) -> bytes:
    """A minimal ICC v2 profile (no such files are installed here): ``kind`` is the header's
    class, colour space and connection space (``b"prtrCMYKLab "``), then a description, a D50
    white point and the one tag ``sig`` that maps the colours."""
    import struct

    text = name.encode() + b"\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)
    d50 = struct.pack(">3i", 63190, 65536, 54061)
    tags = [(b"desc", desc), (b"wtpt", b"XYZ " + bytes(4) + d50), (sig, body)]
    table, data, start = b"", b"", 128 + 4 + 12 * len(tags)
    for tag, content in tags:
        table += struct.pack(">4sII", tag, start + len(data), len(content))
        data += content + bytes(-len(content) % 4)
    header = struct.pack(">I", start + len(data)) + bytes(4) + struct.pack(">I", 0x02100000) + kind
    header += bytes(12) + b"acsp" + bytes(28) + d50
    return header + bytes(128 - len(header)) + struct.pack(">I", len(tags)) + table + data


def _cmyk_profile(corner_lab) -> bytes:
    """A minimal ICC v2 printer profile for CMYK (no such file is installed here): its A2B0 table
    (lut16, two grid points a channel) maps each of the 16 ink corners (C, M, Y, K each 0 or 1) to
    ``corner_lab(c, m, y, k)``, Lab relative to the paper (D50)."""
    import struct

    clut = []
    for c, m, y, k in np.ndindex(2, 2, 2, 2):  # the first channel varies slowest
        lightness, a, b = corner_lab(c, m, y, k)
        clut += [round(lightness / 100 * 0xFF00), round((a + 128) * 256), round((b + 128) * 256)]  # v2 Lab16
    a2b0 = (b"mft2" + bytes(4) + bytes([4, 3, 2, 0]) + struct.pack(">9i", *(65536 * (i % 4 == 0) for i in range(9)))
            + struct.pack(">HH", 2, 2) + struct.pack(">8H", *[0, 65535] * 4) + struct.pack(f">{len(clut)}H", *clut)
            + struct.pack(">6H", *[0, 65535] * 3))  # fmt: skip
    return _icc_profile(b"prtrCMYKLab ", "Press CMYK test", b"A2B0", a2b0)


def _lab_to_srgb(lab):
    """Lab (D50) -> sRGB levels by hand: XYZ, Bradford D50 -> D65, sRGB's matrix and curve."""
    lightness, a, b = np.moveaxis(np.asarray(lab, dtype=np.float64), -1, 0)
    fy = (lightness + 16) / 116
    f = [np.where(t > 6 / 29, t**3, 3 * (6 / 29) ** 2 * (t - 4 / 29)) for t in (fy + a / 500, fy, fy - b / 200)]
    xyz = np.stack([0.9642 * f[0], f[1], 0.8249 * f[2]], -1)
    d50_to_d65 = np.array([[0.9555766, -0.0230393, 0.0631636], [-0.0282895, 1.0099416, 0.0210077],
                           [0.0122982, -0.0204830, 1.3299098]])  # fmt: skip
    xyz_to_srgb = np.array([[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560],
                            [0.0556434, -0.2040259, 1.0572252]])  # fmt: skip
    return _srgb_encoded(xyz @ d50_to_d65.T @ xyz_to_srgb.T)


def test_a_cmyk_photo_with_a_press_profile_is_read_by_it(tmp_path):
    """A print-ready CMYK photo (stock images, a magazine's scan) carries the press's profile; the
    naive conversion Pillow does without it makes 100 % cyan (0, 255, 255), far brighter than any
    ink. Each ink corner is read as the profile says (by hand: Lab -> sRGB), from a TIFF and an
    Adobe CMYK JPEG; without a profile the naive conversion stays (the only one there is)."""

    def press(c, m, y, k):  # inks darker and duller than the naive conversion says; paper white
        lightness = 100 - 42 * k - 28 * c - 30 * m - 8 * y
        scale = (0.3 if k else 1.0) * (0.55 if c + m + y > 1 else 1.0)
        return max(lightness, 12), (-32 * c + 58 * m - 6 * y) * scale, (-42 * c - 6 * m + 72 * y) * scale

    corners = np.array(list(np.ndindex(2, 2, 2, 2)))  # 16 patches of 8x8 pixels
    a = np.repeat(np.repeat((corners * 255).astype(np.uint8).reshape(4, 4, 4), 8, 0), 8, 1)
    expected = np.repeat(np.repeat(_lab_to_srgb([press(*c) for c in corners]).reshape(4, 4, 3), 8, 0), 8, 1)
    profile = _cmyk_profile(press)
    for name, extra in (("press.tif", {}), ("press.jpg", {"quality": 100})):
        Image.fromarray(a, "CMYK").save(tmp_path / name, icc_profile=profile, **extra)
        naive = np.asarray(Image.open(tmp_path / name).convert("RGB"), dtype=np.float64)
        assert np.abs(naive - expected).max() > 60, name  # what the naive conversion got wrong
        im = load_image(tmp_path / name, size=64)
        d = np.abs(im.pixels.astype(np.float64) - expected)  # patches on JPEG's 8x8 blocks: flat there too
        assert d.max() <= 2, (name, d.max())
        assert any("'Press CMYK test' to sRGB" in n for n in im.notes), im.notes
    Image.fromarray(a, "CMYK").save(tmp_path / "plain.tif")
    im = load_image(tmp_path / "plain.tif", size=64)
    assert np.array_equal(im.pixels, np.asarray(Image.open(tmp_path / "plain.tif").convert("RGB")))
    assert any("CMYK converted to RGB" in n for n in im.notes), im.notes


def _gray_profile(gamma: float) -> bytes:
    """A minimal ICC v2 grey display profile (Photoshop's "Gray Gamma 1.8" kind): a kTRC gamma."""
    import struct

    ktrc = b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256))
    return _icc_profile(b"mntrGRAYXYZ ", "Gray Gamma test", b"kTRC", ktrc)


def test_a_grey_photo_with_a_grey_profile_is_read_by_it(tmp_path):
    """A greyscale photo saved by an image editor carries a grey profile (Gray Gamma 1.8, Dot
    Gain): its levels are read by it (mid-grey 128 is 146 in sRGB at gamma 1.8, not 128), with
    and without alpha; a grey photo without a profile is Pillow's conversion as before."""
    levels = np.repeat(np.repeat(np.arange(0, 256, 16, dtype=np.uint8).reshape(4, 4), 16, 0), 16, 1)
    expected = _srgb_encoded((levels / 255.0) ** (462 / 256))  # the gamma as the profile stores it
    profile = _gray_profile(1.8)
    alpha = np.full_like(levels, 255)
    alpha[:, :8] = 0
    for name, a, mode in (
        ("grey.png", levels, "L"),
        ("grey.jpg", levels, "L"),
        ("grey-alpha.png", np.stack([levels, alpha], -1), "LA"),
    ):
        Image.fromarray(a, mode).save(
            tmp_path / name, icc_profile=profile, **({"quality": 100} if name.endswith("jpg") else {})
        )
        im = load_image(tmp_path / name, size=64)
        d = np.abs(im.pixels[..., 0].astype(np.float64) - expected)[:, 8:]
        assert d.max() <= 2 and np.abs(im.pixels[..., 0].astype(float) - levels).max() > 15, (name, d.max())
        assert (im.pixels[..., 0] == im.pixels[..., 2]).all()
        assert any("'Gray Gamma test' to sRGB" in n for n in im.notes), im.notes
        if mode == "LA":
            assert not im.pixel_alpha[:, :8].any() and im.pixel_alpha[:, 8:].all()
    Image.fromarray(levels, "L").save(tmp_path / "plain.png")
    assert np.array_equal(load_image(tmp_path / "plain.png", size=64).pixels[..., 1], levels)


def test_a_phone_sized_photo_gives_the_input_an_exact_resize_gives(repo_root, tmp_path):
    """A 12 MP photo is box-reduced before Lanczos (``REDUCING_GAP``: 7x faster); the input stays
    within a few levels of the exact resize of the padded photo, and so does a reframed window."""
    from zsw.infer.image import REDUCING_GAP, reframe

    photo = Image.open(repo_root / "examples" / "teddy_bear.png").convert("RGB").resize((3000, 2250))
    photo.save(tmp_path / "big.png")
    canvas = Image.fromarray(np.pad(np.asarray(photo), ((375, 375), (0, 0), (0, 0)), mode="symmetric"))
    exact = np.asarray(canvas.resize((224, 224), Image.Resampling.LANCZOS), dtype=int)
    im = load_image(tmp_path / "big.png")
    assert 3000 / 224 >= 2 * REDUCING_GAP  # the reduction is taken here
    d = np.abs(im.image.astype(int) - exact)
    assert d.max() <= 3 and d.mean() < 0.2, (d.max(), d.mean())
    window = canvas.crop((600, 300, 2400, 2100)).resize((224, 224), Image.Resampling.LANCZOS)
    d = np.abs(reframe(im, (600, -75, 1800)).image.astype(int) - np.asarray(window, dtype=int))
    assert d.max() <= 3 and d.mean() < 0.2, (d.max(), d.mean())


def test_a_200_mp_phone_photo_is_not_a_decompression_bomb(tmp_path, monkeypatch):
    """Pillow refuses images over 179 MP, so a 200 MP phone's photo was "image too large". zsw
    opens photos up to 2 x MAX_PIXELS (scaled down here: Pillow's limit 1,000 pixels, zsw's 20,000
    and 2,000), keeps a higher or no limit the process set, and puts Pillow's limit back."""
    import zsw.infer.image as image

    Image.fromarray(np.full((100, 100, 3), 90, np.uint8)).save(tmp_path / "x.jpg")  # 10,000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    monkeypatch.setattr(image, "MAX_PIXELS", 20_000)
    assert load_image(tmp_path / "x.jpg").original_size == (100, 100)
    assert Image.MAX_IMAGE_PIXELS == 1_000
    monkeypatch.setattr(image, "MAX_PIXELS", 2_000)
    with pytest.raises(InputError, match=r"x.jpg: image too large"):
        load_image(tmp_path / "x.jpg")
    for limit in (None, 10**6):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        assert load_image(tmp_path / "x.jpg").original_size == (100, 100)
        assert Image.MAX_IMAGE_PIXELS == limit


def test_a_huge_jpeg_is_decoded_smaller_and_its_full_size_mask_still_fits(repo_root, tmp_path, monkeypatch):
    """A 200 MP JPEG took 13 s and 3.3 GB at full size; over DECODE_SIDE (scaled down here) the
    JPEG decoder itself decodes it at 1/2, 1/4 or 1/8, with a note, and a mask made at the photo's
    full size (or decoded smaller itself) fits it. Other formats are box-reduced by the same factors
    once decoded; photos within DECODE_SIDE are unchanged."""
    import zsw.infer.image as image

    photo = Image.open(repo_root / "examples" / "teddy_bear.png").convert("RGB").resize((401, 300))
    photo.save(tmp_path / "big.jpg", quality=95)
    photo.save(tmp_path / "big.png")
    mask = Image.new("L", (401, 300), 0)
    mask.paste(255, (100, 50, 300, 250))
    mask.save(tmp_path / "mask.png")
    mask.save(tmp_path / "mask.jpg", quality=95)
    exact = load_image(tmp_path / "big.jpg")
    monkeypatch.setattr(image, "DECODE_SIDE", 120)
    im = load_image(tmp_path / "big.jpg")
    assert im.original_size == (101, 75)  # 1/4: 1/2 would still be 201 wide
    assert "decoded at 1/4 of its 401x300 pixels (101x75)" in im.notes
    # the same input, near enough: a quarter of the detail (3.5 levels off on average where the photo
    # is, repeated in the mirrored padding)
    assert np.abs(im.image.astype(int) - exact.image.astype(int)).mean() < 4
    full, decoded = load_mask(tmp_path / "mask.png", im), load_mask(tmp_path / "mask.jpg", im)
    assert np.mean(full != decoded) < 0.01 and np.mean(full != load_mask(tmp_path / "mask.png", exact)) < 0.01
    with pytest.raises(InputError, match=r"mask is 401x301 pixels but its image is 101x75"):
        load_mask(np.zeros((301, 401), bool) | True, im)
    # a format without a reduced decode (PNG, TIFF, WebP, HEIC) is box-reduced the same way once read
    png = load_image(tmp_path / "big.png")
    assert png.original_size == (101, 75) and "reduced to 1/4 of its 401x300 pixels (101x75)" in png.notes
    assert np.array_equal(png.pixels, np.asarray(photo.reduce(4)))
    assert np.abs(png.image.astype(int) - exact.image.astype(int)).mean() < 4
    assert np.mean(load_mask(tmp_path / "mask.png", png) != full) < 0.01
    rgba = np.dstack([np.asarray(photo), np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")  # a cut-out: its alpha reduced with it
    cut = load_image(tmp_path / "cut.png")
    assert cut.pixel_alpha.shape == (75, 101) and abs(cut.pixel_alpha.mean() - (np.asarray(mask) > 0).mean()) < 0.02
    monkeypatch.setattr(image, "DECODE_SIDE", 401)
    assert load_image(tmp_path / "big.png").original_size == (401, 300)  # not over it: as it is


def test_camera_raw_files_are_refused_not_read_from_their_preview(tmp_path):
    """A DNG, NEF or CR2 is a TIFF whose first image is a small preview: Pillow read that and zsw
    reconstructed a thumbnail without a word. RAW files are refused in one line saying what to do
    (a PNG merely named .dng is still read by its content), and a folder of them says so."""
    a = np.full((120, 160, 3), 90, np.uint8)
    Image.fromarray(a).save(tmp_path / "IMG_2.NEF", format="TIFF")  # a RAW's container and preview
    (tmp_path / "IMG_3.CR3").write_bytes(b"\x00\x00\x00\x18ftypcrx " + bytes(100))  # not even that
    for name, why in (("IMG_2.NEF", " (Pillow would read its small preview)"), ("IMG_3.CR3", "")):
        message = f"{name}: a camera RAW file, which zsw does not develop{why}: export"
        with pytest.raises(InputError, match=re.escape(message)):
            load_image(tmp_path / name)
    found, problems = find_images([tmp_path])
    assert found == [] and problems[0][1].endswith("its 2 camera RAW file(s) need exporting as JPEG, PNG or TIFF first")
    Image.fromarray(a).save(tmp_path / "renamed.dng", format="PNG")
    assert load_image(tmp_path / "renamed.dng").original_size == (160, 120)


def test_other_photo_formats_pillow_reads_are_found_in_folders_and_load(tmp_path):
    """A browser's ``.jfif`` download, JPEG 2000, QOI, Targa and netpbm images are read (Pillow
    reads them) and found in a folder; its PDF and SVG are passed over by name, not silently."""
    a = np.full((50, 60, 3), 90, np.uint8)
    formats = {".jfif": "JPEG", ".jpe": "JPEG", ".jp2": "JPEG2000", ".qoi": "QOI", ".tga": "TGA", ".ppm": "PPM",
               ".pgm": "PPM", ".apng": "PNG"}  # fmt: skip
    for suffix, kind in formats.items():
        Image.fromarray(a).save(tmp_path / f"x{suffix}", format=kind)
        assert abs(int(load_image(tmp_path / f"x{suffix}").image[112, 112, 0]) - 90) <= 2, suffix
    (tmp_path / "notes.pdf").write_bytes(b"%PDF-1.7\n")
    (tmp_path / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (tmp_path / ".hidden.txt").write_text("")
    passed: list = []
    found, problems = find_images([tmp_path], passed)
    assert {p.suffix for p in found} == set(formats) and not problems
    assert [p.name for p in passed] == ["logo.svg", "notes.pdf"]


@pytest.mark.parametrize(
    "name, data, says",
    [
        ("logo.svg", b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "a vector drawing (SVG)"),
        ("drawing.png", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "a vector drawing (SVG)"),
        ("scan.pdf", b"%PDF-1.7\n%\xe2\xe3\n", "a PDF document, not an image: export its page as PNG first"),
        ("plot.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n", "a PostScript drawing"),
        ("chair.glb", b"glTF\x02\x00\x00\x00", "a 3D model, not a photo"),
        ("scan.usdz", b"PK\x03\x04", "a 3D model, not a photo"),
    ],
)
def test_drawings_and_documents_given_as_photos_say_what_to_do(tmp_path, name, data, says):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(InputError, match=re.escape(f"{name}: {says}")):
        load_image(tmp_path / name)


def test_webp_and_bmp_load(tmp_path):
    a = np.full((50, 50, 3), 90, np.uint8)
    for suffix in (".webp", ".bmp", ".tiff"):
        Image.fromarray(a).save(tmp_path / f"x{suffix}")
        assert abs(int(load_image(tmp_path / f"x{suffix}").image[112, 112, 0]) - 90) <= 2


def test_phone_formats_heic_and_avif_load_upright_whatever_their_name(tmp_path, monkeypatch):
    """HEIC (a phone camera's default, through pillow-heif) and AVIF (Pillow's own) load like the
    PNG they were made from, upright by their EXIF orientation, found in folders, and read by
    their content even under another suffix. Without pillow-heif a HEIC photo is one line saying
    what to install."""
    import sys

    import pillow_heif

    pillow_heif.register_heif_opener()  # to write them; zsw registers it itself to read them
    a = np.zeros((40, 80, 3), np.uint8)  # landscape, left half black, right half white
    a[:, 40:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(a).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    Image.fromarray(a).save(tmp_path / "phone.heic", format="HEIF", exif=exif.tobytes(), quality=95)
    Image.fromarray(a).save(tmp_path / "phone.avif", format="AVIF", exif=exif.tobytes(), quality=95)
    Image.fromarray(a).save(tmp_path / "sent-as.jpg", format="HEIF", exif=exif.tobytes(), quality=95)
    reference = load_image(tmp_path / "phone.jpg").image.astype(int)
    for name in ("phone.heic", "phone.avif", "sent-as.jpg"):
        im = load_image(tmp_path / name)
        assert im.original_size == (40, 80), name  # portrait once upright
        assert np.abs(im.image.astype(int) - reference).mean() < 3, name
    assert {p.name for p in find_images([tmp_path])[0]} >= {"phone.heic", "phone.avif"}
    from zsw.infer import image

    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # not installed: as in a fresh process
    image._read_heif.cache_clear()
    with pytest.raises(InputError, match=r"phone.heic: a HEIC/HEIF photo, which needs pillow-heif .*pip install"):
        load_image(tmp_path / "phone.heic")


def test_a_jpeg_xl_photo_loads_by_its_content_or_says_what_to_install(tmp_path, monkeypatch):
    """JPEG XL (.jxl) is read through pillow-jxl-plugin (the `jxl` extra), by its content like the
    other formats, EXIF orientation included; without the plugin it is one line saying what to
    install, not "not an image file"."""
    import sys

    pytest.importorskip("pillow_jxl")
    a = np.random.default_rng(3).integers(0, 256, (40, 80, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "photo.jxl", lossless=True)
    (tmp_path / "sent-as.png").write_bytes((tmp_path / "photo.jxl").read_bytes())
    for name in ("photo.jxl", "sent-as.png"):
        im = load_image(tmp_path / name, size=64)
        assert np.array_equal(im.pixels, a), name
    assert "photo.jxl" in {p.name for p in find_images([tmp_path])[0]}

    monkeypatch.setitem(sys.modules, "pillow_jxl", None)  # not installed, and Pillow knows no JXL
    monkeypatch.setattr(Image, "ID", [i for i in Image.ID if i != "JXL"])
    with pytest.raises(InputError, match=r"photo.jxl: a JPEG XL image, which needs pillow-jxl-plugin: pip install"):
        load_image(tmp_path / "photo.jxl")


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"hello, not an image", "not an image file"),
        (None, "corrupt or truncated"),
        (b"", "empty file"),
    ],
)
def test_broken_files_raise_one_line_input_errors(tmp_path, content, fragment):
    path = tmp_path / "bad.png"
    if content is None:  # a real PNG cut in half
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:2000])
    else:
        path.write_bytes(content)
    with pytest.raises(InputError, match=fragment) as e:
        load_image(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_video_given_for_a_photo_is_told_to_take_a_frame(tmp_path):
    path = tmp_path / "turntable.MP4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))  # an MP4's start: Pillow reads no image
    with pytest.raises(InputError, match=r"turntable.MP4: a video, not a photo: take one frame first \(e.g. `ffmpeg"):
        load_image(path)


def test_a_pil_image_that_cannot_be_decoded_is_one_line_too(tmp_path):
    """A lazily opened PIL image of a truncated file, or one whose file is closed: the path's error."""
    path = tmp_path / "bad.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(InputError, match="image: corrupt or truncated image"):
        load_image(Image.open(path))
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "ok.png")
    with open(tmp_path / "ok.png", "rb") as f:
        closed = Image.open(f)
    with pytest.raises(InputError, match="image: corrupt or truncated image"):
        load_image(closed)
    with Image.open(tmp_path / "ok.png") as lazy:  # a readable lazy image still loads
        assert load_image(lazy).image.shape == (224, 224, 3)


def test_an_address_or_an_empty_path_says_what_to_give_instead(tmp_path):
    from zsw.infer.image import find_images

    url = "https://example.com/chair.png"
    with pytest.raises(InputError, match=f"^{url}: zsw reads image files, not addresses: download the photo"):
        load_image(url)
    with pytest.raises(InputError, match="an empty path names no image"):
        load_image("")
    assert find_images([url, str(tmp_path / "nope.png")])[1] == [
        (url, "zsw reads image files, not addresses: download the photo first and give its path"),
        (str(tmp_path / "nope.png"), "no such file or folder"),
    ]


def test_tiny_and_missing_images_are_rejected(tmp_path):
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(InputError, match="1x1 pixels"):
        load_image(tmp_path / "dot.png")
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_arrays_and_pil_images(tmp_path):
    f = np.full((10, 20), 0.5, np.float32)
    im = load_image(f, size=32)
    assert im.image.shape == (32, 32, 3) and im.name == "image"
    assert abs(int(im.image[16, 16, 0]) - 128) <= 1
    with pytest.raises(InputError, match="uint8, uint16 or float"):
        load_image(np.zeros((20, 20, 3), np.int32))
    with pytest.raises(InputError, match=r"\[H, W, 3\]"):
        load_image(np.zeros((20, 20, 5), np.uint8))
    with pytest.raises(InputError, match=r"values in \[0, 1\], got 0 to 255"):  # not clipped to white
        load_image(np.linspace(0, 255, 20 * 20 * 3, dtype=np.float32).reshape(20, 20, 3))
    poisoned = np.full((20, 20, 3), 0.5, np.float32)
    poisoned[3, 4, 1] = np.nan
    with pytest.raises(InputError, match="1 non-finite"):
        load_image(poisoned)
    assert load_image(Image.new("RGB", (30, 30)), name="p").name == "p"


def test_tensors_and_16_bit_arrays_give_the_uint8_array_s_input():
    """What a PyTorch or OpenCV user has in memory: a torchvision-layout tensor ([C, H, W], float in
    [0, 1] or uint8, grayscale [1, H, W] or [H, W], with autograd) and a 16-bit array read the same
    as the 8-bit photo; masks as [H, W] or [1, H, W] tensors too."""
    import torch

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    want = load_image(photo, size=32).image
    chw = torch.from_numpy(photo).permute(2, 0, 1)
    for source in (
        chw,
        chw.float().div(255).requires_grad_(),
        chw.to(torch.bfloat16).div(255),
        photo.astype(np.uint16) * 257,
    ):
        got = load_image(source, size=32).image
        assert got.shape == want.shape and np.abs(got.astype(int) - want).max() <= 1, type(source)
    gray = load_image(photo[..., 0], size=32).image
    for source in (chw[:1], chw[0], chw[:1].double() / 255):
        assert np.abs(load_image(source, size=32).image.astype(int) - gray).max() <= 1
    with pytest.raises(InputError, match=r"image tensor must be \[C, H, W\] .* got \(40, 60, 3\)"):
        load_image(torch.from_numpy(photo))  # [H, W, 3]: not torchvision's layout
    with pytest.raises(InputError, match=r"uint8, uint16 or float"):
        load_image(chw.int())
    img = load_image(np.zeros((100, 200, 3), np.uint8))
    left = torch.zeros(100, 200, dtype=torch.bool)
    left[:, :100] = True
    for m in (left, left[None], left.float()):
        mask = load_mask(m, img)
        assert mask[112, 20] and not mask[112, 200]


def test_masks_follow_the_image_transform(tmp_path):
    img = load_image(np.zeros((100, 200, 3), np.uint8))
    m = np.zeros((100, 200), bool)
    m[:, :100] = True  # left half of the photo
    mask = load_mask(m, img)
    assert mask.shape == (224, 224)
    assert not mask[:50].any() and not mask[-50:].any()  # padding is never visible
    assert mask[112, 20] and not mask[112, 200]
    with pytest.raises(InputError, match="mask is 10x10 pixels but its image is 200x100"):
        load_mask(np.zeros((10, 10), bool), img)


def test_mask_files_are_read_as_users_make_them(tmp_path):
    """A cut-out's alpha (not its colours), 0/1 label images (8- and 16-bit), a 0/65535 mask and
    grey levels all mark the left half; an empty mask is refused in one line naming it."""
    img = load_image(np.zeros((100, 200, 3), np.uint8))
    left = np.zeros((100, 200), bool)
    left[:, :100] = True
    rgba = np.full((100, 200, 4), 255, np.uint8)  # a white photo, opaque on the left only
    rgba[..., 3] = left * 255
    files = {
        "cutout.png": Image.fromarray(rgba),
        "labels.png": Image.fromarray(left.astype(np.uint8)),
        "labels16.png": Image.fromarray(left.astype(np.uint16)),
        "full16.png": Image.fromarray(left.astype(np.uint16) * 65535),
        "twelve_bit.png": Image.fromarray(left.astype(np.uint16) * 4095),
        "grey.png": Image.fromarray(left.astype(np.uint8) * 255),
        "palette.png": Image.fromarray(rgba).convert("P"),  # no transparency: its grey levels
    }
    for name, image in files.items():
        image.save(tmp_path / name)
        mask = load_mask(tmp_path / name, img)
        assert mask[112, 20] and not mask[112, 200], name
    assert load_mask(left.astype(np.uint8), img)[112, 20]  # a 0/1 uint8 array
    Image.fromarray(np.zeros((100, 200), np.uint8)).save(tmp_path / "black.png")
    with pytest.raises(InputError, match=r"black.png: the mask marks no pixel"):
        load_mask(tmp_path / "black.png", img)
    with pytest.raises(InputError, match="marks no pixel"):
        load_mask(np.zeros((100, 200), bool), img)


def test_find_images_expands_folders_and_globs(tmp_path):
    for name in ("b.png", "a.JPG", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.webp").write_bytes(b"x")
    empty = tmp_path / "empty"
    empty.mkdir()
    found, problems = find_images([tmp_path, str(tmp_path / "sub" / "*.webp"), tmp_path / "b.png", "nope.png", empty])
    assert [p.name for p in found] == ["a.JPG", "b.png", "c.webp"]  # sorted, no duplicates, no hidden/text
    assert [(str(i).endswith("nope.png"), r) for i, r in problems][0] == (True, "no such file or folder")
    assert "no images" in problems[1][1]
    _, none = find_images([str(tmp_path / "*.gif")])
    assert none[0][1] == "pattern matches no file"


def test_a_folder_whose_images_are_in_subfolders_names_them(tmp_path):
    """A dataset's folder (images/ and masks/ inside) holds no images itself: the error names the
    subfolders that do, rather than only "no images"."""
    for sub in ("images", "masks", "notes"):
        (tmp_path / sub).mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"x")
    (tmp_path / "masks" / "a.png").write_bytes(b"x")
    (tmp_path / "notes" / "a.txt").write_bytes(b"x")
    found, problems = find_images([tmp_path])
    assert found == [] and len(problems) == 1
    assert problems[0][1].endswith(
        "images are in its subfolder(s) images/, masks/: name them (a folder is read one level deep)"
    )


def test_find_images_names_symlink_loops_and_broken_links(tmp_path):
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    (tmp_path / "c.png").symlink_to(tmp_path / "gone.png")
    found, problems = find_images([tmp_path / "a.png", tmp_path / "c.png"])
    assert found == []
    assert [r for _, r in problems] == [
        "symbolic link loop",
        f"broken symbolic link (its target {tmp_path / 'gone.png'} does not exist)",
    ]
    # inside a folder they are reported too, not skipped in silence
    (tmp_path / "d.png").write_bytes(b"x")
    found, problems = find_images([tmp_path])
    assert [p.name for p in found] == ["d.png"]
    assert [i for i, _ in problems] == [str(tmp_path / f"{n}.png") for n in "abc"]


def test_an_empty_path_is_not_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "here.png").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    found, problems = find_images(["", " "])
    assert found == [] and [r for _, r in problems] == ["an empty path names no image"] * 2


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_pipe_or_stdin_is_one_line_not_a_hang(tmp_path):
    """`zsw reconstruct <(curl ...)` gives a pipe and `-` means stdin: both can be read once, zsw
    reads an input twice (its hash, then its pixels), and a pipe nobody writes to blocked for ever.
    Each is one line saying to save the image to a file."""
    os.mkfifo(tmp_path / "photo.png")  # no writer: opening it would block
    found, problems = find_images([str(tmp_path / "photo.png"), "-"])
    assert found == []
    advice = "zsw reads image files; save the image to a file and give its path"
    assert problems == [
        (str(tmp_path / "photo.png"), f"not a file but a pipe or device: {advice}"),
        ("-", f"standard input: {advice}"),
    ]


def test_pil_warnings_become_notes_not_terminal_lines(tmp_path, monkeypatch):
    import warnings

    from PIL import Image

    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100), (200, 30, 30)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 10,000 pixels: PIL's decompression-bomb warning
    monkeypatch.setattr("zsw.infer.image.MAX_PIXELS", 6000)  # zsw's own limit, which it opens photos under
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning that escapes fails the test
        loaded = load_image(path, 32)
    assert any(n.startswith("PIL: Image size (10000 pixels) exceeds limit") for n in loaded.notes), loaded.notes


def test_a_folder_includes_gifs_and_an_animated_one_gives_its_first_frame(tmp_path):
    from PIL import Image

    red, blue = Image.new("RGB", (40, 40), (220, 20, 20)), Image.new("RGB", (40, 40), (20, 20, 220))
    red.save(tmp_path / "anim.gif", save_all=True, append_images=[blue])
    found, problems = find_images([tmp_path])
    assert [p.name for p in found] == ["anim.gif"] and not problems
    loaded = load_image(found[0], 32)
    assert "first frame of a multi-frame file" in loaded.notes
    assert loaded.image[16, 16, 0] > 150 and loaded.image[16, 16, 2] < 100  # red, the first frame


def _photo_with_a_square(tmp_path, size=(600, 400), box=(400, 250, 480, 330)):
    """A grey photo with a red square at ``box`` (x0, y0, x1, y1), saved as PNG."""
    a = np.full((size[1], size[0], 3), 90, np.uint8)
    x0, y0, x1, y1 = box
    a[y0:y1, x0:x1] = (220, 20, 20)
    Image.fromarray(a).save(tmp_path / "photo.png")
    return tmp_path / "photo.png"


def _red(image: np.ndarray) -> np.ndarray:
    return (image[..., 0] > 150) & (image[..., 1] < 80)


def test_object_window_frames_the_mask_in_photo_pixels(tmp_path):
    from zsw.infer.image import OBJECT_FILL, object_window

    im = load_image(_photo_with_a_square(tmp_path))  # 600 x 400, padded by 100 rows on top
    assert im.square == (0, -100, 600)
    window = object_window(_red(im.image), im)
    x0, y0, side = window
    # the 80-pixel square, centred, at OBJECT_FILL of the window (to the resampling's pixel)
    assert abs(side - 80 / OBJECT_FILL) <= 0.05 * side
    assert abs(x0 + side / 2 - 440) <= 3 and abs(y0 + side / 2 - 290) <= 3
    specks = _red(im.image).copy()
    specks[5, 5] = specks[200, 10] = True  # single pixels far away do not widen the window
    assert object_window(specks, im) == window
    assert object_window(np.zeros((224, 224), bool), im) is None
    with pytest.raises(ValueError, match="224x224"):
        object_window(np.zeros((10, 10), bool), im)


def test_reframe_cuts_the_window_from_the_full_resolution_photo(tmp_path):
    from zsw.infer.image import OBJECT_FILL, object_window, reframe, reframe_mask

    im = load_image(_photo_with_a_square(tmp_path))
    window = object_window(_red(im.image), im)
    out = reframe(im, window, note="reframed")
    assert out.window == window and out.square == window and out.notes[-1] == "reframed"
    assert out.image.shape == (224, 224, 3) and out.crop_scale == pytest.approx(224 / window[2])
    red = _red(out.image)
    rows, cols = np.flatnonzero(red.any(1)), np.flatnonzero(red.any(0))
    assert abs((cols[-1] + 1 - cols[0]) / 224 - OBJECT_FILL) < 0.03  # the square now fills 0.8 of the input
    assert abs((cols[0] + cols[-1]) / 2 - 111.5) < 3 and abs((rows[0] + rows[-1]) / 2 - 111.5) < 3
    # a mask of the first input, cut alike, covers the same pixels
    cut = reframe_mask(_red(im.image), im, window)
    assert (cut & red).sum() / (cut | red).sum() > 0.9
    # a window reaching outside the photo shows it mirrored there; reframing again starts from the photo
    edge = reframe(out, (-300, -300, 600))
    assert edge.square == (-300, -300, 600)
    photo = np.asarray(Image.open(tmp_path / "photo.png").convert("RGB"))
    mirrored = np.pad(photo, ((300, 0), (300, 0), (0, 0)), mode="symmetric")[:600, :600]
    want = np.asarray(Image.fromarray(mirrored).resize((224, 224), Image.Resampling.LANCZOS)).astype(int)
    assert np.abs(edge.image.astype(int) - want).max() <= 1
    far = reframe(out, (-2000, 100, 900))  # further out than the photo is wide: mirrored again and again
    assert far.image.shape == (224, 224, 3) and _red(far.image).any()  # the red square's mirror images
    assert im.to_dict()["window"] == [0, -100, 600] and out.to_dict()["window"] == list(window)


def test_reframe_of_an_image_without_its_photo(tmp_path):
    """Evaluation sets hand over the model input itself (no photo pixels): it is the photo."""
    from zsw.infer.image import LoadedImage, reframe

    a = np.zeros((224, 224, 3), np.uint8)
    a[100:124, 100:124] = 255
    im = LoadedImage("x", a, (224, 224))
    out = reframe(im, (88, 88, 48))
    assert (out.image[100:124, 100:124] == 255).all() and out.image[0, 0].max() == 0
    padded = LoadedImage("y", a, (448, 224), pad=(0, 112))
    with pytest.raises(ValueError, match="no photo pixels"):
        reframe(padded, (0, 0, 10))


def test_edges_reached_names_the_photo_sides_a_mask_covers(tmp_path):
    """A predicted mask along the photo's edges (a cluttered photo's table, or an object the frame
    cuts) is named side by side; edges of the white padding, or of a window inside the photo, are
    not the photo's and never count."""
    from PIL import Image

    from zsw.infer.image import load_image, reframe

    path = tmp_path / "wide.png"
    Image.new("RGB", (600, 400), (120, 90, 60)).save(path)
    im = load_image(path, 224)  # padded to 600 x 600: the photo is rows 37-186 of the input
    area = im.photo_area
    rows = np.flatnonzero(area.any(1))
    mask = np.zeros((224, 224), bool)
    assert im.edges_reached(mask) == []
    mask[rows[-1] - 20 : rows[-1] + 1, :] = True  # along the bottom edge of the photo
    assert im.edges_reached(mask) == ["bottom"]
    mask[:, :10] = True  # and the left one, also over the padding above and below it
    assert im.edges_reached(mask) == ["left", "bottom"]
    centre = np.zeros((224, 224), bool)
    centre[rows[0] - 5 : rows[0], 60:160] = True  # on the padding just above the photo: not the photo's edge
    assert im.edges_reached(centre) == []
    partly = np.zeros((224, 224), bool)
    partly[rows[0], :50] = True  # 50 of 224 pixels of the top edge: under 30 %
    assert im.edges_reached(partly) == [] and im.edges_reached(partly, 0.2) == ["top"]
    inner = reframe(im, (100, 50, 300))
    assert inner.edges_reached(np.ones((224, 224), bool)) == []  # a window inside the photo shows none of its edges
