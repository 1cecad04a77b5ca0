"""Jobs and files of diffusion synthesis: which renders to process (plan, shards), what is done
(the manifest), and how a finished sample lands in the output dataset.

The output is a ZeroShape-layout dataset. Per-view labels (depth, mask, camera, visible/occluder
masks) and per-object files (SDF samples, point cloud) are hard links to the source's (copies
across file systems), made atomically; the synthesized image is written last, so a view exists
only when complete. A sample is *done* when its manifest record is: ``ok`` (and its image is on
disk) or ``failed`` (the silhouette filter rejected every attempt).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zsw.data.layout import SPLITS, SampleId, ZeroShapeLayout
from zsw.errors import ConfigError, InputError
from zsw.io import atomic_path, atomic_write, code_identity
from zsw.synth.guidance import depth_to_control

__all__ = [
    "Job",
    "Render",
    "plan",
    "parse_shard",
    "select_shard",
    "finished_samples",
    "load_render",
    "write_sample",
    "write_lists",
    "link_or_copy",
    "save_png",
    "SYNTH_PACKAGES",
    "record_code",
    "other_code_note",
]

#: the code whose changes may change a synthesized view: the synthesisers, the dataset layout and
#: zsw's own top-level modules (``zsw.io.code_identity``); each manifest record names it as ``zsw_code``
SYNTH_PACKAGES = ("zsw", "zsw.synth", "zsw.data")


def record_code(record: dict) -> dict:
    """``record`` with the code that made it (:data:`SYNTH_PACKAGES`), for a manifest."""
    return {**record, "zsw_code": code_identity(SYNTH_PACKAGES)}


def other_code_note(records: dict[str, dict[str, Any]], root: Path, noun: str, made: str) -> str | None:
    """A note when some of ``records`` (name -> manifest record; ``noun`` such as ``views``, made
    as ``made`` says, e.g. ``rendered``) in the dataset ``root`` were made by other code than this
    process's (another checkout or release, an edit; a record from before the code was recorded
    counts as other): a resumed dataset then mixes two versions, which the user should know
    (nothing is redone: what is finished stays). None when this code made them all."""
    code = code_identity(SYNTH_PACKAGES)
    other = sum(r.get("zsw_code") != code for r in records.values())
    if not other:
        return None
    return (
        f"{other} of the {len(records)} {noun} already in {root} were {made} by other zsw code (another checkout, "
        f"release or an edit): {noun} {made} now may differ from them; for a uniform dataset, choose another --out"
    )


@dataclass(frozen=True)
class Job:
    """One source render and the splits whose lists name it."""

    sid: SampleId
    splits: tuple[str, ...]


# ---- planning ---------------------------------------------------------------------------------


def _view_key(view: str) -> tuple[int, int, str]:
    return (0, int(view), "") if view.isdigit() else (1, 0, view)


def plan(src: ZeroShapeLayout, views_per_object: int = 0) -> list[Job]:
    """Every render named by a list of ``src``, in a fixed order (category, object, view)."""
    splits: dict[SampleId, list[str]] = {}
    for cat in src.categories():
        for split in SPLITS:
            for sid in src.read_list(cat, split):
                splits.setdefault(sid, []).append(split)
    by_object: dict[tuple[str, str], list[SampleId]] = {}
    for sid in splits:
        by_object.setdefault((sid.category, sid.object), []).append(sid)
    jobs = []
    for key in sorted(by_object):
        views = sorted(by_object[key], key=lambda s: _view_key(s.view))
        if 0 < views_per_object < len(views):
            picks = np.unique(np.round(np.linspace(0, len(views) - 1, views_per_object)).astype(int))
            views = [views[i] for i in picks]
        jobs += [Job(sid, tuple(splits[sid])) for sid in views]
    return jobs


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text}: need 0 <= i < n")
    return i, n


def select_shard(jobs: Sequence[Job], index: int, count: int) -> list[Job]:
    """Every ``count``-th job from ``index``: shards are disjoint and together complete."""
    return list(jobs[index::count])


def finished_samples(out: ZeroShapeLayout) -> dict[str, dict[str, Any]]:
    """Final manifest records by sample name: ``ok`` with its image on disk, ``failed`` (the
    filter rejected every attempt) or ``unsuitable`` (the source is no render on white).

    ``error`` records (unreadable source files) are not final: a rerun tries those again.
    """
    last: dict[str, dict[str, Any]] = {}
    for rec in out.read_manifest():
        if isinstance(rec, dict) and "sample" in rec:
            last[rec["sample"]] = rec
    done = {}
    for name, rec in last.items():
        if rec.get("status") in ("failed", "unsuitable"):
            done[name] = rec
        elif rec.get("status") == "ok":
            sid = SampleId(rec["category"], rec["object"], rec["view"])
            if out.has_view(sid):
                done[name] = rec
    return done


# ---- files ------------------------------------------------------------------------------------


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes a hard link to ``src`` (a copy across file systems), atomically."""
    with atomic_path(dst) as tmp:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_write(path) as f:
        Image.fromarray(image).save(f, format="PNG")


@dataclass
class Render:
    image: np.ndarray  # [H, W, 3] uint8
    mask: np.ndarray  # [H, W] bool
    control: np.ndarray  # [H, W, 3] uint8


def load_render(src: ZeroShapeLayout, sid: SampleId) -> Render:
    path = src.image(sid)
    try:
        image = src.read_image(sid)
        path = src.depth(sid)
        depth = np.load(path, allow_pickle=False)
        path = src.mask(sid)
        mask = src.read_mask(path) if path.is_file() else depth > 0
    except FileNotFoundError:
        raise InputError(f"{path} is missing") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path} is unreadable ({e})") from None
    h, w = image.shape[:2]
    if h != w or depth.shape != (h, w) or mask.shape != (h, w):
        raise InputError(f"render {sid.name}: image {image.shape}, depth {depth.shape}, mask {mask.shape} differ")
    return Render(image, mask, depth_to_control(depth))


def write_sample(
    src: ZeroShapeLayout, out: ZeroShapeLayout, sid: SampleId, image: np.ndarray, foreground: np.ndarray | None
) -> None:
    """The render's labels beside the new image; the image last (it marks the view as present)."""
    for kind in ("depth", "intrinsics", "extrinsics", "visible_mask", "occluder_mask"):
        if getattr(src, kind)(sid).is_file():
            link_or_copy(getattr(src, kind)(sid), getattr(out, kind)(sid))
    if src.mask(sid).is_file():
        link_or_copy(src.mask(sid), out.mask(sid))
    else:
        save_png(out.mask(sid), (np.load(src.depth(sid)) > 0).astype(np.uint8) * 255)
    for kind in ("gt_sdf", "pointcloud"):  # per object: the first view of the object links them
        if getattr(src, kind)(sid).is_file() and not getattr(out, kind)(sid).is_file():
            link_or_copy(getattr(src, kind)(sid), getattr(out, kind)(sid))
    if foreground is not None:
        save_png(out.root / "foreground" / sid.category / f"{sid.name}.png", foreground)
    save_png(out.image(sid), image)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (shards finishing together into one output folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_lists(src: ZeroShapeLayout, out: ZeroShapeLayout) -> None:
    """Output lists = source lists filtered to the accepted samples (all shards so far)."""
    with _locked(out.root / ".lists.lock"):
        ok = {name for name, rec in finished_samples(out).items() if rec["status"] == "ok"}
        for cat in src.categories():
            for split in SPLITS:
                keep = [sid for sid in src.read_list(cat, split) if sid.name in ok]
                if keep or out.list_file(cat, split).is_file():
                    out.write_list(cat, split, keep)
