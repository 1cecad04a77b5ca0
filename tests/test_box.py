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


def test_boxes_files_are_read_as_json_or_lines_and_fail_in_one_line(tmp_path):
    from zsw.infer.image import box_for, read_boxes

    table = tmp_path / "boxes.json"
    table.write_text(json.dumps({"a.jpg": [1, 2, 30, 40], "b": "0,0,10,10"}))
    boxes = read_boxes(table)
    assert boxes == {"a.jpg": (1.0, 2.0, 30.0, 40.0), "b": (0.0, 0.0, 10.0, 10.0)}
    assert box_for(boxes, "photos/a.jpg") == (1.0, 2.0, 30.0, 40.0)
    assert box_for(boxes, "B.PNG") == (0.0, 0.0, 10.0, 10.0)  # by stem, any case
    assert box_for(boxes, "c.jpg") is None
    lines = tmp_path / "boxes.csv"
    lines.write_text("# photo, x0, y0, x1, y1\na.jpg, 1, 2, 30, 40\n\nb 0 0 10 10  # spaces too\n")
    assert read_boxes(lines) == boxes
    for name, text, message in [
        ("bad.json", "[1, 2]", "must hold an object"),
        ("bad2.json", "{", "not JSON"),
        ("bad.csv", "a.jpg,1,2,3\n", "line 1: expected name,x0,y0,x1,y1, got 'a.jpg,1,2,3'"),
        ("bad2.csv", "a.jpg,5,5,1,1\n", "line 1: '5,5,1,1' is empty"),
        ("bad3.json", '{"a": [0, 0, "x", 4]}', "entry 'a': expected four numbers"),
        ("twice.csv", "a,0,0,1,1\na,0,0,2,2\n", "line 2: 'a' has a box already"),
        ("empty.csv", "# nothing\n", "holds no box"),
    ]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(OptionError, match=r"^--box .*: " + message.replace("(", r"\(").replace("[", r"\[")):
            read_boxes(path)
    with pytest.raises(OptionError, match="cannot read"):
        read_boxes(tmp_path / "missing.json")
    with pytest.raises(OptionError, match="^box and boxes: give one"):
        zsw.ReconstructSettings(box="0,0,1,1", boxes=table)


def test_cli_box_file_gives_each_photo_its_own_box_in_its_rerun_key(pair, tmp_path):
    """``--box FILE``: a folder of photos, each with its object elsewhere: each result records its own
    box; a rerun with one box changed redoes that photo only; a photo the file does not name gets no
    box and a note; a missing file is a one-line usage error."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("left", "right", "whole"):
        (photos / f"{name}.png").write_bytes(pair.read_bytes())
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("left.png,0,0,224,224\nright,224,0,448,224\n")
    out = tmp_path / "out"
    args = ["reconstruct", str(photos), "-o", str(out), "--resolution", "16", "--no-preview", "--box", str(boxes)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    record = {n: json.loads((out / n / "result.json").read_text()) for n in ("left", "right", "whole")}
    assert record["left"]["request"]["box"] == [0.0, 0.0, 224.0, 224.0]
    assert record["right"]["request"]["box"] == [224.0, 0.0, 448.0, 224.0]
    assert record["right"]["input"]["box"] == [224.0, 0.0, 448.0, 224.0]
    assert record["whole"]["request"]["box"] is None
    assert any("no box for whole.png" in note for note in record["whole"]["input"]["notes"])
    assert record["left"]["input"]["window"] != record["right"]["input"]["window"]

    again = CliRunner().invoke(app, args)
    assert "skipping 3 image(s)" in again.output
    boxes.write_text("left.png,0,0,224,224\nright,200,0,448,224\n")
    moved = CliRunner().invoke(app, args)
    assert moved.exit_code == 0 and "redoing 1 image(s)" in moved.output and "skipping 2 image(s)" in moved.output
    boxes.write_text("left.png,0,0,224\n")
    bad = CliRunner().invoke(app, args)
    assert bad.exit_code == 2 and f"--box {boxes}: line 1: expected name,x0,y0,x1,y1" in bad.output
    missing = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "nope.csv")])
    assert missing.exit_code == 2 and f"--box: no file {tmp_path / 'nope.csv'} (nor four numbers" in missing.output
