"""``zsw app``: the page runs the job ``zsw reconstruct`` runs, reports bad uploads in one line and
shows the mesh in a real browser.

The server runs in-process on a free port; gradio's own client drives its API and Debian's
Chromium (through Playwright, never a downloaded browser) loads the page.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import trimesh
from gradio_client import Client, handle_file
from PIL import Image
from typer.testing import CliRunner

from zsw.app import build_app, serve
from zsw.infer.jobs import reconstruct_many
from zsw.infer.settings import FORMATS, SMOOTH, GridSettings, ReconstructSettings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore:::gradio.queueing"),  # gradio's own pandas deprecations
]

REPO = Path(__file__).resolve().parents[1]
ARMCHAIR = REPO / "examples" / "armchair.png"
# the browser test needs a photo the packaged model reconstructs as one compact object that fills
# the 3D view (its armchair has holes; zsw-demo-v3 made fragments of it)
TEDDY = REPO / "examples" / "teddy_bear.png"
DISPENSER = REPO / "examples" / "dispenser.png"
RESOLUTION = 32  # the packaged model on the CPU: a few seconds per request
CHROMIUM = "/usr/bin/chromium"
# --headless..--disable-sync: a closed network refuses Chromium's background connections, so they
# are switched off; SwiftShader (software WebGL) draws the 3D view without a GPU
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    demo = build_app(
        ReconstructSettings(device="cpu", grid=GridSettings(resolution=RESOLUTION)),
        work_dir=tmp_path_factory.mktemp("app-work"),
    )
    url = serve(demo, port=_free_port())
    yield url
    demo.close()


def _arguments(
    photo: Path,
    reframe: str = "auto",
    background: str = "auto",
    smooth: int = SMOOTH,
    faces: int = 0,
    tta: str = "auto",
    texture: int = 0,
    cutout: str = "none",
    carve: bool = True,
    box: str = "",
    frame: str = "gltf",
) -> tuple:
    """The /reconstruct endpoint's inputs: photo, prompt, resolution, extraction, colour, framing,
    background, smoothing, faces (0: all), test-time augmentation, texture (0: none), background
    removal, carving, object box, mesh frame; the page's defaults but for the resolution."""
    return (
        handle_file(str(photo)), "object", RESOLUTION, "fast", "photo", reframe, background, smooth, faces, tta,
        texture, cutout, carve, box, frame,
    )  # fmt: skip


def _reconstruct(url: str, photo: Path, downloads: Path, **options: str) -> tuple:
    client = Client(url, download_files=str(downloads), verbose=False)
    return client.predict(*_arguments(photo, **options), api_name="/reconstruct")


def test_the_object_box_reaches_the_job_and_a_bad_one_is_one_line(app_url, tmp_path):
    """The box typed (or clicked) on the page frames the object as `--box` does; one that is not
    four numbers is the status line's one error."""
    *_, status = _reconstruct(app_url, TEDDY, tmp_path / "dl", box="100, 40, 200, 140")  # its head and arm
    assert "vertices" in status and "reframed around the object (the given box)" in status, status
    *_, status = _reconstruct(app_url, TEDDY, tmp_path / "dl", box="112,0,224")
    assert status == "error: --box: expected four numbers x0,y0,x1,y1 (photo pixels), got '112,0,224'", status


def test_upload_gives_the_mesh_the_job_writes(app_url, tmp_path):
    model, depth, visible, occluder, timings, files, status = _reconstruct(app_url, ARMCHAIR, tmp_path / "dl")

    # the same job, called directly with the settings the page uses
    settings = ReconstructSettings(
        device="cpu", formats=FORMATS, preview=False, grid=GridSettings(resolution=RESOLUTION)
    )
    report = reconstruct_many([ARMCHAIR], tmp_path / "job", settings)
    expected = json.loads((report.written[0] / "result.json").read_text())["mesh"]

    glb = trimesh.load(model, force="mesh", process=False)  # process=True would merge vertices
    assert len(glb.vertices) == expected["vertices"] and len(glb.faces) == expected["faces"]
    assert f"{expected['vertices']} vertices" in status and "error" not in status
    # what was done to the photo is said: a wide photo is padded to a square
    wide = tmp_path / "wide.png"
    canvas = Image.new("RGB", (336, 224), "white")
    canvas.paste(Image.open(ARMCHAIR).convert("RGB"), (56, 0))
    canvas.save(wide)
    *_, status = _reconstruct(app_url, wide, tmp_path / "dl2")
    assert "note: padded to a square" in status, status
    # a phone's HEIC photo uploads and reconstructs too
    import pillow_heif

    pillow_heif.register_heif_opener()
    heic = tmp_path / "phone.heic"
    Image.open(ARMCHAIR).convert("RGB").save(heic, format="HEIF", quality=90)
    model_heic, *_, status = _reconstruct(app_url, heic, tmp_path / "dl3")
    assert "vertices" in status and "error" not in status, status
    assert len(trimesh.load(model_heic, force="mesh", process=False).faces) > 100
    assert sorted(Path(f).name for f in files) == [
        "depth.npy", "mesh.glb", "mesh.obj", "mesh.ply", "mesh.stl", "mesh.usdz", "visible_points.ply"
    ]  # fmt: skip
    for picture in (depth, visible, occluder):
        assert Image.open(picture).size == (224, 224)
    assert "grid_decode" in timings and "total" in timings


def test_framing_and_background_choices_reach_the_job(app_url, tmp_path):
    # the armchair stands on a white background, which corrects the model's mask by default
    # (--background auto): the page's "never" must give the job's "never" mesh, not the default one
    model, *_, status = _reconstruct(app_url, ARMCHAIR, tmp_path / "dl", reframe="never", background="never")
    counts = {}
    for background in ("auto", "never"):
        settings = ReconstructSettings(
            device="cpu", formats=FORMATS, preview=False, grid=GridSettings(resolution=RESOLUTION),
            reframe="never", background=background,
        )  # fmt: skip
        report = reconstruct_many([ARMCHAIR], tmp_path / background, settings)
        counts[background] = json.loads((report.written[0] / "result.json").read_text())["mesh"]["vertices"]
    assert counts["auto"] != counts["never"], counts  # otherwise this test could not tell them apart
    assert len(trimesh.load(model, force="mesh", process=False).vertices) == counts["never"], (status, counts)


def test_smoothing_face_budget_and_tta_reach_the_job(app_url, tmp_path):
    model, *_, status = _reconstruct(app_url, TEDDY, tmp_path / "dl", smooth=5, faces=600, tta="flip")
    settings = ReconstructSettings(
        device="cpu", formats=FORMATS, preview=False, grid=GridSettings(resolution=RESOLUTION), smooth=5, faces=600,
        tta="flip",
    )  # fmt: skip
    report = reconstruct_many([TEDDY], tmp_path / "job", settings)
    result = json.loads((report.written[0] / "result.json").read_text())
    expected = result["mesh"]
    assert result["model"]["tta"] == "flip"  # not the CPU's default (flip-pixel): the page's choice reached the job
    glb = trimesh.load(model, force="mesh", process=False)
    assert expected["face_budget"] == 600 and len(glb.faces) == expected["faces"] <= 600, (status, expected)
    assert np.allclose(np.sort(glb.vertices, axis=0), np.sort(trimesh.load(report.written[0] / "mesh.glb",
                       force="mesh", process=False).vertices, axis=0), atol=1e-5)  # fmt: skip


def test_carving_choice_reaches_the_job(app_url, tmp_path):
    # the dispenser photo: without carving the packaged model puts a little over the background at
    # this resolution (the tiger's slab under the belly went once its corrected mask held its legs)
    model, *_, status = _reconstruct(app_url, DISPENSER, tmp_path / "dl", carve=False)
    counts = {}
    for carve in (True, False):
        settings = ReconstructSettings(
            device="cpu", formats=FORMATS, preview=False, grid=GridSettings(resolution=RESOLUTION), carve=carve
        )
        report = reconstruct_many([DISPENSER], tmp_path / str(carve), settings)
        counts[carve] = json.loads((report.written[0] / "result.json").read_text())["mesh"]["vertices"]
    assert counts[True] != counts[False], counts  # otherwise this test could not tell them apart
    assert len(trimesh.load(model, force="mesh", process=False).vertices) == counts[False], (status, counts)


def test_texture_reaches_the_job_and_its_files_the_page(app_url, tmp_path):
    model, *_, files, status = _reconstruct(app_url, TEDDY, tmp_path / "dl", faces=600, texture=512)
    assert "error" not in status, status
    glb = trimesh.load(model, force="mesh", process=False)
    assert glb.visual.kind == "texture" and glb.visual.material.baseColorTexture.size == (512, 512)
    names = sorted(Path(f).name for f in files)  # the OBJ comes with the material and atlas it names
    assert names == ["depth.npy", "material_0.png", "mesh.glb", "mesh.mtl", "mesh.obj", "mesh.ply", "mesh.stl",
                     "mesh.usdz", "visible_points.ply"], names  # fmt: skip


def test_simultaneous_requests_do_not_collide(app_url, tmp_path):
    # queued one after the other, each in its own folder: every status matches its own mesh
    client = Client(app_url, download_files=str(tmp_path), verbose=False)
    photos = [ARMCHAIR, REPO / "examples" / "bolt.png"]
    jobs = [client.submit(*_arguments(photo), api_name="/reconstruct") for photo in photos]
    counts = []
    for photo, job in zip(photos, jobs):
        model, *_, status = job.result(timeout=240)
        counts.append(len(trimesh.load(model, force="mesh", process=False).vertices))
        assert status.startswith(f"**{photo.name}**: {counts[-1]} vertices"), status
    assert counts[0] != counts[1]


def test_work_folder_outside_the_temporary_folder(monkeypatch, tmp_path):
    """build_app(work_dir=...) anywhere: gradio hands out only files of the current and temporary
    folders unless told, and refused every result of a work folder elsewhere ("Error" on the page)."""
    (tmp_path / "cwd").mkdir()
    (tmp_path / "system-tmp").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "system-tmp"))  # the work folder is outside both
    demo = build_app(
        ReconstructSettings(device="cpu", grid=GridSettings(resolution=RESOLUTION)), work_dir=tmp_path / "work"
    )
    url = serve(demo, port=_free_port())
    try:
        model, *_, files, status = _reconstruct(url, TEDDY, tmp_path / "dl")
    finally:
        demo.close()
    assert "vertices" in status and "error" not in status, status
    assert len(trimesh.load(model, force="mesh", process=False).faces) > 0
    assert sorted(Path(f).name for f in files) == [
        "depth.npy", "mesh.glb", "mesh.obj", "mesh.ply", "mesh.stl", "mesh.usdz", "visible_points.ply"
    ]  # fmt: skip


def test_request_after_the_work_folder_was_removed(tmp_path):
    """A temporary-folder cleaner removes the idle app's work folder (systemd-tmpfiles, after 10
    days): the next upload still gets its mesh, not an internal error for every request."""
    from zsw.app import PageReporter, _reconstruct

    work = tmp_path / "zsw-app-work"
    work.mkdir()
    shutil.rmtree(work)
    choices = dict(prompt="object", resolution=RESOLUTION, extraction="fast", color="photo", reframe="auto",
                   background="auto")  # fmt: skip
    model, *_, status = _reconstruct(str(TEDDY), ReconstructSettings(device="cpu"), choices, work, PageReporter())
    assert "vertices" in status and "error" not in status, status
    assert Path(model).is_file() and Path(model).is_relative_to(work)


def test_the_pages_frame_choice_reaches_the_mesh(app_url, tmp_path):
    """Options > Frame: upright stands the mesh the 3D view shows (and the files) on y = 0 along the
    object's up the packaged model predicts; the default, gltf, leaves the camera at the origin."""
    model, *_, files, status = _reconstruct(app_url, TEDDY, tmp_path / "up", frame="upright")
    assert "vertices" in status and "error" not in status, status
    upright = trimesh.load(model, force="mesh", process=False)
    assert abs(upright.vertices[:, 1].min()) < 1e-4
    stl = trimesh.load(next(f for f in files if f.endswith(".stl")))
    assert abs(stl.vertices[:, 2].min()) < 1e-4
    model, *_ = _reconstruct(app_url, TEDDY, tmp_path / "gltf")
    gltf = trimesh.load(model, force="mesh", process=False)
    assert gltf.vertices[:, 2].max() < 0 and gltf.vertices[:, 1].min() < -1e-3  # in front of the camera


def test_a_bad_setting_is_not_blamed_on_the_photo(app_url, tmp_path):
    """A cleared Prompt box: the error names the prompt, not the photo (it read "teddy_bear.png:
    --prompt: empty", as if the photo were the culprit)."""
    client = Client(app_url, download_files=str(tmp_path), verbose=False)
    arguments = list(_arguments(TEDDY))
    arguments[1] = "  "  # the prompt
    *outputs, status = client.predict(*arguments, api_name="/reconstruct")
    assert status.startswith("error: --prompt: empty"), status
    assert TEDDY.stem not in status.replace("\\", "") and outputs[0] is None


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _truncated_png(path: Path) -> None:
    data = ARMCHAIR.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("make", "reason"),
    [(_random_bytes, "not an image file"), (_truncated_png, "corrupt or truncated image")],
    ids=["random-bytes", "truncated"],
)
def test_broken_upload_gets_one_line(app_url, tmp_path, make, reason):
    photo = tmp_path / "broken.png"
    make(photo)
    *outputs, status = _reconstruct(app_url, photo, tmp_path / "dl")
    assert status.startswith(f"error: broken.png: {reason}"), status
    assert "\n" not in status and "Traceback" not in status
    assert outputs[0] is None  # no stale mesh from an earlier request


def _shown(status: str) -> str:
    """The status Markdown as the page shows it: its text, without markup."""
    import re

    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark").enable(["strikethrough", "table"]).render(status)  # GitHub's, as gradio's
    assert not re.search(r"<(a|em|s|del|code|img|table)\b", html), html  # no link, emphasis, ... made of a name
    return re.sub(r"<[^>]+>", "", html).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def test_status_shows_file_names_as_written(app_url, tmp_path):
    """A photo named like Markdown keeps its name on the page (the status line is Markdown:
    `[1](x).png` became a link, `_a_ ~~b~~` emphasis and strikethrough, `&amp;` an ampersand);
    gradio itself drops a few characters from uploaded names (`*<>`...), not these."""
    name = "[1](y) _a_ __b__ &amp; ~~c~~.png"
    (tmp_path / "in").mkdir()
    photo = shutil.copy(TEDDY, tmp_path / "in" / name)
    *_, status = _reconstruct(app_url, photo, tmp_path / "dl")
    assert _shown(status).startswith(f"{name}: ") and "vertices" in status, status
    broken = tmp_path / "in" / f"broken {name}"
    _random_bytes(broken)
    *_, status = _reconstruct(app_url, broken, tmp_path / "dl2")
    assert _shown(status).strip() == f"error: broken {name}: not an image file PIL can read", status


def test_the_page_shows_the_photo_as_zsw_reads_it(tmp_path):
    """Upright by its EXIF orientation and at most PREVIEW_SIDE a side; nothing, and the status line
    left alone, when the photo is cleared; the reason in one line for a file zsw cannot read."""
    import gradio as gr

    from zsw.app import PREVIEW_SIDE, _shown

    photo = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to view
    Image.new("RGB", (1600, 900), (200, 30, 30)).save(photo, exif=exif)
    picture, status, scale, box, corner = _shown(str(photo))
    assert picture.size == (PREVIEW_SIDE * 900 // 1600, PREVIEW_SIDE), picture.size  # portrait, as viewed
    assert scale == 900 / picture.width and box == "" and corner is None  # a new photo has no box
    assert status == gr.skip() and _shown(None) == (None, gr.skip(), 1.0, "", None)
    broken = tmp_path / "broken_1.png"
    _random_bytes(broken)
    picture, status, *_ = _shown(str(broken))
    assert picture is None and status.startswith("error: broken\\_1.png: not an image file"), status


def test_two_clicks_on_the_photo_make_the_box_it_then_shows(tmp_path):
    """Corners clicked on the picture (at most PREVIEW_SIDE a side) become a box in the photo's own
    pixels, in either order; the picture then shows it."""
    import gradio as gr

    from zsw.app import PREVIEW_SIDE, _boxed, _corner

    photo = tmp_path / "wide.png"
    Image.new("RGB", (2048, 1024), (255, 255, 255)).save(photo)
    scale = 2048 / PREVIEW_SIDE

    def click(x, y):
        return gr.SelectData(None, {"index": [x, y], "value": None})

    corner, box = _corner(None, scale, click(300, 200))
    assert corner == (1200, 800) and box == gr.skip()
    corner, box = _corner(corner, scale, click(100, 20))  # the opposite corner, up and left
    assert corner is None and box == "400,80,1200,800"
    picture = np.asarray(_boxed(str(photo), box))
    assert picture.shape == (PREVIEW_SIDE // 2, PREVIEW_SIDE, 3)
    red = (picture[..., 0] > 200) & (picture[..., 1] < 100)
    rows, cols = np.nonzero(red)
    assert abs(rows.min() - 20) <= 1 and abs(rows.max() - 200) <= 2 and abs(cols.min() - 100) <= 1
    assert not red[50:150, 150:250].any()  # an outline, not a filled rectangle
    assert not ((np.asarray(_boxed(str(photo), "1,2,3"))[..., 1] < 100).any())  # unreadable: no box drawn


def test_examples_come_from_a_checkout_only(monkeypatch, tmp_path):
    import zsw
    from zsw.app import find_examples

    assert find_examples() == sorted((REPO / "examples").glob("*.png"))
    # a wheel in site-packages ships no examples (and site-packages/examples is someone else's)
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "other.png").write_bytes(ARMCHAIR.read_bytes())
    monkeypatch.setattr(zsw, "__file__", str(tmp_path / "zsw" / "__init__.py"))
    assert find_examples() == []


def test_help_has_an_example():
    from zsw.cli.main import app

    result = CliRunner().invoke(app, ["app", "--help"])
    assert result.exit_code == 0 and "zsw app" in result.output and "--port" in result.output


def test_stopping_the_app_removes_its_work_folder(tmp_path):
    """Every request's meshes and masks sit in a temporary work folder: a stopped app (SIGTERM, as
    a service manager stops it, or Ctrl-C) leaves none behind."""
    import os
    import signal
    import subprocess
    import time

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "zsw", "app", "--port", str(_free_port()), "--weights", "random:tiny"]
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "open http" not in line and time.monotonic() < deadline and child.poll() is None:
            line = child.stdout.readline()
        assert "open http" in line, line
        assert len(list(tmp_path.glob("zsw-app-*"))) == 1
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0 and not list(tmp_path.glob("zsw-app-*"))


def test_busy_port_is_one_line(app_url):
    from zsw.cli.main import app

    port = app_url.rstrip("/").rsplit(":", 1)[1]  # the test server's port is taken
    result = CliRunner().invoke(app, ["app", "--port", port, "--weights", "random:tiny"])
    assert result.exit_code == 1
    assert result.output.strip().startswith(f"error: cannot listen on 127.0.0.1:{port}"), result.output


@pytest.mark.parametrize(
    ("host", "why"),
    [("nonexistent.invalid", "unknown host name or address"), ("192.0.2.1", "not an address of this machine")],
    ids=["unknown-name", "not-this-machine"],  # .invalid never resolves; 192.0.2.0/24 is for documentation only
)
def test_bad_host_is_one_line_naming_the_host(host, why, monkeypatch):
    """A host that cannot be listened on is named as the culprit, in one line (uvicorn printed its
    own ERROR line and the message said to choose another --port), before gradio is imported or
    the model loaded: with gradio missing the command still fails on the host, not on gradio."""
    import subprocess

    from zsw.errors import ZswError
    from zsw.listen import check_address

    with pytest.raises(ZswError, match=f"^cannot listen on {host}: {why}.*check --host$"):
        check_address(host, _free_port())
    if host != "192.0.2.1":
        return
    blocked = "import sys; sys.modules['gradio'] = None; from zsw.cli.main import main; sys.exit(main())"
    cmd = [sys.executable, "-c", blocked, "app", "--host", host, "--port", str(_free_port()), "--weights", "nope.st"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot listen on {host}: {why}"), lines
    assert "--host" in lines[0] and "--port" not in lines[0], lines


def test_missing_gradio_is_one_line(monkeypatch):
    from zsw.cli.main import app

    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "zsw.app")
    result = CliRunner().invoke(app, ["app"])
    assert result.exit_code == 1
    assert result.output.strip() == 'error: zsw app needs gradio, which is not installed: pip install "zsw[app]"'


def _chromium() -> str:
    path = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if path is None:
        pytest.fail("the browser test needs Debian's chromium: apt-get update && apt-get install -y chromium")
    return path


def _model_fraction(png: bytes) -> float:
    """Share of the viewer's pixels that differ clearly from its most common colour (the
    background): the label and buttons alone stay far below 1%."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).astype(int)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    background = colours[counts.argmax()]
    return float((np.abs(pixels - background).max(axis=1) > 30).mean())


def test_page_shows_the_mesh_in_a_browser(app_url, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(app_url)
            assert page.evaluate("() => !!document.createElement('canvas').getContext('webgl2')"), "no WebGL"
            # a file zsw cannot read is said at once, before Reconstruct is pressed
            broken = tmp_path / "broken.png"
            _random_bytes(broken)
            page.locator("#photo input[type=file]").set_input_files(broken)
            page.locator("#status").get_by_text("error: broken.png: not an image file").wait_for(timeout=30_000)
            page.locator("#photo").get_by_role("button", name="Clear").click()
            page.locator("#examples").get_by_text(TEDDY.name).click()  # the bundled example's thumbnail
            page.locator("#photo").get_by_text(TEDDY.stem).wait_for(timeout=30_000)  # now the input
            shown = page.locator("#shown img")  # and the photo as zsw reads it is on the page
            shown.wait_for(timeout=30_000)
            before = shown.screenshot()
            assert _model_fraction(before) > 0.05, "the photo's picture is blank"
            # two clicks on the picture: the object box, in the photo's pixels (224 x 224), drawn on it
            size = shown.bounding_box()
            for fx, fy in ((0.25, 0.2), (0.75, 0.8)):
                shown.click(position={"x": size["width"] * fx, "y": size["height"] * fy})
            page.wait_for_function("() => document.querySelector('#box textarea').value !== ''", timeout=30_000)
            x0, y0, x1, y1 = (int(v) for v in page.locator("#box textarea").input_value().split(","))
            # (where a click lands in the picture is gradio's to map: the clicks are symmetric about its centre)
            assert abs(x0 + x1 - 224) <= 4 and abs(y0 + y1 - 224) <= 4 and 80 < x1 - x0 < 160, (x0, y0, x1, y1)
            assert y1 - y0 > x1 - x0 > 0, (x0, y0, x1, y1)
            for _ in range(60):  # the picture is redrawn with the box
                drawn = np.asarray(Image.open(io.BytesIO(shown.screenshot())).convert("RGB")).astype(int)
                if drawn.shape == np.asarray(Image.open(io.BytesIO(before))).shape[:2] + (3,):
                    orange = (drawn[..., 0] > 220) & (np.abs(drawn[..., 1] - 64) < 40) & (drawn[..., 2] < 60)
                    if orange.mean() > 0.003:
                        break
                page.wait_for_timeout(500)
            assert orange.mean() > 0.003, "the box is not drawn on the photo"
            page.locator("#box textarea").fill("")  # the whole photo again
            page.locator("#run").click()
            page.locator("#status").get_by_text("vertices").wait_for(timeout=120_000)
            viewer = page.locator("#model canvas")
            # babylon.js loads and draws the GLB after the event returns: poll, do not sleep
            shot, fraction = b"", 0.0
            for _ in range(60):
                shot = viewer.screenshot()
                fraction = _model_fraction(shot)
                if fraction > 0.02:
                    break
                page.wait_for_timeout(500)
            (tmp_path / "app.png").write_bytes(page.screenshot(full_page=True))
            assert fraction > 0.02, f"the 3D view stayed blank ({fraction:.3%} non-background pixels)"
            body = page.locator("body").inner_text()
            assert "error" not in page.locator("#status").inner_text().lower()
            assert "Error" not in body, body
        finally:
            browser.close()


def test_reconstruct_pressed_again_while_a_job_runs_runs_the_new_photo(app_url, monkeypatch):
    """A user who picks another photo while the first one runs and presses Reconstruct again gets
    that photo's mesh next, not the first one's result left beside the new photo."""
    import threading

    from playwright.sync_api import sync_playwright

    import zsw.app

    started, release = threading.Event(), threading.Event()
    job = zsw.app.reconstruct_many

    def first_job_waits(*args, **kwargs):  # holds the first request until the second press is made
        if not started.is_set():
            started.set()
            release.wait(timeout=120)
        return job(*args, **kwargs)

    monkeypatch.setattr(zsw.app, "reconstruct_many", first_job_waits)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(app_url)
            page.locator("#photo input[type=file]").set_input_files(ARMCHAIR)
            page.locator("#photo").get_by_text(ARMCHAIR.stem).wait_for(timeout=30_000)
            page.locator("#run").click()
            assert started.wait(timeout=60), "the first request never reached the job"
            page.locator("#photo").get_by_role("button", name="Clear").click()
            page.locator("#photo input[type=file]").set_input_files(TEDDY)
            page.locator("#photo").get_by_text(TEDDY.stem).wait_for(timeout=30_000)
            page.locator("#run").click()  # while the armchair's job still runs
            release.set()
            page.locator("#status").get_by_text(TEDDY.name).wait_for(timeout=120_000)
            assert "vertices" in page.locator("#status").inner_text()
        finally:
            release.set()
            browser.close()


def test_page_reporter_takes_every_progress_update_a_job_sends():
    """The Reporter contract (zsw.report.Advance): counts, notes, absolute totals and positions."""
    from zsw.app import PageReporter

    calls = []
    reporter = PageReporter(progress_bar=lambda shown, desc: calls.append((shown, desc)))
    with reporter.progress("reconstructing", 3) as advance:
        advance(1)
        advance(0, note="fast vs dense", total=10, completed=4)
        advance(2)
    with reporter.progress("exporting", None) as advance:
        advance(0, note="onnx")
    assert calls == [
        ((0, 3), "reconstructing"), ((1, 3), "reconstructing"), ((4, 10), "fast vs dense"), ((6, 10), "fast vs dense"),
        (None, "exporting"), (None, "onnx"),
    ]  # fmt: skip


def test_timings_table_lists_the_stages_that_ran():
    from zsw.app import _timings_table

    table = _timings_table({"pixel": 0.25, "grid_decode": 1.5, "texture": 0.0, "preview": 0.3})
    assert "| pixel | 0.25 |" in table and "| grid_decode | 1.50 |" in table
    assert "texture" not in table and "preview" not in table and "| **total** | **1.75** |" in table
