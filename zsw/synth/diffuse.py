"""Diffusion data synthesis, the paper's Algorithm 1: renders in, images in the wild out.

For every render (image, depth, mask, category from its list) of a ZeroShape-layout dataset:

1. appearance -- depth ControlNet img2img from the perturbed render, prompt
   "a [color] [material] [object]" (:mod:`zsw.synth.appearance`);
2. filter -- keep it if its silhouette (grayscale < 250) has IoU >= 0.95 with the render's mask,
   else retry with a new seed (and so a new prompt), up to ``max_retries`` times;
3. background -- object-aware outpainting, prompt "a [object] in the [scene]", the object
   pasted back exactly (:mod:`zsw.synth.background`).

The output is a ZeroShape-layout dataset: the render's depth, mask, camera, SDF samples and point
cloud (hard-linked, or copied across file systems) beside the new image, lists filtered to the
accepted samples, and ``manifest.jsonl`` with one record per render (seeds, prompts, IoUs,
retries, models, timings). A sample is final once its record is in the manifest, so a rerun
skips it; an interrupted run loses at most the batch in flight. ``shard=(i, n)`` takes every
n-th render, so n processes (GPUs, machines) cover the dataset without overlap, into one output
folder or several.

Planning, the manifest and output files are in :mod:`zsw.synth.jobs`. The two models are plain
callables (:class:`AppearanceModel`, :class:`BackgroundModel`), so the orchestration runs the same
on diffusers pipelines and on test doubles.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from zsw.data.layout import SampleId, ZeroShapeLayout
from zsw.errors import ConfigError, InputError
from zsw.synth.appearance import DEFAULT_BASE_MODEL, DEFAULT_CONTROLNET, AppearanceBatch
from zsw.synth.background import DEFAULT_BACKGROUND_MODEL
from zsw.synth.guidance import GuidancePerturbation, composite, perturb_guidance, silhouette_iou
from zsw.synth.jobs import (
    Job,
    Render,
    finished_samples,
    load_render,
    other_code_note,
    parse_shard,
    plan,
    record_code,
    select_shard,
    write_lists,
    write_sample,
)
from zsw.synth.prompts import background_prompt, category_noun, derive_seed, draw_appearance, draw_scene

__all__ = [
    "DiffuseConfig",
    "Job",
    "SynthReport",
    "AppearanceModel",
    "BackgroundModel",
    "plan",
    "parse_shard",
    "select_shard",
    "finished_samples",
    "write_lists",
    "check_resume",
    "synthesize",
    "CONFIG_FILE",
]

CONFIG_FILE = "diffuse_config.yaml"


@dataclass(frozen=True)
class DiffuseConfig:
    """Everything that decides what a synthesized image looks like (stored beside the output)."""

    # models: hub ids or local folders
    base_model: str = DEFAULT_BASE_MODEL
    controlnet: str = DEFAULT_CONTROLNET
    background_model: str = DEFAULT_BACKGROUND_MODEL
    # appearance: DDIM steps, injection index of the noised guidance (8 of 20 = 12 steps run)
    steps: int = 20
    start_step: int = 8
    guidance_scale: float = 7.5
    controlnet_scale: float = 1.0
    # background: sampler steps and weights (the authors' notebook: 20 UniPC steps, scale 1.0)
    background_steps: int = 20
    background_guidance_scale: float = 7.5
    background_controlnet_scale: float = 1.0
    # square generation size for both models (renders are resized in and out)
    resolution: int = 512
    negative_prompt: str = ""
    # silhouette filter: foreground = grayscale < fg_threshold; accept IoU >= min_iou
    min_iou: float = 0.95
    fg_threshold: int = 250
    # extra attempts, each with a new seed, before a render is recorded as failed
    max_retries: int = 4
    # jitter of the render before it is injected as initial guidance
    perturbation: GuidancePerturbation = GuidancePerturbation()
    # run seed; every per-sample seed is derived from it and the sample's name
    seed: int = 0
    # use at most this many views of each object (evenly spaced; 0 = all)
    views_per_object: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_iou <= 1.0:
            raise ConfigError(f"min_iou must be in [0, 1], got {self.min_iou}")
        if self.max_retries < 0 or self.views_per_object < 0:
            raise ConfigError("max_retries and views_per_object must be >= 0")
        if self.resolution < 8 or self.resolution % 8:
            raise ConfigError(f"resolution must be a positive multiple of 8, got {self.resolution}")
        if not 0 <= self.start_step < self.steps:
            raise ConfigError(f"start_step must be in [0, steps={self.steps}), got {self.start_step}")
        if self.background_steps < 1:  # 0 runs no denoising step: the background is the decoded start noise
            raise ConfigError(f"background_steps must be >= 1, got {self.background_steps}")
        if not 1 <= self.fg_threshold <= 255:  # else white is foreground (or nothing is): no render passes
            raise ConfigError(
                f"fg_threshold must be in [1, 255] (grayscale below it is the object), got {self.fg_threshold}"
            )


@dataclass
class SynthReport:
    """Counts of a run: ``rejected`` counts attempts, ``failed`` renders that used up their retries,
    ``unsuitable`` sources not on a white background, ``errors`` unreadable sources."""

    total: int = 0
    skipped: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    unsuitable: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.skipped + self.accepted + self.failed + self.unsuitable + self.errors

    def summary(self) -> str:
        """One line of counts and throughput, e.g. ``2 accepted, 1 failed the IoU filter, ...``."""
        rate = f", {self.accepted / self.elapsed_s:.3f} images/s" if self.accepted and self.elapsed_s > 0 else ""
        return (
            f"{self.accepted} accepted, {self.failed} failed the IoU filter, {self.unsuitable} not on white, "
            f"{self.skipped} already done, {self.errors} unreadable in {self.elapsed_s:.1f} s{rate}"
        )


class AppearanceModel(Protocol):
    model_ids: dict[str, str]

    def __call__(
        self, guides: Sequence[np.ndarray], controls: Sequence[np.ndarray], prompts: Sequence[str], seeds: Sequence[int]
    ) -> AppearanceBatch: ...


class BackgroundModel(Protocol):
    model_ids: dict[str, str]

    def __call__(
        self,
        foregrounds: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        prompts: Sequence[str],
        seeds: Sequence[int],
    ) -> list[np.ndarray]: ...


# Settings that may change between the runs filling one output folder: model sources (a hub id
# and its local download are the same model; the manifest records which one each sample used)
# and the view selection (it picks renders, it does not change how one is synthesized).
_RESUMABLE_CHANGES = ("base_model", "controlnet", "background_model", "views_per_object")


def check_resume(out: str | os.PathLike, config: DiffuseConfig, data: str | os.PathLike | None = None) -> bool:
    """Whether ``out`` holds an earlier run; a :class:`ConfigError` when its settings differ, when
    it was made from other renders than ``data``, or when it is a folder of other files.

    A resumed run must synthesize the way its first run did, else one dataset would mix settings.
    """
    from zsw.config import load_yaml, to_dict
    from zsw.io import check_out_folder

    check_out_folder(out)
    if data is not None and Path(data).resolve() == Path(out).resolve():
        raise ConfigError("--out must differ from --data (the source renders are kept unchanged)")
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        # hidden entries may be another shard's config on its way in (an atomic write's temporary file)
        if Path(out).is_dir() and any(not p.name.startswith(".") for p in Path(out).iterdir()):
            raise ConfigError(
                f"--out {out} is not empty and holds no zsw diffuse output (no {CONFIG_FILE}); its files would be "
                "overwritten: choose an empty or new --out"
            )
        return False
    if data is not None:
        _check_source(Path(out), Path(data))
    old = to_dict(load_yaml(path, DiffuseConfig))
    new = to_dict(config)
    diff = [k for k in new if k not in _RESUMABLE_CHANGES and old.get(k) != new[k]]
    if diff:
        k = diff[0]
        raise ConfigError(
            f"{out} was started with {k}={old.get(k)!r}, now {new[k]!r}; resume with the same settings "
            f"or use a new --out (settings in {path})"
        )
    return True


def _check_source(out: Path, data: Path, compare: int = 3) -> None:
    """``out`` was made from the renders of ``data``: a rerun with another ``--data`` would count
    its samples of the same name as done and add the rest, one dataset from two sources.

    The manifest names each sample's source image (resolved). A dataset moved since (another path,
    the same renders) is recognised by its labels: the depth files of the first ``compare`` accepted
    samples are those linked into ``out``; with none accepted yet, by its old image being gone."""
    import filecmp

    src, dst = ZeroShapeLayout(data), ZeroShapeLayout(out)
    manifest = [r for r in dst.read_manifest() if isinstance(r, dict)]
    first = next((r for r in manifest if isinstance(r.get("source"), str)), None)
    if first is None or first["source"] == str(src.image(_sample(first)).resolve()):
        return
    compared = 0
    for rec in (r for r in manifest if r.get("status") == "ok"):
        a, b = src.depth(_sample(rec)), dst.depth(_sample(rec))
        if not (a.is_file() and b.is_file() and (os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False))):
            break
        compared += 1
        if compared == compare:
            return
    else:
        if compared or not Path(first["source"]).exists():
            return
    root = Path(first["source"]).parent.parent.parent  # <root>/images_processed/<category>/<name>.png
    raise ConfigError(
        f"{out} was synthesized from {root}, not --data {data}: resume with --data {root}, or use a new --out"
    )


def _sample(record: dict[str, Any]) -> SampleId:
    return SampleId(record["category"], record["object"], record["view"])


# ---- the loop ---------------------------------------------------------------------------------


class _Run:
    """State of one :func:`synthesize` call: loaded renders, attempt logs, the manifest writer."""

    def __init__(
        self,
        src: ZeroShapeLayout,
        dst: ZeroShapeLayout,
        config: DiffuseConfig,
        appearance: AppearanceModel,
        background: BackgroundModel,
        shard: str,
        save_foreground: bool,
        report: SynthReport,
    ):
        self.src, self.dst, self.config = src, dst, config
        self.appearance, self.background = appearance, background
        self.models = {**appearance.model_ids, **background.model_ids}
        self.shard, self.save_foreground, self.report = shard, save_foreground, report
        self.renders: dict[str, Render] = {}
        self.attempts: dict[str, list[dict[str, Any]]] = {}
        self.seconds: dict[str, float] = {}

    def record(self, job: Job, status: str, **extra: Any) -> None:
        """Append the sample's manifest record: from now on it counts as done (or, for errors, tried)."""
        sid = job.sid
        attempts = self.attempts.pop(sid.name, [])
        self.renders.pop(sid.name, None)
        self.seconds.pop(sid.name, None)
        record = {
            "sample": sid.name,
            "category": sid.category,
            "object": sid.object,
            "view": sid.view,
            "splits": list(job.splits),
            "source": str(self.src.image(sid).resolve()),
            "status": status,
            "attempts": attempts,
            "retries": max(len(attempts) - 1, 0) if status == "ok" else len(attempts),
            "models": self.models,
            "shard": self.shard,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **extra,
        }
        self.dst.append_manifest(record_code(record))

    def load(self, batch: list[tuple[Job, int]]) -> list[tuple[Job, int]]:
        """The batch minus renders that cannot be read (``error``) or are not clean renders on white
        (``unsuitable``: their own silhouette misses the filter, so no synthesis could pass it)."""
        ready = []
        for job, attempt in batch:
            name = job.sid.name
            if name not in self.renders:
                try:
                    render = load_render(self.src, job.sid)
                except InputError as e:
                    self.report.errors += 1
                    self.record(job, "error", reason=str(e))
                    continue
                own = silhouette_iou(render.image, render.mask, self.config.fg_threshold)
                if own < self.config.min_iou:
                    self.report.unsuitable += 1
                    reason = (
                        f"the source image is not an object on a white background: its own silhouette IoU is "
                        f"{own:.3f} < {self.config.min_iou} (composite renders onto white first)"
                    )
                    self.record(job, "unsuitable", reason=reason, source_iou=own)
                    continue
                self.renders[name] = render
            ready.append((job, attempt))
        return ready

    def appearance_step(self, ready: list[tuple[Job, int]]) -> tuple[list[tuple[Job, np.ndarray]], list, list[int]]:
        """Synthesize and filter; returns (accepted (job, image)), retries (job, attempt), timesteps."""
        cfg = self.config
        draws, guides, controls = [], [], []
        for job, attempt in ready:
            name = job.sid.name
            draws.append(
                draw_appearance(category_noun(job.sid.category), derive_seed(cfg.seed, "appearance", name, attempt))
            )
            rng = np.random.default_rng(derive_seed(cfg.seed, "perturb", name, attempt))
            render = self.renders[name]
            guides.append(perturb_guidance(render.image, render.mask, rng, cfg.perturbation))
            controls.append(render.control)
        t0 = time.perf_counter()
        result = self.appearance(guides, controls, [d.prompt for d in draws], [d.seed for d in draws])
        per_sample = (time.perf_counter() - t0) / len(ready)
        accepted, retries = [], []
        for (job, attempt), draw, image in zip(ready, draws, result.images):
            name = job.sid.name
            iou = silhouette_iou(image, self.renders[name].mask, cfg.fg_threshold)
            tried = {"seed": draw.seed, "prompt": draw.prompt, "color": draw.color, "material": draw.material}
            self.attempts.setdefault(name, []).append({**tried, "iou": iou})
            self.seconds[name] = self.seconds.get(name, 0.0) + per_sample
            if iou >= cfg.min_iou:
                accepted.append((job, image))
                continue
            self.report.rejected += 1
            if attempt < cfg.max_retries:
                retries.append((job, attempt + 1))
            else:
                self.report.failed += 1
                self.record(
                    job, "failed", reason=f"silhouette IoU stayed below {cfg.min_iou} in {attempt + 1} attempts"
                )
        return accepted, retries, list(result.timesteps)

    def background_step(self, accepted: list[tuple[Job, np.ndarray]], timesteps: list[int]) -> None:
        """Outpaint backgrounds, write the samples and their manifest records."""
        cfg = self.config
        names = [job.sid.name for job, _ in accepted]
        scenes = [draw_scene(derive_seed(cfg.seed, "scene", n)) for n in names]
        prompts = [background_prompt(category_noun(j.sid.category), s) for (j, _), s in zip(accepted, scenes)]
        seeds = [derive_seed(cfg.seed, "background", n) for n in names]
        masks = [self.renders[n].mask for n in names]
        t0 = time.perf_counter()
        outputs = self.background([img for _, img in accepted], masks, prompts, seeds)
        per_sample = (time.perf_counter() - t0) / len(accepted)
        for (job, fg), out, mask, scene, prompt, seed in zip(accepted, outputs, masks, scenes, prompts, seeds):
            # the model composites already; doing it here too makes exactness independent of the model
            write_sample(self.src, self.dst, job.sid, composite(fg, out, mask), fg if self.save_foreground else None)
            last = self.attempts[job.sid.name][-1]
            self.report.accepted += 1
            self.record(
                job,
                "ok",
                prompt=last["prompt"],
                seed=last["seed"],
                iou=last["iou"],
                scene=scene,
                background_prompt=prompt,
                background_seed=seed,
                denoising_steps=len(timesteps),
                start_timestep=timesteps[0] if timesteps else None,
                timings={"appearance_s": round(self.seconds[job.sid.name], 4), "background_s": round(per_sample, 4)},
            )


def synthesize(
    data: str | os.PathLike,
    out: str | os.PathLike,
    config: DiffuseConfig,
    appearance: AppearanceModel,
    background: BackgroundModel,
    *,
    batch_size: int = 4,
    shard: tuple[int, int] = (0, 1),
    limit: int | None = None,
    save_foreground: bool = False,
    progress: Callable[[SynthReport], None] | None = None,
) -> SynthReport:
    """Run Algorithm 1 over the renders of ``data`` (this shard), writing to ``out``.

    Args:
        data: source dataset root (ZeroShape layout; renders on a white background).
        out: output dataset root; may already hold a partial run with the same ``config``.
        config: generation settings (checked against the ones stored in ``out``).
        appearance, background: the two models (batched callables).
        batch_size: renders per pipeline call (a batch mixes new renders and retries).
        shard: ``(i, n)``: this process takes every n-th render from the i-th.
        limit: process at most this many pending renders (None = all).
        save_foreground: also write the appearance stage's image to ``out/foreground/``.
        progress: called with the running counts after every batch.
    """
    src, dst = ZeroShapeLayout(data), ZeroShapeLayout(out)
    if not src.root.is_dir():
        raise InputError(f"--data {src.root} is not a directory")
    if src.root.resolve() == dst.root.resolve():
        raise ConfigError("--out must differ from --data (the source renders are kept unchanged)")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    all_jobs = plan(src, config.views_per_object)
    if not all_jobs:
        raise InputError(f"{src.root} has no renders: no lists/<category>_<split>.list files name any")
    jobs = select_shard(all_jobs, *shard)
    if not check_resume(dst.root, config, src.root):
        from zsw.config import dump_yaml

        dump_yaml(config, dst.root / CONFIG_FILE)
    done = finished_samples(dst)
    todo = [j for j in jobs if j.sid.name not in done]
    report = SynthReport(total=len(jobs), skipped=len(jobs) - len(todo))
    if note := other_code_note(done, dst.root, "samples", "synthesized"):
        report.notes.append(note)
    if limit is not None:
        todo = todo[:limit]
        report.total = report.skipped + len(todo)
    run = _Run(src, dst, config, appearance, background, f"{shard[0]}/{shard[1]}", save_foreground, report)
    queue: deque[tuple[Job, int]] = deque((job, 0) for job in todo)
    start = time.perf_counter()
    if progress:
        progress(report)
    try:
        while queue:
            ready = run.load([queue.popleft() for _ in range(min(batch_size, len(queue)))])
            if ready:
                accepted, retries, timesteps = run.appearance_step(ready)
                queue.extendleft(reversed(retries))  # retries first: a render finishes soon after it starts
                if accepted:
                    run.background_step(accepted, timesteps)
            report.elapsed_s = time.perf_counter() - start
            if progress:
                progress(report)
    finally:
        report.elapsed_s = time.perf_counter() - start
        write_lists(src, dst)
    return report
