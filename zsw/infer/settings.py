"""Settings of the reconstruction job: frozen dataclasses that own their option vocabulary.

``zsw reconstruct``, the web app and the Python API build one :class:`ReconstructSettings` and
hand it to :func:`zsw.infer.jobs.reconstruct_many`. Validation happens here, once, when the
object is made: a bad value raises :class:`~zsw.errors.OptionError` naming the option (the CLI
exits 2 for it, as for any usage error).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from zsw.config import checked_fields
from zsw.errors import ConfigError, OptionError
from zsw.hub import device_type
from zsw.infer.cutout import check_cutout
from zsw.infer.image import box_for, check_box, read_boxes
from zsw.infer.mesh_ops import check_mesh_options
from zsw.infer.orient import FRAMES
from zsw.infer.texture import check_texture_size

__all__ = [
    "GridSettings",
    "ReconstructSettings",
    "FRAMES",
    "MIN_PART",
    "FORMATS",
    "STL_LONGEST_SIDE_MM",
    "MAX_RESOLUTION",
    "EXTRACTIONS",
    "BACKENDS",
    "PRECISIONS",
    "COLORS",
    "REFRAMES",
    "BACKGROUNDS",
    "TTAS",
    "resolve_tta",
    "is_estimated_prompt",
    "default_chunk_points",
]

#: mesh file formats (usdz needs the usd extra: zsw.infer.usdz)
FORMATS = ("glb", "obj", "ply", "stl", "usdz")
#: ``mesh.stl`` is for slicers: z up, standing on z = 0, centred on the z axis, its longest side this
#: many millimetres (STL has no units and slicers read millimetres; a photo gives no metric scale)
STL_LONGEST_SIDE_MM = 100.0
#: grid filling strategies (see zsw.infer.grid)
EXTRACTIONS = ("fast", "dense")
#: inference backends (see zsw.infer.backend); ``auto`` picks one (zsw.infer.weights.resolve_backend)
BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
#: inference precisions (see zsw.infer.precision.resolve_precision)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: vertex colour modes (see zsw.infer.color)
COLORS = ("photo", "none")
#: whether the model input is cut anew around the object (zsw.infer.reconstruct.Reconstructor)
REFRAMES = ("auto", "always", "never")
#: ``--background``: correct the predicted visible mask with the photo's own background (zsw.infer.background)
BACKGROUNDS = ("auto", "never")
#: ``--tta``: test-time augmentation (zsw.infer.tta): ``flip`` also
#: reconstructs the photo mirrored left to right and averages the two occupancy fields' logits;
#: ``flip-pixel`` averages only the pixel model's outputs for the photo and its mirror image (one
#: decoding); ``auto`` is ``flip`` on a GPU and ``flip-pixel`` on a CPU, where ``flip`` would double
#: the grid decoding's seconds
TTAS = ("auto", "flip", "flip-pixel", "none")


def resolve_tta(tta: str, device) -> str:
    """``--tta`` on ``device`` (a string or ``torch.device``). ``auto``: ``flip`` on CUDA, where the
    mirrored pass costs little next to the whole; ``flip-pixel`` on the CPU, where ``flip`` doubles
    the grid decoding (1.2 -> 1.9 s of a 4.8 s ``zsw reconstruct`` on 2 cores) and averaging the
    pixel model's outputs alone costs one more pixel-model pass for most of the gain in CD
    (docs/reconstruct.md)."""
    if tta not in TTAS:
        raise ConfigError(f"tta must be one of {', '.join(TTAS)}, got {tta!r}")
    if tta == "auto":
        return "flip" if device_type(device) == "cuda" else "flip-pixel"
    return tta


#: default fraction of the largest part's area under which a disconnected part of the mesh is dropped
#: (``zsw reconstruct`` and ``zsw eval`` alike, so the scores are of the meshes users get)
MIN_PART = 0.02
#: default passes of Taubin smoothing of the mesh (``zsw reconstruct``, ``zsw eval`` and the app alike):
#: the occupancy field of the hidden side is flat near its level set, so the raw marching-cubes
#: surface shows ridges a few cells apart there that 30 passes remove (0.04 s for a 40k-face mesh on
#: a CPU) without moving the held-out scores (bench/results/smooth/)
SMOOTH = 30


def default_chunk_points(device) -> int:
    """Query points per decoder call when the caller sets none: 65,536 on a GPU; 16,384 on a CPU,
    where a chunk's largest buffers (points x 256 channels of the decoder MLP, 64 MB at 65,536)
    exceed glibc's largest mmap threshold (32 MB), so every chunk maps and page-faults them anew:
    a fresh `zsw reconstruct` process decoded 20 % slower (1.62-1.78 s against 1.26-1.46 s for the
    packaged model's 236k points, four alternating runs). The result is the same either way."""
    return 65536 if getattr(device, "type", str(device)).startswith("cuda") else 16384


def is_estimated_prompt(prompt: str | None) -> bool:
    """True for prompts that ask an estimator for the category (``auto``, ``clip``, ``vlm:...``)."""
    if prompt is not None and not isinstance(prompt, str):
        raise OptionError(f"--prompt must be a category word such as 'chair', got {prompt!r}")
    return prompt is not None and (prompt in ("auto", "clip") or prompt.startswith("vlm:"))


def _choice(value: str, choices: tuple[str, ...], option: str) -> None:
    if value not in choices:
        raise OptionError(f"{option}: {value!r} is not one of {', '.join(choices)}")


def _check_types(settings) -> None:
    """A value of the wrong type is one line naming the field, here, not a TypeError in the job
    (``batch_size=1.5``) or a silent ``True`` (``carve="no"``); values are converted as YAML's are
    (:func:`zsw.config.checked_fields`)."""
    try:
        checked = checked_fields(settings)
    except ConfigError as e:
        raise OptionError(str(e)) from None
    for name, value in checked.items():
        object.__setattr__(settings, name, value)


_BOX_AND_BOXES = "box and boxes: give one rectangle for every photo (box) or a file of them (boxes), not both"

#: the finest grid: 1025^3 samples already take minutes and gigabytes on a CPU (the CLI's maximum too)
MAX_RESOLUTION = 1024

#: ``fast`` extraction's refinement rule, :func:`zsw.infer.grid.occupancy_grid`'s defaults (a
#: first grid of 16^3 cells, a margin of 2 logits halved per level, one cell of dilation on every
#: level but the last, where growth along the surface takes its place). Part of a result's rerun
#: key: results of another rule are redone.
FAST_EXTRACTION = {"coarse_resolution": 16, "margin": 2.0, "dilate": 1, "grow": True}


@dataclass(frozen=True)
class GridSettings:
    """How the occupancy grid is decoded and turned into a mesh (see ``zsw.infer.grid``).

    Attributes:
        resolution: grid cells per axis (``resolution + 1`` samples).
        extraction: ``fast`` (coarse to fine) or ``dense`` (every grid point).
        threshold: occupancy probability of the surface.
        bound: half side of the grid cube in the normalised frame.
        close: the space outside the grid counts as empty, so meshes are watertight.
        chunk_points: most query points per decoder call (bounds memory); None: 65,536 on a GPU,
            16,384 on a CPU (see :func:`default_chunk_points`).
    """

    resolution: int = 128
    extraction: str = "fast"
    threshold: float = 0.5
    bound: float = 1.5
    close: bool = True
    chunk_points: int | None = None

    def __post_init__(self) -> None:
        _check_types(self)
        # the library's limits; the CLI's options narrow them further (typer's min/max)
        if not isinstance(self.resolution, int) or not 2 <= self.resolution <= MAX_RESOLUTION:
            raise OptionError(
                f"grid resolution (--resolution) must be an integer from 2 to {MAX_RESOLUTION}, got {self.resolution!r}"
            )
        if self.extraction not in EXTRACTIONS:
            raise OptionError(
                f"extraction mode (--extraction) must be one of {', '.join(EXTRACTIONS)}, got {self.extraction!r}"
            )
        if not (math.isfinite(self.threshold) and 0.0 < self.threshold < 1.0):
            raise OptionError(
                f"threshold (--threshold) must be a probability strictly between 0 and 1, got {self.threshold}"
            )
        if not (math.isfinite(self.bound) and self.bound > 0):
            raise OptionError(f"grid bound must be positive, got {self.bound}")
        if self.chunk_points is not None and self.chunk_points < 1:
            raise OptionError(f"chunk_points (--chunk-points) must be positive, got {self.chunk_points}")

    @property
    def refinement(self) -> dict | None:
        """``fast``'s refinement rule (:data:`FAST_EXTRACTION`, a copy), None for ``dense``: part of
        the rerun and resume keys, so results of another rule are redone."""
        return dict(FAST_EXTRACTION) if self.extraction == "fast" else None


@dataclass(frozen=True)
class ReconstructSettings:
    """Everything that decides what ``zsw reconstruct`` does with a set of images.

    Attributes:
        formats: mesh files to write (``glb``, ``obj``, ``ply``, ``stl``; one name or several).
        weights: checkpoint path, ``"demo"``, ``"random:<preset>"``, or None for the packaged model.
        prompt: category prompt; ``auto``/``clip``/``vlm:<model>`` ask an estimator.
        grid: grid decoding and mesh extraction.
        frame: ``gltf`` (y along the camera's up, facing +z), ``upright`` (y along the object's
            predicted up, standing on y = 0) or ``camera`` (x right, y down, z forward):
            :mod:`zsw.infer.orient`.
        masks: folder of visible masks named like the images.
        device: ``cuda``, ``cpu``, ... (None: CUDA if available).
        batch_size: images per model call.
        backend: ``auto`` (the packaged model on a CPU: its ONNX graphs on ONNX Runtime plus
            PyTorch's decoder; otherwise ``torch``), ``torch``, ``onnxruntime`` or ``tensorrt``.
        engine: folder written by ``zsw export`` (onnxruntime/tensorrt backends; ``onnxruntime``
            without one runs the packaged model's graphs).
        precision: ``auto`` (bf16 on CUDA, fp32 on the CPU), ``fp32``, ``bf16`` or ``fp16``.
        color: ``photo`` (vertex colours from the photo) or ``none``.
        reframe: ``auto``, ``always`` or ``never``: cut the model input around the object
            (:class:`~zsw.infer.reconstruct.Reconstructor`).
        background: ``auto`` or ``never``: correct the predicted visible mask with the photo's own
            background where it tells one (RGBA transparency, a plain border), and cut it again by
            the photo's colours on a busy one (:mod:`zsw.infer.background`).
        min_part: drop disconnected parts of the mesh whose surface area is below this fraction of
            the largest part's (crumbs of an uncertain field; 0 keeps everything).
        smooth: passes of Taubin smoothing of the mesh (:data:`SMOOTH` by default; 0 keeps the
            marching-cubes surface).
        faces: decimate the mesh to at most this many triangles (None keeps them all).
        texture: bake the photo into a ``texture x texture`` atlas for ``mesh.glb`` and
            ``mesh.obj`` (0, the default: vertex colours only; :mod:`zsw.infer.texture`).
        cutout: ``auto`` (the default: ``grabcut`` where the photo's border is not plain),
            ``none``, ``grabcut``, ``rembg`` or ``rembg:<model>``: remove the photo's background
            first and go on as with an RGBA file (:mod:`zsw.infer.cutout`; rembg needs ``zsw[cutout]``).
        tta: ``flip`` (average the occupancy with that of the photo mirrored left to right; twice
            the decoding), ``flip-pixel`` (average only the pixel model's outputs with the mirrored
            photo's), ``none``, or ``auto`` (flip on CUDA, flip-pixel on the CPU;
            :class:`~zsw.infer.reconstruct.Reconstructor`).
        carve: no surface where the photo shows background (:mod:`zsw.infer.carve`); False keeps
            the decoder's field as it is.
        box: ``(x0, y0, x1, y1)``, the rectangle of every photo, in its pixels, that holds the
            object: the input is framed around it and the predicted masks are kept inside it
            (:meth:`~zsw.infer.image.LoadedImage.with_box`); None: the model finds the object.
        boxes: a file with a box per photo, by file name or stem (:func:`~zsw.infer.image.read_boxes`:
            JSON or ``name,x0,y0,x1,y1`` lines), for a folder of photos each with its own object;
            a photo it does not name is reconstructed without a box (and its result says so). The
            command line's ``--box FILE`` (``box`` naming a file with a suffix) lands here.
        preview: write ``preview.png``.
        overwrite: redo images even when their result records the same input and settings.
    """

    formats: tuple[str, ...] = ("glb",)
    weights: str | None = None
    prompt: str = "object"
    grid: GridSettings = field(default_factory=GridSettings)
    frame: str = "gltf"
    masks: Path | None = None
    device: str | None = None
    batch_size: int = 1
    backend: str = "auto"
    engine: Path | None = None
    precision: str = "auto"
    color: str = "photo"
    reframe: str = "auto"
    background: str = "auto"
    cutout: str = "auto"
    min_part: float = MIN_PART
    smooth: int = SMOOTH
    faces: int | None = None
    texture: int = 0
    tta: str = "auto"
    carve: bool = True
    box: tuple | None = None
    boxes: Path | None = None
    preview: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        formats = (self.formats,) if isinstance(self.formats, str) else self.formats  # "obj" is one format
        if isinstance(formats, (list, tuple)):  # a list is fine; duplicates go
            formats = tuple(dict.fromkeys(formats or ("glb",)))
        object.__setattr__(self, "formats", formats)
        if isinstance(self.weights, os.PathLike):  # a checkpoint's Path, recorded as its string
            object.__setattr__(self, "weights", str(self.weights))
        if type(self.device).__name__ == "device":  # a torch.device, as its string ("cuda:1")
            object.__setattr__(self, "device", str(self.device))
        object.__setattr__(self, "cutout", check_cutout(self.cutout))  # its own message for a function
        if isinstance(self.box, (str, os.PathLike)) and Path(self.box).suffix:  # --box FILE, or "1.5,2,30,40"
            if Path(self.box).is_file():
                if self.boxes is not None:
                    raise OptionError(_BOX_AND_BOXES)
                object.__setattr__(self, "boxes", Path(self.box))
                object.__setattr__(self, "box", None)
            else:
                try:
                    check_box(self.box)
                except OptionError:
                    raise OptionError(f"--box: no file {self.box} (nor four numbers x0,y0,x1,y1)") from None
        if self.box is not None:  # "x0,y0,x1,y1" or four numbers, kept as four floats
            object.__setattr__(self, "box", check_box(self.box))
        if self.boxes is not None:
            if self.box is not None:
                raise OptionError(_BOX_AND_BOXES)
            object.__setattr__(self, "boxes", Path(self.boxes))
            object.__setattr__(self, "_box_table", read_boxes(self.boxes))  # read now: a bad file stops the run
        _check_types(self)
        for f in formats:
            _choice(f, FORMATS, "--format")
        if "usdz" in formats:  # before any photo is read: usd-core is an extra
            from zsw.infer.usdz import require_usd

            require_usd()
        _choice(self.frame, FRAMES, "--frame")
        _choice(self.backend, BACKENDS, "--backend")
        _choice(self.precision, PRECISIONS, "--precision")
        _choice(self.color, COLORS, "--color")
        _choice(self.reframe, REFRAMES, "--reframe")
        _choice(self.background, BACKGROUNDS, "--background")
        _choice(self.tta, TTAS, "--tta")
        if self.batch_size < 1:
            raise OptionError(f"--batch-size: {self.batch_size} is below 1")
        if not (math.isfinite(self.min_part) and 0.0 <= self.min_part <= 1.0):
            raise OptionError(f"--min-part: {self.min_part} is not a fraction in [0, 1]")
        check_mesh_options(self.smooth, self.faces)
        check_texture_size(self.texture, self.color)
        if self.texture and not {"glb", "obj", "usdz"} & set(formats):  # nothing would hold the atlas
            raise OptionError(
                f"--texture: the atlas goes into mesh.glb, mesh.obj or mesh.usdz, and --format asks for "
                f"{', '.join(formats)} only; add --format glb, obj or usdz, or leave --texture out"
            )
        if not self.prompt or not self.prompt.strip():
            raise OptionError("--prompt: empty; give a category word such as 'chair', or 'auto'")
        if self.masks is not None and not Path(self.masks).is_dir():
            raise OptionError(f"--masks: {self.masks} is not a folder")
        if self.weights is not None and self.backend not in ("auto", "torch"):
            raise OptionError(f"--weights is for the torch backend; the {self.backend} backend reads its --engine")

    def box_of(self, photo: str | os.PathLike) -> tuple | None:
        """The box of ``photo``: ``box`` (every photo's), its ``boxes`` entry, or None."""
        if self.boxes is None:
            return self.box
        return box_for(self.__dict__["_box_table"], photo)

    def request(
        self, weights_identity: str, backend: str | None = None, cutout: str | None = None, device: str | None = None
    ) -> dict:
        """Every setting that changes a result's files, as ``result.json`` records it (a rerun
        reuses a result only when this and the input's content hash are equal). ``backend``: what
        ``auto`` resolved to here (backends agree only to float rounding); ``cutout``: the opened
        remover's :attr:`~zsw.infer.cutout.Cutout.identity` (its version and model file);
        ``device``: the device the run uses, which resolves ``auto`` precision and ``--tta`` (and
        is recorded by its type: a CPU's result is not reused on a GPU, nor the other way round).
        The zsw release and code are part of it too (:func:`~zsw.io.code_identity`): other code may
        read or mesh the same photo differently."""
        from zsw import __version__
        from zsw.io import code_identity

        precision, tta, where = self.precision, self.tta, self.device or "auto"
        if device is not None:
            from zsw.infer.precision import run_precision

            precision = run_precision(backend or self.backend, self.precision, device)
            tta, where = resolve_tta(self.tta, device), device_type(device)
        g = self.grid  # all of it but chunk_points, which bounds memory and changes nothing written
        return dict(
            weights=weights_identity, backend=backend or self.backend, resolution=g.resolution, extraction=g.extraction,
            fast=g.refinement,
            threshold=g.threshold, bound=g.bound, close=g.close, frame=self.frame, formats=sorted(self.formats),
            prompt=self.prompt, precision=precision, color=self.color, min_part=self.min_part,
            smooth=self.smooth, faces=self.faces, texture=self.texture, tta=tta, carve=self.carve,
            reframe=self.reframe, background=self.background, cutout=cutout or self.cutout, preview=self.preview,
            box=list(self.box) if self.box is not None else None,
            device=where, zsw_version=__version__, zsw_code=code_identity(),
        )  # fmt: skip
