"""Image to mesh: the ``zsw.reconstruct`` API and the engine behind ``zsw reconstruct``.

For every image::

    predict(backend, image, prompt)      depth, K, visible/occluder masks, latent K/V  (Backend)
    extract_meshes(backend.decode, ...)  occupancy grid -> marching cubes, normalised frame
    normalised * scale + center          camera frame (x right, y down, z forward)
    camera -> output frame               "gltf" (default) or "camera"

Everything after :func:`~zsw.infer.backend.predict` uses only the
:class:`~zsw.infer.backend.Backend` protocol, so PyTorch, ONNX Runtime and TensorRT backends give
the same files.

**Mesh frame and units.** ``camera`` keeps the camera frame of the input view. ``gltf`` (default)
turns it 180 degrees about x -- ``(x, y, z) -> (x, -y, -z)`` -- which is glTF's convention: y up,
the object in front of a camera at the origin that looks down -z, its visible side facing +z, so
glTF viewers and Blender show it upright, as photographed. Both frames keep the scale of the
predicted depth: ZeroShape-W's depth is relative (up to an unknown scale and shift), so mesh units
are not metres. ``result.json`` stores ``center`` and ``scale`` to map back to the model's
normalised frame: ``normalised = (camera - center) / scale``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zsw.errors import CheckpointError, ConfigError, InputError, OptionError, ZswError
from zsw.infer.backend import Backend, Prediction, load_backend, predict
from zsw.infer.grid import GridStats, drop_small_parts, grid_meshes
from zsw.infer.image import LoadedImage, load_image, load_mask, object_window, reframe, reframe_mask
from zsw.infer.mesh_ops import check_mesh_options, decimate_mesh, smooth_mesh
from zsw.infer.record import CameraInfo, ColorInfo, GridInfo, MeshInfo, ModelInfo, ResultRecord, Timings
from zsw.infer.settings import (
    BACKGROUNDS,
    FORMATS,
    FRAMES,
    MIN_PART,
    PRECISIONS,
    REFRAMES,
    SMOOTH,
    STL_LONGEST_SIDE_MM,
    TTAS,
    GridSettings,
    is_estimated_prompt,
)
from zsw.infer.texture import TexturedMesh, bake_texture, check_texture_size
from zsw.io import checkpoint_sha256
from zsw.model import PixelOutput, SurfacePrediction

__all__ = [
    "reconstruct",
    "Reconstruction",
    "Reconstructor",
    "open_backend",
    "cached_backend",
    "resolve_weights",
    "demo_weights",
    "demo_engine",
    "resolve_backend",
    "run_precision",
    "camera_to_frame",
    "original_intrinsics",
    "reframe_worthwhile",
    "occupancy_function",
    "resolve_tta",
    "mirror_average",
    "flip_averaged_pixel",
    "mirror_points",
    "FRAMES",
    "FORMATS",
    "RANDOM_WEIGHTS_WARNING",
]

#: folder of the packaged demo model
DEMO_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo"
RANDOM_WEIGHTS_WARNING = (
    "no trained weights: running the '{preset}' preset with RANDOM weights -- the meshes are noise. "
    "Pass --weights (a .safetensors checkpoint, e.g. from `zsw convert` or `zsw train`)."
)
UNITS = "camera frame in units of the predicted relative depth (scale and shift are unknown)"
#: the material library beside a textured ``mesh.obj`` (its atlas: ``material_0.png``)
OBJ_MTL = "mesh.mtl"
#: above this many faces ``--texture`` warns that charting is slow (xatlas: ~1 s at 5,000 faces,
#: ~20 s at the 40,000 of a 128 grid) and that ``--faces`` would speed it up
TEXTURE_FACES_HINT = 20_000


def demo_weights() -> Path | None:
    """The packaged demo checkpoint (``zsw/assets/demo/*.safetensors``), or None if absent."""
    found = sorted(DEMO_DIR.glob("*.safetensors")) if DEMO_DIR.is_dir() else []
    return found[0] if found else None


def demo_engine() -> Path | None:
    """The packaged model's ONNX export (``zsw/assets/demo/onnx``), or None when it is absent or was
    exported from other weights than the packaged checkpoint (a stale export is never used)."""
    folder = DEMO_DIR / "onnx"
    weights = demo_weights()
    try:
        source = json.loads((folder / "export.json").read_text())["source"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return folder if weights is not None and source == checkpoint_sha256(weights) else None


def resolve_backend(
    kind: str = "auto",
    weights=None,
    engine: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
) -> str:
    """What backend ``kind`` means here. ``auto`` is ``onnxruntime+torch`` for the packaged model
    at fp32 on a CPU when onnxruntime is installed and the packaged ONNX graphs belong to the
    packaged weights (:func:`demo_engine`): the pixel and encoder graphs on ONNX Runtime, the
    decoder in PyTorch (see :class:`zsw.export.runtime.OnnxRuntimeBackend`), which spares the
    process timm's import and decodes with zsw's CPU kernels. Everywhere else ``auto`` is
    ``torch``. Other kinds are returned unchanged."""
    if kind != "auto":
        return kind
    if engine is not None:
        raise ConfigError("--engine is for the onnxruntime and tensorrt backends; pick one with --backend")
    if weights not in (None, "demo"):
        return "torch"
    try:
        dev = torch.device(device) if device is not None else None
    except (RuntimeError, TypeError):
        return "torch"  # open_backend names the bad device
    if dev is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type != "cpu" or precision not in PRECISIONS or resolve_precision(precision, dev) != "fp32":
        return "torch"
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None or demo_engine() is None:
        return "torch"
    return "onnxruntime+torch"


def resolve_weights(weights=None):
    """What ``--weights`` means: ``(checkpoint path or model, label, warning or None)``.

    ``None`` is the packaged demo model (or, while there is none, the ``tiny`` preset with random
    weights and a warning); ``"demo"`` insists on the demo model; ``"random:<preset>"`` builds a
    randomly initialised preset on purpose (pipeline tests, speed measurements); anything else is a
    checkpoint path or a :class:`~zsw.model.ZeroShapeW`.
    """
    from zsw.model import ZeroShapeW, build_model

    if isinstance(weights, ZeroShapeW):
        return weights, f"in-memory {weights.config.name} model", None
    if weights is None or str(weights) == "demo":
        path = demo_weights()
        if path is not None:
            return path, f"demo:{path.name}", None
        if weights is not None:
            raise ConfigError(f"the demo model is not installed (no .safetensors in {DEMO_DIR})")
        weights = "random:tiny"
    text = str(weights)
    if text.startswith("random:"):
        preset = text.split(":", 1)[1] or "tiny"
        with torch.random.fork_rng():  # the same random model every time, global RNG untouched
            torch.manual_seed(0)
            model = build_model(preset).eval()
        return model, text, RANDOM_WEIGHTS_WARNING.format(preset=preset)
    return Path(text), str(text), None


def check_inputs(device: str | torch.device | None = None, weights=None) -> None:
    """The cheap checks of ``--device`` and ``--weights``, made before any work (a folder run makes
    them before it plans which photos to redo): a one-line error naming the option."""
    if device is not None:
        from zsw.hub import resolve_device

        if torch.device(resolve_device(device)).type not in ("cpu", "cuda"):
            raise OptionError(f"--device {device}: zsw runs on cpu or cuda devices")
    if isinstance(weights, (str, os.PathLike)) and str(weights) != "demo" and not str(weights).startswith("random:"):
        if Path(weights).is_dir():
            raise CheckpointError(f"--weights {weights} is a folder; give a .safetensors checkpoint")
        if not Path(weights).is_file():
            raise CheckpointError(f"checkpoint {weights} does not exist")


def open_backend(
    kind: str = "auto",
    weights=None,
    engine: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> tuple[Backend, str, str | None]:
    """A backend plus a label of its weights and an optional warning (see :func:`resolve_weights`);
    ``kind`` ``auto`` is resolved by :func:`resolve_backend` (at the default precision)."""
    check_inputs(device, weights)
    kind = resolve_backend(kind, weights, engine, device)
    if kind == "torch":
        model, label, warning = resolve_weights(weights)
        return load_backend("torch", weights=model, device=device), label, warning
    if weights is not None and not (kind == "onnxruntime+torch" and weights == "demo"):
        raise ConfigError(f"--weights is for the torch backend; the {kind} backend reads its --engine folder")
    if kind == "onnxruntime+torch" or (kind == "onnxruntime" and engine is None):
        packaged = demo_engine()
        if packaged is None:
            raise ConfigError(f"the {kind} backend needs --engine DIR (a folder written by `zsw export`)")
        checkpoint = demo_weights()  # not None: demo_engine found the export of it
        label = f"demo:{checkpoint.name}"
        if kind == "onnxruntime":
            return load_backend(kind, engine=packaged, device=device), f"{label} (ONNX)", None
        return load_backend(kind, weights=checkpoint, engine=packaged, device=device), label, None
    return load_backend(kind, engine=engine, device=device), f"engine:{engine}", None


def weights_identity(weights=None, engine: str | os.PathLike | None = None) -> str:
    """What identifies the weights a run uses: the SHA-256 of the checkpoint file (the packaged
    model's included), of an engine folder's manifest, or the label of a random preset or model."""
    from zsw.io import sha256_file
    from zsw.model import ZeroShapeW

    if engine is not None:
        manifest = Path(engine) / "export.json"
        return f"engine:{sha256_file(manifest)}" if manifest.is_file() else f"engine:{engine}"
    if isinstance(weights, ZeroShapeW):
        return f"model:{id(weights)}"
    if weights is None or weights == "demo":
        path = demo_weights()
        return f"sha256:{checkpoint_sha256(path)}" if path is not None else "random:tiny"
    if isinstance(weights, str) and weights.startswith("random:"):
        return weights
    return f"sha256:{checkpoint_sha256(weights)}" if Path(weights).is_file() else str(weights)


def request_record(image: str | os.PathLike, mask: str | os.PathLike | None, settings: dict) -> dict:
    """What a result was made from: the input's (and mask's) content hash and every setting that
    changes the output. ``result.json`` stores it; a rerun reuses a result only when it is equal."""
    from zsw.io import sha256_file

    return {
        "input_sha256": sha256_file(image),
        "mask_sha256": sha256_file(mask) if mask is not None else None,
        **settings,
    }


def find_mask(folder: str | os.PathLike, image: str | os.PathLike) -> Path | None:
    """The mask in ``folder`` named like ``image`` (``<stem>.png`` first, then any image suffix)."""
    from zsw.infer.image import IMAGE_SUFFIXES

    for suffix in (".png", *IMAGE_SUFFIXES):
        candidate = Path(folder) / f"{Path(image).stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def plan_reruns(
    paths: Sequence[Path],
    out: str | os.PathLike,
    settings: dict,
    masks: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> tuple[list[tuple[Path, str, dict]], int, list[tuple[Path, str]]]:
    """Which images of a folder run need work: ``(todo, redone, errors)``. ``todo`` holds
    ``(path, output name, request)`` for every image without a complete result recording the same
    request (see :func:`request_record`); ``redone`` counts those whose earlier result came from
    another input, settings or weights, or lost a file; ``errors`` the images that could not be
    read to hash them. Output names follow :func:`output_name`."""
    todo, redone, errors, used = [], 0, [], set()
    for path in paths:
        try:
            request = request_record(path, find_mask(masks, path) if masks is not None else None, settings)
        except (OSError, ZswError) as e:
            errors.append((path, str(e)))
            continue
        name = output_name(path, request, out, used)
        used.add(name)
        state = "none" if overwrite else finished_with(Path(out) / name, request)
        redone += state == "other"
        if state != "same":
            todo.append((path, name, request))
    return todo, redone, errors


def output_name(path: Path, request: dict, out: str | os.PathLike, used: set[str] = frozenset()) -> str:
    """The result folder of ``path`` under ``out``: its file stem, or the first of ``stem-2``,
    ``stem-3``, ... that this run has not used and that holds no result of another photo. A folder
    belongs to a photo when its ``result.json`` names the same file or the same content, so a
    rerun with some of the inputs finds each one's folder again and never writes over another's
    (``a.png`` and ``a.webp`` stay ``a`` and ``a-2`` whichever is given)."""
    k = 1
    while True:
        name = path.stem if k == 1 else f"{path.stem}-{k}"
        k += 1
        if name in used:
            continue
        try:
            record = json.loads((Path(out) / name / "result.json").read_text())
            source = Path(record["input"]["source"])
            sha = (record.get("request") or {}).get("input_sha256")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return name  # no result there (or an unreadable one, redone anyway)
        if sha == request["input_sha256"] or source.resolve() == Path(path).resolve():
            return name


def finished_with(out_dir: str | os.PathLike, request: dict) -> str:
    """``"same"`` if ``out_dir/result.json`` records ``request`` and every file it lists is there,
    ``"other"`` if it records something else (another photo, other settings or weights) or lost a
    file, ``"none"`` if there is no result."""
    path = Path(out_dir) / "result.json"
    if not path.is_file():
        return "none"
    try:
        record = json.loads(path.read_text())
        recorded, files = record.get("request"), record.get("files", [])
        complete = all((Path(out_dir) / f).is_file() for f in files)
    except (OSError, ValueError, AttributeError, TypeError):
        return "other"
    return "same" if recorded == request and complete else "other"


def cached_backend(
    kind: str = "auto",
    weights: str | os.PathLike | None = None,
    engine: str | os.PathLike | None = None,
    device: str | None = None,
    identity: str | None = None,
) -> tuple[Backend, str, str | None]:
    """:func:`open_backend`, cached for the last two (kind, weights, engine, device) that also
    have the same content (:func:`weights_identity`, computed unless given): a checkpoint
    rewritten in place is loaded again. The job, ``zsw.reconstruct`` and the app share it."""
    weights = None if weights is None else str(weights)
    engine = None if engine is None else str(engine)
    identity = identity or weights_identity(weights, engine)
    return _cached_backend(kind, weights, engine, None if device is None else str(device), identity)


@functools.lru_cache(maxsize=2)
def _cached_backend(kind: str, weights: str | None, engine: str | None, device: str | None, identity: str):
    return open_backend(kind, weights, engine, device)


def camera_to_frame(points: np.ndarray, frame: str) -> np.ndarray:  # [N, 3] -> [N, 3]
    """Camera-frame points in the output ``frame`` (``gltf``: ``(x, -y, -z)``; ``camera``: as is)."""
    if frame == "camera":
        return points
    if frame == "gltf":
        return points * np.array([1.0, -1.0, -1.0], dtype=points.dtype)
    raise ConfigError(f"frame must be one of {', '.join(FRAMES)}, got {frame!r}")


@dataclass
class Reconstruction:
    """One image's reconstruction: the mesh, the pixel-level predictions and how they were made."""

    name: str
    mesh: object  # trimesh.Trimesh in `frame`
    frame: str
    image: np.ndarray  # [S, S, 3] uint8 model input
    depth: np.ndarray  # [S, S] float32 relative depth
    intrinsics: np.ndarray  # [3, 3] pixels of the S x S input
    visible_mask: np.ndarray  # [S, S] bool
    occluder_mask: np.ndarray | None  # [S, S] bool (None for models without an occluder head)
    center: np.ndarray  # [3] camera-frame centroid of the visible surface
    scale: float  # its radius: camera = normalised * scale + center
    prompt: str | None
    record: ResultRecord | None = None  # what result.json says (zsw.infer.record)
    visible_points: np.ndarray | None = None  # [P, 3] the lifted visible surface, camera frame
    texture: TexturedMesh | None = None  # the photo baked into an atlas (``texture=SIZE``; zsw.infer.texture)

    @property
    def info(self) -> dict:
        """``result.json``'s content as a dict (a copy: change ``record`` instead)."""
        return self.record.to_dict() if self.record is not None else {}

    def camera_vertices(self) -> np.ndarray:  # [V, 3]
        """Mesh vertices in the camera frame (undoes the output frame)."""
        return camera_to_frame(np.asarray(self.mesh.vertices, dtype=np.float64), self.frame)

    def mesh_normalized(self):
        """The mesh in the model's normalised frame (where the grid lives)."""
        import trimesh

        v = (self.camera_vertices() - self.center) / self.scale
        return trimesh.Trimesh(v, np.asarray(self.mesh.faces), process=False)

    def textured_mesh(self):
        """:attr:`mesh` cut along its charts' seams, with the texture atlas as its base colour
        (what ``mesh.glb`` and ``mesh.obj`` hold with ``texture``), or None without a texture."""
        if self.texture is None:
            return None
        import trimesh
        from PIL import Image

        t = self.texture
        visual = trimesh.visual.TextureVisuals(uv=t.uv, image=Image.fromarray(t.image))
        vertices = np.asarray(self.mesh.vertices)[t.vertex_index]
        return trimesh.Trimesh(vertices, t.faces, visual=visual, process=False)

    def printable_mesh(self, longest_side_mm: float = STL_LONGEST_SIDE_MM):
        """The mesh as slicers want it (``mesh.stl``) and its millimetres per camera-frame unit:
        z up (the camera's up), the side that faced the camera towards -y (Blender's front view),
        standing on z = 0, centred on the z axis, scaled so its longest side is
        ``longest_side_mm``. The same triangles as :attr:`mesh` (a rotation, a shift and a scale)."""
        import trimesh

        cam = self.camera_vertices()
        v = np.stack([cam[:, 0], cam[:, 2], -cam[:, 1]], axis=1)  # camera (x right, y down, z ahead) -> z up
        if len(v) == 0:  # an empty mesh has no size to scale
            return trimesh.Trimesh(v, np.asarray(self.mesh.faces), process=False), None
        lo, hi = v.min(axis=0), v.max(axis=0)
        scale = longest_side_mm / max(float((hi - lo).max()), 1e-12)
        base = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])
        return trimesh.Trimesh((v - base) * scale, np.asarray(self.mesh.faces), process=False), scale

    def preview(self, panel: int = 256) -> np.ndarray:  # [panel, 3 * panel, 3] uint8
        """Input image | mesh from the input camera | mesh in a three-quarter view."""
        from zsw.infer.preview import preview_image

        colors = None
        if getattr(self.mesh.visual, "kind", None) == "vertex":
            colors = np.asarray(self.mesh.visual.vertex_colors)[:, :3]
        return preview_image(
            self.image, self.camera_vertices(), np.asarray(self.mesh.faces), self.intrinsics, panel, colors
        )

    def save(self, out_dir: str | os.PathLike, formats: Sequence[str] = ("glb",), preview: bool = True) -> list[Path]:
        """Write ``mesh.<fmt>``, ``depth.png``, the masks, ``preview.png`` and ``result.json``.

        Every file is written atomically and ``result.json`` last, so a folder with a
        ``result.json`` is complete: an earlier ``result.json`` is removed first (its files are
        about to be replaced), and if any write fails (full disk, read-only folder) the files this
        call wrote are removed again and the error is raised. Mesh files of formats not asked for
        this time are removed, so the folder always matches its ``result.json``.
        """
        formats = (formats,) if isinstance(formats, str) else tuple(formats)  # "obj" is one format
        bad = [f for f in formats if f not in FORMATS]
        if bad or not formats:
            raise ConfigError(f"mesh format must be one of {', '.join(FORMATS)}, got {bad or 'none'}")
        from zsw.io import remove_leftovers

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out)  # temporary files of an earlier, killed run
        (out / "result.json").unlink(missing_ok=True)
        written: list[Path] = []
        try:
            self._write_files(out, formats, preview, written)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return written

    def _write_files(self, out: Path, formats: Sequence[str], preview: bool, written: list[Path]) -> None:
        from PIL import Image

        from zsw.infer.preview import colorize_depth
        from zsw.io import atomic_path, atomic_write_json

        t0 = time.perf_counter()
        stl_scale = None
        textured = self.textured_mesh()
        for fmt in dict.fromkeys(formats):
            path = out / f"mesh.{fmt}"
            mesh = self.mesh
            if fmt == "stl":
                mesh, stl_scale = self.printable_mesh()
            elif fmt == "obj" and textured is not None:  # mesh.obj, mesh.mtl and the atlas beside them
                from trimesh.exchange.obj import export_obj

                text, extra = export_obj(textured, include_texture=True, return_texture=True, mtl_name=OBJ_MTL)
                for name, data in extra.items():
                    with atomic_path(out / name) as tmp:
                        Path(tmp).write_bytes(data)
                    written.append(out / name)
                with atomic_path(path) as tmp:
                    Path(tmp).write_text(text)
                written.append(path)
                continue
            elif fmt == "glb" and textured is not None:
                mesh = textured
            with atomic_path(path) as tmp:
                mesh.export(tmp, file_type=fmt)
            written.append(path)
        export_s = time.perf_counter() - t0

        def png(name: str, array: np.ndarray) -> None:
            path = out / name
            with atomic_path(path) as tmp:
                Image.fromarray(array).save(tmp, format="PNG")
            written.append(path)

        png("depth.png", colorize_depth(self.depth))
        png("visible_mask.png", self.visible_mask.astype(np.uint8) * 255)
        if self.occluder_mask is not None:
            png("occluder_mask.png", self.occluder_mask.astype(np.uint8) * 255)
        else:
            (out / "occluder_mask.png").unlink(missing_ok=True)
        t1 = time.perf_counter()
        if preview:
            png("preview.png", self.preview())
        else:
            (out / "preview.png").unlink(missing_ok=True)
        preview_s = time.perf_counter() - t1
        for fmt in FORMATS:
            if fmt not in formats:
                (out / f"mesh.{fmt}").unlink(missing_ok=True)
        kept = set(written)
        for stale in [out / OBJ_MTL, *out.glob("material_*.png")]:  # an earlier textured OBJ's side files
            if stale not in kept:
                stale.unlink(missing_ok=True)
        if self.record is not None:
            self.record.timings_s.export, self.record.timings_s.preview = export_s, preview_s
            self.record.mesh.stl_mm_per_unit = stl_scale
            self.record.files = sorted(p.name for p in written) + ["result.json"]
        atomic_write_json(out / "result.json", self.info)
        written.append(out / "result.json")


def original_intrinsics(K: np.ndarray, image: LoadedImage) -> np.ndarray:  # [3, 3] -> [3, 3]
    """K in pixels of the original photo (after its EXIF rotation) from K of the model input.

    The input is the square ``image.square`` = (x0, y0, side) of the photo (the photo padded by
    ``(-x0, -y0)``, or a window cut by :func:`~zsw.infer.image.reframe`) resized by ``s``; with
    integer pixel centres a resize maps ``u_in = s * (u_photo - x0) + (s - 1) / 2``.
    """
    s = image.crop_scale
    x0, y0, _ = image.square
    left, top = -x0, -y0
    out = np.array(K, dtype=np.float64)
    out[0, 0], out[1, 1] = K[0, 0] / s, K[1, 1] / s
    out[0, 2] = (K[0, 2] - (s - 1) / 2) / s - left
    out[1, 2] = (K[1, 2] - (s - 1) / 2) / s - top
    return out


#: ``reframe="auto"`` cuts a new input when the object's window is smaller than the current input's
#: side by this factor ...
REFRAME_ZOOM = 1.25
#: ... or its centre is off the input's centre by more than this fraction of the side. On views
#: cropped as in training a predicted mask is sometimes off by that much (an occluder, thin legs):
#: a smaller shift left alone costs less than cutting a wrong window (bench/framing.py)
REFRAME_SHIFT = 0.25
#: most pixel-model passes that predict the object's mask to frame it
REFRAME_PASSES = 3


def reframe_worthwhile(current: tuple[int, int, int], window: tuple[int, int, int]) -> bool:
    """``reframe="auto"``'s rule: is the object's ``window`` (x0, y0, side) different enough from
    the ``current`` square to cut a new input?"""
    x0, y0, side = current
    nx0, ny0, nside = window
    shift = max(abs(nx0 + nside / 2 - x0 - side / 2), abs(ny0 + nside / 2 - y0 - side / 2)) / side
    return side >= REFRAME_ZOOM * nside or shift > REFRAME_SHIFT


def _prompts(prompt: str | Sequence[str] | None, n: int) -> list[str | None]:
    prompts = [prompt] * n if prompt is None or isinstance(prompt, str) else list(prompt)
    if len(prompts) != n:
        raise InputError(f"got {len(prompts)} prompts for {n} images")
    if any(isinstance(p, str) and not p.strip() for p in prompts):  # None is the default prompt, "" a slip
        raise OptionError("prompt: empty; give a category word such as 'chair', or None for the default")
    return prompts


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto``: bf16 on CUDA devices that support it (tensor cores), fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    return precision


def resolve_tta(tta: str, device: torch.device | str) -> str:
    """``auto``: ``flip`` on CUDA, where the mirrored pass costs little next to the whole;
    ``flip-pixel`` on the CPU, where ``flip`` doubles the grid decoding (1.2 -> 1.9 s of a 4.8 s
    ``zsw reconstruct`` on 2 cores) and averaging the pixel model's outputs alone costs one more
    pixel-model pass for most of the gain in CD (docs/reconstruct.md)."""
    if tta not in TTAS:
        raise ConfigError(f"tta must be one of {', '.join(TTAS)}, got {tta!r}")
    if tta == "auto":
        return "flip" if torch.device(device).type == "cuda" else "flip-pixel"
    return tta


def mirror_average(pixel: PixelOutput, mirrored: PixelOutput) -> PixelOutput:
    """The mean of the pixel model's outputs for an input (``pixel``) and for the input flipped left
    to right (``mirrored``), the latter flipped back: its maps flipped, its principal point moved
    from ``cx`` to ``W - 1 - cx`` (integer pixel centres, see :func:`mirror_points`)."""
    W = pixel.depth.shape[-1]
    K = mirrored.intrinsics.clone()
    K[:, 0, 2] = (W - 1) - K[:, 0, 2]

    def mean(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
        return None if a is None or b is None else 0.5 * (a + b.flip(-1))

    return PixelOutput(
        mean(pixel.depth, mirrored.depth),
        0.5 * (pixel.intrinsics + K),
        mean(pixel.visible_mask_logits, mirrored.visible_mask_logits),
        mean(pixel.occluder_mask_logits, mirrored.occluder_mask_logits),
    )


def run_precision(kind: str, precision: str, device: torch.device | str) -> str:
    """The precision a backend of ``kind`` computes in, as ``result.json`` records it: the PyTorch
    model's autocast (:func:`resolve_precision`); fp32 for ``onnxruntime+torch`` (fp32 graphs and
    an fp32 decoder); ``engine`` for exported engines, which keep the precision they were built with."""
    if kind == "torch":
        return resolve_precision(precision, device)
    return "fp32" if kind == "onnxruntime+torch" else "engine"


def autocast(precision: str, device: torch.device):
    """The autocast context of a resolved precision (a no-op for fp32 and exported engines)."""
    import contextlib

    if precision not in ("bf16", "fp16"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def flip_averaged_pixel(backend: Backend, image: torch.Tensor, text: torch.Tensor | None) -> PixelOutput:
    """The pixel model's outputs for ``image [B, 3, S, S]`` averaged with those for the image
    mirrored left to right (:func:`mirror_average`): what ``--tta flip-pixel`` uses."""
    return mirror_average(backend.pixel(image, text), backend.pixel(image.flip(-1), text))


def mirror_points(points: torch.Tensor, pred: SurfacePrediction, mirrored: SurfacePrediction) -> torch.Tensor:
    """Points ``[B, N, 3]`` of ``pred``'s normalised frame, reflected through the camera's x = 0
    plane and expressed in ``mirrored``'s normalised frame, where ``mirrored`` is the prediction
    for the same input flipped left to right. Flipping column u to W - 1 - u is the camera of the
    reflected scene: ``u = fx X / Z + cx`` becomes ``W - 1 - u = fx (-X) / Z + (W - 1 - cx)``."""
    camera = pred.to_camera(points)
    return mirrored.to_normalized(camera * camera.new_tensor([-1.0, 1.0, 1.0]))


def occupancy_function(
    backend: Backend,
    pred: Prediction,
    mirrored: Prediction | None = None,
    precision: str = "fp32",
    label: str = "",
):
    """The occupancy logits ``[B, N]`` of points ``[B, N, 3]`` in ``pred``'s normalised frame, as
    grid extraction calls it. With ``mirrored`` (the prediction for the input flipped left to
    right), the mean of the two fields' logits: ``pred``'s at each point and ``mirrored``'s at its
    reflection (:func:`mirror_points`). Non-finite logits raise :class:`~zsw.errors.ZswError`."""
    device = backend.device

    def decode(points: torch.Tensor) -> torch.Tensor:  # [B, N, 3] -> [B, N]
        with autocast(precision, device):
            logits = backend.decode(pred.latents, points).float()
            if mirrored is not None:
                reflected = mirror_points(points.float(), pred, mirrored).to(points.dtype)
                logits = 0.5 * (logits + backend.decode(mirrored.latents, reflected).float())
        if not bool(torch.isfinite(logits).all()):
            raise ZswError(
                f"the model ({label or backend.name}) decodes non-finite occupancy: its weights are damaged or diverged"
            )
        return logits

    return decode


#: result.json's ``mask`` for a predicted visible mask that the photo's own background corrected
MASK_CORRECTED = "predicted, corrected by the photo's background"


@dataclass
class _Seen:
    """What a framing pass found for an input that it left as it was: the pixel model's output
    (one row) and the masks the reconstruction would compute again (see ``_corrected_masks``)."""

    pixel: PixelOutput
    visible: np.ndarray  # [S, S] bool: the predicted visible mask
    corrected: np.ndarray | None  # that mask corrected by the photo's background, or None


class Reconstructor:
    """Reconstruct batches of prepared images with one backend and fixed extraction settings.

    Args:
        backend: any :class:`~zsw.infer.backend.Backend`.
        resolution: grid cells per axis (``resolution + 1`` samples).
        extraction: ``fast`` (coarse to fine) or ``dense``.
        threshold: occupancy probability of the surface.
        frame: output frame of the mesh, ``gltf`` or ``camera`` (see the module docstring).
        chunk_points: most query points per decoder call (bounds memory; None: by device, see
            :func:`zsw.infer.settings.default_chunk_points`).
        weights_label: how the weights are named in ``result.json``.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``: autocast of the PyTorch backend (see
            :func:`resolve_precision`); exported engines keep the precision they were built with.
        close: space outside the grid counts as empty, so meshes are watertight (default);
            False leaves surfaces that reach the grid's bound open there.
        min_part: drop disconnected parts whose surface area is below this fraction of the
            largest part's (default :data:`~zsw.infer.settings.MIN_PART`, as ``zsw reconstruct``
            and ``zsw eval``; 0 keeps everything).
        smooth: passes of Taubin smoothing after the crumbs are dropped (default
            :data:`~zsw.infer.settings.SMOOTH`, as ``zsw reconstruct`` and ``zsw eval``; 0 keeps
            the marching-cubes surface; :func:`~zsw.infer.mesh_ops.smooth_mesh`).
        faces: decimate each mesh to at most this many triangles (None keeps them all;
            :func:`~zsw.infer.mesh_ops.decimate_mesh`), before it is coloured.
        texture: also bake the photo into a ``texture x texture`` atlas after the vertex colours
            (0: not; :mod:`zsw.infer.texture`); needs ``color="photo"``.
        grid: all grid settings at once, as the jobs hold them; when given it replaces
            ``resolution``, ``extraction``, ``threshold``, ``bound``, ``close`` and ``chunk_points``.
        reframe: ``auto`` (default) cuts a new model input around the object -- centred, its
            longer side at :data:`~zsw.infer.image.OBJECT_FILL` of the input's, as in the training
            renders -- when the photo shows it smaller than that by 1/:data:`REFRAME_ZOOM` or off
            centre by more than :data:`REFRAME_SHIFT` of the side; ``always`` does it for every
            image, ``never`` keeps the photo as loaded. The object is the given mask (or an RGBA
            image's alpha), else the visible mask of a first pass of the pixel model.
        background: ``auto`` (default) corrects the predicted visible mask with the photo's own
            background where it tells one -- an RGBA image's transparency, or a border of one plain
            colour (:mod:`zsw.infer.background`); ``never`` keeps the model's mask as it is. A
            given mask is never changed.
        tta: test-time augmentation. ``flip`` also runs the pixel model and the encoder on the
            input mirrored left to right -- its camera sees the scene reflected through the plane
            x = 0 -- and takes each query point's occupancy logit as the mean of the two fields' at
            the point and at its reflection (:func:`occupancy_function`): grid decoding costs twice
            as much; the depth, masks and camera in the result are the unmirrored input's.
            ``flip-pixel`` runs only the pixel model on the mirrored input too, every time it runs
            (framing passes included), and uses the mean of the two outputs
            (:func:`mirror_average`) as the pixel model's: one encoding, one decoding. ``none``
            uses the input alone. ``auto`` (default, :func:`resolve_tta`) is ``flip`` on CUDA and
            ``flip-pixel`` on the CPU.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        resolution: int = 128,
        extraction: str = "fast",
        threshold: float = 0.5,
        frame: str = "gltf",
        chunk_points: int | None = None,
        weights_label: str = "",
        bound: float = 1.5,
        precision: str = "auto",
        close: bool = True,
        color: str = "photo",
        min_part: float = MIN_PART,
        smooth: int = SMOOTH,
        faces: int | None = None,
        grid: GridSettings | None = None,
        reframe: str = "auto",
        background: str = "auto",
        tta: str = "auto",
        texture: int = 0,
    ):
        # Imported here, not inside the timed marching-cubes stage (~1 s cold). Importing it on a
        # thread while the model runs was measured and is slower: the import's Python holds the GIL
        # for 5 ms switch intervals that every small PyTorch op of the main thread then waits out.
        import trimesh  # noqa: F401

        from zsw.infer.color import COLOR_MODES

        if color not in COLOR_MODES:
            raise ConfigError(f"color must be one of {', '.join(COLOR_MODES)}, got {color!r}")
        if frame not in FRAMES:
            raise ConfigError(f"frame must be one of {', '.join(FRAMES)}, got {frame!r}")
        self.backend = backend
        self.grid = grid or GridSettings(resolution, extraction, threshold, bound, close, chunk_points)
        self.frame = frame
        self.weights_label = weights_label
        self.color = color
        if not 0.0 <= min_part <= 1.0:
            raise ConfigError(f"min_part must be a fraction in [0, 1], got {min_part}")
        self.min_part = min_part
        check_mesh_options(smooth, faces)
        self.smooth, self.faces = smooth, faces
        check_texture_size(texture, color)
        self.texture = texture
        if reframe not in REFRAMES:
            raise ConfigError(f"reframe must be one of {', '.join(REFRAMES)}, got {reframe!r}")
        self.reframe = reframe
        if background not in BACKGROUNDS:
            raise ConfigError(f"background must be one of {', '.join(BACKGROUNDS)}, got {background!r}")
        self.background = background
        self.tta = resolve_tta(tta, backend.device)
        self.precision = run_precision(backend.name, precision, backend.device)
        self.warnings: list[str] = []
        if precision != "auto" and precision != self.precision:
            self.warnings.append(
                f"--precision {precision} is for the torch backend; the {backend.name} backend computes in "
                + ("the precision its engine was built with" if self.precision == "engine" else self.precision)
            )

    @property
    def needs_mask(self) -> bool:
        """True for models without a visible-mask head (ZeroShape): every image needs a mask."""
        return not self.backend.config.pixel.mask_heads

    def __call__(
        self,
        images: Sequence[LoadedImage],
        prompts: str | Sequence[str | None] | None = None,
        masks: Sequence[np.ndarray | None] | None = None,
        with_mesh: bool = True,
    ) -> list[Reconstruction]:
        """Reconstruct ``images`` in one batch (one model call per stage).

        Args:
            images: prepared with :func:`~zsw.infer.image.load_image` at the model's input size.
            prompts: one category prompt for all, or one per image; None = the model's default.
            masks: optional visible masks ``[S, S]`` bool per image (required by ZeroShape models;
                an RGBA image's alpha is used when no mask is given).
            with_mesh: False skips the occupancy grid (empty meshes): only the pixel-level
                predictions and the visible surface, e.g. for the evaluation baselines.
        """
        B = len(images)
        if B == 0:
            return []
        S = self.backend.config.pixel.image_size
        for im in images:
            if im.image.shape != (S, S, 3):
                raise InputError(f"{im.name}: the model takes {S}x{S} images, got {im.image.shape[:2]}")
        prompt_list = _prompts(prompts, B)
        mask_list = list(masks) if masks is not None else [None] * B
        if len(mask_list) != B:
            raise InputError(f"got {len(mask_list)} masks for {B} images")
        if self.needs_mask:
            mask_list = [m if m is not None else im.alpha for m, im in zip(mask_list, images)]
            missing = [im.name for m, im in zip(mask_list, images) if m is None]
            if missing:
                raise InputError(
                    f"{missing[0]}: the {self.backend.config.name} model has no mask head; give a mask "
                    "(--masks DIR) or an RGBA image with transparency"
                )
        first_pass, seen = [0.0] * B, [None] * B
        if self.reframe != "never":
            images, mask_list, first_pass, seen = self._reframe(images, prompt_list, mask_list)
        # images with and without masks go through predict() separately (one mask tensor per call)
        groups: dict[bool, list[int]] = {}
        for i, m in enumerate(mask_list):
            groups.setdefault(m is not None, []).append(i)
        results: list[Reconstruction | None] = [None] * B
        for has_mask, idx in groups.items():
            group_masks = [mask_list[i] for i in idx] if has_mask else None
            group = self._run(
                [images[i] for i in idx], [prompt_list[i] for i in idx], group_masks, with_mesh,
                [first_pass[i] for i in idx], [seen[i] for i in idx],
            )  # fmt: skip
            for i, rec in zip(idx, group):
                results[i] = rec
        return results  # type: ignore[return-value]

    def _batch(self, images: Sequence[LoadedImage]) -> torch.Tensor:  # [B, 3, S, S] in [0, 1]
        batch = torch.from_numpy(np.stack([im.image for im in images])).to(self.backend.device)
        return batch.permute(0, 3, 1, 2).float().div_(255.0)

    def _prompt_arg(self, prompts: Sequence[str | None]) -> list[str] | None:
        return None if all(p is None for p in prompts) else [p or self._default_prompt() for p in prompts]

    def _reframe(
        self, images: list[LoadedImage], prompts: list[str | None], masks: list
    ) -> tuple[list[LoadedImage], list, list[float], list]:
        """Cut each image's model input around its object where ``self.reframe`` asks for it
        (see the class docstring). A given mask or alpha channel frames the object at once; a
        predicted mask is predicted again on the new input, which shows the object larger, and the
        window refined while it still moves (at most :data:`REFRAME_PASSES` pixel-model passes).
        Returns the images, their masks cut alike, the seconds of those passes per image, and per
        image a :class:`_Seen` (the pass's pixel output and masks) where its final input is the one
        that pass saw (most photos: left as they are), else None."""
        images, masks = list(images), list(masks)
        seconds = [0.0] * len(images)
        seen: list = [None] * len(images)
        todo = []
        for i, (im, m) in enumerate(zip(images, masks)):
            if m is None and im.alpha is None:
                todo.append(i)
                continue
            source = "the alpha channel" if m is None or m is im.alpha else "the given mask"
            obj = m if m is not None else im.alpha
            images[i], window = self._cut(im, obj, source, self.reframe == "always")
            if window is not None and m is not None:
                masks[i] = reframe_mask(m, im, window)
        if not self.backend.config.pixel.mask_heads:
            return images, masks, seconds, seen
        for n in range(REFRAME_PASSES):
            if not todo:
                break
            t0 = time.perf_counter()
            batch = self._batch([images[i] for i in todo])
            with autocast(self.precision, self.backend.device):
                text = self.backend.embed_prompts(self._prompt_arg([prompts[i] for i in todo]), len(todo))
                pix = self._pixel(batch, text)
            # the mask the reconstruction will use frames the object (a mask that spills over a
            # plain or graded background would frame the background)
            visible, corrected = self._corrected_masks([images[i] for i in todo], pix)
            moved = []
            for j, i in enumerate(todo):
                obj, source = visible[j], "the predicted visible mask"
                if corrected[j] is not None:
                    obj, source = corrected[j], "the predicted visible mask, corrected by the background"
                images[i], window = self._cut(images[i], obj, source, self.reframe == "always" and n == 0)
                if window is not None:
                    moved.append(i)
                else:  # the input stays what this pass saw: its output (and masks) are the final ones
                    seen[i] = _Seen(pix.rows([j]), visible[j], corrected[j])
            share = (time.perf_counter() - t0) / len(todo)  # the pass and the cuts, split evenly
            for i in todo:
                seconds[i] += share
            todo = moved
        return images, masks, seconds, seen

    def _pixel(self, batch: torch.Tensor, text: torch.Tensor | None) -> PixelOutput:
        """The pixel model's output for ``batch``; with ``tta="flip-pixel"``, averaged with its
        output for the batch mirrored left to right (:func:`mirror_average`)."""
        if self.tta == "flip-pixel":
            return flip_averaged_pixel(self.backend, batch, text)
        return self.backend.pixel(batch, text)

    def _corrected_masks(self, images: list[LoadedImage], pixel: PixelOutput) -> tuple[np.ndarray, list]:
        """The pixel model's visible masks ``[B, S, S]`` (probability >= 0.5) and, per image, that
        mask corrected by the photo's own background (:mod:`zsw.infer.background`): None where the
        photo tells no background, or with ``background="never"``."""
        from zsw.infer.background import refine_visible_mask

        visible = (pixel.visible_mask_logits[:, 0].float() >= 0).cpu().numpy()
        if self.background == "never":
            return visible, [None] * len(images)
        occluder = (pixel.occluder_mask_logits[:, 0].float() >= 0).cpu().numpy()
        corrected = [
            refine_visible_mask(im.image, visible[b], occluder[b], im.photo_area, im.alpha)
            for b, im in enumerate(images)
        ]
        return visible, corrected

    def _cut(self, im: LoadedImage, obj: np.ndarray, source: str, force: bool):
        """``im`` reframed around the object ``obj`` (a mask of its input) and the window, or
        ``im`` (with a note when there is no object) and None where nothing is cut."""
        window = object_window(obj, im)
        if window is None:
            return dataclasses.replace(im, notes=[*im.notes, f"not reframed: no object in {source}"]), None
        if not force and not reframe_worthwhile(im.square, window):
            return im, None
        return reframe(im, window, note=f"reframed around the object ({source}): photo window {list(window)}"), window

    def _run(
        self, images: list[LoadedImage], prompts: list[str | None], masks, with_mesh: bool, first_pass: list[float],
        seen: list,
    ) -> list:  # fmt: skip
        """Reconstruct one batch; ``seen``: per image the framing pass's :class:`_Seen` for this very
        input, or None (the pixel model runs again for the batch unless every image has one)."""
        backend = self.backend
        device = backend.device
        B = len(images)
        batch = self._batch(images)
        mask_t = None
        if masks is not None:
            mask_t = torch.from_numpy(np.stack(masks)).to(device)[:, None].float()
        prompt_arg = self._prompt_arg(prompts)
        timings: dict[str, float] = {}
        with autocast(self.precision, device):
            known = seen if all(p is not None for p in seen) else None
            pixel = PixelOutput.cat([p.pixel for p in known]) if known else None
            refined = [False] * B
            if masks is None and self.background != "never" and backend.config.pixel.mask_heads:
                pixel, mask_t, refined = self._background_masks(images, batch, prompt_arg, pixel, timings, known)
            pred = predict(backend, batch, prompt_arg, mask=mask_t, timings=timings, pixel=pixel, pixel_fn=self._pixel)
            mirrored = None
            if with_mesh and self.tta == "flip":  # its own pixel pass; a known or corrected mask is mirrored
                flipped = None if mask_t is None else mask_t.flip(-1)
                mirrored = predict(backend, batch.flip(-1), prompt_arg, mask=flipped, timings=timings)
        label = self.weights_label or backend.name
        for p in (pred, mirrored):
            for name in ("depth", "intrinsics", "visible_points"):
                if p is not None and not bool(torch.isfinite(getattr(p, name)).all()):
                    raise ZswError(
                        f"the model ({label}) predicts non-finite {name.replace('_', ' ')}: "
                        "its weights are damaged or diverged"
                    )
        decode = occupancy_function(backend, pred, mirrored, self.precision, label)
        if with_mesh:
            meshes, grid_stats = grid_meshes(decode, B, self.grid, device=device)
            meshes, dropped = zip(*(drop_small_parts(mesh, self.min_part) for mesh in meshes))
            t0 = time.perf_counter()
            meshes, opened = zip(*(decimate_mesh(smooth_mesh(mesh, self.smooth), self.faces) for mesh in meshes))
            edit_s = (time.perf_counter() - t0) / B
        else:
            meshes, grid_stats = [_empty_mesh() for _ in range(B)], [self._no_grid() for _ in range(B)]
            dropped, opened, edit_s = [0] * B, [0] * B, 0.0
        depth = pred.depth[:, 0].float().cpu().numpy()
        K = pred.intrinsics.float().cpu().numpy()
        visible = pred.visible_mask[:, 0].float().cpu().numpy() > 0.5
        occluder = pred.occluder_mask[:, 0].float().cpu().numpy() > 0.5 if pred.occluder_mask is not None else None
        center = pred.center.float().cpu().numpy()
        scale = pred.scale.float().cpu().numpy()
        surface = pred.visible_points.float().permute(0, 2, 3, 1).cpu().numpy()  # [B, S, S, 3] normalised
        out = []
        for b, (im, mesh, grid) in enumerate(zip(images, meshes, grid_stats)):
            s, c = float(scale[b]), center[b]
            camera = np.asarray(mesh.vertices, dtype=np.float64) * s + c
            mesh.vertices = camera_to_frame(camera, self.frame)
            seen, atlas, texture_s = 0, None, 0.0
            if self.color == "photo" and len(mesh.faces):
                from zsw.infer.color import photo_colors

                colors = photo_colors(camera, np.asarray(mesh.faces), im.image, K[b], visible[b])
                alpha = np.full((len(colors.rgb), 1), 255, np.uint8)
                mesh.visual.vertex_colors = np.concatenate([colors.rgb, alpha], axis=1)
                seen = int(colors.seen.sum())
                if self.texture:
                    t0 = time.perf_counter()
                    atlas = bake_texture(camera, np.asarray(mesh.faces), im.image, K[b], visible[b], colors.rgb,
                                         colors.seen, self.texture)  # fmt: skip
                    texture_s = time.perf_counter() - t0
            rec = Reconstruction(
                name=im.name,
                mesh=mesh,
                frame=self.frame,
                image=im.image,
                depth=depth[b],
                intrinsics=K[b],
                visible_mask=visible[b],
                occluder_mask=occluder[b] if occluder is not None else None,
                center=c,
                scale=s,
                prompt=(prompts[b] or self._default_prompt()) if backend.config.text.enabled else None,
                visible_points=surface[b][visible[b]] * s + c,
                texture=atlas,
            )
            timing = Timings(  # shared stages are split evenly over the batch
                pixel=timings.get("pixel", 0.0) / B + first_pass[b],
                encode=timings.get("encode", 0.0) / B,
                grid_decode=grid.decode_s / B,
                marching_cubes=grid.marching_cubes_s,
                smooth_decimate=edit_s,
                texture=texture_s,
            )
            source = "given" if masks is not None else MASK_CORRECTED if refined[b] else "predicted"
            rec.record = self._record(rec, im, grid, timing, B, source, seen, dropped[b], opened[b])
            out.append(rec)
        return out

    def _background_masks(
        self, images: list[LoadedImage], batch: torch.Tensor, prompt_arg, pixel, timings: dict, known=None
    ):
        """The pixel model's output for ``batch`` (``pixel`` when the framing pass has it), and the
        visible masks corrected by each photo's own background (:mod:`zsw.infer.background`): a
        mask tensor ``[B, 1, S, S]`` for every image (the model's own mask where the photo tells no
        background) and which images were corrected. ``known``: the framing pass's masks of these
        very inputs (:class:`_Seen`), which are not computed again."""
        if pixel is None:
            t0 = time.perf_counter()
            pixel = self._pixel(batch, self.backend.embed_prompts(prompt_arg, len(images)))
            timings["pixel"] = timings.get("pixel", 0.0) + time.perf_counter() - t0
        if known is not None:
            visible, corrected = np.stack([k.visible for k in known]), [k.corrected for k in known]
        else:
            visible, corrected = self._corrected_masks(images, pixel)
        masks = [v if c is None else c for v, c in zip(visible, corrected)]
        refined = [c is not None for c in corrected]
        mask_t = torch.from_numpy(np.stack(masks)).to(batch.device)[:, None].float()
        return pixel, mask_t, refined

    def _no_grid(self) -> GridStats:
        n = (self.grid.resolution + 1) ** 3
        return GridStats(self.grid.extraction, self.grid.resolution, 0, n)

    def _record(
        self, rec: Reconstruction, im: LoadedImage, grid: GridStats, timings: Timings, batch: int, mask: str,
        seen: int, dropped: int, opened: int = 0,
    ) -> ResultRecord:  # fmt: skip
        """What ``result.json`` will say (the job and ``save`` add the rest, see :mod:`zsw.infer.record`)."""
        backend, g = self.backend, self.grid
        warn = list(self.warnings)
        if len(rec.mesh.faces) == 0 and grid.evaluated_points:
            warn.append("empty mesh: the predicted occupancy never crosses the threshold")
        if self.faces is not None and len(rec.mesh.faces) > self.faces:
            warn.append(f"decimation could not reach {self.faces} faces: the mesh keeps {len(rec.mesh.faces)}")
        if rec.texture is not None and len(rec.mesh.faces) > TEXTURE_FACES_HINT:
            warn.append(
                f"--texture charted {len(rec.mesh.faces)} faces in {timings.texture:.1f} s: with --faces "
                f"{TEXTURE_FACES_HINT // 4} or so it takes about a second and keeps the photo's detail"
            )
        if opened:
            warn.append(
                f"decimation to {self.faces} faces left {opened} edge(s) not shared by exactly two triangles: "
                "the mesh is not watertight (another --faces usually keeps it closed)"
            )
        return ResultRecord(
            zsw_version=_version(), name=im.name, input=im.to_dict(), prompt=rec.prompt,
            model=ModelInfo(backend.config.name, self.weights_label, backend.name, str(backend.device), self.precision,
                            self.tta),
            mask=mask,
            camera=CameraInfo(im.size, rec.intrinsics.tolist(), original_intrinsics(rec.intrinsics, im).tolist(),
                              rec.center.tolist(), rec.scale),
            grid=GridInfo(g.resolution, g.extraction, g.threshold, g.bound, g.close, grid.evaluated_points,
                          grid.grid_points),
            mesh=MeshInfo(self.frame, UNITS, len(rec.mesh.vertices), len(rec.mesh.faces),
                          bool(len(rec.mesh.faces)) and bool(rec.mesh.is_watertight), self.min_part, dropped,
                          self.smooth, self.faces, texture=self.texture if rec.texture is not None else None),
            colors=ColorInfo(self.color, seen, len(rec.mesh.vertices)),
            batch_size=batch, timings_s=timings, warnings=warn,
        )  # fmt: skip

    def _default_prompt(self) -> str:
        return self.backend.config.text.default_prompt


def _empty_mesh():
    import trimesh

    return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), process=False)


def _version() -> str:
    from zsw import __version__

    return __version__


def reconstruct(
    image,
    weights=None,
    *,
    prompt: str | None = None,
    mask=None,
    resolution: int = 128,
    extraction: str = "fast",
    threshold: float = 0.5,
    frame: str = "gltf",
    device: str | torch.device | None = None,
    backend: str | Backend = "auto",
    engine: str | os.PathLike | None = None,
    precision: str = "auto",
    close: bool = True,
    color: str = "photo",
    min_part: float = MIN_PART,
    smooth: int = SMOOTH,
    faces: int | None = None,
    reframe: str = "auto",
    background: str = "auto",
    tta: str = "auto",
    texture: int = 0,
) -> Reconstruction:
    """Reconstruct the mesh of the object in one photo.

    Args:
        image: a path, a ``PIL.Image.Image`` or an ``[H, W(, 3|4)]`` array; any size (padded to a
            square around the centre and resized to the model's input).
        weights: a ``.safetensors`` checkpoint, a model, ``"demo"``, ``"random:<preset>"``, or None
            for the packaged demo model.
        prompt: category text ("chair"); ``"auto"`` (= ``"clip"``: CLIP zero-shot over the LVIS +
            ShapeNet vocabulary, needs CLIP weights) or ``"vlm:<hub id or folder>"`` to estimate it;
            None for the model's default, "object".
        mask: optional visible mask (path, PIL image or ``[H, W]`` array at the image's size).
        resolution: grid cells per axis.
        extraction: ``fast`` (coarse to fine) or ``dense``.
        threshold: occupancy probability of the surface.
        frame: ``gltf`` (y up, facing +z, default) or ``camera`` (x right, y down, z forward).
        device: ``cuda``, ``cpu``, ... (default: CUDA if available).
        backend: ``auto`` (see :func:`resolve_backend`), ``torch``, ``onnxruntime``, ``tensorrt``,
            or a :class:`~zsw.infer.backend.Backend`.
        engine: folder written by ``zsw export`` (ONNX Runtime / TensorRT backends).
        precision: ``auto`` (bf16 on CUDA, fp32 on the CPU), ``fp32``, ``bf16`` or ``fp16``.
        close: count the space outside the grid as empty (watertight meshes); False keeps
            surfaces that reach the grid's bound open.
        color: ``photo`` (vertex colours from the photo) or ``none``.
        min_part: drop disconnected parts under this fraction of the largest part's surface area
            (0 keeps everything).
        smooth: passes of Taubin smoothing (default 30, :data:`~zsw.infer.settings.SMOOTH`; 0
            keeps the marching-cubes surface).
        faces: decimate the mesh to at most this many triangles (None keeps them all).
        texture: bake the photo into a ``texture x texture`` atlas (0, the default: vertex colours
            only; :attr:`Reconstruction.texture`, :meth:`Reconstruction.textured_mesh`); meant
            for decimated meshes: ~0.6 s at 5,000 faces, ~20 s at the 40,000 of a 128 grid.
        reframe: ``auto`` (cut the model input around the object when the photo shows it small or
            off centre), ``always`` or ``never`` (see :class:`Reconstructor`).
        background: ``auto`` (correct the predicted visible mask with the photo's own background
            where it shows one: RGBA transparency, a plain border) or ``never``.
        tta: ``flip`` (average the occupancy with that of the photo mirrored left to right; twice
            the decoding), ``flip-pixel`` (average only the pixel model's outputs with the mirrored
            photo's), ``none``, or ``auto`` (flip on CUDA, flip-pixel on the CPU; see
            :class:`Reconstructor`).

    Returns:
        A :class:`Reconstruction`; ``.mesh`` is a ``trimesh.Trimesh``, ``.save(folder)`` writes the
        same files as ``zsw reconstruct``.

    Example::

        import zsw
        rec = zsw.reconstruct("examples/armchair.png")
        rec.mesh.export("armchair.glb")
    """
    if isinstance(backend, str):
        if weights is None or isinstance(weights, (str, os.PathLike)):
            backend = resolve_backend(backend, None if weights is None else str(weights), engine, device, precision)
            be, label, warning = cached_backend(backend, weights, engine, device)
        else:  # an in-memory model
            be, label, warning = open_backend(backend, weights, engine, device)
    else:
        be, label, warning = backend, getattr(backend, "name", "backend"), None
    if warning:
        warnings.warn(warning, stacklevel=2)
    loaded = load_image(image, be.config.pixel.image_size)
    masks = [load_mask(mask, loaded)] if mask is not None else None
    if is_estimated_prompt(prompt):
        from zsw.infer.category import get_estimator

        prompt = get_estimator(prompt, device=be.device)([_pil(loaded.image)])[0]
    rec = Reconstructor(be, resolution=resolution, extraction=extraction, threshold=threshold, frame=frame,
                        weights_label=label, precision=precision, close=close, color=color,
                        min_part=min_part, smooth=smooth, faces=faces, reframe=reframe,
                        background=background, tta=tta, texture=texture)  # fmt: skip
    if warning:
        rec.warnings.append(warning)
    return rec([loaded], prompt, masks)[0]


def _pil(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(array)
