"""Evaluation sets: ZeroShape's synthetic val/test data, Pix3D, OCRTOC, OmniObject3D and zsw's
procedural test split, each as a sequence of :class:`EvalSample` in ZeroShape's protocol.

``open_eval_set(root, format)`` follows ZeroShape's loaders (``data/*.py`` of its release):

============== =================================================================================
format         what is read
============== =================================================================================
zeroshape      ZeroShape layout (a root with ``lists/``, or ``train_data/`` with subsets); the
               ``val`` lists, at most 10 views per category, as ZeroShape evaluates them (its
               test split reads val; ``split`` and ``max_per_category`` override both); mask =
               depth != 0; image as stored
procedural     zsw's procedural output, ``test`` lists; image as stored (with its background and
               occluders if they were baked in); mask = ``visible_masks`` or depth > 0
ocrtoc         ``lists/<cat>_test.list``, **every 5th line**; ``images_processed``, ``depth_np``
               (mask = depth != 0), ``camera_data/extr``; point cloud of ``<name>`` minus its
               last ``_`` token; image resized to 224 and composited on white with the mask
omniobject3d   as ocrtoc but every line, depth in ``depth/``
pix3d          ``lists/<cat>_test.txt`` over Pix3D's 9 categories, ``annotation/<cat>/<name>.json``
               (``img``/``mask`` paths with ``img``->``img_processed``, ``mask``->``mask_processed``
               exactly as ZeroShape rewrites them, ``rot_mat``, ``model``); RGBA resized to 224,
               mask = alpha > 0.5, composited on white; point cloud
               ``pointclouds/<model without "model/">.npy``; GT x and y negated
folder         any photos with their true shapes, no lists: ``<name>.<image>`` (any suffix
               ``zsw reconstruct`` reads) beside ``<name>.<glb|gltf|obj|ply|stl|off>`` (10,000
               points sampled on it) or ``<name>.npy`` (``[M, 3]`` points), both in the photo's
               camera frame as zsw writes meshes (glTF's: x right, y up, the camera looking down
               -z; points in OpenCV's camera frame are ``(x, -y, -z)`` of that); optional
               ``<name>.mask.png`` (the visible pixels, white); subfolders are categories (the
               root's own files: ``object``). The photo is read as ``zsw reconstruct`` reads it
               (EXIF, alpha, any size, framed by ``--reframe``), not resized here
============== =================================================================================

``gt_points`` are the ground-truth surface points rotated into the view-centric camera frame by
the ground-truth R only (no translation), exactly what ZeroShape compares predictions against
(the metrics centre both clouds, so a translation would not count either).
``intrinsics`` is the stored K for the zeroshape and procedural formats and None for the real
sets (ZeroShape substitutes its default K there; the true one is unknown).

Missing files are found when the set is opened and skipped with a warning (``skipped`` counts
them); corrupt files are found when a sample is loaded: iterating skips them (with a warning,
counted too), while indexing raises :class:`~zsw.errors.InputError` naming the file.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zsw.data import gltf
from zsw.data.dataset import READ_ERRORS, expand_roots
from zsw.data.layout import SPLITS, SampleId, ZeroShapeLayout, load_npy, read_png
from zsw.data.usd import USD_SUFFIXES, read_usd
from zsw.errors import ConfigError, InputError, reason
from zsw.io import IMAGE_SUFFIXES

__all__ = ["EvalSample", "EvalSet", "open_eval_set", "read_mesh_file", "EVAL_FORMATS", "PIX3D_CATEGORIES"]

log = logging.getLogger(__name__)

EVAL_FORMATS = ("zeroshape", "pix3d", "ocrtoc", "omniobject3d", "procedural", "folder")
#: the ``folder`` format's photos (as ``zsw reconstruct`` reads them), true shapes and masks
FOLDER_IMAGES = IMAGE_SUFFIXES
#: trimesh reads the first six; USD (a phone scan's USDZ) goes through usd-core (zsw.data.usd)
FOLDER_MESHES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off", *USD_SUFFIXES)
#: 3D formats a true shape may come in that zsw does not read (a DCC tool's own): a photo beside one
#: is told to export it, not only that it has no shape
OTHER_3D_FORMATS = (".fbx", ".blend", ".dae", ".3ds", ".3mf", ".abc", ".step", ".stp", ".iges", ".igs", ".x3d",
                    ".wrl", ".max", ".c4d", ".ma", ".mb")  # fmt: skip
FOLDER_MASK = ".mask.png"
#: points sampled on a ``folder`` sample's true mesh (ZeroShape samples 10,000 on each mesh)
FOLDER_POINTS = 10_000
#: ZeroShape scores at most this many views per category of its synthetic val set (data/synthetic.py)
ZEROSHAPE_VIEWS_PER_CATEGORY = 10
PIX3D_CATEGORIES = ("bed", "bookcase", "chair", "desk", "misc", "sofa", "table", "tool", "wardrobe")
SIZE = 224


@dataclass
class EvalSample:
    name: str
    category: str
    # [224, 224, 3] uint8, as the model should see it; or (``folder``) the photo's path, read as
    # ``zsw reconstruct`` reads it (zsw.infer.image.load_image)
    image: np.ndarray | Path
    # [224, 224] bool visible mask, if the set has one; or (``folder``) the mask file at the photo's size
    mask: np.ndarray | Path | None
    # [M, 3] GT surface points, view-centric camera frame: float32, or float64 (``folder``: a user's
    # shape may lie far from the origin, where float32 would round away its detail)
    gt_points: np.ndarray
    intrinsics: np.ndarray | None  # [3, 3]


@dataclass
class _Entry:
    name: str
    category: str
    files: dict[str, Path]  # role -> path (all checked to exist when the set is opened)
    extra: dict


class EvalSet(Sequence[EvalSample]):
    """A lazily loaded evaluation set (see the module docstring for skipping rules)."""

    def __init__(self, root: Path, format: str, entries: list[_Entry], load: Callable[[_Entry], EvalSample], missing):
        self.root = root
        self.format = format
        self._entries = entries
        self._load = load
        self.missing = missing  # entries dropped at open time (missing files)
        self.corrupt = 0  # entries skipped while iterating (unreadable files)

    @property
    def skipped(self) -> int:
        return self.missing + self.corrupt

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        entry = self._entries[index]
        try:
            return self._load(entry)
        except InputError:
            raise
        except READ_ERRORS as e:
            raise InputError(f"cannot read sample {entry.name} of {self.root}: {e}") from None

    def __iter__(self) -> Iterator[EvalSample]:
        for i, entry in enumerate(self._entries):
            try:
                yield self[i]
            except InputError as e:
                self.corrupt += 1
                log.warning("skipping %s: %s (%d skipped so far)", entry.name, e, self.skipped)

    def names(self) -> list[str]:
        return [e.name for e in self._entries]

    def fingerprints(self) -> dict[str, str]:
        """What identifies each sample's content without reading it: its name and category and, per
        file, its path under the root, size and modification time (and Pix3D's pose from its
        annotation). A sample rewritten in place -- regenerated with another seed under the same
        name, a photo or a shape replaced -- has another fingerprint, so ``zsw eval`` does not
        resume its old score; a sample that another ``--max-per-category`` picks keeps its own."""
        import hashlib

        out = {}
        for e in self._entries:
            h = hashlib.sha1(f"{e.name}\0{e.category}\0".encode())
            for role, path in sorted(e.files.items()):
                st = path.stat()
                h.update(f"{role}\0{os.path.relpath(path, self.root)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
            for key, value in sorted(e.extra.items()):
                h.update(key.encode() + np.ascontiguousarray(value).tobytes())
            out[e.name] = h.hexdigest()[:12]
        return out

    def categories(self) -> list[str]:
        return sorted({e.category for e in self._entries})


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _load_npy(path: Path, finite: bool = True) -> np.ndarray:
    arr = load_npy(path)  # truncated, not .npy, a pickle: an error naming the file
    if not np.issubdtype(arr.dtype, np.number) or (finite and not np.isfinite(arr).all()):
        raise InputError(f"{path} does not hold {'finite ' if finite else ''}numbers")
    return arr


def _points(path: Path, dtype=np.float32) -> np.ndarray:  # [M, 3]
    pts = _load_npy(path).astype(dtype)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise InputError(f"point cloud {path} has shape {pts.shape}, expected [M, 3]")
    return pts


def _rotation(path: Path) -> np.ndarray:  # [3, 3] from an [R|t] file
    Rt = _load_npy(path).astype(np.float32)
    if Rt.ndim != 2 or Rt.shape[0] < 3 or Rt.shape[1] < 3:
        raise InputError(f"extrinsics {path} have shape {Rt.shape}, expected [3, 4]")
    return Rt[:3, :3]


def _rgb(path: Path, size: int = SIZE) -> np.ndarray:  # [size, size, 3] uint8
    from PIL import Image

    image = read_png(path, "RGB")  # not an image, truncated: an error naming the file
    if image.shape[:2] != (size, size):
        image = np.array(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
    return image


def _on_white(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask[..., None], image, 255).astype(np.uint8)


def _depth_mask(path: Path) -> np.ndarray:  # [224, 224] bool
    # as ZeroShape: the object is where depth != 0, so a NaN or inf pixel counts as object, not as
    # a reason to drop the view
    depth = _load_npy(path, finite=False)
    depth = depth.reshape(depth.shape[-2:]) if depth.ndim == 3 and depth.shape[0] == 1 else depth
    if depth.shape != (SIZE, SIZE):
        raise InputError(f"depth {path} has shape {depth.shape}, expected ({SIZE}, {SIZE})")
    return depth != 0


def _first_per_category(entries: list[_Entry], limit: int | None) -> list[_Entry]:
    """The first ``limit`` entries of each category (all with None), in their order."""
    if limit is None:
        return entries
    counts: dict[str, int] = {}
    kept = []
    for e in entries:
        counts[e.category] = counts.get(e.category, 0) + 1
        if counts[e.category] <= limit:
            kept.append(e)
    return kept


def _keep_existing(root: Path, entries: list[_Entry]) -> tuple[list[_Entry], int]:
    kept, missing = [], 0
    for e in entries:
        absent = [p for p in e.files.values() if not p.is_file()]
        if absent:
            missing += 1
            log.warning("skipping %s: missing %s", e.name, absent[0])
            continue
        kept.append(e)
    if missing:
        log.warning("%s: %d of %d samples skipped for missing files", root, missing, len(entries))
    return kept, missing


# --------------------------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------------------------


def _layout_entries(root: Path, splits: Sequence[str], max_per_category: int | None, procedural: bool):
    entries, bad, listed = [], 0, set()
    for sub in expand_roots(root):
        layout = ZeroShapeLayout(sub)
        for cat in layout.categories():
            have = {s for s in SPLITS if layout.list_file(cat, s).is_file()}
            listed |= have
            split = next((s for s in splits if s in have), None)
            if split is None:
                continue
            sids, unparsed = _read_list(layout, cat, split)
            bad += unparsed
            if max_per_category is not None:
                sids = sids[:max_per_category]
            for sid in sids:
                files = dict(
                    image=layout.image(sid), depth=layout.depth(sid), extr=layout.extrinsics(sid),
                    intr=layout.intrinsics(sid), points=layout.pointcloud(sid),
                )  # fmt: skip
                if procedural and layout.visible_mask(sid).is_file():
                    files["visible"] = layout.visible_mask(sid)
                prefix = f"{sub.name}/" if sub != root else ""
                entries.append(_Entry(prefix + sid.name, cat, files, {}))
    if listed and not listed & set(splits):  # e.g. a dataset too small for its test split to get an object
        raise ConfigError(
            f"{root} has no {' or '.join(splits)} lists (lists/<category>_{splits[0]}.list), only "
            f"{', '.join(s for s in SPLITS if s in listed)}: choose one with --split"
        )
    return entries, bad


def _read_list(layout: ZeroShapeLayout, category: str, split: str) -> tuple[list[SampleId], int]:
    """A list file's samples, and the count of lines that name none (skipped with a warning: one
    stray line does not stop a whole set)."""
    sids, bad = [], 0
    for line in layout.list_file(category, split).read_text().splitlines():
        if not line.strip():
            continue
        try:
            sids.append(SampleId.parse(category, line.strip()))
        except InputError as e:
            bad += 1
            log.warning("skipping a line of %s: %s", layout.list_file(category, split), e)
    return sids, bad


def _load_layout(entry: _Entry) -> EvalSample:
    from PIL import Image

    f = entry.files
    image = _rgb(f["image"])
    if "visible" in f:
        with Image.open(f["visible"]) as im:
            mask = np.asarray(im.convert("L")) > 50
    else:
        mask = _depth_mask(f["depth"])
    K = _load_npy(f["intr"]).astype(np.float32)
    if K.size != 9:
        raise InputError(f"intrinsics {f['intr']} have shape {K.shape}, expected [3, 3]")
    K = K.reshape(3, 3)
    gt = _points(f["points"]) @ _rotation(f["extr"]).T
    return EvalSample(entry.name, entry.category, image, mask, gt.astype(np.float32), K)


def _scan_entries(root: Path, depth_dir: str, every: int) -> list[_Entry]:
    lists = root / "lists"
    if not lists.is_dir():
        raise ConfigError(f"{root} has no lists/ folder")
    entries, list_files = [], sorted(lists.glob("*_test.list"))
    if not list_files:
        raise ConfigError(f"{root} has no test lists (lists/<category>_test.list)")
    for list_file in list_files:
        cat = list_file.name[: -len("_test.list")]
        for i, line in enumerate(list_file.read_text().splitlines()):
            if i % every or not line.strip():
                continue
            name = line.strip().split(".")[0]
            files = dict(
                image=root / "images_processed" / cat / f"{name}.png",
                depth=root / depth_dir / cat / f"{name}.npy",
                extr=root / "camera_data" / "extr" / cat / f"{name}.npy",
                points=root / "pointclouds" / cat / ("_".join(name.split("_")[:-1]) + ".npy"),
            )
            # the category in the name, as for Pix3D: one object name can appear in two categories
            entries.append(_Entry(f"{cat}_{name}", cat, files, {}))
    return entries


def _load_scan(entry: _Entry) -> EvalSample:
    f = entry.files
    mask = _depth_mask(f["depth"])
    image = _on_white(_rgb(f["image"]), mask)
    gt = _points(f["points"]) @ _rotation(f["extr"]).T
    return EvalSample(entry.name, entry.category, image, mask, gt.astype(np.float32), None)


def _pix3d_entries(root: Path, split: str, max_per_category: int | None) -> tuple[list[_Entry], int]:
    entries, bad = [], 0
    lists = {cat: root / "lists" / f"{cat}_{split}.txt" for cat in PIX3D_CATEGORIES}
    lists = {cat: f for cat, f in lists.items() if f.is_file()}
    if not lists:
        raise ConfigError(
            f"{root} has no Pix3D {split} lists (lists/<category>_{split}.txt, e.g. lists/chair_{split}.txt): "
            "give the folder ZeroShape's Pix3D data unpacks to"
        )
    for cat, list_file in lists.items():
        for i, name in enumerate(list_file.read_text().splitlines()):
            if max_per_category is not None and i >= max_per_category:
                break
            name = name.strip()
            if not name:
                continue
            ann = root / "annotation" / cat / f"{name}.json"
            try:
                meta = json.loads(ann.read_text(encoding="utf-8"))
                img = meta["img"].replace("img", "img_processed")  # ZeroShape's rewrite, verbatim
                msk = meta["mask"].replace("mask", "mask_processed")
                model = meta["model"]
                rot = np.asarray(meta["rot_mat"], dtype=np.float32)
                if rot.shape != (3, 3):
                    raise ValueError(f"rot_mat has shape {rot.shape}")
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                bad += 1
                log.warning("skipping Pix3D %s/%s: annotation %s unusable (%s)", cat, name, ann, e)
                continue
            files = dict(
                image=root / img,
                mask=root / msk,
                points=root / "pointclouds" / (model[6:].rsplit(".", 1)[0] + ".npy"),
            )
            entries.append(_Entry(f"{cat}_{name}", cat, files, {"rot": rot}))
    return entries, bad


def _load_pix3d(entry: _Entry) -> EvalSample:
    from PIL import Image

    f = entry.files
    with Image.open(f["image"]) as im, Image.open(f["mask"]) as mk:
        rgba = Image.merge("RGBA", (*im.convert("RGB").split(), mk.convert("L").resize(im.size)))
    rgba = np.asarray(rgba.resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    mask = rgba[..., 3].astype(np.float32) / 255.0 > 0.5
    image = _on_white(rgba[..., :3], mask)
    gt = _points(f["points"]) @ entry.extra["rot"].T
    gt[:, :2] *= -1  # Pix3D's axis convention, as ZeroShape's evaluation flips it
    return EvalSample(entry.name, entry.category, image, mask, gt.astype(np.float32), None)


def _folder_entries(root: Path) -> tuple[list[_Entry], int]:
    """Every photo of ``root`` and the folders below it (at any depth; the category is the
    first-level folder's name) with a true shape of the same stem; the count of photos without one
    (skipped with a warning)."""
    entries, unmatched = [], 0
    folders = [root, *_subfolders(root)]
    for folder in folders:
        rel = folder.relative_to(root)
        category = "object" if folder == root else rel.parts[0]
        files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
        by_lower = {f.name.lower(): f for f in files}  # mug.MASK.PNG is mug's mask too
        shapes: dict[str, list[Path]] = {}
        unread: dict[str, Path] = {}
        for f in files:
            if f.suffix.lower() in (*FOLDER_MESHES, ".npy"):
                shapes.setdefault(f.stem.lower(), []).append(f)  # IMG_0012.JPG's shape may be img_0012.obj
            elif f.suffix.lower() in OTHER_3D_FORMATS:
                unread.setdefault(f.stem.lower(), f)
        textures = _mtl_textures(f for f in files if f.suffix.lower() == ".mtl")
        photos = [f for f in files if f.suffix.lower() in FOLDER_IMAGES and not f.name.lower().endswith(FOLDER_MASK)]
        for photo in [p for p in photos if p.name.lower() in textures]:
            log.info("%s is a texture of %s, not a photo: not scored", photo, textures[photo.name.lower()].name)
        photos = [p for p in photos if p.name.lower() not in textures]
        stems = Counter(f.stem for f in photos)
        for photo in photos:
            found = shapes.get(photo.stem.lower(), [])
            if len(found) > 1:
                raise ConfigError(f"{photo}: {len(found)} true shapes ({', '.join(f.name for f in found)}); keep one")
            if not found:
                unmatched += 1
                if other := unread.get(photo.stem.lower()):
                    log.warning("skipping %s: its shape %s is in a format zsw does not read (%s): export it as "
                                ".glb, .obj or .ply", photo, other.name, other.suffix)  # fmt: skip
                else:
                    log.warning(
                        "skipping %s: no true shape beside it (%s.glb, .obj, .ply, ... or .npy)", photo, photo.stem
                    )
                continue
            name = photo.stem if stems[photo.stem] == 1 else photo.name  # a.png and a.jpg: both a's shape
            name = name if folder == root else f"{rel.as_posix()}/{name}"
            files_of = {"image": photo, "shape": found[0]}
            mask = by_lower.get(f"{photo.stem}{FOLDER_MASK}".lower())
            if mask is not None:
                files_of["mask"] = mask
            entries.append(_Entry(name, category, files_of, {}))
    return entries, unmatched


def _mtl_textures(mtls) -> dict[str, Path]:
    """Lower-case names of the image files that these OBJ material files use (``map_Kd mug.jpg``,
    ``bump``, ``disp``, ``norm``), each with its ``.mtl``: a scan app's texture beside the photo is
    not a second photo of the object."""
    textures: dict[str, Path] = {}
    for mtl in mtls:
        try:
            lines = mtl.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split()
            if len(words) >= 2 and (
                words[0].lower().startswith("map_") or words[0].lower() in ("bump", "disp", "norm")
            ):
                textures[Path(words[-1].replace("\\", "/")).name.lower()] = mtl
    return textures


def _subfolders(folder: Path, seen: set | None = None) -> list[Path]:
    """Every folder below ``folder`` but hidden ones (linked folders once each: no loops)."""
    seen = {folder.resolve()} if seen is None else seen
    out = []
    for d in sorted(folder.iterdir()):
        if d.is_dir() and not d.name.startswith(".") and d.resolve() not in seen:
            seen.add(d.resolve())
            out += [d, *_subfolders(d, seen)]
    return out


def _shape_points(path: Path, name: str) -> np.ndarray:  # [M, 3] float64, OpenCV camera frame
    """A ``folder`` sample's true surface points: the ``.npy`` points, a point cloud's points (a
    ``.ply`` without faces; :data:`FOLDER_POINTS` of them, drawn seeded by the sample's name, where
    it has more), or :data:`FOLDER_POINTS` sampled on the mesh (seeded likewise), turned from glTF's
    camera frame to OpenCV's. Float64: a shape modelled far from the origin keeps its detail (the
    metric centres both clouds first, in float64)."""
    if path.suffix.lower() == ".npy":
        points = _points(path, np.float64)
    else:
        import zlib

        import trimesh

        seed = zlib.crc32(name.encode())
        loaded = read_mesh_file(path)
        if isinstance(loaded, trimesh.PointCloud):
            points = np.asarray(loaded.vertices, dtype=np.float64)
            if len(points) == 0:
                raise InputError(f"the point cloud {path} has no points")
            if not np.isfinite(points).all():
                raise InputError(f"the point cloud {path} has non-finite points")
            if len(points) > FOLDER_POINTS:
                points = points[np.random.default_rng(seed).choice(len(points), FOLDER_POINTS, replace=False)]
        elif not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
            raise InputError(f"the mesh {path} has no surface")
        elif not np.isfinite(loaded.vertices).all():
            raise InputError(f"the mesh {path} has non-finite vertices")
        elif not loaded.area > 0:
            raise InputError(f"the mesh {path} has no surface")
        else:
            points = np.asarray(trimesh.sample.sample_surface(loaded, FOLDER_POINTS, seed=seed)[0], dtype=np.float64)
    return points * np.array([1.0, -1.0, -1.0])


def read_mesh_file(path: Path, parts: bool = False):
    """The ``trimesh`` object of a mesh or point-cloud file (a ``Trimesh``, ``PointCloud``, ...):
    a scene's meshes as one, placed by its scene graph, OBJ relative indices as the format means
    them (:func:`_load_mesh`); a USD stage's visible meshes (:func:`zsw.data.usd.read_usd`). A
    file that cannot be read, holds no geometry or has faces naming vertices it does not have is an
    :class:`InputError` naming it.

    ``parts``: a list of the scene's meshes instead, each placed and keeping its own materials,
    textures and colours (an OBJ's ``.mtl`` and images read from beside it), in the order the
    concatenation would have them; a file of one mesh is a list of it."""
    import trimesh

    if path.suffix.lower() in USD_SUFFIXES:
        return read_usd(path, parts=parts)
    tree = gltf.read_json(path)  # {} for other formats
    gltf.check_extensions(path, tree)
    try:
        loaded = _load_mesh(path, tree, materials=parts)
    except FileNotFoundError as e:  # a .gltf's buffer or image beside it
        missing = Path(str(e.filename or e.args[-1])).name
        raise InputError(f"cannot read the mesh {path}: {missing}, a file it refers to, is missing") from None
    except InputError:  # already names the file and the fault
        raise
    except Exception as e:  # trimesh raises many kinds for a broken file
        raise InputError(f"cannot read the mesh {path}: {reason(e)}") from None
    if isinstance(loaded, trimesh.Scene):
        if not loaded.geometry:  # what trimesh makes of a truncated STL or a text file named .stl
            raise InputError(f"cannot read the mesh {path}: no geometry in it (truncated, or not {path.suffix} data)")
        if parts:  # placed by the scene graph, points and lines dropped
            meshes = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)]
        else:  # its meshes as one, placed by the scene graph (points and lines dropped)
            loaded = loaded.to_mesh()
    elif parts:
        meshes = [loaded] if isinstance(loaded, trimesh.Trimesh) else []
    for mesh in meshes if parts else [loaded]:
        faces = getattr(mesh, "faces", None)
        if faces is not None and len(faces) and (faces.min() < 0 or faces.max() >= len(mesh.vertices)):
            raise InputError(f"the mesh {path} has faces that name vertices it does not have")
    return meshes if parts else loaded


def _load_mesh(path: Path, gltf_tree: dict | None = None, materials: bool = False):
    """``trimesh.load`` of ``path``. A glTF's quantized geometry is dequantized, its instanced
    meshes placed and its fans cut first (:func:`zsw.data.gltf.rewritten_glb`; ``gltf_tree``: its
    JSON, read already). An OBJ's relative face indices (``f -3 -2 -1``, counted back from the
    vertices read so far, as concatenated per-object OBJ files have them) are made absolute first:
    trimesh counts them from the end of the whole file, which puts every face on the last object.
    An OBJ's materials and textures are read (from beside it), and a glTF's texture transforms
    applied (:func:`zsw.data.gltf.rewritten_glb`), only with ``materials``."""
    import io
    import re

    import trimesh

    if path.suffix.lower() == ".ply" and (header := _ply_header_made_ascii(path)) is not None:
        return trimesh.load(io.BytesIO(header + path.read_bytes()[len(header) :]), file_type="ply", process=False)
    if path.suffix.lower() in (".glb", ".gltf") and (glb := gltf.rewritten_glb(path, gltf_tree, materials)) is not None:
        resolver = trimesh.resolvers.FilePathResolver(path)  # images named by URI, beside the file
        return trimesh.load(io.BytesIO(glb), file_type="glb", process=False, resolver=resolver)
    if path.suffix.lower() != ".obj":
        return trimesh.load(path, process=False)
    text = path.read_text(errors="replace")  # read once
    # the .mtl files and images beside it, or (geometry alone) nothing: a missing one is not an error
    resolver = _material_resolver(path) if materials else None
    if not re.search(r"^\s*f\s.*[\s/]-\d", text, flags=re.MULTILINE):
        return trimesh.load(io.StringIO(text), file_type="obj", process=False, resolver=resolver)
    counts = {"v": 0, "vt": 0, "vn": 0}
    lines = []
    for line in text.splitlines():
        words = line.split()
        if words and words[0] in counts:
            counts[words[0]] += 1
        elif words and words[0] == "f":
            words[1:] = [
                "/".join(_absolute(i, counts[k]) for i, k in zip(w.split("/"), ("v", "vt", "vn"))) for w in words[1:]
            ]
            line = " ".join(words)
        lines.append(line)
    return trimesh.load(io.StringIO("\n".join(lines)), file_type="obj", process=False, resolver=resolver)


def statement_file(line: str) -> tuple[str, str] | None:
    """(keyword in lower case, file name) of an OBJ or MTL statement that names a file (``mtllib
    box.mtl``, ``map_Kd -s 1 1 1 wood.png``): the rest of the line, or its last word when options
    come first; None for a line of fewer than two words."""
    words = line.split()
    if len(words) < 2:
        return None
    return words[0].lower(), words[-1] if words[1].startswith("-") else line.split(None, 1)[1].strip()


def _material_resolver(path: Path):
    """trimesh's resolver of the files beside ``path``, finding them as the tools that wrote the
    names would (:func:`zsw.io.find_named_file`: Windows separators and case, ``..``, absolute
    paths from another machine), with the options of an ``.mtl``'s texture statements dropped
    (``map_Kd -s 1 1 1 wood.png`` -> ``map_Kd wood.png``, :func:`statement_file`), which trimesh
    would take for the file name."""
    import trimesh

    from zsw.io import find_named_file

    def plain(line: str) -> str:
        named = statement_file(line)
        if named and named[0].startswith(("map_", "bump", "disp", "decal", "refl")):
            return f"{line.split()[0]} {named[1]}"
        return line

    class Resolver(trimesh.resolvers.FilePathResolver):
        def get(self, name: str):
            found = find_named_file(path.parent, name)
            if found is None:
                raise FileNotFoundError(name)
            data = found.read_bytes()
            if not name.lower().endswith(".mtl"):
                return data
            return "\n".join(plain(line) for line in data.decode("utf-8", errors="replace").splitlines()).encode()

    return Resolver(path)


#: bytes 128-255 read as "?": what a PLY header's non-ASCII comment becomes
_TO_ASCII = bytes(range(128)) + b"?" * 128


def _ply_header_made_ascii(path: Path, limit: int = 1 << 16) -> bytes | None:
    """A PLY header (up to ``end_header``) with text that is not ASCII -- a comment or an element
    named in Latin-1 by an exporter, which the format forbids and trimesh fails on (strict UTF-8) --
    with those bytes made ``?``, the same length; None when the header is ASCII (or not found)."""
    with open(path, "rb") as f:
        head = f.read(limit)
    end = head.find(b"end_header")
    if end < 0 or head[:end].isascii():
        return None
    return head[:end].translate(_TO_ASCII)


def _absolute(index: str, count: int) -> str:
    """An OBJ index as a 1-based absolute one (``-1`` is the last of ``count`` read so far)."""
    return str(count + 1 + int(index)) if index.startswith("-") else index


def _load_folder(entry: _Entry) -> EvalSample:
    f = entry.files
    gt = _shape_points(f["shape"], entry.name)
    return EvalSample(entry.name, entry.category, f["image"], f.get("mask"), gt, None)


def open_eval_set(
    root: str | os.PathLike,
    format: str,
    *,
    split: str | None = None,
    max_per_category: int | None = None,
) -> EvalSet:
    """Open an evaluation set (see the module docstring).

    Args:
        root: the dataset folder (e.g. ZeroShape's ``data/Pix3D``).
        format: one of ``zeroshape``, ``pix3d``, ``ocrtoc``, ``omniobject3d``, ``procedural``,
            ``folder``.
        split: override the list split (default ``test``; ``val`` for ``zeroshape``; ``folder``
            has none).
        max_per_category: keep at most this many samples per category (default: all; 10 for
            ``zeroshape``, as ZeroShape evaluates its synthetic data).
    """
    root = Path(root)
    if format not in EVAL_FORMATS:
        raise ConfigError(f"unknown evaluation format {format!r}; choose one of {', '.join(EVAL_FORMATS)}")
    if not root.is_dir():
        raise ConfigError(f"evaluation set folder {root} does not exist")
    bad = 0
    if format == "zeroshape" and max_per_category is None:
        max_per_category = ZEROSHAPE_VIEWS_PER_CATEGORY
    if format in ("zeroshape", "procedural"):
        splits = [split] if split else (["val"] if format == "zeroshape" else ["test"])
        entries, bad = _layout_entries(root, splits, max_per_category, procedural=format == "procedural")
        load = _load_layout
    elif format in ("ocrtoc", "omniobject3d"):
        if split not in (None, "test"):
            raise ConfigError(f"{format} has only a test split")
        entries = _scan_entries(root, "depth_np" if format == "ocrtoc" else "depth", 5 if format == "ocrtoc" else 1)
        entries = _first_per_category(entries, max_per_category)
        load = _load_scan
    elif format == "folder":
        if split is not None:
            raise ConfigError("the folder format has no splits: every photo with a true shape is evaluated")
        entries, bad = _folder_entries(root)
        entries = _first_per_category(entries, max_per_category)
        load = _load_folder
    else:
        entries, bad = _pix3d_entries(root, split or "test", max_per_category)
        load = _load_pix3d
    entries, missing = _keep_existing(root, entries)
    if not entries:
        raise ConfigError(f"no readable {format} samples in {root}")
    return EvalSet(root, format, entries, load, missing + bad)
