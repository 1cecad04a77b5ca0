"""The synthesis jobs behind ``zsw synthesize``: procedural renders, diffusion, pseudo-depth.

Each takes its settings and a :class:`~zsw.report.Reporter` and does the whole job -- option
checks that are cheap before model loading that is not, the models, the run, the progress -- so
the CLI only parses and prints::

    from zsw.synth.pipeline import DiffusionSettings, diffuse

    report, resumed = diffuse("data/proc", "data/wild", DiffusionSettings.make(seed=1, batch_size=8))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from zsw.config import from_dict, load_yaml, to_dict
from zsw.data.layout import SPLITS, ZeroShapeLayout
from zsw.errors import ConfigError, InputError, OptionError
from zsw.io import check_out_folder
from zsw.locks import lock_file
from zsw.report import Reporter
from zsw.synth.diffuse import DiffuseConfig, SynthReport, check_resume
from zsw.synth.jobs import parse_shard, plan
from zsw.synth.meshes import MeshConfig, MeshReport, generate_meshes
from zsw.synth.procedural import GenerationReport, ProceduralConfig, default_workers, generate
from zsw.synth.render import CameraConfig

__all__ = [
    "DiffusionSettings",
    "diffuse",
    "pseudo_depth",
    "procedural",
    "procedural_config",
    "meshes",
    "mesh_config",
    "split_words",
    "split_counts",
]


def split_words(values: Sequence[str] | None) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``: options given comma-separated or repeated."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


# ---- procedural ------------------------------------------------------------------------------


def procedural_config(
    splits: str = "0.8,0.1,0.1", categories=None, bake=None, elevation: str | None = None, **fields
) -> ProceduralConfig:
    """A :class:`ProceduralConfig` from command-line text (``splits`` as ``"0.8,0.1,0.1"``,
    categories and baked splits comma-separated or repeated, ``elevation`` as ``"LO,HI"`` degrees,
    default ZeroShape-W's 5-65); ``fields`` are its other fields."""
    from zsw.synth.sdf import CATEGORIES

    categories = tuple(split_words(categories)) or CATEGORIES
    return ProceduralConfig(categories=categories, **_render_fields(splits, bake, elevation, fields))


def _render_fields(splits: str, bake, elevation: str | None, fields: dict) -> dict:
    """``fields`` with the :class:`~zsw.synth.procedural.RenderSettings` options given as
    command-line text read: split fractions, baked splits, the cameras' elevation range."""
    fields = dict(fields, split_fractions=_numbers(splits, 3, "--splits", "0.8,0.1,0.1"))
    fields["bake_splits"] = tuple(split_words(bake))
    if elevation is not None:
        fields["camera"] = CameraConfig(elevation_deg=elevation_range(elevation))
    if fields.get("background_dir") is not None:
        if not fields["bake_splits"]:  # else the photos would be silently unused: every image on white
            raise ConfigError(f"--backgrounds {fields['background_dir']} is used only with --bake (e.g. --bake test)")
        fields["background_dir"] = str(fields["background_dir"])
    return fields


def elevation_range(text: str) -> tuple[float, float]:
    """``--elevation "LO,HI"`` (degrees above the object's horizon) as a range the camera
    distribution accepts; a :class:`ConfigError` naming the option otherwise."""
    lo, hi = _numbers(text, 2, "--elevation", "-10,65")
    try:
        return CameraConfig(elevation_deg=(lo, hi)).elevation_deg
    except ConfigError as e:
        raise ConfigError(f"--elevation {text!r}: {e}") from None


def _numbers(text: str, count: int, option: str, example: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(x) for x in text.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != count:
        raise ConfigError(f"{option} must be {count} comma-separated numbers like {example}, got {text!r}")
    return numbers


def procedural(
    out: str | os.PathLike, cfg: ProceduralConfig, workers: int = 0, reporter: Reporter | None = None
) -> tuple[GenerationReport, int]:
    """Render ``cfg`` into ``out`` (resuming); ``workers`` 0 = one per CPU. Returns the report and
    the number of workers used. ``out`` is locked for the run (see :func:`generate`)."""
    reporter = reporter or Reporter()
    workers = workers or default_workers()
    with reporter.progress("rendering", cfg.objects * cfg.views) as advance:
        report = generate(out, cfg, workers=workers, progress=lambda done, total: advance(0, completed=done))
    _count_splits(report, out, cfg)
    return report, workers


def _count_splits(report: GenerationReport | MeshReport, out, cfg: ProceduralConfig | MeshConfig) -> None:
    """The views each split of ``out`` lists, and a note for a split ``--bake`` asked for that no
    object fell in (a small dataset: ``zsw eval`` would then find no test images)."""
    layout = ZeroShapeLayout(out)
    report.splits = {split: len(layout.samples(split)) for split in SPLITS}
    shares = ",".join(f"{x:g}" for x in cfg.split_fractions)
    for split in cfg.bake_splits:
        if not report.splits[split]:
            report.notes.append(
                f"no object fell in the {split} split that --bake {split} bakes ({report.objects} objects at "
                f"--splits {shares}): ask for more --objects or give {split} a larger share"
            )


def split_counts(report: GenerationReport | MeshReport) -> str:
    """``train 6, val 2, test 0 views``: what a synthesis run's dataset lists."""
    return ", ".join(f"{split} {report.splits.get(split, 0)}" for split in SPLITS) + " views"


def color_counts(report: MeshReport) -> str:
    """``; drawn in their textures 3, their colours 1, a random colour 2`` for the meshes a run
    rendered (empty when it rendered none)."""
    words = {"texture": "their textures", "mesh": "their colours", "random": "a random colour"}
    parts = [f"{words[k]} {report.colors[k]}" for k in words if report.colors.get(k)]
    return f"; drawn in {', '.join(parts)}" if parts else ""


# ---- meshes ----------------------------------------------------------------------------------


def mesh_config(splits: str = "0.8,0.1,0.1", bake=None, elevation: str | None = None, **fields) -> MeshConfig:
    """A :class:`~zsw.synth.meshes.MeshConfig` from command-line text, as :func:`procedural_config`
    reads it; ``fields`` are its other fields."""
    return MeshConfig(**_render_fields(splits, bake, elevation, fields))


def meshes(
    mesh_dir: str | os.PathLike,
    out: str | os.PathLike,
    cfg: MeshConfig,
    workers: int = 0,
    redo_changed: bool = False,
    reporter: Reporter | None = None,
) -> tuple[MeshReport, int]:
    """Render the meshes under ``mesh_dir`` into ``out`` (resuming); ``workers`` 0 = one per CPU.
    Returns the report (with the meshes that failed and the open ones) and the number of workers.
    ``out`` is locked for the run, as :func:`procedural` locks it."""
    workers = workers or default_workers()
    report = generate_meshes(mesh_dir, out, cfg, workers, redo_changed, reporter)
    _count_splits(report, out, cfg)
    return report, workers


# ---- diffusion -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiffusionSettings:
    """``zsw synthesize diffuse``: the generation settings (:class:`DiffuseConfig`, stored with the
    output and checked on resume) and how this process runs them."""

    config: DiffuseConfig = field(default_factory=DiffuseConfig)
    device: str | None = None
    dtype: str | None = None
    batch_size: int = 4
    shard: str = "0/1"
    limit: int | None = None
    save_foreground: bool = False

    def __post_init__(self) -> None:
        parse_shard(self.shard)
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise OptionError(f"--limit: {self.limit} is below 1")

    @classmethod
    def make(cls, config: str | os.PathLike | None = None, run: dict | None = None, **overrides) -> DiffusionSettings:
        """From an optional YAML of :class:`DiffuseConfig` fields, then the ``overrides`` that are
        not None (config fields), and ``run`` (this class's own fields)."""
        cfg = load_yaml(config, DiffuseConfig) if config is not None else DiffuseConfig()
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(config=from_dict(DiffuseConfig, {**to_dict(cfg), **given}), **(run or {}))


def diffuse(
    data: str | os.PathLike, out: str | os.PathLike, settings: DiffusionSettings, reporter: Reporter | None = None
) -> tuple[SynthReport, bool]:
    """Run Algorithm 1 over this shard of ``data`` into ``out``; returns the report and whether an
    earlier run was resumed. Unreadable source renders do not stop the run: they are counted in
    ``report.errors`` (and recorded in the manifest, so a rerun retries them); ``zsw synthesize
    diffuse`` turns a non-zero count into an error after printing the summary."""
    reporter = reporter or Reporter()
    s, cfg, shard = settings, settings.config, parse_shard(settings.shard)
    if not Path(data).is_dir():  # cheap checks before minutes of model loading
        raise InputError(f"--data {data} is not a directory")
    if not plan(ZeroShapeLayout(data), cfg.views_per_object)[shard[0] :: shard[1]]:
        raise InputError(f"{data} has no renders for shard {s.shard}: no lists/<category>_<split>.list files name any")
    with _lock_shard(out, shard, "--out", "--out or --shard"):
        return _diffuse(data, out, s, shard, reporter)


def _diffuse(data, out, s: DiffusionSettings, shard: tuple[int, int], reporter: Reporter) -> tuple[SynthReport, bool]:
    from zsw.hub import resolve_device, resolve_dtype
    from zsw.synth.appearance import ControlNetAppearance
    from zsw.synth.background import ObjectAwareBackground
    from zsw.synth.diffuse import synthesize

    cfg = s.config
    resumed = check_resume(out, cfg, data)  # a file, a folder of other files, other renders
    dev = resolve_device(s.device)
    dtype = resolve_dtype(s.dtype, dev)
    reporter.info(f"loading models on {dev} ({str(dtype).removeprefix('torch.')})")
    appearance = ControlNetAppearance.from_pretrained(
        cfg.base_model, cfg.controlnet, device=dev, dtype=dtype, steps=cfg.steps, start_step=cfg.start_step,
        guidance_scale=cfg.guidance_scale, controlnet_scale=cfg.controlnet_scale, resolution=cfg.resolution,
        negative_prompt=cfg.negative_prompt,
    )  # fmt: skip
    background = ObjectAwareBackground.from_pretrained(
        cfg.background_model, device=dev, dtype=dtype, steps=cfg.background_steps,
        guidance_scale=cfg.background_guidance_scale, controlnet_scale=cfg.background_controlnet_scale,
        resolution=cfg.resolution, negative_prompt=cfg.negative_prompt,
    )  # fmt: skip
    with reporter.progress("synthesizing", None) as advance:

        def show(r: SynthReport) -> None:
            note = f"synthesizing: accepted {r.accepted}, rejected {r.rejected}, failed {r.failed}"
            advance(0, note=note, total=r.total, completed=r.done)

        report = synthesize(data, out, cfg, appearance, background, batch_size=s.batch_size, shard=shard,
                            limit=s.limit, save_foreground=s.save_foreground, progress=show)  # fmt: skip
    return report, resumed


def _lock_shard(folder: Path | str, shard: tuple[int, int], option: str, other: str):
    """Hold shard ``i/n`` of the output ``folder`` for this run (a hidden ``.shard-i-of-n.lock`` in
    it, :func:`zsw.locks.lock_file`): other shards run beside it, as intended, while a second
    process on the same shard -- the same command started twice -- stops at once with one line
    naming the first and ``other`` (what to choose instead), rather than both writing the same files
    and the shard's manifest."""
    check_out_folder(folder, option)
    return lock_file(Path(folder) / f"shard-{shard[0]}-of-{shard[1]}", other)


# ---- pseudo-depth ----------------------------------------------------------------------------


def pseudo_depth(
    data: str | os.PathLike,
    model: str = "depth-anything/Depth-Anything-V2-Small-hf",
    *,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int = 16,
    shard: str = "0/1",
    overwrite: bool = False,
    reporter: Reporter | None = None,
):
    """Depth Anything V2 pseudo-depth for every listed image of ``data``
    (``pseudo_depth/<cat>/<name>.npy``); returns the :class:`PseudoDepthReport`."""
    from zsw.hub import resolve_device, resolve_dtype
    from zsw.synth.pseudo_depth import DepthAnything

    reporter = reporter or Reporter()
    shard_ix = parse_shard(shard)
    if not Path(data).is_dir():
        raise InputError(f"--data {data} is not a directory")
    dev = resolve_device(device)
    with _lock_shard(ZeroShapeLayout(data).root / "pseudo_depth", shard_ix, "--data", "--shard"):
        estimator = DepthAnything.from_pretrained(model, device=dev, dtype=resolve_dtype(dtype, dev))
        return _pseudo_depth(data, estimator, batch_size, shard_ix, overwrite, reporter)


def _pseudo_depth(data, estimator, batch_size: int, shard_ix: tuple[int, int], overwrite: bool, reporter: Reporter):
    from zsw.synth.pseudo_depth import pseudo_depth_dataset

    with reporter.progress("pseudo-depth", None) as advance:

        def show(r) -> None:
            advance(0, total=r.total, completed=r.written + r.skipped)

        return pseudo_depth_dataset(data, estimator, batch_size=batch_size, shard=shard_ix, overwrite=overwrite,
                                    progress=show)  # fmt: skip
