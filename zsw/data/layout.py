"""ZeroShape's on-disk dataset layout, read and written by every zsw data tool.

One dataset root holds (``<name>`` = ``<cat>_<obj>_<view>``; category names may contain ``_``,
object and view ids may not)::

    lists/<cat>_{train,val,test}.list          one image file name (<name>.png) per line
    images_processed/<cat>/<name>.png          RGB, 224 x 224
    masks/<cat>/<name>.png                     L; > 50 is the object (ZeroShape binarises at 50)
    depth/<cat>/<name>.npy                     float32 [224, 224], 0 = background
    camera_data/intr/<cat>/<name>.npy          K [3, 3] in pixels at 224
    camera_data/extr/<cat>/<name>.npy          [R|t] [3, 4], object -> camera
    gt_sdf/<cat>/<cat>_<obj>.npy               dict(sample_pt [N, 3], sample_sdf [N]) (object frame)
    pointclouds/<cat>/<cat>_<obj>.npy          surface points [M, 3] (object frame)

zsw's additions sit beside them (all optional)::

    visible_masks/<cat>/<name>.png             L; the object's visible pixels after occlusion
    occluder_masks/<cat>/<name>.png            L; pixels of occluders in front of the object
    pseudo_depth/<cat>/<name>.npy              float32 relative inverse depth (Depth Anything V2)
    manifest.jsonl                             one JSON line per written image (provenance)

ZeroShape stores ``gt_sdf`` as a pickled dict inside a ``.npy`` file. zsw writes the same format so
ZeroShape's own loaders read zsw data, but reads it with :func:`load_npy_dict`, an unpickler that
admits only numpy arrays, dtypes and plain containers -- never arbitrary objects.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zsw.errors import InputError, reason
from zsw.io import atomic_write, atomic_write_text

__all__ = ["SampleId", "ZeroShapeLayout", "load_npy", "load_npy_dict", "read_png", "save_npy_dict", "SPLITS"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, order=True)
class SampleId:
    """One rendered view: category, object id and view id."""

    category: str
    object: str
    view: str

    def __post_init__(self) -> None:
        for part, value in (("object", self.object), ("view", self.view)):
            if not value or "_" in value or "/" in value:
                raise InputError(f"{part} id {value!r} must be non-empty without '_' or '/'")
        if not self.category or "/" in self.category:
            raise InputError(f"category {self.category!r} must be non-empty without '/'")

    @property
    def name(self) -> str:
        """``<cat>_<obj>_<view>``, the file stem used everywhere."""
        return f"{self.category}_{self.object}_{self.view}"

    @property
    def object_name(self) -> str:
        """``<cat>_<obj>``, the stem of per-object files (gt_sdf, pointclouds)."""
        return f"{self.category}_{self.object}"

    @classmethod
    def parse(cls, category: str, filename: str) -> SampleId:
        """From a list-file line such as ``chair_obj12_3.png`` (object and view are the last tokens)."""
        stem = filename.rsplit(".", 1)[0] if "." in filename else filename
        parts = stem.split("_")
        if len(parts) < 3 or not stem.startswith(category + "_"):
            raise InputError(f"list entry {filename!r} is not <{category}>_<object>_<view>.png")
        return cls(category, parts[-2], parts[-1])


class _SafeUnpickler(pickle.Unpickler):
    """Admits exactly what ``np.save`` of a dict of arrays produces."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def load_npy_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``.npy`` file that holds a pickled dict of arrays (ZeroShape's gt_sdf), safely."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(f)
            if dtype != np.dtype(object):
                raise InputError(f"{path} holds a plain {dtype} array, expected a pickled dict")
            obj = _SafeUnpickler(io.BytesIO(f.read())).load()
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except (pickle.UnpicklingError, ValueError, EOFError) as e:
        raise InputError(f"{path} is not a valid dict .npy file ({e})") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.size == 1:
        obj = obj.item()
    if not isinstance(obj, dict):
        raise InputError(f"{path} holds a {type(obj).__name__}, expected a dict")
    return obj


def save_npy_dict(path: str | os.PathLike, data: dict[str, np.ndarray]) -> None:
    """Write a dict of arrays the way ZeroShape stores gt_sdf (``np.save`` of a dict), atomically."""
    with atomic_write(path) as f:
        np.save(f, data, allow_pickle=True)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    with atomic_write(path) as f:
        Image.fromarray(array).save(f, format="PNG")


class ZeroShapeLayout:
    """Paths and typed reads/writes for one dataset root in ZeroShape's layout."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._folders: dict[tuple[str, str], Path] = {}  # (kind, category) -> folder

    # ---- paths --------------------------------------------------------------------------

    def _view(self, folder: str, sid: SampleId, ext: str) -> Path:
        key = (folder, sid.category)  # a data loader asks for ~20 paths per sample: join once
        if (parent := self._folders.get(key)) is None:
            parent = self._folders[key] = self.root / folder / sid.category
        return parent / f"{sid.name}.{ext}"

    def image(self, sid: SampleId) -> Path:
        return self._view("images_processed", sid, "png")

    def mask(self, sid: SampleId) -> Path:
        return self._view("masks", sid, "png")

    def depth(self, sid: SampleId) -> Path:
        return self._view("depth", sid, "npy")

    def intrinsics(self, sid: SampleId) -> Path:
        return self._view("camera_data/intr", sid, "npy")

    def extrinsics(self, sid: SampleId) -> Path:
        return self._view("camera_data/extr", sid, "npy")

    def visible_mask(self, sid: SampleId) -> Path:
        return self._view("visible_masks", sid, "png")

    def occluder_mask(self, sid: SampleId) -> Path:
        return self._view("occluder_masks", sid, "png")

    def pseudo_depth(self, sid: SampleId) -> Path:
        return self._view("pseudo_depth", sid, "npy")

    def gt_sdf(self, sid: SampleId) -> Path:
        return self.root / "gt_sdf" / sid.category / f"{sid.object_name}.npy"

    def pointcloud(self, sid: SampleId) -> Path:
        return self.root / "pointclouds" / sid.category / f"{sid.object_name}.npy"

    def list_file(self, category: str, split: str) -> Path:
        if split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, got {split!r}")
        return self.root / "lists" / f"{category}_{split}.list"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.jsonl"

    # ---- lists --------------------------------------------------------------------------

    def categories(self) -> list[str]:
        """Categories that have a list file for any split, sorted."""
        lists = self.root / "lists"
        if not lists.is_dir():
            return []
        cats = set()
        for p in lists.glob("*.list"):
            stem = p.name[: -len(".list")]
            for split in SPLITS:
                if stem.endswith("_" + split):
                    cats.add(stem[: -len(split) - 1])
        return sorted(cats)

    def read_list(self, category: str, split: str) -> list[SampleId]:
        path = self.list_file(category, split)
        if not path.is_file():
            return []
        return [SampleId.parse(category, line.strip()) for line in path.read_text().splitlines() if line.strip()]

    def samples(self, split: str, categories: Iterable[str] | None = None) -> list[SampleId]:
        """All samples of ``split`` over ``categories`` (default: all), in list order."""
        cats = list(categories) if categories is not None else self.categories()
        return [sid for cat in cats for sid in self.read_list(cat, split)]

    def write_list(self, category: str, split: str, samples: Iterable[SampleId]) -> None:
        lines = [f"{sid.name}.png" for sid in samples]
        atomic_write_text(self.list_file(category, split), "".join(line + "\n" for line in lines))

    # ---- per-view files -----------------------------------------------------------------

    def write_view(
        self,
        sid: SampleId,
        *,
        image: np.ndarray,  # [H, W, 3] uint8
        depth: np.ndarray,  # [H, W] float32, 0 = background
        intrinsics: np.ndarray,  # [3, 3]
        extrinsics: np.ndarray,  # [3, 4]
        mask: np.ndarray | None = None,  # [H, W] bool/uint8; default: depth > 0
        visible_mask: np.ndarray | None = None,
        occluder_mask: np.ndarray | None = None,
        alpha: np.ndarray | None = None,  # [H, W] float coverage in [0, 1]
    ) -> None:
        """Write one view's files, each atomically. Write the image last: a view counts as done
        (:meth:`has_view`) only when its image exists.

        With ``alpha`` (fractional coverage of antialiased renders), the mask PNG stores
        ``round(255 * alpha)`` instead of a binary mask; ZeroShape's loader still binarises it at 50
        and :meth:`read_alpha` gives the coverage back for compositing on new backgrounds."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"image of {sid.name} must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
        if depth.shape != image.shape[:2]:
            raise InputError(f"depth of {sid.name} has shape {depth.shape}, image {image.shape[:2]}")
        mask = depth > 0 if mask is None else mask
        _save_npy(self.depth(sid), depth.astype(np.float32))
        _save_npy(self.intrinsics(sid), np.asarray(intrinsics, dtype=np.float32).reshape(3, 3))
        _save_npy(self.extrinsics(sid), np.asarray(extrinsics, dtype=np.float32).reshape(3, 4))
        if alpha is not None:
            if alpha.shape != image.shape[:2]:
                raise InputError(f"alpha of {sid.name} has shape {alpha.shape}, image {image.shape[:2]}")
            _save_png(self.mask(sid), np.round(np.clip(alpha, 0, 1) * 255).astype(np.uint8))
        else:
            _save_png(self.mask(sid), (np.asarray(mask) > 0).astype(np.uint8) * 255)
        if visible_mask is not None:
            _save_png(self.visible_mask(sid), (np.asarray(visible_mask) > 0).astype(np.uint8) * 255)
        if occluder_mask is not None:
            _save_png(self.occluder_mask(sid), (np.asarray(occluder_mask) > 0).astype(np.uint8) * 255)
        _save_png(self.image(sid), image)

    def has_view(self, sid: SampleId) -> bool:
        return self.image(sid).is_file()

    def write_object(
        self, sid: SampleId, *, sample_pt: np.ndarray, sample_sdf: np.ndarray, pointcloud: np.ndarray
    ) -> None:
        """Write the per-object SDF samples and surface point cloud (object frame)."""
        save_npy_dict(
            self.gt_sdf(sid), {"sample_pt": sample_pt.astype(np.float32), "sample_sdf": sample_sdf.astype(np.float32)}
        )
        _save_npy(self.pointcloud(sid), pointcloud.astype(np.float32))

    def write_pseudo_depth(self, sid: SampleId, disparity: np.ndarray) -> None:
        _save_npy(self.pseudo_depth(sid), disparity.astype(np.float32))

    def read_image(self, sid: SampleId) -> np.ndarray:  # [H, W, 3] uint8
        return read_png(self.image(sid), "RGB")

    def read_mask(self, path: Path) -> np.ndarray:  # [H, W] bool
        """``> 50`` of 255 is the object, as ZeroShape reads masks; a mask of 0/1 labels (largest
        value 1) is read as those labels, not as all background."""
        gray = read_png(path, "L")
        return gray > (0 if gray.max(initial=0) <= 1 else 50)

    def read_alpha(self, sid: SampleId) -> np.ndarray:  # [H, W] float32 in [0, 1]
        """The object's coverage from the mask PNG (binary masks give 0/1; a mask of 0/1 labels
        too, not a coverage of 1/255 that backgrounds would paint over)."""
        gray = read_png(self.mask(sid), "L").astype(np.float32)
        return gray if gray.max(initial=0) <= 1 else gray / 255.0

    def read_gt_sdf(self, sid: SampleId) -> tuple[np.ndarray, np.ndarray]:  # [N, 3], [N]
        d = load_npy_dict(self.gt_sdf(sid))
        if "sample_pt" not in d or "sample_sdf" not in d:
            raise InputError(f"{self.gt_sdf(sid)} lacks sample_pt/sample_sdf (keys: {sorted(d)})")
        return np.asarray(d["sample_pt"], dtype=np.float32), np.asarray(d["sample_sdf"], dtype=np.float32).reshape(-1)

    # ---- manifest -----------------------------------------------------------------------

    def append_manifest(self, record: dict[str, Any]) -> None:
        """Append one JSON line (flushed and fsynced, so a killed run loses at most this line)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.manifest, "a+b") as f:
            torn = f.tell() > 0 and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n"
            # a run killed mid-line left a torn line: end it, so this record stays readable
            f.write((b"\n" if torn else b"") + json.dumps(record, sort_keys=True).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def sort_manifest(self) -> None:
        """Rewrite the manifest (atomically) with one record per sample name, the last one
        written, sorted by name: the file then depends on what was generated, not on the order in
        which workers or interrupted runs finished. Holds the records in memory while it sorts."""
        from zsw.io import atomic_write_text

        if not self.manifest.is_file():
            return
        records = {r["name"]: r for r in self.read_manifest() if isinstance(r, dict) and "name" in r}
        text = "".join(json.dumps(records[k], sort_keys=True) + "\n" for k in sorted(records))
        atomic_write_text(self.manifest, text)

    def read_manifest(self) -> Iterator[dict[str, Any]]:
        """Manifest records; a torn last line (interrupted write) is skipped."""
        if not self.manifest.is_file():
            return
        with open(self.manifest) as f:  # streamed: manifests of large runs hold millions of lines
            for line in f:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue


def read_png(path: str | os.PathLike, mode: str) -> np.ndarray:  # [H, W(, C)] uint8
    """The image at ``path`` converted to ``mode``; a file PIL cannot decode is an InputError
    naming it (a sample has several files: the warning that skips it says which)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.array(im if im.mode == mode else im.convert(mode))  # a writable copy
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"cannot read {path}: {reason(e)}") from None


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """``np.load`` of a plain array; a truncated, empty or pickled file is an InputError naming it."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"cannot read {path}: {reason(e)}") from None
