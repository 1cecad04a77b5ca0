"""Your own meshes rendered into a ZeroShape-layout dataset: ``zsw synthesize meshes``.

``generate_meshes("meshes/", "data/mine", MeshConfig(views=10))`` renders every mesh file under the
folder (:data:`~zsw.synth.mesh_sdf.MESH_SUFFIXES`) exactly as ``zsw synthesize procedural`` renders
its shapes -- same cameras, materials, shading, baked backgrounds and occluders, files, lists and
manifest (:func:`zsw.synth.procedural.render_object`) -- through a
:class:`~zsw.synth.mesh_sdf.MeshShape`, each mesh normalised to the procedural object frame.

Names: a subfolder of the mesh folder is a category (files directly in it: ``cfg.category``); the
object id is the file's path below its category folder without the suffix, every run of characters
other than letters, digits and ``-`` made one ``-`` (``chair_01.obj`` -> ``chair-01``: ``_``
separates category, object and view in ZeroShape's file names). Two files with one id in a
category are an error naming both; ids (and categories) that differ only in case count as one,
since a Mac's or Windows's file system would store their views in the same files.

Seeds and splits come from the object's name, not its place in the folder: object
``<cat>/<obj>`` draws from ``SeedSequence([seed, w0, w1])`` (``w0, w1``: the first 8 bytes of the
SHA-256 of ``"<cat>/<obj>"``), view ``v`` from ``[seed, w0, w1, 1, v]``, its split from
``[seed, w0, w1, 2]``; adding meshes to the folder changes nothing already rendered.

Colours (``appearance``, :mod:`zsw.synth.mesh_colors`): by default each mesh is drawn in its own
textures, material colours and vertex colours, and a random colour where it has none (the
procedural shapes' material, lighting and highlight otherwise); ``"random"`` ignores them.

Resume: as procedural's. Before its gt_sdf and views, each object gets a stamp
``mesh_sources/<cat>/<cat>_<obj>.json`` with the SHA-256 of its file (a ``.gltf``'s with its
buffers; with the meshes' own colours, also the images and ``.mtl`` files they are read from) and
the colours it was drawn in (``texture``, ``mesh`` or ``random``); a rerun whose file no longer
matches refuses to start, naming it, unless ``redo_changed`` (``--redo-changed``), which deletes
that object's files and renders it again. Other settings (``meshes.yaml``) cannot change in a
dataset. A mesh that cannot be read or has no surface fails alone: the others are rendered, and
the report names it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from zsw.data.eval_sets import statement_file
from zsw.data.layout import SPLITS, SampleId, ZeroShapeLayout
from zsw.errors import ConfigError, InputError
from zsw.io import atomic_write_text, find_named_file, folder_key, sha256_file
from zsw.locks import lock_folder
from zsw.report import Reporter
from zsw.synth.jobs import record_code
from zsw.synth.mesh_sdf import MESH_SUFFIXES, MeshShape
from zsw.synth.procedural import (
    MESHES_CONFIG_FILE,
    ProceduralConfig,
    RenderSettings,
    check_dataset_resume,
    pending_views,
    recorded_views,
    render_object,
    run_jobs,
    split_at,
    start_dataset,
    stop_on_term,
)
from zsw.synth.sdf import CATEGORIES

__all__ = ["MeshConfig", "MeshSource", "MeshReport", "scan_meshes", "generate_meshes", "CONFIG_FILE", "APPEARANCES"]

CONFIG_FILE = MESHES_CONFIG_FILE
#: ``MeshConfig.appearance``: the meshes' own colours, or a random one
APPEARANCES = ("mesh", "random")
STAMPS = "mesh_sources"
#: files that travel with meshes (materials, glTF buffers, textures): passed over without a note
_COMPANIONS = {".mtl", ".bin", ".png", ".jpg", ".jpeg", ".tga", ".bmp", ".webp", ".ktx2", ".tif", ".tiff", ".gif"}
#: an object whose surface is this much open sheet is reported
SHELL_NOTE = 0.05


@dataclass(frozen=True)
class MeshConfig(RenderSettings):
    """What ``zsw synthesize meshes`` makes; all of it is fixed per dataset. The views are rendered
    as procedural ones (:class:`~zsw.synth.procedural.RenderSettings`)."""

    # category of the files directly in the mesh folder
    category: str = "object"
    # the meshes' up axis: y (glTF, OBJ, ShapeNet, Objaverse) or z (most CAD and Blender exports)
    up: str = "y"
    # cells of the signed-distance grid along the object's longest side (plus padding)
    grid: int = 192
    # the surface's colour: "mesh" (its textures, material colours and vertex colours where it has
    # them, a random colour elsewhere: zsw.synth.mesh_colors) or "random" (one random colour, as
    # procedural shapes; what zsw did before 2026-12-05)
    appearance: str = "mesh"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.up not in ("y", "z"):
            raise ConfigError(f"up must be y or z, got {self.up!r}")
        if self.appearance not in APPEARANCES:
            raise ConfigError(f"appearance must be one of {', '.join(APPEARANCES)}, got {self.appearance!r}")
        if not 32 <= self.grid <= 512:
            raise ConfigError(f"grid must be 32-512 cells, got {self.grid}")
        if not self.category or "/" in self.category or self.category.startswith("."):
            raise ConfigError(f"category {self.category!r} must be a non-empty name without '/'")

    def render_config(self) -> ProceduralConfig:
        """The procedural settings the views are rendered with (occluders from the default
        procedural categories)."""
        shared = {f.name: getattr(self, f.name) for f in fields(RenderSettings)}
        return ProceduralConfig(objects=1, categories=CATEGORIES, **shared)


@dataclass(frozen=True)
class MeshSource:
    """One mesh file and the object it becomes."""

    path: Path
    rel: str  # the path below the mesh folder, with '/'
    category: str
    object: str

    def views(self, count: int) -> list[SampleId]:
        return [SampleId(self.category, self.object, f"{v:02d}") for v in range(count)]

    def key(self, seed: int) -> list[int]:
        """``[seed, w0, w1]``: the object's seed words, from its name."""
        digest = hashlib.sha256(f"{self.category}/{self.object}".encode()).digest()
        return [seed, int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:8], "little")]

    def split(self, cfg: MeshConfig) -> str:
        u = np.random.default_rng(np.random.SeedSequence([*self.key(cfg.seed), 2])).random()
        return split_at(float(u), cfg.split_fractions)


@dataclass
class MeshReport:
    rendered: int  # views rendered by this run
    skipped: int  # views already on disk
    objects: int  # meshes found
    failed: list[str]  # one line per mesh that could not be rendered
    shells: list[str]  # one line per open mesh rendered as a shell
    seconds: float
    splits: dict[str, int] = field(default_factory=dict)  # views each split lists after the run
    notes: list[str] = field(default_factory=list)  # what the user should know (printed as warnings)
    # meshes this run rendered, by the colours they were drawn in: texture, mesh (material or vertex
    # colours without a texture), random (--appearance random, or a mesh with no colours of its own)
    colors: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.rendered / self.seconds if self.seconds > 0 else 0.0


def _object_id(rel: Path) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", rel.with_suffix("").as_posix()).strip("-") or "mesh"


def scan_meshes(folder: str | os.PathLike, category: str = "object") -> tuple[list[MeshSource], list[str]]:
    """The mesh files under ``folder`` as objects, sorted by (category, object), and the files
    passed over for their suffix (not a mesh zsw reads, nor a material or texture). Hidden files
    and folders are ignored. Two files that become one object are an :class:`InputError`."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"the mesh folder {folder} is not a folder")
    sources: dict[tuple[str, str], MeshSource] = {}
    categories: dict[str, str] = {}  # folder_key -> the spelling first met
    skipped = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix.lower() not in MESH_SUFFIXES:
            if path.suffix.lower() not in _COMPANIONS:
                skipped.append(rel.as_posix())
            continue
        cat, below = (category, rel) if len(rel.parts) == 1 else (rel.parts[0], Path(*rel.parts[1:]))
        src = MeshSource(path, rel.as_posix(), cat, _object_id(below))
        # names differing only in case would share files (lists, views) on a Mac or a Windows machine
        if categories.setdefault(folder_key(cat), cat) != cat:
            raise InputError(
                f"the categories {categories[folder_key(cat)]} and {cat} differ only in case "
                "(a Mac's or Windows's file system would merge their files): rename one folder"
            )
        key = (folder_key(cat), folder_key(src.object))
        if key in sources:
            other = sources[key]
            raise InputError(
                f"{other.rel} and {src.rel} would both be object {cat}_{src.object} (ids come from file names, "
                "'_' and other characters made '-', and must differ in more than case): rename one"
            )
        sources[key] = src
    return sorted(sources.values(), key=lambda m: (m.category, m.object)), skipped


def fingerprint(path: Path, appearance: bool = False) -> str:
    """SHA-256 of a mesh file (:func:`zsw.io.sha256_file`); a ``.gltf``'s is that of its own hash
    and those of the buffers it names beside it. With ``appearance`` (the meshes' own colours are
    rendered), the images a ``.gltf`` names and an ``.obj``'s ``.mtl`` files and their texture
    images count too (:func:`companion_files`)."""
    files = companion_files(path, appearance)
    if not files:
        return sha256_file(path)
    hashes = [sha256_file(path), *(sha256_file(f) for f in files)]
    return hashlib.sha256(" ".join(hashes).encode()).hexdigest()


def companion_files(path: Path, appearance: bool = False) -> list[Path]:
    """The files beside ``path`` that its geometry (a ``.gltf``'s buffers) and, with
    ``appearance``, its colours (a ``.gltf``'s images; an ``.obj``'s ``mtllib`` files and the
    images they name) are read from, those that exist, in the order named."""
    suffix = path.suffix.lower()
    files: list[Path] = []
    if suffix == ".gltf":
        try:
            tree = json.loads(path.read_text())
            keys = ("buffers", "images") if appearance else ("buffers",)
            uris = [item.get("uri", "") for key in keys for item in tree.get(key, [])]
        except (ValueError, AttributeError, OSError, UnicodeDecodeError):
            uris = []
        files = [path.parent / unquote(u) for u in uris if isinstance(u, str) and u and not u.startswith("data:")]
    elif suffix == ".obj" and appearance:
        for lib in _statements(path, ("mtllib",)):
            mtl = find_named_file(path.parent, lib)
            if mtl is not None:  # the textures as the OBJ's reader finds them: beside the OBJ
                files += [mtl, *(find_named_file(path.parent, n) for n in _statements(mtl, ("map_kd", "map_ka")))]
    return [f for f in dict.fromkeys(files) if f is not None and f.is_file()]


def _statements(path: Path, keywords: tuple[str, ...]) -> list[str]:
    """The file names the ``keywords`` (lower case) statements of an OBJ or MTL file name
    (:func:`zsw.data.eval_sets.statement_file`)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [named[1] for named in map(statement_file, lines) if named and named[0] in keywords]


def _stamp_path(layout: ZeroShapeLayout, sid: SampleId) -> Path:
    return layout.root / STAMPS / sid.category / f"{sid.object_name}.json"


def _object_files(layout: ZeroShapeLayout, sids: list[SampleId]) -> list[Path]:
    views = ("image", "mask", "depth", "intrinsics", "extrinsics", "visible_mask", "occluder_mask", "pseudo_depth")
    files = [getattr(layout, kind)(sid) for sid in sids for kind in views]
    return files + [layout.gt_sdf(sids[0]), layout.pointcloud(sids[0]), _stamp_path(layout, sids[0])]


def _changed(layout: ZeroShapeLayout, cfg: MeshConfig, sources: list[MeshSource], prints: dict) -> list[MeshSource]:
    """The objects whose files on disk were rendered from another version of their mesh (or whose
    stamp is missing beside them)."""
    changed = []
    for src in sources:
        sids = src.views(cfg.views)
        stamp = _stamp_path(layout, sids[0])
        if stamp.is_file():
            try:
                same = json.loads(stamp.read_text()).get("sha256") == prints[src.rel]
            except (ValueError, AttributeError):
                same = False
            if not same:
                changed.append(src)
        elif any(p.is_file() for p in _object_files(layout, sids)):
            changed.append(src)
    return changed


def _mesh_job(args: tuple[str, MeshConfig, MeshSource, str, frozenset]) -> tuple[list[dict], int, int, str, str, str]:
    """Render what object ``src`` lacks; returns (new manifest records, views rendered, views already
    there, an error line or '', a shell note or '', the colours it was drawn in or '')."""
    root, cfg, src, sha, recorded = args
    layout = ZeroShapeLayout(root)
    sids = src.views(cfg.views)
    pending = pending_views(layout, sids, recorded)
    if pending.complete:
        return [], 0, len(sids), "", "", ""
    try:
        shape = MeshShape.from_file(src.path, cfg.up, cfg.grid, colors=cfg.appearance == "mesh")
    except InputError as e:
        return [], 0, 0, str(e), "", ""
    note = ""
    if shape.shell_fraction >= SHELL_NOTE or not shape.has_inside:
        note = (
            f"{src.rel}: open surface ({shape.shell_fraction:.0%} of it has the outside on both sides): rendered and "
            f"labelled as a shell {2 * shape.shell:.4f} thick"
        )
    shell = round(shape.shell_fraction, 4)
    stamp = dict(file=src.rel, sha256=sha, triangles=len(shape.triangles), shell_fraction=shell, colors=_colors(shape))
    atomic_write_text(_stamp_path(layout, sids[0]), json.dumps(stamp, sort_keys=True) + "\n")
    key = src.key(cfg.seed)
    rng = np.random.default_rng(np.random.SeedSequence(key))
    extra = dict(source="mesh", mesh=src.rel, mesh_sha256=sha)
    rcfg = cfg.render_config()
    records, rendered = render_object(layout, rcfg, shape, rng, src.split(cfg), sids, recorded, pending, key, extra)
    return records, rendered, len(sids) - len(pending.todo), "", note, stamp["colors"]


def _colors(shape: MeshShape) -> str:
    """What the stamp says of the colours a mesh was rendered with."""
    if shape.colors is None:
        return "random"
    return "texture" if shape.colors.has_texture else "mesh"


def generate_meshes(
    mesh_dir: str | os.PathLike,
    out: str | os.PathLike,
    cfg: MeshConfig,
    workers: int = 1,
    redo_changed: bool = False,
    reporter: Reporter | None = None,
) -> MeshReport:
    """Render every mesh under ``mesh_dir`` into ``out`` (resuming what exists); see the module
    docstring. Failed meshes and open ones are told to ``reporter`` as they happen and listed in
    the report. ``out`` is locked meanwhile, as :func:`zsw.synth.procedural.generate` locks it."""
    with lock_folder(out, "--out"), stop_on_term():
        return _generate_meshes(mesh_dir, out, cfg, workers, redo_changed, reporter or Reporter())


def _generate_meshes(mesh_dir, out, cfg: MeshConfig, workers: int, redo_changed: bool, reporter) -> MeshReport:
    layout = ZeroShapeLayout(out)
    # a dataset from before `appearance` existed was drawn in random colours
    cfg = check_dataset_resume(layout, cfg, CONFIG_FILE, before={"appearance": "random"})
    sources, passed_over = scan_meshes(mesh_dir, cfg.category)
    if not sources:
        raise InputError(f"no meshes in {mesh_dir} (zsw reads {' '.join(MESH_SUFFIXES)})")
    if passed_over:
        more = f" and {len(passed_over) - 3} more" if len(passed_over) > 3 else ""
        files = "a file that is" if len(passed_over) == 1 else f"{len(passed_over)} files that are"
        reporter.info(f"passed over {files} no mesh zsw reads: {', '.join(passed_over[:3])}{more}")
    prints = {src.rel: fingerprint(src.path, cfg.appearance == "mesh") for src in sources}
    changed = _changed(layout, cfg, sources, prints)
    if changed and not redo_changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise ConfigError(
            f"{changed[0].rel}{more} changed since it was rendered into {out}; rerun with --redo-changed to render "
            "it again, or choose another --out"
        )
    for src in changed:
        reporter.info(f"{src.rel} changed: rendering it again")
        for path in _object_files(layout, src.views(cfg.views)):
            path.unlink(missing_ok=True)
    start_dataset(layout, cfg, CONFIG_FILE)

    recorded, other_code = recorded_views(layout)
    if other_code:
        reporter.warning(other_code)
    redo = {src.rel for src in changed}
    jobs = []
    for src in sources:
        names = frozenset() if src.rel in redo else frozenset(s.name for s in src.views(cfg.views)) & recorded
        jobs.append((str(layout.root), cfg, src, prints[src.rel], names))
    report = MeshReport(0, 0, len(sources), [], [], 0.0)
    start = time.perf_counter()
    with reporter.progress("rendering meshes", len(sources) * cfg.views) as advance:

        def collect(result: tuple[list[dict], int, int, str, str, str]) -> None:
            records, rendered, skipped, error, note, colors = result
            if colors:
                report.colors[colors] = report.colors.get(colors, 0) + 1
            for r in records:
                layout.append_manifest(record_code(r))
            report.rendered += rendered
            report.skipped += skipped
            if error:
                report.failed.append(error)
                reporter.error(error)
            if note:
                report.shells.append(note)
                reporter.warning(note)
            advance(cfg.views)

        try:
            run_jobs(_mesh_job, jobs, workers, collect)
        except KeyboardInterrupt:
            _finish(layout, cfg, sources, reporter)
            raise
    report.seconds = time.perf_counter() - start
    _finish(layout, cfg, sources, reporter)
    return report


def _finish(layout: ZeroShapeLayout, cfg: MeshConfig, sources: list[MeshSource], reporter: Reporter) -> None:
    """The manifest sorted, and lists of the finished views of the folder's meshes; objects on
    disk whose mesh left the folder stay there, unlisted."""
    layout.sort_manifest()
    finished: dict[tuple[str, str], list[SampleId]] = {}
    for src in sources:
        views = [s for s in src.views(cfg.views) if layout.has_view(s)]
        finished.setdefault((src.category, src.split(cfg)), []).extend(views)
    for cat in sorted({src.category for src in sources} | set(layout.categories())):
        for split in SPLITS:
            sids = finished.get((cat, split), [])
            if sids or layout.list_file(cat, split).exists():
                layout.write_list(cat, split, sids)
    current = {f"{src.category}_{src.object}.json" for src in sources}
    gone = [p for p in sorted((layout.root / STAMPS).glob("*/*.json")) if p.name not in current]
    if gone:
        try:
            example = json.loads(gone[0].read_text())["file"]
        except (OSError, ValueError, KeyError, TypeError):
            example = gone[0].stem
        reporter.warning(
            f"{len(gone)} object(s) in {layout.root} have no mesh in the folder any more (e.g. {example}): "
            "their files stay, unlisted"
        )
