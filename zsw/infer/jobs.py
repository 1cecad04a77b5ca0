"""The reconstruction job: images in, one result folder per image out.

:func:`reconstruct_many` is what ``zsw reconstruct`` runs, what the web app runs for an upload and
what a Python user calls for a folder of photos, so the three cannot disagree::

    from zsw.infer.jobs import reconstruct_many
    from zsw.infer.settings import GridSettings, ReconstructSettings

    report = reconstruct_many(["photos/"], "out", ReconstructSettings(grid=GridSettings(resolution=96)))
    print(report.summary())

For each image: find it, hash it, skip it when ``out/<name>/result.json`` records the same input,
settings and weights, else load it (and its mask), estimate its category if asked, reconstruct it
in batches, and write its files (atomically, ``result.json`` last). A failing image is reported and
counted; the others go on.

Other processes may write into ``out`` at the same time: each image's folder is claimed (locked)
from just before its batch is loaded until its files are written
(:func:`zsw.infer.reruns.claim_output`). An image whose folder another process holds waits for it
until the rest is done, then claims again: it is skipped when the other process left the same
request there, and goes to its own folder otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from zsw.errors import ConfigError, InputError, ZswError
from zsw.hub import resolve_device
from zsw.infer.cutout import open_cutout, remover_for
from zsw.infer.image import RAW_SUFFIXES, LoadedImage, find_images, load_image, load_mask
from zsw.infer.reruns import (
    FolderNames,
    claim_output,
    find_mask,
    finished_with,
    masks_among,
    plan_reruns,
    without_results,
)
from zsw.infer.settings import ReconstructSettings, is_estimated_prompt
from zsw.infer.weights import check_inputs, resolve_backend, weights_identity
from zsw.io import check_out_folder
from zsw.locks import Lock, holder, wait_folder
from zsw.report import Reporter

if TYPE_CHECKING:  # PyTorch is imported once there is work: a rerun with nothing to do plans without it
    from zsw.infer.reconstruct import Reconstructor
    from zsw.infer.result import Reconstruction

__all__ = ["reconstruct_many", "ReconstructReport"]


@dataclass
class ReconstructReport:
    """What a reconstruction job did.

    Attributes:
        out: the output folder.
        written: result folders written by this run, in input order.
        skipped: images whose earlier result records the same input, settings and weights.
        redone: images redone because their earlier result came from something else.
        failed: ``(input, reason)`` for every input that failed.
        total: inputs asked for (images found plus inputs that named nothing).
    """

    out: Path
    written: list[Path] = field(default_factory=list)
    skipped: int = 0
    redone: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    total: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        return (
            f"reconstructed {len(self.written)}, skipped {self.skipped}, failed {len(self.failed)} "
            f"of {self.total} input(s) -> {self.out}"
        )


@dataclass
class _Item:
    path: Path
    name: str
    request: dict
    image: LoadedImage | None = None
    mask: object = None  # [S, S] bool array or None
    load_s: float = 0.0
    claim: Lock | None = None  # held while the image's folder is written
    busy: list[Path] = field(default_factory=list)  # folders of other processes it waits for
    copies: list[_Item] = field(default_factory=list)  # later inputs of the same bytes and request
    result: Reconstruction | None = None  # kept, once written, until its copies are written too


def reconstruct_many(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    settings: ReconstructSettings | None = None,
    reporter: Reporter | None = None,
) -> ReconstructReport:
    """Reconstruct every image that ``inputs`` names (files, folders, glob patterns) into
    ``out/<name>/`` (mesh, depth, masks, preview, ``result.json``). See the module docstring."""
    settings = settings or ReconstructSettings()
    if not isinstance(settings, ReconstructSettings):
        raise ConfigError(f"settings must be a ReconstructSettings, got {type(settings).__name__}")
    reporter = reporter or Reporter()
    if isinstance(inputs, (str, os.PathLike)):  # one path, not a sequence of characters
        inputs = [inputs]
    inputs = list(inputs)  # a generator (Path.glob) is read once: by the check below, then by nobody
    if bad := [i for i in inputs if not isinstance(i, (str, os.PathLike))]:
        raise InputError(
            f"inputs must be image files, folders or glob patterns, got a {type(bad[0]).__name__}; "
            "zsw.reconstruct takes arrays and PIL images"
        )
    out = Path(out)
    check_out_folder(out, "--out")  # before any work, not after every photo's
    report = ReconstructReport(out=out)
    others: list[Path] = []
    paths, problems = find_images(inputs, others)
    if others:
        raws = [f for f in others if f.suffix.lower() in RAW_SUFFIXES]
        such = ", ".join(f.name for f in others[:3]) + (", ..." if len(others) > 3 else "")
        reporter.info(
            f"passing over {len(others)} file(s) in the folder(s) given that are not images zsw reads ({such})"
            + (f"; export the {len(raws)} camera RAW file(s) as JPEG, PNG or TIFF to reconstruct them" if raws else "")
        )
    paths, ours = without_results(paths)
    if ours:
        reporter.info(
            f"passing over {len(ours)} image(s) that zsw wrote into result folders, such as {ours[0]}: "
            "they are not photos (copy one out of its folder to reconstruct it)"
        )
    if settings.masks is not None:
        paths, masks = masks_among(paths, settings.masks)
        if masks:
            reporter.info(f"passing over {len(masks)} image(s) that are the masks of others, such as {masks[0]}")
    if "usdz" in settings.formats and not settings.texture and settings.color == "photo":
        reporter.info(
            "mesh.usdz holds vertex colours, which AR Quick Look does not show (it draws the mesh plain); "
            "for colours on an iPhone or iPad add --texture 1024 (with --faces 5000)"
        )
    report.total = len(paths) + len(problems)
    for item, reason in problems:
        _fail(report, reporter, item, reason)
    check_inputs(settings.device, settings.weights)  # before any "redoing" line
    identity = weights_identity(settings.weights, settings.engine)
    backend = resolve_backend(settings.backend, settings.weights, settings.engine, settings.device, settings.precision)
    cutout = open_cutout(settings.cutout)  # before planning: its model is part of what a rerun compares
    device = resolve_device(settings.device)  # resolves auto precision and --tta: recorded as resolved
    request = settings.request(identity, backend, cutout=cutout.identity if cutout else None, device=device)
    used = FolderNames()  # every folder name this run gives out, compared as a Mac compares them
    box_of = settings.box_of if settings.boxes is not None else None  # each photo's own box, in its request
    todo, report.redone, errors = plan_reruns(paths, out, request, settings.masks, settings.overwrite, used, box_of)
    for path, reason in errors:
        _fail(report, reporter, str(path), reason)
    report.skipped = len(paths) - len(todo) - len(errors)
    if report.skipped:
        reporter.info(
            f"skipping {report.skipped} image(s) already reconstructed in {out} from the same input and settings"
        )
    if report.redone:
        reporter.info(
            f"redoing {report.redone} image(s) in {out} made from another input, settings, weights or zsw code, "
            "or missing a file"
        )
    if todo:
        items = [_Item(p, n, r) for p, n, r in todo]
        _run(items, out, settings, backend, identity, cutout, reporter, report, used)
    return report


def _fail(report: ReconstructReport, reporter: Reporter, item: str, reason: str) -> None:
    report.failed.append((item, reason))
    reporter.error(f"{item}: {reason}")


def _run(
    items: list[_Item], out: Path, s: ReconstructSettings, kind: str, identity: str, cutout, reporter, report, used
) -> None:
    from zsw.infer.reconstruct import Reconstructor
    from zsw.infer.weights import cached_backend

    backend, label, warning = cached_backend(kind, s.weights, s.engine, s.device, identity)
    recon = Reconstructor(backend, grid=s.grid, frame=s.frame, weights_label=label, precision=s.precision,
                          color=s.color, min_part=s.min_part, smooth=s.smooth, faces=s.faces, reframe=s.reframe,
                          background=s.background, tta=s.tta, texture=s.texture, carve=s.carve)  # fmt: skip
    if warning:
        recon.warnings.insert(0, warning)
    for w in recon.warnings:  # said once for the run, and recorded in every result.json
        reporter.warning(w)
    estimator = None
    if is_estimated_prompt(s.prompt):
        from zsw.infer.category import get_estimator

        estimator = get_estimator(s.prompt, device=str(backend.device))
    elif s.prompt != recon.default_prompt():  # a missing text model fails the run once, not every photo
        backend.embed_prompts([s.prompt], 1)
    total = len(items)
    items = _same_requests(items, s)
    with reporter.progress("reconstructing", total) as advance:
        while items:
            waiting = []
            for start in range(0, len(items), s.batch_size):
                chunk = items[start : start + s.batch_size]
                claimed = _claim(chunk, out, s, used, reporter, report)
                try:
                    batch = [it for it in claimed if _load(it, recon, s, cutout, reporter, report)]
                    if batch:
                        prompts, source = _prompts(batch, s.prompt, estimator)
                        _reconstruct(batch, prompts, source, recon, out, s, reporter, report)
                finally:
                    for it in claimed:
                        it.claim.release()
                deferred, done = [it for it in chunk if it.busy], [it for it in chunk if not it.busy]
                copies = sum(len(it.copies) for it in done)
                for it in done:  # the copies of a photo written now, or run on their own if it was not
                    deferred += _write_copies(it, out, s, used, reporter, report, frozenset(recon.warnings))
                waiting += deferred
                advance(len(chunk) + copies - len(deferred))
            items = _wait(waiting, reporter)


def _same_requests(items: list[_Item], s: ReconstructSettings) -> list[_Item]:
    """The items to compute: a later input with the same request as an earlier one (the same bytes,
    mask and settings: one photo given twice, under two names or from two folders) becomes a copy
    of the earlier one, written into its own folder from the same reconstruction. Not where a
    missing mask is noted by the photo's own name (``--masks`` without one for it)."""
    first: dict[str, _Item] = {}
    todo = []
    for it in items:
        key = json.dumps(it.request, sort_keys=True)
        if key in first and not (s.masks is not None and it.request.get("mask_sha256") is None):
            first[key].copies.append(it)
        else:
            first.setdefault(key, it)
            todo.append(it)
    return todo


def _write_copies(item: _Item, out: Path, s: ReconstructSettings, used: FolderNames, reporter, report, said) -> list:
    """Write ``item``'s reconstruction into each of its copies' folders, then let go of both; returns
    the copies left to run on their own (``item`` was not written, or another process holds a
    copy's folder)."""
    copies, result, item.copies, item.result = item.copies, item.result, [], None
    if result is None:
        return copies
    left = []
    for copy in copies:
        if not _claim([copy], out, s, used, reporter, report):
            left += [copy] if copy.busy else []  # else: skipped, another process made it meanwhile
            continue
        try:
            rec = dataclasses.replace(result, name=copy.name, record=deepcopy(result.record))
            rec.record.name = copy.name
            note = f"the same bytes as {item.path} in this run: written from its reconstruction"
            source = str(copy.path.absolute())
            rec.record.input = {**rec.record.input, "source": source, "notes": [*rec.record.input["notes"], note]}
            _save(copy, rec, rec.record.prompt_source, out, s, reporter, report, said=said)
        finally:
            copy.claim.release()
    return left


def _claim(chunk: list[_Item], out: Path, s: ReconstructSettings, used: FolderNames, reporter, report) -> list[_Item]:
    """Claim each image's folder (:func:`~zsw.infer.reruns.claim_output`; its name may differ from
    the plan's when another process took that folder meanwhile); returns the images to reconstruct
    now. An image another process finished meanwhile with the same request is skipped; one whose
    stem's folders another process holds keeps them in ``busy`` and waits."""
    claimed: list[_Item] = []
    try:
        for it in chunk:
            used.discard(it.name)
            got = claim_output(it.path, it.request, out, used)
            it.busy = got.busy
            if got.lock is None:  # waits; its planned name stays its own meanwhile
                used.add(it.name)
                continue
            it.name, it.claim = got.name, got.lock
            used.add(it.name)
            if not s.overwrite and finished_with(out / it.name, it.request) == "same":
                it.claim.release()
                report.skipped += 1
                reporter.info(f"{it.path}: skipped, another process reconstructed it into {out / it.name} meanwhile")
                continue
            claimed.append(it)
    except BaseException:
        for it in claimed:
            it.claim.release()
        raise
    return claimed


def _wait(items: list[_Item], reporter) -> list[_Item]:
    """Wait (holding no folder) until the folders ``items`` wait for are released; returns them,
    to be claimed again."""
    for folder in dict.fromkeys(f for it in items for f in it.busy):
        who = holder(folder)  # a stuck holder is then one the user can find and stop
        reporter.info(f"waiting for another process writing {folder}" + (f" ({who})" if who else ""))
        wait_folder(folder)
    return items


def _load(item: _Item, recon: Reconstructor, s: ReconstructSettings, cutout, reporter, report) -> bool:
    """Read the image (and its mask; a photo with a mask is not cut out: the user's outline wins);
    False, reported, if it cannot be used."""
    try:
        t0 = time.perf_counter()
        mask_file = find_mask(s.masks, item.path) if s.masks is not None else None
        size = recon.backend.config.pixel.image_size
        box = item.request.get("box")  # the run's --box, or this photo's entry in a --box FILE
        remover = remover_for(cutout, mask=mask_file is not None, box=box is not None)
        item.image = load_image(item.path, size, name=item.name, cutout=remover)
        if box is not None:
            item.image = item.image.with_box(tuple(box))
        elif s.boxes is not None:  # said on the terminal and in result.json's notes
            note = f"no box for {item.path.name} in {s.boxes}: the model finds the object"
            item.image = dataclasses.replace(item.image, notes=[*item.image.notes, note])
            reporter.warning(f"{item.path}: {note}")
        if s.masks is not None:
            if mask_file is not None:
                item.mask = load_mask(mask_file, item.image)
            elif recon.needs_mask:
                raise InputError(f"{item.path}: no mask named {item.path.stem}.* in {s.masks}")
            else:  # the model predicts one: said on the terminal and in result.json's notes
                note = f"no mask named {item.path.stem}.* in {s.masks}: the predicted mask is used"
                item.image = dataclasses.replace(item.image, notes=[*item.image.notes, note])
                reporter.warning(f"{item.path}: {note}")
        item.load_s = time.perf_counter() - t0
        return True
    except ZswError as e:
        _fail(report, reporter, str(item.path), str(e).removeprefix(f"{item.path}: "))
        return False


def _prompts(batch: list[_Item], prompt: str, estimator) -> tuple[list[str], str]:
    if estimator is not None:
        from PIL import Image

        return estimator([Image.fromarray(it.image.image) for it in batch]), "auto"
    return [prompt] * len(batch), ("user" if prompt != "object" else "default")


def _reconstruct(batch, prompts, source, recon, out, s, reporter, report) -> None:
    """One model call for the batch; a failing batch is retried image by image."""
    masks = [it.mask for it in batch] if any(it.mask is not None for it in batch) else None
    try:
        results = recon([it.image for it in batch], prompts, masks)
    except ZswError as e:
        if len(batch) == 1:
            return _fail(report, reporter, str(batch[0].path), str(e))
        for it, p in zip(batch, prompts):
            _reconstruct([it], [p], source, recon, out, s, reporter, report)
        return None
    for it, rec in zip(batch, results):
        _save(it, rec, source, out, s, reporter, report, said=frozenset(recon.warnings))
    return None


def _save(
    item: _Item, rec: Reconstruction, source: str, out: Path, s, reporter, report, said: frozenset = frozenset()
) -> None:
    """Write one image's results and say what became of it: its mesh, and its own warnings (an
    empty mesh, a face budget not reached, a mesh left open); ``said``: the run's warnings, which
    every result.json repeats but the terminal said once at the start."""
    rec.record.request = item.request
    rec.record.prompt_source = source
    rec.record.timings_s.load = item.load_s
    try:
        rec.save(out / rec.name, s.formats, preview=s.preview)
    except (OSError, ZswError) as e:
        return _fail(report, reporter, str(item.path), f"cannot write results ({e})")
    report.written.append(out / rec.name)
    if item.copies:
        item.result = rec
    m = rec.record.mesh
    reporter.info(f"{item.path} -> {out / rec.name} ({m.vertices} vertices, {m.faces} faces)")
    own = [w for w in rec.record.warnings if w not in said]
    if m.faces == 0 and not any(w.startswith("empty mesh") for w in own):  # written, but not a result to pass over
        own.append("empty mesh")
    for w in own:
        reporter.warning(f"{item.path}: {w}")
    return None
