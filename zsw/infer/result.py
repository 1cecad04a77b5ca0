"""One image's reconstruction and the files it is saved as (:class:`Reconstruction`).

**Mesh frame and units.** The mesh is in ``gltf`` (default: y along the camera's up, the camera at
the origin looking down -z), ``upright`` (y along the object's predicted up, standing on y = 0) or
``camera`` (the camera frame of the input view): :mod:`zsw.infer.orient`. Every frame is a
rigid motion of the camera frame and keeps the scale of the predicted depth: ZeroShape-W's depth is
relative (up to an unknown scale and shift), so mesh units are not metres. ``result.json`` stores
the motion (``mesh.camera_to_mesh``) and ``center`` and ``scale`` to map back to the model's
normalised frame: ``normalised = (camera - center) / scale``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zsw.errors import ConfigError
from zsw.infer.image import LoadedImage
from zsw.infer.orient import FramePose, frame_pose
from zsw.infer.record import ResultRecord
from zsw.infer.settings import FORMATS, STL_LONGEST_SIDE_MM
from zsw.infer.texture import TexturedMesh

__all__ = ["Reconstruction", "original_intrinsics", "glb_bytes", "UNITS", "OBJ_MTL"]


UNITS = "camera frame in units of the predicted relative depth (scale and shift are unknown)"
#: the material library beside a textured ``mesh.obj`` (its atlas: ``material_0.png``)
OBJ_MTL = "mesh.mtl"
#: ``visible_points.ply`` when nothing is visible (what trimesh writes for a cloud, with no points)
_EMPTY_CLOUD_PLY = b"".join(
    line + b"\n"
    for line in [b"ply", b"format binary_little_endian 1.0", b"element vertex 0",
                 *(b"property float " + c for c in (b"x", b"y", b"z")),
                 *(b"property uchar " + c for c in (b"red", b"green", b"blue", b"alpha")), b"end_header"]
)  # fmt: skip


@dataclass
class Reconstruction:
    """One image's reconstruction: the mesh, the pixel-level predictions and how they were made."""

    name: str
    mesh: object  # trimesh.Trimesh in `frame`
    frame: str  # gltf, upright or camera (zsw.infer.orient)
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
    up: np.ndarray | None = None  # [3] the object's up axis the model predicts, camera frame (None: no such head)
    # camera frame -> `frame` (None: the fixed motion of a `camera` or `gltf` frame)
    pose: FramePose | None = None

    def __post_init__(self):
        if self.pose is None:
            if self.frame == "upright":
                raise ConfigError("an upright reconstruction needs its pose (zsw.infer.orient.frame_pose)")
            self.pose = frame_pose(self.frame)

    @property
    def info(self) -> dict:
        """``result.json``'s content as a dict (a copy: change ``record`` instead)."""
        return self.record.to_dict() if self.record is not None else {}

    def camera_vertices(self) -> np.ndarray:  # [V, 3]
        """Mesh vertices in the camera frame (undoes the output frame)."""
        return self.pose.invert(self.mesh.vertices)

    def visible_cloud(self):
        """The lifted visible surface (what the decoder reads) as a ``trimesh.PointCloud`` in the
        mesh's frame, each point coloured by its pixel: overlaid on :attr:`mesh` in a viewer, it
        shows what the model saw and what it guessed. None when :attr:`visible_points` is."""
        if self.visible_points is None:
            return None
        import trimesh

        points = self.pose.apply(self.visible_points)
        rgb = np.asarray(self.image)[np.asarray(self.visible_mask, dtype=bool)]
        if len(rgb) != len(points):  # a mask and points that do not belong together: no colours
            return trimesh.PointCloud(points)
        return trimesh.PointCloud(points, colors=np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1))

    def _y_up(self, mesh):
        """``mesh`` (this reconstruction's, or its textured copy; None passes) with y up: as it is in
        the ``upright`` and ``gltf`` frames, turned into the ``gltf`` frame from ``camera``."""
        if mesh is None or self.frame != "camera":
            return mesh
        import trimesh

        gltf = frame_pose("gltf")
        vertices, normals = gltf.apply(mesh.vertices), gltf.turn(mesh.vertex_normals)
        # the normals carried over: a textured copy's are the uncut mesh's, smooth across its seams
        return trimesh.Trimesh(vertices, mesh.faces, visual=mesh.visual, vertex_normals=normals, process=False)

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
        # white diffuse, no specular: the atlas is the colour (trimesh's default material would
        # write Kd 0.4 to mesh.mtl and a baseColorFactor of 0.4 to mesh.glb: a texture at 40 %)
        material = trimesh.visual.material.SimpleMaterial(
            image=Image.fromarray(t.image), diffuse=(255, 255, 255, 255), ambient=(255, 255, 255, 255),
            specular=(0, 0, 0, 255),
        )  # fmt: skip
        visual = trimesh.visual.TextureVisuals(uv=t.uv, material=material)
        vertices = np.asarray(self.mesh.vertices)[t.vertex_index]
        normals = np.asarray(self.mesh.vertex_normals)[t.vertex_index]  # the uncut mesh's: no shading seams
        return trimesh.Trimesh(vertices, t.faces, visual=visual, vertex_normals=normals, process=False)

    def printable_mesh(self, longest_side_mm: float = STL_LONGEST_SIDE_MM):
        """The mesh as slicers want it (``mesh.stl``) and its millimetres per camera-frame unit:
        z up (the frame's y: the object's up in the ``upright`` frame, the camera's in the other
        two), the side that faced the camera towards -y (Blender's front view), standing on z = 0,
        centred on the z axis, scaled so its longest side is ``longest_side_mm``. The same triangles
        as :attr:`mesh` (a rotation, a shift and a scale)."""
        import trimesh

        vertices = np.asarray(self.mesh.vertices, dtype=np.float64)
        y_up = frame_pose("gltf").apply(vertices) if self.frame == "camera" else vertices  # the other two are y up
        v = np.stack([y_up[:, 0], -y_up[:, 2], y_up[:, 1]], axis=1)  # y up, +z to the camera -> z up, -y to it
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
        shown = None
        if given := self.info.get("input"):  # result.json's input: the window and the photo's size
            window = tuple(given["window"])
            shown = LoadedImage(self.name, self.image, tuple(given["original_size"]), window=window).photo_area
        return preview_image(
            self.image, self.camera_vertices(), np.asarray(self.mesh.faces), self.intrinsics, panel, colors, shown
        )

    def save(self, out_dir: str | os.PathLike, formats: Sequence[str] = ("glb",), preview: bool = True) -> list[Path]:
        """Write ``mesh.<fmt>``, ``depth.png`` and ``depth.npy``, the masks, ``visible_points.ply``,
        ``preview.png`` and ``result.json``.

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
            elif fmt == "glb":
                with atomic_path(path) as tmp:
                    Path(tmp).write_bytes(glb_bytes(textured if textured is not None else mesh))
                written.append(path)
                continue
            elif fmt == "usdz":  # y up whatever --frame says: the file declares it, and AR stands it on the floor
                from zsw.infer.usdz import usdz_bytes

                y_up = [self._y_up(m) for m in (mesh, textured)]
                with atomic_path(path) as tmp:
                    Path(tmp).write_bytes(usdz_bytes(*y_up))
                written.append(path)
                continue
            elif fmt == "obj" and len(mesh.faces) == 0:  # trimesh would write "v" and "f" lines without numbers
                with atomic_path(path) as tmp:
                    Path(tmp).write_text("# empty mesh: zsw found no surface\n")
                written.append(path)
                continue
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
        with atomic_path(out / "depth.npy") as tmp, open(tmp, "wb") as f:  # the numbers the picture shows
            np.save(f, np.asarray(self.depth, dtype=np.float32))
        written.append(out / "depth.npy")
        png("visible_mask.png", self.visible_mask.astype(np.uint8) * 255)
        if self.visible_points is not None:
            cloud = self.visible_cloud()  # trimesh cannot write an empty cloud (an empty mask): the header alone
            data = cloud.export(file_type="ply") if len(cloud.vertices) else _EMPTY_CLOUD_PLY
            with atomic_path(out / "visible_points.ply") as tmp:
                Path(tmp).write_bytes(data)
            written.append(out / "visible_points.ply")
        else:
            (out / "visible_points.ply").unlink(missing_ok=True)
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


def glb_bytes(mesh) -> bytes:
    """``mesh`` (a ``trimesh.Trimesh``) as a binary glTF, with what trimesh's export leaves out:

    * vertex normals, without which glTF viewers (three.js, model-viewer) shade every triangle flat
      and the smoothed surface shows its facets;
    * for a textured mesh, a material whose base colour is the atlas itself (white factor, not
      metallic, fully rough), where trimesh's default material darkens it to 40 % and is metal.

    A vertex-coloured mesh keeps trimesh's layout: the photo's sRGB bytes in ``COLOR_0`` and no
    material, as peers' exports (TripoSR, InstantMesh) have it. glTF defines ``COLOR_0`` as linear
    and its default material as metallic, but trimesh (and the tools built on it) read those bytes
    back as the photo's colours and drop them altogether under a material.
    """
    from trimesh.exchange.gltf import export_glb

    if len(mesh.faces) == 0:
        return _empty_glb()
    return export_glb(mesh.scene(), include_normals=True, tree_postprocessor=_plain_materials)


def _empty_glb() -> bytes:
    """A valid GLB of an empty scene. trimesh writes an empty ``BIN`` chunk with no buffer for it,
    which glTF forbids (viewers such as Babylon.js reject the file)."""
    import json
    import struct

    doc = json.dumps({"asset": {"version": "2.0", "generator": "zsw"}, "scene": 0, "scenes": [{}]}).encode()
    doc += b" " * (-len(doc) % 4)  # chunks are 4-byte aligned, JSON padded with spaces
    return struct.pack("<4sII", b"glTF", 2, 12 + 8 + len(doc)) + struct.pack("<I4s", len(doc), b"JSON") + doc


def _plain_materials(tree: dict) -> None:
    """The materials' base colour is their texture alone: white factor, not metallic, fully rough."""
    for material in tree.get("materials", []):
        pbr = material.setdefault("pbrMetallicRoughness", {})
        pbr.update(baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0, roughnessFactor=1.0)
