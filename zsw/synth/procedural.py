"""Procedural source: analytic SDF shapes rendered into a ZeroShape-layout dataset.

``generate(out, ProceduralConfig(objects=100, views=10, seed=0))`` writes, for object ``i``
(category ``categories[i % len(categories)]``, id ``%05d``) and view ``v`` (id ``%02d``):

* ``images_processed`` -- the render over white (antialiased), or, for splits in ``bake_splits``,
  over a random background with 0-2 copy-paste occluders baked in;
* ``masks`` -- the object's coverage (antialiased, ZeroShape binarises it at 50);
* ``depth`` -- camera z of the visible object, 0 elsewhere; ``camera_data/intr|extr`` -- K at
  224 px and ``[R|t]`` object -> camera;
* ``visible_masks`` and ``occluder_masks`` for baked views;
* per object ``gt_sdf`` (exact SDF at near-surface and uniform points) and ``pointclouds``
  (surface points), both in the object frame;
* ``lists/<cat>_{train,val,test}.list`` (objects split by a low-discrepancy sequence over ``i``,
  all views of an object in one split), ``manifest.jsonl`` (one record per view: camera,
  material, occluders) and ``procedural.yaml`` (the config).

Determinism: every object draws from ``SeedSequence([seed, i])`` and every view from
``SeedSequence([seed, i, 1, v])``, and rendering runs single-threaded in each worker, so the
files depend on the seed only -- not on ``workers`` or on interruptions. An interrupted run
resumes: finished views (image present) are skipped, files are written atomically, the image
last. A run stopped by SIGINT (Ctrl-C, ``timeout -s INT``) first writes the lists of the views it
finished, so what it made can be trained on at once. Rerunning with more ``objects`` extends the
dataset.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np

from zsw.config import dump_yaml, load_yaml, to_dict
from zsw.data.layout import SPLITS, SampleId, ZeroShapeLayout
from zsw.errors import ConfigError, Terminated
from zsw.io import remove_leftovers
from zsw.locks import lock_folder
from zsw.synth.jobs import other_code_note, record_code
from zsw.synth.render import CameraConfig, SynthShape, View, render, sample_material, sample_view
from zsw.synth.sdf import ALL_CATEGORIES, CATEGORIES, Shape, make_shape

__all__ = [
    "RenderSettings",
    "ProceduralConfig",
    "GenerationReport",
    "generate",
    "object_split",
    "object_plan",
    "plan",
    "default_workers",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
C = TypeVar("C", bound="RenderSettings")
R = TypeVar("R")

_GOLDEN = 0.6180339887498949
CONFIG_FILE = "procedural.yaml"


@dataclass(frozen=True)
class RenderSettings:
    """How objects become views, whatever the objects are: the settings ``zsw synthesize
    procedural`` (:class:`ProceduralConfig`) and ``zsw synthesize meshes``
    (:class:`~zsw.synth.meshes.MeshConfig`) share, each dataset's own for good."""

    views: int = 10
    seed: int = 0
    # output resolution (the model's input size)
    size: int = 224
    # fractions of objects in train / val / test
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    camera: CameraConfig = field(default_factory=CameraConfig)
    surface_points: int = 10000
    near_samples: int = 24576
    uniform_samples: int = 8192
    # splits whose images get a background and copy-paste occluders baked in (e.g. ("test",))
    bake_splits: tuple[str, ...] = ()
    min_occluders: int = 1
    max_occluders: int = 2
    occluder_scale: tuple[float, float] = (0.4, 0.6)
    background_kinds: tuple[str, ...] = ("solid", "gradient", "noise")
    background_dir: str | None = None

    def __post_init__(self) -> None:
        if self.views < 1 or self.views > 100:
            raise ConfigError(f"views must be 1-100 per object (ids are %02d), got {self.views}")
        f = self.split_fractions
        if len(f) != 3 or not all(math.isfinite(x) and x >= 0 for x in f) or sum(f) <= 0:
            raise ConfigError(f"split fractions must be 3 finite non-negative numbers, not all 0, got {list(f)}")
        # as floats, as the dataset's YAML gives them back: (1, 1, 1) written as [1, 1, 1] came back
        # as floats on resume and the YAML changed (a resumed dataset differed from an unbroken run)
        object.__setattr__(self, "split_fractions", tuple(float(x) for x in f))
        bad = [s for s in self.bake_splits if s not in SPLITS]
        if bad:
            raise ConfigError(f"bake splits must be among {SPLITS}, got {bad}")
        if not 0 <= self.min_occluders <= self.max_occluders:
            raise ConfigError(
                f"need 0 <= min_occluders <= max_occluders, got {self.min_occluders} and {self.max_occluders}"
            )
        if self.size < 32 or self.size % 32:  # 0 and negatives are multiples of 32 too
            raise ConfigError(f"size must be a positive multiple of 32, got {self.size}")


@dataclass(frozen=True)
class ProceduralConfig(RenderSettings):
    """What ``zsw synthesize procedural`` makes. Everything but ``objects`` is fixed per dataset."""

    objects: int = 100
    categories: tuple[str, ...] = CATEGORIES
    # marching-cubes resolution for surface sampling and normalisation
    mesh_resolution: int = 128

    def __post_init__(self) -> None:
        if self.objects < 1 or self.objects > 100000:
            raise ConfigError(f"objects must be 1-100000 (ids are %05d), got {self.objects}")
        super().__post_init__()
        unknown = [c for c in self.categories if c not in ALL_CATEGORIES]
        if unknown or not self.categories:
            raise ConfigError(f"unknown procedural categories {unknown}; known: {', '.join(ALL_CATEGORIES)}")
        repeated = sorted({c for c in self.categories if self.categories.count(c) > 1})
        if repeated:
            raise ConfigError(f"categories must not repeat, got {', '.join(repeated)} more than once")


@dataclass
class GenerationReport:
    rendered: int  # views rendered by this run
    skipped: int  # views already on disk
    objects: int
    seconds: float
    splits: dict[str, int] = field(default_factory=dict)  # views each split lists after the run
    notes: list[str] = field(default_factory=list)  # what the user should know (printed as warnings)

    @property
    def images_per_second(self) -> float:
        return self.rendered / self.seconds if self.seconds > 0 else 0.0


def object_split(index: int, fractions: tuple[float, float, float]) -> str:
    """The split of object ``index``: a golden-ratio sequence over the index, so every prefix of
    objects is split close to ``fractions`` (10 objects at 0.8/0.1/0.1 give 8/1/1)."""
    return split_at((index * _GOLDEN) % 1.0, fractions)


def split_at(u: float, fractions: tuple[float, float, float]) -> str:
    """The split whose share of ``[0, 1)`` holds ``u``, the shares in proportion to ``fractions``."""
    edges = np.cumsum(fractions) / sum(fractions)
    return SPLITS[int(np.searchsorted(edges, u, side="right").clip(max=2))]


def object_plan(cfg: ProceduralConfig, index: int) -> tuple[str, str, list[SampleId]]:
    """(category, split, view ids) of object ``index``."""
    cat = cfg.categories[index % len(cfg.categories)]
    views = [SampleId(cat, f"{index:05d}", f"{v:02d}") for v in range(cfg.views)]
    return cat, object_split(index, cfg.split_fractions), views


def plan(cfg: ProceduralConfig) -> Iterator[tuple[int, str, str, list[SampleId]]]:
    """(object index, category, split, view ids) for every object of ``cfg``."""
    for i in range(cfg.objects):
        yield (i, *object_plan(cfg, i))


# --------------------------------------------------------------------------------------------
# One object
# --------------------------------------------------------------------------------------------


def _bake(cfg: ProceduralConfig, rng: np.random.Generator, result, view: View, backgrounds) -> tuple[dict, dict]:
    """Background plus occluders rendered with the view's lens; returns arrays and a record."""
    from zsw.data.backgrounds import composite
    from zsw.data.occluders import Occluder, paste_occluders

    image = composite(result.image, result.alpha, backgrounds.sample(rng, cfg.size))
    occluders, cats = [], []
    for _ in range(int(rng.integers(cfg.min_occluders, cfg.max_occluders + 1))):
        cat = cfg.categories[int(rng.integers(len(cfg.categories)))]
        shape = make_shape(cat, rng, resolution=64)
        surface = shape.surface_points(2000, rng, resolution=64)
        oview = sample_view(rng, surface, cfg.camera, cfg.size, focal_mm=view.meta["focal_mm"])
        o = render(shape, oview, sample_material(rng, shape.num_parts))
        occ = Occluder.from_render(o.image, o.alpha)
        if occ is not None:
            occluders.append(occ)
            cats.append(cat)
    pasted = paste_occluders(image, result.mask, result.depth, occluders, rng, scale=cfg.occluder_scale)
    arrays = dict(image=pasted.image, depth=pasted.depth, visible_mask=pasted.visible, occluder_mask=pasted.occluder)
    record = dict(occluders=[dict(category=c, **p) for c, p in zip(cats, pasted.placements)])
    return arrays, record


def _material_record(mat) -> dict:
    return dict(
        colors=np.round(mat.colors, 4).tolist(),
        specular=round(mat.specular, 4),
        shininess=round(mat.shininess, 2),
        light_cam=np.round(mat.light_cam, 4).tolist(),
    )


@dataclass(frozen=True)
class Pending:
    """What one object of a dataset lacks (:func:`pending_views`)."""

    todo: list[SampleId]  # views to render
    unrecorded: list[SampleId]  # views on disk without a manifest record
    have_object: bool  # its gt_sdf and point cloud are there

    @property
    def complete(self) -> bool:
        return not self.todo and not self.unrecorded and self.have_object


def pending_views(layout: ZeroShapeLayout, sids: list[SampleId], recorded: frozenset) -> Pending:
    """What the object of views ``sids`` lacks, ``recorded`` holding the names the manifest has."""
    on_disk = [layout.has_view(sid) for sid in sids]
    return Pending(
        todo=[sid for sid, there in zip(sids, on_disk) if not there],
        unrecorded=[sid for sid, there in zip(sids, on_disk) if there and sid.name not in recorded],
        have_object=layout.gt_sdf(sids[0]).is_file() and layout.pointcloud(sids[0]).is_file(),
    )


def render_object(
    layout: ZeroShapeLayout,
    cfg: ProceduralConfig,
    shape: SynthShape,
    rng: np.random.Generator,
    split: str,
    sids: list[SampleId],
    recorded: frozenset,
    pending: Pending,
    key: list[int],
    extra: dict,
) -> tuple[list[dict], int]:
    """Write what one object lacks (``pending``, :func:`pending_views`): its gt_sdf and point cloud,
    and the views of ``sids`` not on disk, each from ``SeedSequence([*key, 1, view])``; returns (the
    new manifest records, the views rendered). ``rng`` draws the object's surface points and SDF
    samples; ``extra`` goes into every record. Any :class:`SynthShape` (an analytic :class:`Shape`,
    a mesh) is rendered the same way; the occluders of baked views are procedural shapes of
    ``cfg.categories``."""
    todo, unrecorded = pending.todo, pending.unrecorded
    surface = shape.surface_points(cfg.surface_points, rng, cfg.mesh_resolution)
    if not pending.have_object:
        pts, sdf = shape.sdf_samples(rng, cfg.near_samples, cfg.uniform_samples, resolution=cfg.mesh_resolution)
        layout.write_object(sids[0], sample_pt=pts, sample_sdf=sdf, pointcloud=surface)

    backgrounds = None
    if split in cfg.bake_splits:
        from zsw.data.backgrounds import Backgrounds

        backgrounds = Backgrounds(cfg.background_kinds, cfg.background_dir)
    records = []
    rendered = 0
    for v, sid in enumerate(sids):
        if sid not in todo and sid not in unrecorded:
            continue
        vrng = np.random.default_rng(np.random.SeedSequence([*key, 1, v]))
        view = sample_view(vrng, surface, cfg.camera, cfg.size)
        mat = sample_material(vrng, shape.num_parts)
        record = dict(
            name=sid.name,
            category=sid.category,
            object=sid.object,
            view=sid.view,
            split=split,
            seed=[*key, 1, v],
            camera=view.meta,
            material=_material_record(mat),
            baked=split in cfg.bake_splits,
            **extra,
        )
        # a view finished by an interrupted run that could not record it: the record is rebuilt from
        # the seeds, the same as it would have been (a baked view's occluders need its render again)
        if sid in unrecorded and backgrounds is None:
            records.append(record)
            continue
        result = render(shape, view, mat)
        arrays = dict(image=result.image, depth=result.depth, visible_mask=None, occluder_mask=None)
        if backgrounds is not None:
            arrays, baked = _bake(cfg, vrng, result, view, backgrounds)
            record.update(baked)
        if sid in unrecorded:  # its files are on disk already
            records.append(record)
            continue
        layout.write_view(sid, intrinsics=view.K, extrinsics=view.Rt, alpha=result.alpha, **arrays)
        rendered += 1
        if sid.name not in recorded:  # a re-rendered view whose image was deleted keeps its record
            records.append(record)
    return records, rendered


def _object_job(args: tuple[str, ProceduralConfig, int, frozenset]) -> tuple[list[dict], int, int]:
    """Render the missing views of object ``index``; returns (new manifest records, views rendered,
    views already there)."""
    root, cfg, index, recorded = args
    layout = ZeroShapeLayout(root)
    cat, split, sids = object_plan(cfg, index)
    pending = pending_views(layout, sids, recorded)
    if pending.complete:
        return [], 0, len(sids)

    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, index]))
    shape: Shape = make_shape(cat, rng, resolution=cfg.mesh_resolution)
    extra = dict(source="procedural")
    key = [cfg.seed, index]
    records, rendered = render_object(layout, cfg, shape, rng, split, sids, recorded, pending, key, extra)
    return records, rendered, len(sids) - len(pending.todo)


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _worker_init() -> None:
    import signal

    import torch

    torch.set_num_threads(1)
    # the parent handles Ctrl-C and ends the pool; a worker whose parent was killed dies quietly
    # on its next write instead of printing a BrokenPipeError traceback per worker. SIGTERM, by
    # which the pool ends its workers, ends them at once: the parent's handler (:func:`stop_on_term`),
    # inherited through fork, would raise in a worker waiting on the task queue, and a worker
    # unwinding there can hang in its exit while the pool waits for it (seen in the test suite)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    _die_with_parent()


def _die_with_parent() -> None:
    """Linux: end this worker when its parent dies (a SIGKILLed parent cannot end its pool, and
    orphaned workers would go on writing into the dataset while a rerun starts)."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


# --------------------------------------------------------------------------------------------
# Whole dataset
# --------------------------------------------------------------------------------------------


#: the settings file of each kind of dataset zsw renders (its kind, for messages)
MESHES_CONFIG_FILE = "meshes.yaml"  # zsw.synth.meshes' own
DATASET_CONFIGS = {CONFIG_FILE: "procedural", MESHES_CONFIG_FILE: "meshes"}


def check_dataset_resume(
    layout: ZeroShapeLayout, cfg: C, config_file: str, ignore: tuple[str, ...] = (), before: dict | None = None
) -> C:
    """``cfg`` if the dataset ``layout`` may be resumed with it (raises otherwise), with the
    dataset's own spelling of the split fractions when the two are proportional (``2,1,1`` is
    ``0.5,0.25,0.25``). ``config_file``: where the dataset keeps its settings (every one of them
    fixed but those in ``ignore``; ``before``: the values of settings added later, as a dataset
    whose file lacks them was made); a folder with another kind of dataset, or with anything else,
    is refused."""
    path = layout.root / config_file
    if not path.is_file():
        if layout.root.is_dir() and any(layout.root.iterdir()):
            # only the output of this tool may be resumed; anything else is the user's
            for name, kind in DATASET_CONFIGS.items():
                if (layout.root / name).is_file():
                    raise ConfigError(f"{layout.root} holds a {kind} dataset; choose another --out")
            if (layout.root / "lists").exists() or (layout.root / "images_processed").exists():
                raise ConfigError(f"{layout.root} holds a dataset that zsw did not generate (no {config_file})")
            raise ConfigError(f"{layout.root} is not empty and holds no zsw dataset; choose an empty or new --out")
        return cfg
    old = load_yaml(path, type(cfg), missing=before)
    if same_proportions(old.split_fractions, cfg.split_fractions):
        cfg = replace(cfg, split_fractions=old.split_fractions)  # the objects' splits come out the same
    a, b = to_dict(old), to_dict(cfg)
    diff = [k for k in a if k not in ignore and a[k] != b[k]]
    if diff:
        raise ConfigError(
            f"{layout.root} was generated with {diff[0]}={a[diff[0]]!r}, not {b[diff[0]]!r}; "
            "rerun with the same options to resume, or choose another --out"
        )
    return cfg


def start_dataset(layout: ZeroShapeLayout, cfg: RenderSettings, config_file: str) -> None:
    """What a dataset run does before its workers start, once its settings passed
    :func:`check_dataset_resume`: a killed run's temporary files removed, a bad ``--backgrounds``
    folder refused, the folder made and ``cfg`` written to ``config_file`` in it."""
    remove_leftovers(layout.root, recursive=True)
    if cfg.background_dir is not None and cfg.bake_splits:
        from zsw.data.backgrounds import Backgrounds

        Backgrounds(cfg.background_kinds, cfg.background_dir)  # fail early on a bad folder
    layout.root.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, layout.root / config_file)


def recorded_views(layout: ZeroShapeLayout) -> tuple[set[str], str | None]:
    """The names of the views ``layout``'s manifest records, and :func:`other_code_note`'s note on
    them."""
    # a killed run may have left a view's record twice: views are counted (its last record)
    records = {r.get("name"): r for r in layout.read_manifest()}
    return set(records), other_code_note(records, layout.root, "views", "rendered")


def same_proportions(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether two split weightings give every object the same split (``2,1,1`` and ``0.5,0.25,0.25``)."""
    sa, sb = sum(a), sum(b)
    return len(a) == len(b) and all(math.isclose(x / sa, y / sb, rel_tol=1e-9, abs_tol=1e-12) for x, y in zip(a, b))


def generate(
    out: str | os.PathLike,
    cfg: ProceduralConfig,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> GenerationReport:
    """Render ``cfg`` into ``out`` (resuming what exists); ``progress(done_views, total_views)``.
    ``out`` is locked meanwhile (:func:`zsw.locks.lock_folder`): one process renders into a dataset,
    with ``workers`` for more cores; a second one into it -- the command, or this function from
    Python -- stops at once (it would take the first's temporary files for a killed run's)."""
    with lock_folder(out, "--out"), stop_on_term():
        return _generate(out, cfg, workers, progress)


@contextlib.contextmanager
def stop_on_term() -> Iterator[None]:
    """A termination request (SIGTERM: ``timeout``'s default signal, ``kill``, a scheduler's time
    limit) stops a synthesis as Ctrl-C does, by :class:`~zsw.errors.Terminated`: the views finished
    so far are listed, so a time-capped run leaves a dataset to train on (it left none before). The
    pool's workers take SIGTERM's default back (:func:`_worker_init`; a process forked before that
    ends by the default too): sent to the whole process group (``timeout``) they end with it, and
    the pool ends them with it otherwise. Installed from the main thread only."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    owner = os.getpid()

    def stop(signum, frame):
        if os.getpid() != owner:  # a process forked before it reset the handler: SIGTERM's default
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _generate(out, cfg: ProceduralConfig, workers: int, progress) -> GenerationReport:
    layout = ZeroShapeLayout(out)
    cfg = check_dataset_resume(layout, cfg, CONFIG_FILE, ignore=("objects",))
    config_file = layout.root / CONFIG_FILE
    old_objects = load_yaml(config_file, ProceduralConfig).objects if config_file.is_file() else 0
    # a rerun asking for fewer objects renders nothing new and lists every object already there
    whole = replace(cfg, objects=max(cfg.objects, old_objects))
    start_dataset(layout, whole, CONFIG_FILE)

    recorded, other_code = recorded_views(layout)
    total = cfg.objects * cfg.views
    jobs = [
        (str(layout.root), cfg, i, frozenset(s.name for s in sids if s.name in recorded)) for i, *_, sids in plan(cfg)
    ]
    start = time.perf_counter()
    rendered = skipped = done = 0

    def collect(result: tuple[list[dict], int, int]) -> None:
        nonlocal rendered, skipped, done
        records, n_rendered, n_skipped = result
        for r in records:
            layout.append_manifest(record_code(r))
        rendered += n_rendered
        skipped += n_skipped
        done += cfg.views
        if progress is not None:
            progress(done, total)

    try:
        run_jobs(_object_job, jobs, workers, collect)
    except KeyboardInterrupt:
        # stopped (Ctrl-C, `timeout -s INT`): what is finished becomes a usable dataset now, and a
        # rerun with the same options renders the rest and writes the lists again
        _finish(layout, whole)
        raise
    seconds = time.perf_counter() - start
    _finish(layout, whole)
    notes = [other_code] if other_code else []
    return GenerationReport(rendered=rendered, skipped=skipped, objects=cfg.objects, seconds=seconds, notes=notes)


def run_jobs(job: Callable[[T], R], jobs: list[T], workers: int, collect: Callable[[R], None]) -> None:
    """``collect(job(j))`` for every ``j`` of ``jobs``: in this process with one torch thread, or in
    a pool of ``workers`` processes (results in the order they finish). ``job`` must be a
    module-level function (it is pickled by name)."""
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        with _single_thread():
            for j in jobs:
                collect(job(j))
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=_worker_init) as pool:
        for result in pool.imap_unordered(job, jobs):
            collect(result)


def _finish(layout: ZeroShapeLayout, cfg: ProceduralConfig) -> None:
    """The manifest sorted and the split lists written from what is on disk: every finished view
    of every planned object."""
    layout.sort_manifest()  # record order must not depend on workers or interruptions
    finished: dict[tuple[str, str], list[SampleId]] = {}
    for _, cat, split, views in plan(cfg):
        finished.setdefault((cat, split), []).extend(s for s in views if layout.has_view(s))
    for split in SPLITS:
        for cat in cfg.categories:
            sids = finished.get((cat, split), [])
            if sids or layout.list_file(cat, split).exists():
                layout.write_list(cat, split, sids)


def default_workers() -> int:
    """Worker processes to use by default: one per available CPU."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
