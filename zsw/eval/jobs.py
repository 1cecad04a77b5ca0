"""The evaluation job: an evaluation set in, a summary (JSON + Markdown) and per-sample rows out.

:func:`evaluate_set` is what ``zsw eval`` runs and what a Python user calls::

    from zsw.eval.jobs import EvalJobSettings, evaluate_set

    report = evaluate_set("data/Pix3D", "results.json", EvalJobSettings(format="pix3d", limit=20))
    print(report.summary["overall"]["cd"])

Outputs: ``out`` (summary JSON), ``out`` with ``.md`` (tables) and ``.samples.jsonl`` (one row per
sample, fsynced as it finishes). A rerun with the same settings, weights and dataset resumes from
the JSONL; anything that changes a number starts afresh only with ``overwrite``. While one
evaluation writes ``out``, a second one into it stops at once with one line naming the first
(:func:`zsw.locks.lock_file`: ``.<name>.lock`` beside ``out`` for the run).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from zsw.data.eval_sets import EVAL_FORMATS, open_eval_set
from zsw.errors import ConfigError, InputError, OptionError, ZswError
from zsw.eval.evaluate import EvalSettings, ResultsLog, evaluate_samples, summarize, summary_markdown
from zsw.infer.cutout import check_cutout, open_cutout
from zsw.infer.mesh_ops import check_mesh_options
from zsw.infer.precision import run_precision
from zsw.infer.reconstruct import Reconstructor
from zsw.infer.settings import (
    BACKENDS,
    BACKGROUNDS,
    MIN_PART,
    REFRAMES,
    SMOOTH,
    TTAS,
    GridSettings,
    is_estimated_prompt,
)
from zsw.infer.tta import resolve_tta
from zsw.infer.weights import open_backend, resolve_backend, weights_identity
from zsw.io import (
    RESULT_PACKAGES,
    atomic_write_json,
    atomic_write_text,
    check_out_folder,
    code_identity,
    remove_leftovers,
)
from zsw.locks import lock_file
from zsw.report import Reporter

__all__ = ["EvalJobSettings", "EvalReport", "evaluate_set"]


@dataclass(frozen=True)
class EvalJobSettings:
    """Everything ``zsw eval`` is asked. The fields that change a number go into the resume key
    (:class:`~zsw.eval.evaluate.EvalSettings`); the others choose samples or hardware."""

    format: str
    weights: str | None = None
    grid: GridSettings = field(default_factory=GridSettings)
    num_points: int = 10000
    align: str = "none"
    prompt: str = "object"
    use_mask: bool = False
    baseline: str | None = None
    seed: int = 0
    precision: str = "auto"
    reframe: str = "auto"
    background: str = "auto"
    min_part: float = MIN_PART
    smooth: int = SMOOTH
    faces: int | None = None
    tta: str = "auto"
    carve: bool = True
    cutout: str = "auto"
    split: str | None = None
    max_per_category: int | None = None
    limit: int | None = None
    device: str | None = None
    batch_size: int = 1
    backend: str = "auto"
    engine: Path | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.format not in EVAL_FORMATS:
            raise OptionError(f"--format: {self.format!r} is not one of {', '.join(EVAL_FORMATS)}")
        if self.reframe not in REFRAMES:
            raise OptionError(f"--reframe: {self.reframe!r} is not one of {', '.join(REFRAMES)}")
        if self.background not in BACKGROUNDS:
            raise OptionError(f"--background: {self.background!r} is not one of {', '.join(BACKGROUNDS)}")
        if self.tta not in TTAS:
            raise OptionError(f"--tta: {self.tta!r} is not one of {', '.join(TTAS)}")
        if self.backend not in BACKENDS:
            raise OptionError(f"--backend: {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if not (math.isfinite(self.min_part) and 0.0 <= self.min_part <= 1.0):
            raise OptionError(f"--min-part: {self.min_part} is not a fraction in [0, 1]")
        check_mesh_options(self.smooth, self.faces)
        object.__setattr__(self, "cutout", check_cutout(self.cutout))
        for name in ("batch_size", "limit", "max_per_category", "num_points"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise OptionError(f"--{name.replace('_', '-')}: {value} is below 1")

    def reconstructor(self, backend, label: str | None = None) -> Reconstructor:
        """The reconstruction ``zsw eval`` scores, with these settings: camera frame, no colours.
        Benches that study the scored meshes build theirs here, so that they cannot drift apart."""
        return Reconstructor(backend, grid=self.grid, frame="camera", weights_label=label, precision=self.precision,
                             color="none", reframe=self.reframe, background=self.background, min_part=self.min_part,
                             smooth=self.smooth, faces=self.faces, tta=self.tta, carve=self.carve)  # fmt: skip


@dataclass
class EvalReport:
    """What an evaluation job wrote and measured."""

    out: Path
    markdown: Path
    samples_jsonl: Path
    result: dict  # the summary JSON's content
    failures: list[str]
    title: str

    @property
    def summary(self) -> dict:
        return self.result

    @property
    def ok(self) -> bool:
        return not self.failures


def evaluate_set(
    data: str | os.PathLike,
    out: str | os.PathLike,
    settings: EvalJobSettings,
    reporter: Reporter | None = None,
) -> EvalReport:
    """Evaluate the model (or a baseline) on the set in ``data``; write and return the summary."""
    data, out, s = Path(data), Path(out), settings
    reporter = reporter or Reporter()
    if out.is_dir():  # checked before any work, not after it
        raise ConfigError(f"--out {out} is a folder; give the summary's file name (e.g. {out / 'results.json'})")
    if out.suffix.lower() == ".md" or out.name.endswith(".samples.jsonl"):  # the names of the files beside it
        raise OptionError(
            f"--out {out}: give the JSON summary's name (e.g. results.json); the .md table goes beside it"
        )
    check_out_folder(out.parent, "--out's folder")
    with lock_file(out, "--out"):  # a second evaluation into the same files stops here
        return _evaluate(data, out, s, reporter)


def _evaluate(data: Path, out: Path, s: EvalJobSettings, reporter: Reporter) -> EvalReport:
    samples = open_eval_set(data, s.format, split=s.split, max_per_category=s.max_per_category)
    names = samples.names()[: s.limit] if s.limit else samples.names()
    if not names:
        raise InputError(f"{data} holds no {s.format} samples")
    kind = resolve_backend(s.backend, s.weights, s.engine, s.device, s.precision)
    backend, label, warning = open_backend(kind, s.weights, s.engine, s.device)
    if warning:
        reporter.warning(warning)
    cutout = open_cutout(s.cutout)
    measured = _measured(data, weights_identity(s.weights, s.engine), s, backend, cutout)
    jsonl = out.with_name(out.stem + ".samples.jsonl")
    remove_leftovers(out.parent, names=[out.name, out.with_suffix(".md").name, jsonl.name])  # of a killed run
    log = ResultsLog(jsonl, measured, overwrite=s.overwrite, fingerprints=samples.fingerprints())
    for stale in (out, out.with_suffix(".md")):  # an earlier run's summary: rewritten at the end of this one
        stale.unlink(missing_ok=True)
    if resumed := len(log.done & set(names)):
        reporter.info(f"resuming: {resumed} sample(s) already in {jsonl}")
    recon = s.reconstructor(backend, label)
    estimator = None
    if is_estimated_prompt(s.prompt):
        from zsw.infer.category import get_estimator

        estimator = get_estimator(s.prompt, device=str(backend.device))
    if s.align == "brute-force" and backend.device.type != "cuda" and s.num_points > 2000:
        reporter.info(
            f"note: brute-force alignment of {s.num_points} points on the CPU scores 3,216 distinct rotations "
            "with k-d trees: minutes per sample; a GPU runs the batched Chamfer kernel"
        )
    failures = _run(samples, names, log, recon, measured, s.batch_size, estimator, reporter, cutout)
    rows = [r for r in log.rows if r["name"] in set(names)]
    result = {"settings": measured.__dict__, "data": str(data), "samples": len(names), "limit": s.limit,
              "set_samples": len(samples.names()), "evaluated": len(rows), "failed": len(failures),
              "skipped_unreadable": samples.skipped, **summarize(rows)}  # fmt: skip
    title = f"{s.format} - {label}" + (f" - baseline {s.baseline}" if s.baseline else "")
    atomic_write_json(out, result)
    atomic_write_text(out.with_suffix(".md"), summary_markdown(result, title))
    return EvalReport(out, out.with_suffix(".md"), jsonl, result, failures, title)


def _measured(data: Path, weights: str, s: EvalJobSettings, backend, cutout=None) -> EvalSettings:
    """The resume key: every setting that changes a number, the weights' identity and the set's
    folder (each sample's files are keyed in its own row: :class:`~zsw.eval.evaluate.ResultsLog`)."""
    from zsw import __version__

    precision = run_precision(backend.name, s.precision, backend.device)
    g = s.grid
    return EvalSettings(format=s.format, weights=weights, resolution=g.resolution, extraction=g.extraction,
                        fast=g.refinement,
                        threshold=g.threshold, bound=g.bound, close=g.close, num_points=s.num_points,
                        align=s.align, prompt=s.prompt, use_mask=s.use_mask, baseline=s.baseline, seed=s.seed,
                        precision=precision, reframe=s.reframe, background=s.background, min_part=s.min_part,
                        smooth=s.smooth, faces=s.faces, tta=resolve_tta(s.tta, backend.device), carve=s.carve,
                        cutout=cutout.identity if cutout else "none",
                        data=str(data.resolve()), zsw_version=__version__,
                        zsw_code=code_identity((*RESULT_PACKAGES, "zsw.eval")))  # fmt: skip


def _run(samples, names, log, recon, measured, batch_size, estimator, reporter, cutout=None) -> list[str]:
    """Score the samples not yet in the log; returns the failures (the others are in the log)."""
    failures: list[str] = []
    todo = [i for i, n in enumerate(names) if n not in log.done]
    with reporter.progress("evaluating", len(todo)) as advance:

        def on_sample(row: dict | None, error: str | None) -> None:
            if error:
                failures.append(error)
                reporter.error(error)
            elif row is not None:
                reporter.info(f"{row['name']}: CD {row['cd']:.4f}, F@0.05 {row['fscore@0.05']:.3f}")
            advance(1)

        def lazy():
            for i in todo:
                try:
                    yield samples[i]
                except (ZswError, OSError, ValueError) as e:  # a corrupt sample: count it, go on
                    on_sample(None, str(e))

        evaluate_samples(lazy(), recon, measured, log, batch_size=batch_size, estimator=estimator,
                         on_sample=on_sample, cutout=cutout)  # fmt: skip
    return failures
