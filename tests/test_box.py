"""``--box``: the user says where the object is in a photo of several things."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import zsw
from zsw.cli.main import app
from zsw.errors import InputError, OptionError
from zsw.infer.image import check_box, load_image

RES = 24


@pytest.fixture(scope="module")
def pair(repo_root, tmp_path_factory):
    """A 448 x 224 photo of two things on white: the teddy bear on the left, the dispenser on the right."""
    photo = Image.new("RGB", (448, 224), "white")
    photo.paste(Image.open(repo_root / "examples" / "teddy_bear.png").convert("RGB"), (0, 0))
    photo.paste(Image.open(repo_root / "examples" / "dispenser.png").convert("RGB"), (224, 0))
    path = tmp_path_factory.mktemp("box") / "pair.png"
    photo.save(path)
    return path


def _photo_columns(rec) -> np.ndarray:
    """The photo x of every visible-mask pixel of a reconstruction (its input's window mapped back)."""
    x0, _, side = rec.info["input"]["window"]
    cols = np.nonzero(rec.visible_mask)[1]
    return x0 + (cols + 0.5) * side / rec.visible_mask.shape[1]


def test_the_box_frames_the_object_and_holds_the_masks(pair):
    """Without a box the model takes both things for the object; with one, the input is cut around
    the box and the visible mask (hence the visible surface and the mesh) stays inside it."""
    both = zsw.reconstruct(pair, resolution=RES)
    cols = _photo_columns(both)
    assert (cols < 224).any() and (cols >= 224).any()  # both things
    assert both.info["mask"] == "predicted, corrected by the photo's background"

    right = zsw.reconstruct(pair, resolution=RES, box=(224, 0, 448, 224))
    x0, y0, side = right.info["input"]["window"]
    assert x0 >= 150 and abs(x0 + side / 2 - 336) < 30  # a window around the dispenser, not the photo
    assert right.info["input"]["box"] == [224.0, 0.0, 448.0, 224.0]
    cols = _photo_columns(right)
    assert len(cols) > 1000 and cols.min() >= 224
    assert right.info["mask"].endswith("kept within the given box")
    assert len(right.visible_points) == right.visible_mask.sum()

    # the input left as it is (both things in it): the box alone keeps the mask on the dispenser,
    # with and without the background's correction
    for background, mask in [("auto", "predicted, corrected by the photo's background"), ("never", "predicted")]:
        whole = zsw.reconstruct(pair, resolution=RES, box="224,0,448,224", reframe="never", background=background)
        assert whole.info["input"]["window"] == [0, -112, 448]
        cols = _photo_columns(whole)
        assert len(cols) > 1000 and cols.min() >= 224, background
        assert whole.info["mask"] == f"{mask}, kept within the given box"
        unboxed = _photo_columns(zsw.reconstruct(pair, resolution=RES, reframe="never", background=background))
        assert (unboxed < 224).sum() > 1000, background  # what the box took away


def test_box_area_and_clipping(repo_root):
    image = load_image(repo_root / "examples" / "teddy_bear.png")  # 224 x 224, the input as it is
    assert image.box_area is None
    boxed = image.with_box((100, -5, 300, 120.5))
    assert boxed.box == (100.0, 0.0, 224.0, 120.5)  # clipped to the photo
    area = boxed.box_area
    assert area.shape == (224, 224) and area.sum() == (224 - 100) * 120  # pixel centres inside
    assert area[:120, 100:].all() and not area[120:].any() and not area[:, :100].any()
    assert check_box(" 1, 2,3.5 ,4") == (1.0, 2.0, 3.5, 4.0)
    for bad in ("1,2,3", "a,b,c,d", (0, 0, float("inf"), 1), None):
        with pytest.raises(OptionError, match=r"^--box: expected four numbers x0,y0,x1,y1"):
            check_box(bad)
    with pytest.raises(OptionError, match=r"^--box: '5,5,1,9' is empty"):
        check_box("5,5,1,9")
    with pytest.raises(InputError, match=r"teddy_bear.png: the box \[300.0, 300.0, 400.0, 400.0\] is outside"):
        image.with_box((300, 300, 400, 400))


def test_cli_box_is_part_of_the_rerun_key_and_fails_in_one_line(pair, tmp_path):
    out = tmp_path / "out"
    args = ["reconstruct", str(pair), "-o", str(out), "--resolution", "16", "--no-preview"]
    first = CliRunner().invoke(app, [*args, "--box", "224,0,448,224"])
    assert first.exit_code == 0, first.output
    assert json.loads((out / "pair" / "result.json").read_text())["request"]["box"] == [224.0, 0.0, 448.0, 224.0]
    again = CliRunner().invoke(app, [*args, "--box", "224,0,448,224"])
    assert "skipping 1 image(s)" in again.output
    other = CliRunner().invoke(app, [*args, "--box", "0,0,224,224"])
    assert other.exit_code == 0 and "redoing 1 image(s)" in other.output

    bad = CliRunner().invoke(app, [*args, "--box", "0,0,224"])
    assert bad.exit_code == 2 and "--box: expected four numbers x0,y0,x1,y1 (photo pixels), got '0,0,224'" in bad.output
    outside = CliRunner().invoke(app, [*args, "--box", "500,0,600,100", "--overwrite"])
    assert outside.exit_code == 1
    assert f"error: {pair}: the box [500.0, 0.0, 600.0, 100.0] is outside the 448 x 224 photo" in outside.output
