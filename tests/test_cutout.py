"""``--cutout``: a background remover's mask becomes the photo's alpha channel, so that a photo goes
on exactly as the RGBA file the remover would write. The rembg tests run the real rembg session
classes on a tiny stand-in for U2-Net (an ONNX graph that calls dark pixels the object), found
where rembg looks for models offline (``$U2NET_HOME``)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from zsw.errors import ConfigError, InputError, OptionError
from zsw.infer.cutout import _open, apply_cutout, check_cutout, open_cutout
from zsw.infer.image import load_image

RES = 24


def cluttered_photo(path=None, w=160, h=120, seed=0) -> np.ndarray:
    """A dark box (rows 30-90, columns 50-110) on bright clutter: what a remover should cut out."""
    rng = np.random.default_rng(seed)
    a = rng.integers(150, 256, (h, w, 3), dtype=np.uint8)
    a[30:90, 50:110] = rng.integers(10, 40, (60, 60, 3), dtype=np.uint8)
    if path is not None:
        Image.fromarray(a).save(path)
    return a


def dark_is_object(rgb: np.ndarray) -> np.ndarray:
    return np.where(rgb.mean(-1) < 100, 255, 0).astype(np.uint8)


@pytest.fixture
def fake_u2net(tmp_path, monkeypatch):
    """rembg's ``u2net`` model replaced offline by a two-op ONNX graph: the object is what is dark."""
    from onnx import TensorProto, helper, save

    monkeypatch.setenv("NUMBA_DISABLE_JIT", "1")  # rembg imports pymatting, whose numba compile takes ~45 s
    home = tmp_path / "u2net-home"
    home.mkdir()
    graph = helper.make_graph(  # [1, 3, 320, 320] -> minus the channels' mean, [1, 1, 320, 320]
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1), helper.make_node("Neg", ["m"], ["y"])],
        "dark",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 320, 320])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 320, 320])],
    )
    # IR 8: what any onnxruntime reads (1.23, the newest on Python 3.10, stops at 11; onnx writes 14)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    save(model, home / "u2net.onnx")
    monkeypatch.setenv("U2NET_HOME", str(home))
    # rembg's own setting: rembg 2.0.69 (the newest on Python 3.10) checks a model file it finds
    # against the real model's checksum and downloads over a stand-in that differs
    monkeypatch.setenv("MODEL_CHECKSUM_DISABLED", "1")
    _open.cache_clear()
    yield home / "u2net.onnx"
    _open.cache_clear()


def test_specs_are_checked_and_normalised():
    assert check_cutout("none") == "none" and check_cutout("") == "none"
    assert check_cutout("rembg") == "rembg" and check_cutout(" rembg:u2net ") == "rembg:u2net"
    assert check_cutout(" grabcut") == "grabcut"
    bad_specs = (("photoshop", "unknown remover"), ("rembg:", "names no model"), ("rembg: ", "names no model"),
                 ("grabcut:u2net", "grabcut takes no model"))  # fmt: skip
    for bad, fragment in bad_specs:
        with pytest.raises(OptionError, match=fragment):
            check_cutout(bad)
    from zsw.infer.settings import ReconstructSettings

    assert ReconstructSettings(cutout=" rembg:u2net").cutout == "rembg:u2net"
    with pytest.raises(OptionError, match="--cutout"):
        ReconstructSettings(cutout="photoshop")
    with pytest.raises(OptionError, match=r"zsw\.reconstruct\(cutout=\.\.\.\)"):
        ReconstructSettings(cutout=dark_is_object)


def _object_on_texture(seed: int = 0, size: tuple[int, int] = (300, 400)) -> tuple[np.ndarray, np.ndarray]:
    """A red-and-yellow blob on a grey-green speckled texture: the photo and the blob's pixels."""
    rng = np.random.default_rng(seed)
    H, W = size
    photo = np.clip(rng.normal((90, 110, 80), 18, (H, W, 3)), 0, 255).astype(np.uint8)
    y, x = np.mgrid[0:H, 0:W]
    blob = ((y - 0.55 * H) / (0.28 * H)) ** 2 + ((x - 0.45 * W) / (0.22 * W)) ** 2 <= 1.0
    photo[blob] = np.where((x[blob] // 12 % 2)[:, None] == 0, (200, 40, 30), (230, 200, 40))  # striped
    return photo, blob


def test_grabcut_cuts_out_what_stands_out_from_the_photos_border():
    """The built-in remover: the object's alpha from the photo alone (IoU > 0.9 on a textured
    background, larger photos cut at GRABCUT_SIDE and scaled back), the same mask every time, and no
    object where the photo is all one texture or the object fills it."""
    from zsw.infer.cutout import GRABCUT_SIDE, GrabCut

    cut = open_cutout("grabcut")
    assert isinstance(cut, GrabCut) and "grabcut (OpenCV" in cut.identity
    for size in ((300, 400), (1200, 900)):
        photo, blob = _object_on_texture(size=size)
        alpha = cut(photo)
        assert alpha.shape == blob.shape and alpha.dtype == np.uint8 and set(np.unique(alpha)) <= {0, 255}
        got = alpha > 127
        assert (got & blob).sum() / (got | blob).sum() > 0.9, size
        assert max(size) <= GRABCUT_SIDE or np.array_equal(cut(photo), alpha)  # deterministic
    plain = np.clip(np.random.default_rng(1).normal((90, 110, 80), 18, (300, 400, 3)), 0, 255).astype(np.uint8)
    assert apply_cutout(plain, cut, "t.png") is None  # nothing stands out: no object
    assert apply_cutout(np.full((300, 400, 3), (200, 40, 30), np.uint8), cut, "t.png") is None
    # a strip of a photo (3 x 40 px, allowed: 16 on the longer side) has nothing inside the band
    strip = np.random.default_rng(2).integers(0, 256, (3, 40, 3), dtype=np.uint8)
    assert apply_cutout(strip, cut, "strip.png") is None


def test_reconstruct_cuts_out_with_grabcut_and_a_rerun_knows_it(tmp_path):
    from zsw.cli.main import app

    photo, blob = _object_on_texture()
    Image.fromarray(photo).save(tmp_path / "blob.png")
    runner = CliRunner()
    args = ["reconstruct", str(tmp_path / "blob.png"), "-o", str(tmp_path / "out"), "--weights", "random:tiny",
            "--resolution", "12", "--cutout", "grabcut", "--reframe", "never"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "out" / "blob" / "result.json").read_text())
    assert "background removed by grabcut" in info["input"]["notes"]
    assert info["request"]["cutout"].startswith("grabcut (OpenCV")
    assert info["mask"].startswith("predicted, corrected")  # the cut-out's alpha corrects the model's mask
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "reconstructed 0, skipped 1" in again.output, again.output
    other = runner.invoke(app, args[:-4] + ["--cutout", "none", "--reframe", "never"])
    assert other.exit_code == 0 and "reconstructed 1" in other.output, other.output


def test_auto_cuts_out_busy_photos_only_and_not_with_a_box(tmp_path):
    """``--cutout auto`` (the default): a photo on a textured background is cut out by GrabCut; one
    with a plain border is left as it is, with a note (its border corrects the model's mask); a
    photo with a box is not cut out (the object is where the box says), unless grabcut is asked for
    by name."""
    import zsw
    from zsw.infer.cutout import AutoCutout
    from zsw.infer.settings import ReconstructSettings

    assert ReconstructSettings().cutout == "auto" and isinstance(open_cutout("auto"), AutoCutout)
    busy, _ = _object_on_texture()
    plain = np.full((300, 400, 3), 245, np.uint8)
    plain[100:220, 150:260] = (200, 40, 30)
    cut = open_cutout("auto")
    assert cut.skip(busy) is None and "border is plain" in cut.skip(plain)
    Image.fromarray(busy).save(tmp_path / "busy.png")
    Image.fromarray(plain).save(tmp_path / "plain.png")
    assert "background removed by grabcut" in load_image(tmp_path / "busy.png", cutout=cut).notes
    assert any(
        "not cut out by grabcut: its border is plain" in n for n in load_image(tmp_path / "plain.png", cutout=cut).notes
    )
    kw = dict(weights="random:tiny", resolution=12, reframe="never", tta="none")
    with pytest.warns(UserWarning, match="RANDOM"):
        boxed = zsw.reconstruct(tmp_path / "busy.png", box=(100, 80, 300, 260), **kw)
        named = zsw.reconstruct(tmp_path / "busy.png", box=(100, 80, 300, 260), cutout="grabcut", **kw)
        whole = zsw.reconstruct(tmp_path / "busy.png", **kw)
    assert not any("grabcut" in n for n in boxed.info["input"]["notes"])
    assert "background removed by grabcut" in named.info["input"]["notes"]
    assert "background removed by grabcut" in whole.info["input"]["notes"]
    # and the command line, through the job: the box keeps the photo whole there too
    runner = CliRunner()
    out = tmp_path / "out"
    args = ["reconstruct", str(tmp_path / "busy.png"), "-o", str(out), "--weights", "random:tiny", "--resolution",
            "12", "--reframe", "never", "--box", "100,80,300,260"]  # fmt: skip
    from zsw.cli.main import app

    assert runner.invoke(app, args).exit_code == 0
    info = json.loads((out / "busy" / "result.json").read_text())
    assert not any("grabcut" in n for n in info["input"]["notes"]) and info["request"]["cutout"].startswith("auto")


def test_the_removers_mask_becomes_the_photos_alpha():
    photo = cluttered_photo()
    plain = load_image(photo, 64)
    cut = load_image(photo, 64, cutout=dark_is_object)
    assert plain.alpha is None
    assert np.array_equal(cut.pixel_alpha, dark_is_object(photo) > 127)
    assert any("background removed by" in n for n in cut.notes)
    # exactly what the RGBA file with that alpha gives
    rgba = load_image(np.dstack([photo, dark_is_object(photo)]), 64)
    assert np.array_equal(cut.image, rgba.image) and np.array_equal(cut.alpha, rgba.alpha)
    # the clutter is gone from the model input: composited on white
    assert cut.image[0, 0].tolist() == [255, 255, 255] and plain.image[12, 12].min() < 255


def test_a_photo_with_its_own_transparency_or_no_object_is_left_alone():
    photo = cluttered_photo()
    called = []

    def spy(rgb):
        called.append(rgb.shape)
        return dark_is_object(rgb)

    alpha = np.zeros(photo.shape[:2], np.uint8)
    alpha[20:100, 40:120] = 255
    own = load_image(np.dstack([photo, alpha]), 64, cutout=spy)
    assert not called and np.array_equal(own.pixel_alpha, alpha > 127)
    assert any("has its own transparency" in n for n in own.notes)
    # an opaque alpha channel is no transparency: that photo is cut out
    load_image(np.dstack([photo, np.full_like(alpha, 255)]), 64, cutout=spy)
    assert called == [photo.shape]
    nothing = load_image(photo, 64, cutout=lambda rgb: np.zeros(rgb.shape[:2], np.uint8))
    assert nothing.alpha is None and any("found no object" in n for n in nothing.notes)
    assert np.array_equal(nothing.image, load_image(photo, 64).image)


def test_a_failing_remover_is_one_line_naming_the_photo(tmp_path):
    path = tmp_path / "mug.png"
    cluttered_photo(path)
    with pytest.raises(InputError, match=r"mug\.png: the background remover failed \(RuntimeError: boom\)"):
        load_image(path, 64, cutout=lambda rgb: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(InputError, match=r"mug\.png: the background remover gave a \(3, 3\) mask"):
        load_image(path, 64, cutout=lambda rgb: np.zeros((3, 3), np.uint8))
    # a float or boolean mask is read as coverage in [0, 1]
    soft = apply_cutout(np.zeros((4, 4, 3), np.uint8), lambda rgb: np.eye(4, dtype=bool), "x")
    assert soft.dtype == np.uint8 and np.array_equal(soft, np.eye(4, dtype=np.uint8) * 255)


def test_rembg_cuts_out_the_object_with_its_session_classes(fake_u2net):
    cut = open_cutout("rembg:u2net")
    assert cut.name == "rembg:u2net" and cut.identity.startswith("rembg:u2net (rembg ")
    assert open_cutout("rembg:u2net") is cut  # the model is loaded once per process
    photo = cluttered_photo()
    obj = cut(photo) > 127
    truth = np.zeros(obj.shape, bool)
    truth[30:90, 50:110] = True
    assert (obj & truth).sum() / (obj | truth).sum() > 0.9


def test_missing_rembg_or_model_is_a_one_line_option_error(fake_u2net, monkeypatch):
    monkeypatch.setitem(sys.modules, "rembg", None)  # import rembg raises ImportError
    with pytest.raises(OptionError, match=r'--cutout rembg needs rembg.*pip install "zsw\[cutout\]"'):
        open_cutout("rembg")
    monkeypatch.delitem(sys.modules, "rembg")
    _open.cache_clear()
    import rembg

    def offline(*args, **kwargs):
        raise ConnectionError("no route to github.com")

    monkeypatch.setattr(rembg, "new_session", offline)
    with pytest.raises(OptionError, match=r"--cutout rembg:u2netp: rembg cannot load its model.*U2NET_HOME"):
        open_cutout("rembg:u2netp")


def test_reconstruct_with_cutout_is_reconstructing_the_cut_out_file(fake_u2net, tmp_path):
    """The job with ``cutout="rembg:u2net"`` writes what it writes for the RGBA file rembg would have
    written; a rerun is keyed on the remover's model file; a mask given for a photo wins."""
    import zsw

    photo = tmp_path / "in" / "mug.png"
    photo.parent.mkdir()
    rgb = cluttered_photo(photo)
    rgba = tmp_path / "rgba" / "mug.png"
    rgba.parent.mkdir()
    Image.fromarray(np.dstack([rgb, open_cutout("rembg:u2net")(rgb)])).save(rgba)

    def run(src, out, **kw):
        grid = zsw.GridSettings(RES)
        return zsw.reconstruct_many([src], out, zsw.ReconstructSettings(weights="random:tiny", grid=grid, **kw))

    assert run(photo, tmp_path / "cut", cutout="rembg:u2net").ok
    assert run(rgba, tmp_path / "file").ok
    info = json.loads((tmp_path / "cut" / "mug" / "result.json").read_text())
    assert "background removed by rembg:u2net" in info["input"]["notes"]
    assert info["request"]["cutout"].startswith("rembg:u2net (rembg ")
    for name in ("mesh.glb", "visible_mask.png", "depth.png"):
        assert (tmp_path / "cut" / "mug" / name).read_bytes() == (tmp_path / "file" / "mug" / name).read_bytes()
    assert run(photo, tmp_path / "cut", cutout="rembg:u2net").skipped == 1
    assert run(photo, tmp_path / "cut").redone == 1  # without the remover: another result
    assert run(photo, tmp_path / "cut", cutout="rembg:u2net").redone == 1
    _open.cache_clear()
    os.utime(fake_u2net, ns=(1, 1))  # the model file touched, its bytes the same: the results stand
    assert run(photo, tmp_path / "cut", cutout="rembg:u2net").skipped == 1
    _open.cache_clear()
    fake_u2net.write_bytes(fake_u2net.read_bytes().replace(b"dark", b"dusk"))  # another model file
    assert run(photo, tmp_path / "cut", cutout="rembg:u2net").redone == 1
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(np.full(rgb.shape[:2], 255, np.uint8)).save(masks / "mug.png")
    run(photo, tmp_path / "given", cutout="rembg:u2net", masks=masks)
    notes = json.loads((tmp_path / "given" / "mug" / "result.json").read_text())["input"]["notes"]
    assert not any("background removed" in n for n in notes)


def test_eval_with_cutout_scores_the_cut_out_photos(fake_u2net, tmp_path):
    """``zsw eval --cutout`` scores what it scores on the RGBA files the remover would write, and a
    run with another remover (or none) does not resume the other's scores."""
    import trimesh

    from zsw.eval.jobs import EvalJobSettings, evaluate_set
    from zsw.infer.settings import GridSettings

    cut, rgba = tmp_path / "cut", tmp_path / "rgba"
    for folder in (cut, rgba):
        folder.mkdir()
        trimesh.creation.box(extents=(1.0, 0.8, 0.6)).apply_translation((0, 0, -3)).export(folder / "box.ply")
    rgb = cluttered_photo(cut / "box.png")
    Image.fromarray(np.dstack([rgb, open_cutout("rembg:u2net")(rgb)])).save(rgba / "box.png")
    for folder in (cut, rgba):  # a mask the model is given only with use_mask
        Image.fromarray(np.full(rgb.shape[:2], 255, np.uint8)).save(folder / "box.mask.png")

    def run(data, out, **kw):
        s = EvalJobSettings(format="folder", weights="random:tiny", grid=GridSettings(RES), num_points=500, **kw)
        return evaluate_set(data, tmp_path / out, s)

    with_cutout = run(cut, "a.json", cutout="rembg:u2net").summary
    assert with_cutout["settings"]["cutout"].startswith("rembg:u2net (rembg ")
    assert with_cutout["overall"]["cd"] == run(rgba, "b.json").summary["overall"]["cd"]
    assert with_cutout["overall"]["cd"] != run(cut, "c.json").summary["overall"]["cd"]
    with pytest.raises(ConfigError, match="cutout"):  # the same log, another remover: not resumed
        run(cut, "a.json")
    # a mask given to the model wins: the photo is not cut out
    given = run(cut, "d.json", cutout="rembg:u2net", use_mask=True).summary["overall"]["cd"]
    assert given == run(cut, "e.json", use_mask=True).summary["overall"]["cd"]


@pytest.mark.filterwarnings("ignore:no trained weights")
def test_the_api_takes_any_remover_function():
    import zsw

    rec = zsw.reconstruct(cluttered_photo(), "random:tiny", resolution=RES, cutout=dark_is_object)
    assert "background removed by dark_is_object" in rec.record.input["notes"]
    given = zsw.reconstruct(cluttered_photo(), "random:tiny", resolution=RES, cutout=dark_is_object,
                            mask=np.ones((120, 160), bool))  # fmt: skip
    assert not any("background removed" in n for n in given.record.input["notes"])
