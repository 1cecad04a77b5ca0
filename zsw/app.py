"""``zsw app``: a local web page around the reconstruction job.

The page runs :func:`zsw.infer.jobs.reconstruct_many` -- the job ``zsw reconstruct`` runs -- on one
uploaded photo and shows what it wrote: the coloured mesh in an interactive 3D view, the depth map,
both masks, the timings and the mesh files (GLB, OBJ, PLY, STL) to download::

    from zsw.app import build_app, serve
    from zsw.infer.settings import ReconstructSettings

    demo = build_app(ReconstructSettings(device="cpu"))
    print(serve(demo, port=7860))  # http://127.0.0.1:7860/
    wait(demo)  # until Ctrl-C or SIGTERM

gradio is an optional dependency (``pip install "zsw[app]"``); this module imports it at the top,
so import it only where the app is wanted.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

import zsw
from zsw.errors import ZswError
from zsw.infer.cutout import CUTOUT_CHOICES
from zsw.infer.jobs import reconstruct_many
from zsw.infer.result import OBJ_MTL
from zsw.infer.settings import (
    BACKGROUNDS,
    COLORS,
    EXTRACTIONS,
    FORMATS,
    FRAMES,
    REFRAMES,
    SMOOTH,
    TTAS,
    ReconstructSettings,
)
from zsw.io import IMAGE_SUFFIXES
from zsw.listen import check_address
from zsw.report import Advance, Reporter

__all__ = ["build_app", "serve", "find_examples", "PageReporter", "MAX_UPLOAD"]

_log = logging.getLogger("zsw.app")

#: the largest upload the server accepts (gradio refuses bigger ones before the job sees them)
MAX_UPLOAD = "25mb"
#: the longest side, in pixels, of the page's picture of the photo as zsw reads it
PREVIEW_SIDE = 512
#: request folders older than this are removed when a new request starts (gradio keeps its own copies)
_KEEP_S = 3600
#: what Markdown (and the HTML it passes through) would read as markup in a file name or a message
_MARKUP = re.compile(r"([\\`*_\[\]<>&~|])")


@dataclass
class PageReporter(Reporter):
    """The app's :class:`~zsw.report.Reporter`: collects warnings and errors for the page and
    forwards progress to gradio's progress bar."""

    progress_bar: Any = None  # a gr.Progress, or None outside an event
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def warning(self, text: str) -> None:
        super().warning(text)
        self.warnings.append(text)

    def error(self, text: str) -> None:
        super().error(text)
        self.errors.append(text)

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Advance]:
        state = {"done": 0, "total": total, "desc": description}

        def advance(n: int = 1, *, note: str | None = None, total: int | None = None, completed=None) -> None:
            state["done"] = (completed if completed is not None else state["done"]) + n
            state["total"] = total if total is not None else state["total"]
            state["desc"] = note or state["desc"]
            if self.progress_bar is not None:
                shown = (state["done"], state["total"]) if state["total"] else None
                self.progress_bar(shown, desc=state["desc"])

        advance(0)
        yield advance


def find_examples() -> list[Path]:
    """Bundled example photos: ``zsw/assets/examples/`` if the package ships them, else the
    ``examples/`` folder of a source checkout (an editable install); none for a plain wheel."""
    package = Path(zsw.__file__).resolve().parent
    checkout = package.parent
    folders = [package / "assets" / "examples"]
    if (checkout / "pyproject.toml").is_file():  # not site-packages/examples of some other project
        folders.append(checkout / "examples")
    for folder in folders:
        photos = sorted(p for p in folder.glob("*.png") if p.is_file())
        if photos:
            return photos
    return []


def build_app(
    defaults: ReconstructSettings | None = None,
    work_dir: str | Path | None = None,
    examples: list[Path] | None = None,
) -> gr.Blocks:
    """The page. ``defaults`` fixes what the page does not offer (weights, device, backend, ...) and
    the initial values of what it does (prompt, resolution, extraction, colour, framing,
    background, background removal, smoothing, faces, test-time augmentation, carving, texture); the model is
    loaded once here to check them (a :class:`~zsw.errors.ZswError` if it cannot be). Each request
    writes into its own folder under ``work_dir`` (default: a new temporary folder)."""
    defaults = defaults or ReconstructSettings()
    _check_model(defaults)
    if work_dir is None:  # ours: removed when the process ends (the hourly clean-up needs a live server)
        work = Path(tempfile.mkdtemp(prefix="zsw-app-"))
        atexit.register(shutil.rmtree, work, True)
    else:
        work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    examples = find_examples() if examples is None else examples
    if examples:
        gr.set_static_paths([str(p.parent) for p in examples])  # served in place, outside cwd and /tmp

    with gr.Blocks(
        title="zsw: a 3D mesh from one photo", analytics_enabled=False, delete_cache=(_KEEP_S, _KEEP_S)
    ) as demo:
        gr.Markdown(
            "# zsw: a 3D mesh from one photo\n"
            "Upload a photo of an object (or pick an example) and press **Reconstruct**. The mesh is "
            "coloured from the photo; its hidden back is the model's guess."
        )
        with gr.Row():
            with gr.Column(scale=1):
                # a file, not gr.Image: the job reads the photo's own bytes (HEIC, EXR, its ICC profile
                # and EXIF orientation), which gr.Image would re-encode first; what zsw read is shown below
                photo = gr.File(label="Photo", file_types=["image", *IMAGE_SUFFIXES], elem_id="photo")
                shown = gr.Image(label="The photo as zsw reads it", interactive=False, height=PREVIEW_SIDE // 2,
                                 buttons=[], elem_id="shown")  # fmt: skip
                # photo pixels per pixel of the picture above, and a first corner clicked on it
                scale, corner = gr.State(1.0), gr.State(None)
                box = gr.Textbox(
                    "", label="Object box", placeholder="x0,y0,x1,y1 (empty: the model finds the object)",
                    info="for a photo of several things: click two corners of the object on the photo above",
                    elem_id="box",
                )  # fmt: skip
                if examples:
                    gallery = gr.Gallery([(str(p), p.name) for p in examples], label="Examples", columns=3,
                                         object_fit="contain", height="auto", allow_preview=False,
                                         elem_id="examples")  # fmt: skip

                    def pick(evt: gr.SelectData) -> str:  # an example's thumbnail clicked: it becomes the photo
                        return str(examples[evt.index])

                    gallery.select(pick, None, photo, queue=False, show_progress="hidden")
                prompt = gr.Textbox(defaults.prompt, label="Prompt", info="the object's category, e.g. chair")
                run = gr.Button("Reconstruct", variant="primary", elem_id="run")
                # the settings a first visit does not need, folded: the button stays in view
                with gr.Accordion("Options", open=False, elem_id="options"):
                    resolution = gr.Slider(
                        8, 512, value=defaults.grid.resolution, step=8, label="Resolution", info="grid cells per axis"
                    )
                    extraction = gr.Radio(list(EXTRACTIONS), value=defaults.grid.extraction, label="Extraction")
                    color = gr.Radio(list(COLORS), value=defaults.color, label="Colour")
                    reframe = gr.Radio(
                        list(REFRAMES), value=defaults.reframe, label="Framing",
                        info="cut the photo around the object when it is small or off centre",
                    )  # fmt: skip
                    background = gr.Radio(
                        list(BACKGROUNDS), value=defaults.background, label="Background",
                        info="correct the object's mask with a plain, graded or transparent background, "
                        "or on a busy one with the photo's colours",
                    )  # fmt: skip
                    cutout = gr.Dropdown(
                        list(dict.fromkeys(["auto", "none", "grabcut", "rembg", *CUTOUT_CHOICES, defaults.cutout])),
                        value=defaults.cutout, allow_custom_value=True, label="Background removal",
                        info="remove a cluttered background first (auto: grabcut where the border is not plain; "
                        'rembg: pip install "zsw[cutout]")',
                    )  # fmt: skip
                    smooth = gr.Slider(
                        0, 100, value=defaults.smooth, step=1, label="Smoothing",
                        info="passes of Taubin smoothing: removes the grid's terraces, keeps the mesh closed",
                    )  # fmt: skip
                    faces = gr.Number(
                        value=defaults.faces or 0, precision=0, minimum=0, label="Faces",
                        info="decimate to at most this many triangles (0: keep them all)",
                    )  # fmt: skip
                    tta = gr.Radio(
                        list(TTAS), value=defaults.tta, label="Test-time augmentation",
                        info="flip: average the shape with the mirrored photo's (twice the decoding); flip-pixel: "
                        "average only depth and masks; auto: flip on a GPU, flip-pixel on a CPU",
                    )  # fmt: skip
                    carve = gr.Checkbox(
                        value=defaults.carve, label="Carve",
                        info="no surface where the photo shows background (between legs, under a table)",
                    )  # fmt: skip
                    texture = gr.Radio(
                        sorted({0, 512, 1024, 2048, defaults.texture}), value=defaults.texture, label="Texture",
                        info="bake the photo into an atlas of this many texels a side (0: vertex colours only); "
                        "meant with Faces: ~1 s at 5,000 faces, ~20 s for a whole mesh",
                    )  # fmt: skip
                    frame = gr.Radio(
                        list(FRAMES), value=defaults.frame, label="Frame",
                        info="gltf: y up as photographed; upright: standing on its own up axis, as the model "
                        "estimates it (the camera's look-down angle taken out); camera: y down, z forward",
                    )  # fmt: skip
            with gr.Column(scale=2):
                # no LaTeX: a file named $$x$$.png is a name, not a formula
                status = gr.Markdown(label="Status", elem_id="status", latex_delimiters=[])
                model = gr.Model3D(label="Mesh", height=420, elem_id="model")
                with gr.Row():
                    depth = gr.Image(label="Depth", type="filepath", interactive=False)
                    visible = gr.Image(label="Visible mask", type="filepath", interactive=False)
                    occluder = gr.Image(label="Occluder mask", type="filepath", interactive=False)
                timings = gr.Markdown(label="Timings", elem_id="timings")
                files = gr.File(label="Files", file_count="multiple", interactive=False)

        def reconstruct(
            upload: str | None,
            prompt_text: str,
            grid_resolution: float,
            grid_extraction: str,
            color_mode: str,
            framing: str,
            background_mode: str,
            smooth_passes: float,
            face_budget: float | None,
            augmentation: str,
            atlas_size: float,
            remover: str,
            carving: bool,
            object_box: str = "",
            mesh_frame: str = "gltf",
            progress: gr.Progress = gr.Progress(),  # gradio's way of asking for a progress bar
        ) -> tuple:
            choices = dict(
                prompt=prompt_text,
                resolution=int(grid_resolution),
                extraction=grid_extraction,
                color=color_mode,
                reframe=framing,
                background=background_mode,
                cutout=remover or "auto",
                smooth=int(smooth_passes),
                faces=int(face_budget) if face_budget else None,
                tta=augmentation,
                texture=int(atlas_size or 0),
                carve=bool(carving),
                box=(object_box or "").strip() or None,
                frame=mesh_frame,
            )
            return _reconstruct(upload, defaults, choices, work, PageReporter(progress))

        # a new photo: its picture, and no box (the last photo's means nothing on it)
        photo.change(_shown, [photo], [shown, status, scale, box, corner], queue=False, show_progress="hidden")
        shown.select(_corner, [corner, scale], [corner, box], queue=False, show_progress="hidden")
        box.change(_boxed, [photo, box], [shown], queue=False, show_progress="hidden")
        run.click(
            reconstruct,
            [
                photo,
                prompt,
                resolution,
                extraction,
                color,
                reframe,
                background,
                smooth,
                faces,
                tta,
                texture,
                cutout,
                carve,
                box,
                frame,
            ],
            [model, depth, visible, occluder, timings, files, status],
            api_name="reconstruct",
            # pressed again while a job runs (another photo, other settings): run the latest choice
            # next; gradio's default ("once") ignored the press and left the old result beside the new photo
            trigger_mode="always_last",
        )
    demo.queue(default_concurrency_limit=1)  # one job at a time: the CPU is the bottleneck
    demo.zsw_work_dir = work  # for serve(): gradio hands out files of the current and temporary folders only
    return demo


def _check_model(settings: ReconstructSettings) -> None:
    """Load the model now, into the cache the job uses, so that bad weights or a bad device stop
    ``zsw app`` with one line at start rather than on the first upload (and the first upload does
    not load it again)."""
    from zsw.infer.cutout import open_cutout
    from zsw.infer.weights import cached_backend, resolve_backend

    s = settings
    open_cutout(s.cutout)  # a remover that is not installed stops the app now, not on an upload
    cached_backend(
        resolve_backend(s.backend, s.weights, s.engine, s.device, s.precision), s.weights, s.engine, s.device
    )


def serve(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> str:
    """Start the server in a background thread and return its local URL (the public one, with
    ``share``, is ``demo.share_url``); ``demo.block_thread()`` then waits until Ctrl-C."""
    check_address(host, port)
    try:
        _, url, _ = demo.launch(
            server_name=host,
            server_port=port,
            share=share,
            max_file_size=MAX_UPLOAD,
            # the results of a work_dir elsewhere (/data/zsw-app): gradio refused every one of them
            allowed_paths=[str(Path(demo.zsw_work_dir).resolve())] if hasattr(demo, "zsw_work_dir") else None,
            prevent_thread_lock=True,
            ssr_mode=False,  # no Node.js server: one process, nothing else to install
            quiet=True,  # gradio's banner names launch() arguments; the caller says what zsw users need
        )
    except OSError:  # gradio's message advises launch() parameters; ours names the option
        raise ZswError(f"cannot listen on {host}:{port}: in use or not allowed; choose another --port") from None
    return url


def stop_on_sigterm() -> None:
    """Make SIGTERM (a service manager's stop) leave through the normal exit path, so the request
    folders are removed; call it before the server says where it listens (main thread only)."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))


def wait(demo: gr.Blocks) -> None:
    """Serve until Ctrl-C or SIGTERM, then return through the normal exit path."""
    stop_on_sigterm()
    demo.block_thread()


def _reconstruct(
    upload: str | None, defaults: ReconstructSettings, choices: dict, work: Path, reporter: PageReporter
) -> tuple:
    """One request: settings, the job into a fresh folder, the page's outputs."""
    if not upload:
        return _failure("Upload a photo or pick an example first.")
    name = Path(upload).name
    try:
        settings = _settings(defaults, **choices)
        report = reconstruct_many([upload], _request_folder(work), settings, reporter)
    except ZswError as e:  # bad options, weights that cannot load, a prompt estimator that is missing:
        return _failure(_one_line(str(e)))  # not the photo's fault, so not named after it
    except Exception as e:  # a bug: keep the traceback in the log, give the page one line
        _log.exception("reconstructing %s failed", upload)
        return _failure(f"{name}: internal error ({type(e).__name__}: {_one_line(str(e))})")
    if not report.written:
        reasons = [reason for _, reason in report.failed] or reporter.errors or ["nothing was written"]
        return _failure(f"{name}: {_one_line(reasons[0])}")
    # the job's warnings about this photo (an empty mesh, ...) are in its result.json as well
    job = [w for w in reporter.warnings if not w.startswith(f"{upload}: ")]
    return _outputs(report.written[0], name, job)


def _settings(
    defaults: ReconstructSettings,
    prompt: str,
    resolution: int,
    extraction: str,
    color: str,
    reframe: str,
    background: str,
    cutout: str = "auto",
    smooth: int = SMOOTH,
    faces: int | None = None,
    tta: str = "auto",
    texture: int = 0,
    carve: bool = True,
    box: str | None = None,
    frame: str = "gltf",
) -> ReconstructSettings:
    """The page's choices on top of the defaults; every mesh format, no preview picture (the
    3D view replaces it)."""
    grid = dataclasses.replace(defaults.grid, resolution=resolution, extraction=extraction)
    return dataclasses.replace(
        defaults,
        prompt=prompt.strip(),
        grid=grid,
        color=color,
        reframe=reframe,
        background=background,
        cutout=cutout,
        smooth=smooth,
        faces=faces,
        tta=tta,
        texture=texture,
        carve=carve,
        box=box,
        frame=frame,
        formats=_formats(),
        preview=False,
        overwrite=True,
    )


def _formats() -> tuple[str, ...]:
    """Every mesh format, USDZ where usd-core is installed (the usd extra; the app's does not need it)."""
    from zsw.infer.usdz import usd_available

    return tuple(f for f in FORMATS if f != "usdz" or usd_available())


def _request_folder(work: Path) -> Path:
    """A new folder per request, so concurrent users never share one; old ones are removed."""
    # a temporary-folder cleaner (systemd-tmpfiles: 10 idle days) may have removed it under a running app
    work.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in work.glob("request-*"):
        if old.is_dir() and now - old.stat().st_mtime > _KEEP_S:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix="request-", dir=work))


def _outputs(folder: Path, name: str, warnings: list[str]) -> tuple:
    info = json.loads((folder / "result.json").read_text())
    mesh = info["mesh"]
    total = sum(info["timings_s"].values())  # the preview's entry is ~0: the app asks for none
    lines = [f"**{_plain(name)}**: {mesh['vertices']} vertices, {mesh['faces']} faces in {total:.1f} s"]
    # the job's warnings (random weights, ...) and the image's own (an empty mesh, ...), once each;
    # then what was done to the photo (padded, reframed, a very elongated photo, ...)
    lines += [f"warning: {_plain(_one_line(w))}" for w in dict.fromkeys([*warnings, *info.get("warnings", [])])]
    lines += [f"note: {_plain(_one_line(n))}" for n in info["input"].get("notes", [])]
    files = [str(folder / f"mesh.{fmt}") for fmt in _formats()]
    # a textured OBJ's material and atlas, which it names; what the model saw, as numbers
    files += [str(folder / f) for f in info["files"] if f == OBJ_MTL or f.startswith("material_")]
    files += [str(folder / f) for f in ("visible_points.ply", "depth.npy") if f in info["files"]]
    images = [str(folder / f) for f in ("depth.png", "visible_mask.png", "occluder_mask.png")]
    return (files[0], *images, _timings_table(info["timings_s"]), files, "\n\n".join(lines))


def _timings_table(timings: dict[str, float]) -> str:
    # the app asks for no preview picture; stages that did not run (no texture, ...) record 0
    timings = {k: v for k, v in timings.items() if k != "preview" and v > 0}
    rows = "\n".join(f"| {stage} | {seconds:.2f} |" for stage, seconds in timings.items())
    return f"| stage | seconds |\n| --- | ---: |\n{rows}\n| **total** | **{sum(timings.values()):.2f}** |"


def _shown(upload: str | None) -> tuple:
    """The photo as the job will read it (upright, in sRGB, on white where transparent; at most
    :data:`PREVIEW_SIDE` pixels a side), the status line left as it is, the photo's pixels per
    pixel of that picture, and an empty box with no corner clicked; or, for a file zsw cannot read,
    nothing and the one-line reason, at once rather than after **Reconstruct**."""
    if not upload:
        return None, gr.skip(), 1.0, "", None
    try:
        picture, scale = _picture(upload)
    except ZswError as e:  # said of the file by its name, as the job's failures are
        reason = _one_line(str(e)).removeprefix(f"{upload}: ")
        return None, f"error: {_plain(Path(upload).name)}: {_plain(reason)}", 1.0, "", None
    except Exception as e:  # a bug: keep the traceback in the log
        _log.exception("reading %s failed", upload)
        return None, f"error: {_plain(Path(upload).name)}: internal error ({type(e).__name__})", 1.0, "", None
    return picture, gr.skip(), scale, "", None


def _picture(upload: str):
    """The photo as the job reads it, at most :data:`PREVIEW_SIDE` pixels a side (a copy to draw
    on), and the photo's pixels per pixel of it. Decoded once per file: the box is drawn again on
    every change of its text."""
    try:
        stat = Path(upload).stat()
        key = stat.st_mtime_ns, stat.st_size
    except OSError:  # gone: load_image says so in its one line
        key = 0, -1
    picture, scale = _decoded_picture(str(upload), *key)
    return picture.copy(), scale


@functools.lru_cache(maxsize=8)
def _decoded_picture(upload: str, mtime_ns: int, size: int):  # the file's time and size: a changed file is new
    from PIL import Image

    from zsw.infer.image import load_image

    loaded = load_image(upload)
    picture = Image.fromarray(loaded.pixels if loaded.pixels is not None else loaded.image)
    width = picture.width
    picture.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.LANCZOS)
    return picture, width / picture.width


def _corner(corner, scale: float, evt: gr.SelectData) -> tuple:
    """A click on the photo's picture: the first corner of a box, or with the one clicked before,
    the box (in photo pixels) that the page then draws."""
    x, y = (round(float(v) * scale) for v in evt.index)
    if corner is None:
        return (x, y), gr.skip()
    (x0, y0), (x1, y1) = corner, (x, y)
    if x0 == x1 or y0 == y1:  # the same point twice (a double click): start again from it
        return (x, y), gr.skip()
    return None, f"{min(x0, x1)},{min(y0, y1)},{max(x0, x1)},{max(y0, y1)}"


def _boxed(upload: str | None, box: str):
    """The photo's picture with the box drawn on it (as it is where the box is empty or unreadable:
    **Reconstruct** then says why in the status line)."""
    if not upload:
        return gr.skip()
    from PIL import ImageDraw

    from zsw.infer.image import check_box

    try:
        picture, scale = _picture(upload)
    except ZswError:  # said in the status line when the photo was chosen
        return gr.skip()
    try:
        x0, y0, x1, y1 = (v / scale for v in check_box(box))
    except ZswError:  # empty, or not four numbers yet (being typed)
        return picture
    width = max(2, round(picture.width / 150))
    ImageDraw.Draw(picture).rectangle([x0, y0, x1, y1], outline=(255, 64, 0), width=width)
    return picture


def _failure(message: str) -> tuple:
    return (None, None, None, None, "", None, f"error: {_plain(message)}")


def _plain(text: str) -> str:
    """``text`` as the status line shows it: a file named ``a_b*c*.png`` or ``[1](x).png``, or an
    error naming ``rembg:<model>``, reads as written instead of as emphasis, a link or an HTML tag."""
    return _MARKUP.sub(r"\\\1", text)


def _one_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"
