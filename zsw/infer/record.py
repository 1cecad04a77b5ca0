"""What ``result.json`` says about a reconstruction, as typed records.

The :class:`~zsw.infer.reconstruct.Reconstructor` fills a :class:`ResultRecord` as it works; the
reconstruction job adds what only it knows (the request a rerun is keyed on, where the prompt came
from, the seconds spent loading the image); ``Reconstruction.save`` adds the export and preview
timings and the file list, and writes ``record.to_dict()``. Nobody edits a nested dict afterwards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["ResultRecord", "ModelInfo", "CameraInfo", "GridInfo", "MeshInfo", "ColorInfo", "Timings"]


@dataclass
class ModelInfo:
    preset: str
    weights: str  # label of the weights (path, demo:<file>, random:<preset>, engine:<dir>)
    backend: str
    device: str
    precision: str  # as resolved: fp32, bf16, fp16, or "engine" for exported graphs
    tta: str = "none"  # test-time augmentation of the occupancy: "flip" or "none"


@dataclass
class CameraInfo:
    image_size: int
    intrinsics: list  # [3, 3] pixels of the model input
    intrinsics_original: list  # [3, 3] pixels of the original photo
    center: list  # [3] camera-frame centroid of the visible surface
    scale: float  # camera = normalised * scale + center


@dataclass
class GridInfo:
    resolution: int
    extraction: str
    threshold: float
    bound: float
    closed: bool
    evaluated_points: int
    grid_points: int
    carved: bool = False  # occupancy bounded where the photo shows background (zsw.infer.carve)


@dataclass
class MeshInfo:
    frame: str
    units: str
    vertices: int
    faces: int
    watertight: bool
    min_part: float = 0.0  # disconnected parts under this fraction of the largest's area were dropped
    parts_dropped: int = 0
    smooth: int = 0  # passes of Taubin smoothing
    face_budget: int | None = None  # decimated to at most this many faces (None: not decimated)
    texture: int | None = None  # side of the baked texture atlas in texels (None: vertex colours only)
    # mesh.stl only: its millimetres per unit of the camera frame (None: no STL written)
    stl_mm_per_unit: float | None = None
    # [4, 4] the rigid motion from the camera frame to `frame`: mesh = camera_to_mesh @ (camera, 1)
    camera_to_mesh: list | None = None
    # [3] the object's up axis the model predicts, camera frame (None: the model has no such head);
    # the `upright` frame's +y
    up: list | None = None


@dataclass
class ColorInfo:
    mode: str
    seen_vertices: int  # vertices coloured from the photo directly
    vertices: int


@dataclass
class Timings:
    """Seconds per stage; shared stages of a batch are split evenly over its images."""

    pixel: float = 0.0
    encode: float = 0.0
    grid_decode: float = 0.0
    marching_cubes: float = 0.0
    smooth_decimate: float = 0.0
    texture: float = 0.0
    load: float = 0.0
    export: float = 0.0
    preview: float = 0.0


@dataclass
class ResultRecord:
    zsw_version: str
    name: str
    input: dict  # LoadedImage.to_dict(): path, size, crop, notes
    prompt: str | None
    model: ModelInfo
    mask: str  # "given", or "predicted" and what corrected it (zsw.infer.reconstruct.MASK_*)
    camera: CameraInfo
    grid: GridInfo
    mesh: MeshInfo
    colors: ColorInfo
    batch_size: int
    timings_s: Timings = field(default_factory=Timings)
    warnings: list[str] = field(default_factory=list)
    request: dict | None = None  # what a rerun must match to reuse the result (the job sets it)
    prompt_source: str | None = None  # "user", "default" or "auto" (the job sets it)
    files: list[str] = field(default_factory=list)  # set when saved

    def to_dict(self) -> dict:
        return asdict(self)
