"""The photo's own background correcting the predicted visible mask (zsw.infer.background)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from zsw.infer.background import plain_background, refine_by_colours, refine_visible_mask
from zsw.infer.image import load_image

S = 64


def photo(background=(255, 255, 255), noise: float = 3.0, seed: int = 0):
    """A red square (rows and columns 20-43) on a plain background with a little sensor noise."""
    rng = np.random.default_rng(seed)
    img = np.empty((S, S, 3), np.float32)
    img[:] = background
    img[20:44, 20:44] = (200, 40, 40)
    img += rng.normal(0, noise, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def square(lo=20, hi=44):
    m = np.zeros((S, S), bool)
    m[lo:hi, lo:hi] = True
    return m


def test_a_plain_border_gives_the_background_and_a_busy_one_none():
    bg = plain_background(photo())
    assert bg is not None and np.array_equal(~bg, square())
    grey = plain_background(photo(background=(90, 110, 100)))
    assert grey is not None and np.array_equal(~grey, square())
    busy = np.random.default_rng(1).integers(0, 256, (S, S, 3), dtype=np.uint8)
    busy[20:44, 20:44] = (200, 40, 40)
    assert plain_background(busy) is None


def test_a_graded_background_is_found_too():
    """A studio sweep: the background runs from one colour to another across the photo."""
    img = photo().astype(np.float32)
    t = np.linspace(0, 1, S)[None, :, None]
    sweep = (1 - t) * np.array([40, 90, 200]) + t * np.array([230, 220, 120])
    img = np.where(square()[..., None], img, sweep + np.random.default_rng(3).normal(0, 2, img.shape))
    bg = plain_background(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    assert bg is not None and np.array_equal(~bg, square())


def test_padding_is_background_and_not_part_of_the_border_test():
    img = photo(background=(90, 110, 100))
    area = np.zeros((S, S), bool)
    area[8:56] = True  # a landscape photo padded with white above and below
    img[~area] = 255
    assert plain_background(img) is None  # white padding and a grey photo: two colours
    bg = plain_background(img, area)
    assert bg is not None and np.array_equal(~bg, square())


def test_refining_fills_holes_and_near_misses_but_not_far_things_or_occluders():
    img = photo()
    img[2:8, 2:8] = (40, 40, 200)  # another thing far from the object
    img[46, 30] = (0, 0, 0)  # a speck of dust near it
    model = square()
    model[28:36, 28:36] = False  # a hole
    model[20:44, 20:24] = False  # a missed strip at the edge
    model[50:53, 50:53] = True  # a speck on the background
    occluder = np.zeros((S, S), bool)
    occluder[20:24, 20:30] = True  # the model says part of the strip is an occluder
    refined = refine_visible_mask(img, model, occluder)
    expected = square()
    expected[20:24, 20:24] = False
    assert np.array_equal(refined, expected)
    assert not refined[2:8, 2:8].any()


def test_the_background_seen_through_the_object_is_not_added_and_the_model_decides_there():
    img = photo()
    img[28:36, 28:36] = 255  # a hole through the object: the white background seen through it
    img[22:25, 36:40] = 255  # a white label on the object
    model = square()
    model[28:36, 28:36] = False  # the model sees the hole...
    model[40:44, 20:44] = False  # ...misses a strip at the bottom, and keeps the label
    refined = refine_visible_mask(img, model, None)
    expected = square()
    expected[28:36, 28:36] = False
    assert np.array_equal(refined, expected)
    filled = model.copy()
    filled[28:36, 28:36] = True  # a model that fills the hole keeps it filled: the photo cannot tell
    assert refine_visible_mask(img, filled, None)[28:36, 28:36].all()


def test_a_shadow_beside_the_object_is_not_added_but_a_grey_hole_inside_is():
    img = photo()
    img[44:50, 16:48] = (150, 150, 150)  # a contact shadow on the white table, under the object
    img[30:34, 30:34] = (120, 120, 120)  # a grey patch on the object, which the model missed
    model = square()
    model[30:34, 30:34] = False
    model[40:44, 20:44] = False  # the model missed the object's bottom strip too (red: added)
    refined = refine_visible_mask(img, model, None)
    assert np.array_equal(refined, square())  # the strip and the patch back, the shadow not
    black = photo()
    black[44:50, 16:48] = (20, 20, 20)  # far darker than a shadow: the object's own (a black base)
    assert refine_visible_mask(black, square(), None)[44:50, 20:44].all()


def test_transparency_is_the_background_and_photos_without_one_keep_the_model_mask():
    img = photo()
    alpha = square(20, 44)  # the cutout's opaque pixels
    refined = refine_visible_mask(img, square(24, 40), None, alpha=alpha)
    assert np.array_equal(refined, alpha)
    busy = np.random.default_rng(2).integers(0, 256, (S, S, 3), dtype=np.uint8)
    assert refine_visible_mask(busy, square(), None) is None


def test_photo_area_marks_the_padding(tmp_path):
    Image.fromarray(np.zeros((50, 100, 3), np.uint8)).save(tmp_path / "wide.png")
    im = load_image(tmp_path / "wide.png", 100)
    area = im.photo_area
    assert area[25:75].all() and not area[:25].any() and not area[75:].any()
    assert area.sum() == 100 * 50


def test_reconstruct_corrects_the_mask_and_says_so(tmp_path):
    import zsw
    from zsw.infer.reconstruct import MASK_CORRECTED

    Image.fromarray(np.kron(photo(noise=1.0), np.ones((4, 4, 1), np.uint8))).save(tmp_path / "square.png")  # 256 px
    kw = dict(weights="random:tiny", resolution=16, reframe="never")
    with pytest.warns(UserWarning, match="RANDOM"):
        auto = zsw.reconstruct(tmp_path / "square.png", background="auto", **kw)
        never = zsw.reconstruct(tmp_path / "square.png", background="never", **kw)
    n = auto.visible_mask.shape[0]
    red = np.zeros((n, n), bool)
    red[round(20 * n / S) - 2 : round(44 * n / S) + 2, round(20 * n / S) - 2 : round(44 * n / S) + 2] = True
    # random weights scatter the mask over the background; the photo's white border removes that
    assert never.info["mask"] == "predicted" and never.visible_mask[~red].sum() > 100
    assert auto.info["mask"] == MASK_CORRECTED and auto.visible_mask.any() and not auto.visible_mask[~red].any()
    auto.save(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "result.json").read_text())["mask"] == MASK_CORRECTED


def test_a_photo_left_as_it_is_is_corrected_once_and_as_without_framing(tmp_path, monkeypatch):
    """The framing pass's corrected mask of an input it does not cut is the reconstruction's: it is
    not computed again, and the result is the one ``--reframe never`` gives."""
    import zsw
    import zsw.infer.background as bg
    from zsw.infer.reconstruct import MASK_CORRECTED

    img = photo(noise=1.0)
    img[8:56, 8:56] = img[20:21, 20:21]  # a square of 3/4 of the photo: nothing to reframe
    Image.fromarray(np.kron(img, np.ones((4, 4, 1), np.uint8))).save(tmp_path / "square.png")
    calls = []
    refine = bg.refine_visible_mask
    monkeypatch.setattr(bg, "refine_visible_mask", lambda *a, **k: calls.append(1) or refine(*a, **k))
    kw = dict(weights="demo", resolution=16, background="auto")
    framed = zsw.reconstruct(tmp_path / "square.png", reframe="auto", **kw)
    assert not any(n.startswith("reframed") for n in framed.info["input"]["notes"])
    assert len(calls) == 1
    plain = zsw.reconstruct(tmp_path / "square.png", reframe="never", **kw)
    assert len(calls) == 2
    assert framed.info["mask"] == plain.info["mask"] == MASK_CORRECTED
    assert np.array_equal(framed.visible_mask, plain.visible_mask)
    assert np.array_equal(framed.mesh.vertices, plain.mesh.vertices)


def test_reframing_frames_the_corrected_mask_not_the_spill(tmp_path, monkeypatch):
    """A small object on a graded backdrop: the model's mask spills over the whole backdrop (the
    random model's heads are replaced by a visible mask everywhere and no occluder), so framing on
    it would keep the whole photo. The framing pass corrects the mask with the photo's background
    first, as the reconstruction does, and cuts the input around the object."""
    import zsw
    from zsw.infer.backend import TorchBackend
    from zsw.model import PixelOutput

    real = TorchBackend.pixel

    def spill(self, image, text):
        out = real(self, image, text)
        return PixelOutput(out.depth, out.intrinsics, torch.full_like(out.depth, 5.0), torch.full_like(out.depth, -5.0))

    monkeypatch.setattr(TorchBackend, "pixel", spill)

    t = np.linspace(0, 1, S)[None, :, None]
    img = np.broadcast_to((1 - t) * np.array([210, 200, 230]) + t * np.array([230, 235, 200]), (S, S, 3)).copy()
    img[28:36, 28:36] = (200, 40, 40)  # an 8 px square in a 64 px photo
    img += np.random.default_rng(0).normal(0, 1.0, img.shape)
    big = np.kron(np.clip(np.rint(img), 0, 255).astype(np.uint8), np.ones((4, 4, 1), np.uint8))  # 256 px
    Image.fromarray(big).save(tmp_path / "small.png")
    kw = dict(weights="random:tiny", resolution=16, reframe="auto")
    with pytest.warns(UserWarning, match="RANDOM"):
        auto = zsw.reconstruct(tmp_path / "small.png", background="auto", **kw)
        never = zsw.reconstruct(tmp_path / "small.png", background="never", **kw)
    framed = [n for n in auto.info["input"]["notes"] if n.startswith("reframed")]
    assert framed and "corrected by the photo's background" in framed[0], auto.info["input"]["notes"]
    # the first pass's window (random weights may move a later pass's; a trained model's stays)
    x0, y0, side = json.loads(framed[0].rsplit("window ", 1)[1])
    assert side < 256 / 2 and x0 <= 112 and y0 <= 112 and x0 + side >= 144 and y0 + side >= 144  # around it
    assert never.info["input"]["window"][2] > 2 * side  # the spilled mask frames (nearly) the whole photo


def test_away_from_occluders_the_mask_goes_on_along_the_object():
    """An arm the model left as a body and a separate hand (its middle beyond ``reach`` of both) is
    the object's own pixels: taken in along them, up to ``along`` pixels; not within ``along`` of a
    predicted occluder (one the model outlined only in part would come in too)."""
    img = photo()
    img[30:34, 44:62] = (200, 40, 40)  # an arm from the square's side to x = 61
    arm = np.zeros((S, S), bool)
    arm[30:34, 44:62] = True
    model = square()
    model[30:34, 58:62] = True  # the model found the hand, not the arm between
    none = np.zeros((S, S), bool)
    assert np.array_equal(refine_visible_mask(img, model, none, reach=3), square() | arm)
    near = refine_visible_mask(img, model, none, reach=3, along=0)  # x 44-46 and 55-57 only
    assert near[30:34, 44:47].all() and not near[30:34, 47:55].any() and near[30:34, 55:62].all()
    occluder = np.zeros((S, S), bool)
    occluder[2:6, 2:6] = True  # something in front, far away: no matter
    assert np.array_equal(refine_visible_mask(img, model, occluder, reach=3), square() | arm)
    occluder[40:44, 48:52] = True  # something in front, below the arm
    assert np.array_equal(refine_visible_mask(img, model, occluder, reach=3), near)
    short = refine_visible_mask(img, square(), none, reach=3, along=5)  # no hand: 3 px, then 5 along
    assert short[30:34, 44:52].all() and not short[30:34, 52:].any()


def busy(seed: int = 0, size: int = S):
    """A red disc (radius 3/8 of the photo about its centre) on grey gravel-like noise, and the disc."""
    rng = np.random.default_rng(seed)
    grey = rng.normal(128, 35, (size, size, 1)) + rng.normal(0, 6, (size, size, 3))
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 < (3 * size / 8) ** 2
    img = np.where(disc[..., None], np.array([190.0, 45, 40]) + rng.normal(0, 12, (size, size, 3)), grey)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), disc


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_on_a_busy_background_the_colours_cut_the_mask_again():
    """The model missed a quarter of a red disc on grey gravel and spilled onto the gravel beside it;
    no plain border to tell the background, so the cut by colours restores the disc (and, asked to
    agree with the model's mask more than the cut does, gives the model's mask back: None)."""
    img, disc = busy()
    model = disc.copy()
    model[:32, :32] = False  # a quarter missed
    model[28:36, 56:62] = True  # a spill onto the gravel, touching the disc's side
    assert refine_visible_mask(img, model, None) is None  # not a plain background
    cut = refine_by_colours(img, model)
    assert iou(cut, disc) > 0.95 > iou(model, disc) + 0.15
    assert refine_by_colours(img, model, agree=0.95) is None
    # the same photo gives the same mask (GrabCut's k-means start is seeded)
    assert np.array_equal(cut, refine_by_colours(img, model))


def test_the_colours_never_take_in_an_occluder_or_the_padding():
    img, disc = busy()
    model = disc.copy()
    # a bar of the object's own red in front of the disc, marked as an occluder by the model
    img[30:34, :] = (190, 45, 40)
    occluder = np.zeros((S, S), bool)
    occluder[30:34, :] = True
    model[30:34] = False
    cut = refine_by_colours(img, model, occluder)
    assert cut is not None and not (cut & occluder).any() and iou(cut, disc & ~occluder) > 0.9
    without = refine_by_colours(img, model)  # unmarked, the red bar is taken for the object
    assert (without & occluder).sum() > 20
    # a photo padded to the square (rows 16-47 are the photo): nothing outside it, though the
    # padding repeats the disc and the model's mask runs into it
    img, disc = busy()
    photo_rows = np.zeros((S, S), bool)
    photo_rows[16:48] = True
    model = disc.copy()
    cut = refine_by_colours(img, model, None, photo_rows)
    assert cut is not None and not cut[~photo_rows].any() and iou(cut, disc & photo_rows) > 0.9


def test_a_second_thing_the_cut_finds_away_from_the_models_mask_stays_out(monkeypatch):
    """Only the parts of the cut that overlap the model's mask are kept (GrabCut replaced by one
    that also marks a second thing, away from the object, as the object)."""
    import cv2

    img, disc = busy()

    def second_thing(image, labels, *args):
        labels[2:8, 2:8] = cv2.GC_FGD

    monkeypatch.setattr(cv2, "grabCut", second_thing)
    cut = refine_by_colours(img, disc)
    assert np.array_equal(cut, disc)


def test_the_colours_leave_too_little_to_learn_from_alone():
    img, disc = busy()
    few = np.zeros((S, S), bool)
    few[30:34, 30:34] = True  # 16 pixels
    assert refine_by_colours(img, few) is None
    assert refine_by_colours(img, np.ones((S, S), bool)) is None  # nothing around the object
    strip = np.zeros((S, S), bool)
    strip[:3] = True  # a photo of 3 rows padded to the square: the model's mask lies in the padding
    assert refine_by_colours(img, disc, None, strip) is None


def test_reconstruct_cuts_the_mask_by_the_colours_on_a_busy_photo_and_says_so(tmp_path, monkeypatch):
    """The pixel model (replaced here by one that misses a quarter of the disc) on a busy photo: the
    reconstruction uses the mask cut again by the colours, ``result.json`` says so; with
    ``--background never`` the model's mask stays."""
    import zsw
    from zsw.infer.backend import TorchBackend
    from zsw.infer.reconstruct import MASK_COLOURS
    from zsw.model import PixelOutput

    real = TorchBackend.pixel

    def quarter_missed(self, image, text):
        out = real(self, image, text)
        n = image.shape[-1]
        _, disc = busy(size=n)
        disc[: n // 2, : n // 2] = False
        logits = torch.where(torch.from_numpy(disc), 5.0, -5.0).expand_as(out.depth).to(out.depth)
        return PixelOutput(out.depth, out.intrinsics, logits, torch.full_like(out.depth, -5.0))

    monkeypatch.setattr(TorchBackend, "pixel", quarter_missed)
    Image.fromarray(busy(size=224)[0]).save(tmp_path / "busy.png")
    _, disc = busy(size=224)
    # the cut by the colours alone, not the cut-out that auto makes of a busy photo first
    kw = dict(weights="random:tiny", resolution=16, reframe="never", tta="none", cutout="none")
    with pytest.warns(UserWarning, match="RANDOM"):
        auto = zsw.reconstruct(tmp_path / "busy.png", background="auto", **kw)
        never = zsw.reconstruct(tmp_path / "busy.png", background="never", **kw)
    assert never.info["mask"] == "predicted" and iou(never.visible_mask, disc) < 0.8
    assert auto.info["mask"] == MASK_COLOURS and iou(auto.visible_mask, disc) > 0.95
    auto.save(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "result.json").read_text())["mask"] == MASK_COLOURS
