"""Image to mesh: the ``zsw.reconstruct`` API and the engine behind ``zsw reconstruct``.

For every image::

    predict(backend, image, prompt)      depth, K, visible/occluder masks, latent K/V  (Backend)
    extract_meshes(backend.decode, ...)  occupancy grid -> marching cubes, normalised frame
    normalised * scale + center          camera frame (x right, y down, z forward)
    camera -> output frame               "gltf" (default), "upright" or "camera" (zsw.infer.orient)

Everything after :func:`~zsw.infer.backend.predict` uses only the
:class:`~zsw.infer.backend.Backend` protocol, so PyTorch, ONNX Runtime and TensorRT backends give
the same files. The pieces around it live beside this module: which weights and backend
(:mod:`zsw.infer.weights`), the precision (:mod:`zsw.infer.precision`), test-time augmentation
(:mod:`zsw.infer.tta`), the result and its files (:mod:`zsw.infer.result`), and which photos of a
folder run need work (:mod:`zsw.infer.reruns`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from zsw.errors import ConfigError, InputError, OptionError, ZswError
from zsw.infer.backend import Backend, predict
from zsw.infer.carve import SilhouetteBound, carved, host_masks
from zsw.infer.cutout import open_cutout, remover_for
from zsw.infer.grid import GridStats, drop_small_parts, grid_meshes
from zsw.infer.image import (
    FLAT_SPAN,
    LoadedImage,
    load_image,
    load_mask,
    object_window,
    reframe,
    reframe_mask,
    search_windows,
)
from zsw.infer.mesh_ops import check_mesh_options, decimate_mesh, smooth_mesh
from zsw.infer.orient import frame_pose, mean_up
from zsw.infer.precision import autocast, run_precision
from zsw.infer.record import CameraInfo, ColorInfo, GridInfo, MeshInfo, ModelInfo, ResultRecord, Timings
from zsw.infer.result import UNITS, Reconstruction, original_intrinsics
from zsw.infer.settings import (
    BACKGROUNDS,
    FRAMES,
    MIN_PART,
    REFRAMES,
    SMOOTH,
    GridSettings,
    is_estimated_prompt,
)
from zsw.infer.texture import bake_texture, check_texture_size
from zsw.infer.tta import occupancy_function, pixel_function, resolve_tta
from zsw.infer.weights import cached_backend, open_backend, resolve_backend
from zsw.model import PixelOutput

__all__ = [
    "reconstruct",
    "Reconstruction",
    "Reconstructor",
    "reframe_worthwhile",
    "MASK_CORRECTED",
    "MASK_COLOURS",
    "MASK_PREDICTED",
    "TEXTURE_FACES_HINT",
    "OCCLUDED_OUTLINE",
    "occluded_outline",
]

#: above this many faces ``--texture`` warns that charting is slow (xatlas: ~1 s at 5,000 faces,
#: ~20 s at the 40,000 of a 128 grid) and that ``--faces`` would speed it up
TEXTURE_FACES_HINT = 20_000

#: a reconstruction warns that the model sees something in front of the object when its occluder
#: mask borders at least this share of the object's outline: 90 of the 100 test scenes (1-2
#: occluders each), 8 of the same scenes without occluders, 11 of the 15 occluded and 1 of the 25
#: clear foreign renders (zsw.bench.foreign), none of the ten real example photos.
#: The packaged model's CD on those scenes is 0.062 with the occluders and 0.055 without, however
#: little they hide (bench/results/occlusion/).
OCCLUDED_OUTLINE = 0.08


def occluded_outline(visible: np.ndarray, occluder: np.ndarray | None) -> float:
    """The share of the visible mask's outline ([S, S] bool; its pixels with a neighbour outside it)
    within 2 pixels of the occluder mask: how much of what bounds the object in the photo is
    something in front of it. 0 without an occluder mask or a visible pixel."""
    from scipy import ndimage

    if occluder is None or not visible.any() or not occluder.any():
        return 0.0
    outline = visible & ~ndimage.binary_erosion(visible)
    return float((outline & ndimage.binary_dilation(occluder, iterations=2)).sum() / outline.sum())


#: ``reframe="auto"`` cuts a new input when the object's window is smaller than the current input's
#: side by this factor ...
REFRAME_ZOOM = 1.25
#: ... or its centre is off the input's centre by more than this fraction of the side. On views
#: cropped as in training a predicted mask is sometimes off by that much (an occluder, thin legs):
#: a smaller shift left alone costs less than cutting a wrong window (bench/framing.py)
REFRAME_SHIFT = 0.25
#: most windows cut around the predicted mask to frame the object, each looked at again
REFRAME_PASSES = 3
#: when the first look finds no object (a small one on a textured background), the photo is looked
#: at again in squares this many times closer, overlapping by half (:func:`zsw.infer.image.search_windows`)
SEARCH_ZOOM = 2.0


def reframe_worthwhile(current: tuple[int, int, int], window: tuple[int, int, int]) -> bool:
    """``reframe="auto"``'s rule: is the object's ``window`` (x0, y0, side) different enough from
    the ``current`` square to cut a new input?"""
    x0, y0, side = current
    nx0, ny0, nside = window
    shift = max(abs(nx0 + nside / 2 - x0 - side / 2), abs(ny0 + nside / 2 - y0 - side / 2)) / side
    return side >= REFRAME_ZOOM * nside or shift > REFRAME_SHIFT


#: a window cut around an object shows the photo at most this many times its own pixel size (a
#: smaller object is framed looser): the training images' blur (sigma <= 1.2 px) covers about a 2x
#: enlargement; on a photo blown up further the model marks smudges, and a chain of looks runs
#: away into them
MAX_UPSAMPLING = 2.0


def _no_closer(window: tuple[int, int, int], image: LoadedImage) -> tuple[int, int, int]:
    """``window`` (x0, y0, side, photo pixels), about its centre, widened to show the photo at most
    :data:`MAX_UPSAMPLING` times its pixel size (or as ``image`` shows it, when already closer)."""
    x0, y0, side = window
    least = min(int(np.ceil(image.size / MAX_UPSAMPLING)), image.square[2])
    if side >= least:
        return window
    return x0 - (least - side) // 2, y0 - (least - side) // 2, least


def look_score(how: str | None, obj: np.ndarray) -> tuple[bool, float]:
    """How far a framing look's object mask ``obj`` ``[S, S]`` is to be trusted, best first: the
    photo confirmed it (``how``: its plain background or its colours corrected the mask, see
    :func:`zsw.infer.background.correct_visible_mask`), then the share of the input it fills (an
    object framed as in training fills about half; a part of it, or a look that lost it, less).

    On photos unlike the training renders the pixel model may mark only a part of the object, the
    next window frames that part, and the chain of looks runs away into parts of parts; the look
    this picks instead of the last one has, on ZeroShape's ten objects pasted into textured photos
    (``bench/padding.py``), a mask IoU of 0.42 / 0.62 / 0.70 with the truth at a quarter, half and
    0.9 of the photo's side, against 0.39 / 0.55 / 0.64 for the last look
    (``bench/results/padding/README.md``)."""
    obj = np.asarray(obj, dtype=bool)
    return how is not None and bool(obj.any()), float(obj.mean())


def _prompts(prompt: str | Sequence[str] | None, n: int) -> list[str | None]:
    prompts = [prompt] * n if prompt is None or isinstance(prompt, str) else list(prompt)
    if len(prompts) != n:
        raise InputError(f"got {len(prompts)} prompts for {n} images")
    if any(isinstance(p, str) and not p.strip() for p in prompts):  # None is the default prompt, "" a slip
        raise OptionError("prompt: empty; give a category word such as 'chair', or None for the default")
    return prompts


#: result.json's ``mask`` for the model's own visible mask, nothing in the photo confirming it
MASK_PREDICTED = "predicted"
#: ... for a predicted visible mask that the photo's own background corrected
MASK_CORRECTED = "predicted, corrected by the photo's background"
#: ... and for one cut again by the colours of the object and its surroundings (a busy background)
MASK_COLOURS = "predicted, refined by the photo's colours"
#: :func:`zsw.infer.background.correct_visible_mask`'s answer -> result.json's ``mask``
_MASK_BY = {"background": MASK_CORRECTED, "colours": MASK_COLOURS}
#: ... and what it adds for a mask kept within ``--box``
IN_BOX = ", kept within the given box"


class _Look(NamedTuple):
    """One framing look: the input it saw, its output, and :func:`look_score` of its mask."""

    image: LoadedImage
    seen: _Seen
    score: tuple[bool, float]


@dataclass
class _Seen:
    """What a framing pass found for an input that it left as it was: the pixel model's output
    (one row) and the masks the reconstruction would compute again (see ``_corrected_masks``)."""

    pixel: PixelOutput
    visible: np.ndarray  # [S, S] bool: the predicted visible mask
    corrected: np.ndarray | None  # that mask corrected by the photo, or None
    how: str | None = None  # what corrected it: MASK_CORRECTED or MASK_COLOURS


class Reconstructor:
    """Reconstruct batches of prepared images with one backend and fixed extraction settings.

    Args:
        backend: any :class:`~zsw.infer.backend.Backend`.
        resolution: grid cells per axis (``resolution + 1`` samples).
        extraction: ``fast`` (coarse to fine) or ``dense``.
        threshold: occupancy probability of the surface.
        frame: output frame of the mesh, ``gltf``, ``upright`` or ``camera`` (:mod:`zsw.infer.orient`).
        chunk_points: most query points per decoder call (bounds memory; None: by device, see
            :func:`zsw.infer.settings.default_chunk_points`).
        weights_label: how the weights are named in ``result.json``.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``: autocast of the PyTorch backend (see
            :func:`~zsw.infer.precision.resolve_precision`); exported engines keep the precision they were built with.
        close: space outside the grid counts as empty, so meshes are watertight (default);
            False leaves surfaces that reach the grid's bound open there.
        min_part: drop disconnected parts whose surface area is below this fraction of the
            largest part's (default :data:`~zsw.infer.settings.MIN_PART`, as ``zsw reconstruct``
            and ``zsw eval``; 0 keeps everything).
        smooth: passes of Taubin smoothing after the crumbs are dropped (default
            :data:`~zsw.infer.settings.SMOOTH`, as ``zsw reconstruct`` and ``zsw eval``; 0 keeps
            the marching-cubes surface; :func:`~zsw.infer.mesh_ops.smooth_mesh`).
        faces: decimate each mesh to at most this many triangles (None keeps them all;
            :func:`~zsw.infer.mesh_ops.decimate_mesh`), before it is coloured.
        texture: also bake the photo into a ``texture x texture`` atlas after the vertex colours
            (0: not; :mod:`zsw.infer.texture`); needs ``color="photo"``.
        grid: all grid settings at once, as the jobs hold them; when given it replaces
            ``resolution``, ``extraction``, ``threshold``, ``bound``, ``close`` and ``chunk_points``.
        reframe: ``auto`` (default) cuts a new model input around the object -- centred, its
            longer side at :data:`~zsw.infer.image.OBJECT_FILL` of the input's, as in the training
            renders -- when the photo shows it smaller than that by 1/:data:`REFRAME_ZOOM` or off
            centre by more than :data:`REFRAME_SHIFT` of the side; ``always`` does it for every
            image, ``never`` keeps the photo as loaded. The object is the given mask (or an RGBA
            image's alpha), else the visible mask of a first pass of the pixel model; where that
            finds none, of squares of the photo :data:`SEARCH_ZOOM` times closer (``_search``).
        background: ``auto`` (default) corrects the predicted visible mask with the photo's own
            background where it tells one -- an RGBA image's transparency, or a border of one plain
            or graded colour -- and on a busy background cuts it again by the photo's colours where
            that cut agrees with it (:func:`zsw.infer.background.correct_visible_mask`); ``never``
            keeps the model's mask as it is. A given mask is never changed.
        tta: test-time augmentation. ``flip`` also runs the pixel model and the encoder on the
            input mirrored left to right -- its camera sees the scene reflected through the plane
            x = 0 -- and takes each query point's occupancy logit as the mean of the two fields' at
            the point and at its reflection (:func:`~zsw.infer.tta.occupancy_function`): grid
            decoding costs twice as much; the depth, masks and camera in the result are the
            unmirrored input's. ``flip-pixel`` runs only the pixel model on the mirrored input too,
            every time it runs (framing passes included), and uses the mean of the two outputs
            (:func:`~zsw.infer.tta.mirror_average`) as the pixel model's: one encoding, one
            decoding. ``none`` uses the input alone. ``auto`` (default,
            :func:`~zsw.infer.tta.resolve_tta`) is ``flip`` on CUDA and ``flip-pixel`` on the CPU.
            Every pixel-model pass reads the two masks as one label per pixel
            (:func:`~zsw.infer.tta.pixel_function`).
        carve: bound the occupancy where the photo shows background -- a point whose projection
            neither mask claims is outside the object (default; :mod:`zsw.infer.carve`); False
            leaves the decoder's field as it is.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        resolution: int = 128,
        extraction: str = "fast",
        threshold: float = 0.5,
        frame: str = "gltf",
        chunk_points: int | None = None,
        weights_label: str = "",
        bound: float = 1.5,
        precision: str = "auto",
        close: bool = True,
        color: str = "photo",
        min_part: float = MIN_PART,
        smooth: int = SMOOTH,
        faces: int | None = None,
        grid: GridSettings | None = None,
        reframe: str = "auto",
        background: str = "auto",
        tta: str = "auto",
        texture: int = 0,
        carve: bool = True,
    ):
        # Imported here, not inside the timed marching-cubes stage (~1 s cold). Importing it on a
        # thread while the model runs was measured and is slower: the import's Python holds the GIL
        # for 5 ms switch intervals that every small PyTorch op of the main thread then waits out.
        import trimesh  # noqa: F401

        from zsw.infer.color import COLOR_MODES

        if color not in COLOR_MODES:
            raise ConfigError(f"color must be one of {', '.join(COLOR_MODES)}, got {color!r}")
        if frame not in FRAMES:
            raise ConfigError(f"frame must be one of {', '.join(FRAMES)}, got {frame!r}")
        self.backend = backend
        self.grid = grid or GridSettings(resolution, extraction, threshold, bound, close, chunk_points)
        self.frame = frame
        self.weights_label = weights_label
        self.color = color
        if not 0.0 <= min_part <= 1.0:
            raise ConfigError(f"min_part must be a fraction in [0, 1], got {min_part}")
        self.min_part = min_part
        check_mesh_options(smooth, faces)
        self.smooth, self.faces = smooth, faces
        check_texture_size(texture, color)
        self.texture = texture
        if reframe not in REFRAMES:
            raise ConfigError(f"reframe must be one of {', '.join(REFRAMES)}, got {reframe!r}")
        self.reframe = reframe
        if background not in BACKGROUNDS:
            raise ConfigError(f"background must be one of {', '.join(BACKGROUNDS)}, got {background!r}")
        self.background = background
        self.carve = bool(carve)
        self.tta = resolve_tta(tta, backend.device)
        # the pixel model as every pass here runs it: framing, the background's masks, the prediction
        self._pixel = pixel_function(backend, self.tta)
        self.precision = run_precision(backend.name, precision, backend.device)
        self.warnings: list[str] = []
        if precision != "auto" and precision != self.precision:
            self.warnings.append(
                f"--precision {precision} is for the torch backend; the {backend.name} backend computes in "
                + ("the precision its engine was built with" if self.precision == "engine" else self.precision)
            )

    @property
    def needs_mask(self) -> bool:
        """True for models without a visible-mask head (ZeroShape): every image needs a mask."""
        return not self.backend.config.pixel.mask_heads

    def __call__(
        self,
        images: Sequence[LoadedImage],
        prompts: str | Sequence[str | None] | None = None,
        masks: Sequence[np.ndarray | None] | None = None,
        with_mesh: bool = True,
        boxes: Sequence | None = None,
    ) -> list[Reconstruction]:
        """Reconstruct ``images`` in one batch (one model call per stage).

        Args:
            images: prepared with :func:`~zsw.infer.image.load_image` at the model's input size.
            prompts: one category prompt for all, or one per image; None = the model's default.
            masks: optional visible masks ``[S, S]`` bool per image (required by ZeroShape models;
                an RGBA image's alpha is used when no mask is given).
            with_mesh: False skips the occupancy grid (empty meshes): only the pixel-level
                predictions and the visible surface, e.g. for the evaluation baselines.
            boxes: per image None or the rectangle ``(x0, y0, x1, y1)`` of its photo, in photo
                pixels, that holds the object: the input is framed around it and the predicted
                masks are kept inside it (a given mask is used as it is; an alpha channel frames
                the input in its place).
        """
        B = len(images)
        if B == 0:
            return []
        if boxes is not None:
            if len(boxes) != B:
                raise InputError(f"got {len(boxes)} boxes for {B} images")
            images = [im if b is None else im.with_box(b) for im, b in zip(images, boxes)]
        S = self.backend.config.pixel.image_size
        for im in images:
            if im.image.shape != (S, S, 3):
                raise InputError(f"{im.name}: the model takes {S}x{S} images, got {im.image.shape[:2]}")
        prompt_list = _prompts(prompts, B)
        mask_list = list(masks) if masks is not None else [None] * B
        if len(mask_list) != B:
            raise InputError(f"got {len(mask_list)} masks for {B} images")
        if self.needs_mask:
            mask_list = [m if m is not None else im.alpha for m, im in zip(mask_list, images)]
            missing = [im.name for m, im in zip(mask_list, images) if m is None]
            if missing:
                raise InputError(
                    f"{missing[0]}: the {self.backend.config.name} model has no mask head; give a mask "
                    "(--masks DIR) or an RGBA image with transparency"
                )
        first_pass, seen = [0.0] * B, [None] * B
        if self.reframe != "never":
            images, mask_list, first_pass, seen = self._reframe(images, prompt_list, mask_list)
        # images with and without masks go through predict() separately (one mask tensor per call)
        groups: dict[bool, list[int]] = {}
        for i, m in enumerate(mask_list):
            groups.setdefault(m is not None, []).append(i)
        results: list[Reconstruction | None] = [None] * B
        for has_mask, idx in groups.items():
            group_masks = [mask_list[i] for i in idx] if has_mask else None
            group = self._run(
                [images[i] for i in idx], [prompt_list[i] for i in idx], group_masks, with_mesh,
                [first_pass[i] for i in idx], [seen[i] for i in idx],
            )  # fmt: skip
            for i, rec in zip(idx, group):
                results[i] = rec
        return results  # type: ignore[return-value]

    def _batch(self, images: Sequence[LoadedImage]) -> torch.Tensor:  # [B, 3, S, S] in [0, 1]
        batch = torch.from_numpy(np.stack([im.image for im in images])).to(self.backend.device)
        return batch.permute(0, 3, 1, 2).float().div_(255.0)

    def _prompt_arg(self, prompts: Sequence[str | None]) -> list[str] | None:
        return None if all(p is None for p in prompts) else [p or self.default_prompt() for p in prompts]

    def _reframe(
        self, images: list[LoadedImage], prompts: list[str | None], masks: list
    ) -> tuple[list[LoadedImage], list, list[float], list]:
        """Cut each image's model input around its object where ``self.reframe`` asks for it
        (see the class docstring). A given mask or alpha channel frames the object at once; a
        predicted mask is predicted again on the new input, which shows the object larger, and the
        window refined while it still moves (at most :data:`REFRAME_PASSES` cuts, each looked at);
        the final input is the look :func:`look_score` trusts most, the last one unless an earlier
        one's object was confirmed by the photo, or filled more of its input, than the last's.
        Returns the images, their masks cut alike, the seconds of those passes per image, and per
        image a :class:`_Seen` (the pass's pixel output and masks) where a pass saw its final
        input (every image the pixel model framed), else None."""
        images, masks = list(images), list(masks)
        seconds = [0.0] * len(images)
        seen: list = [None] * len(images)
        todo = []
        for i, (im, m) in enumerate(zip(images, masks)):
            if m is None and im.alpha is None:
                if im.box is not None:  # the box frames the object before the model looks
                    box = object_window(im.box_area, im)
                    images[i], _ = self._cut(im, box, "the given box", self.reframe == "always")
                todo.append(i)
                continue
            source = "the alpha channel" if m is None or m is im.alpha else "the given mask"
            obj = m if m is not None else im.alpha
            images[i], window = self._cut(im, object_window(obj, im), source, self.reframe == "always")
            if window is not None and m is not None:
                masks[i] = reframe_mask(m, im, window)
        if not self.backend.config.pixel.mask_heads:
            return images, masks, seconds, seen
        looks: dict[int, list[_Look]] = {}  # per image, every look
        for n in range(REFRAME_PASSES + 1):  # the last pass only looks at the last cut
            if not todo:
                break
            t0 = time.perf_counter()
            batch = self._batch([images[i] for i in todo])
            with autocast(self.precision, self.backend.device):
                text = self.backend.embed_prompts(self._prompt_arg([prompts[i] for i in todo]), len(todo))
                pix = self._pixel(batch, text)
            # the mask the reconstruction will use frames the object (a mask that spills over a
            # plain or graded background would frame the background)
            visible, corrected, how = self._corrected_masks([images[i] for i in todo], pix)
            moved, lost = [], []
            for j, i in enumerate(todo):
                obj, source = visible[j], "the predicted visible mask"
                if corrected[j] is not None:
                    obj, source = corrected[j], f"the predicted visible mask, {how[j].removeprefix('predicted, ')}"
                look = _Seen(pix.rows([j]), visible[j], corrected[j], how[j])
                looks.setdefault(i, []).append(_Look(images[i], look, look_score(how[j], obj)))
                if n == REFRAME_PASSES:  # no more cuts
                    continue
                window = object_window(obj, images[i])
                if window is None and n == 0 and images[i].box is None:
                    lost.append((i, source))  # nothing seen at the first look: search the photo closer
                    continue
                images[i], window = self._cut(images[i], window, source, self.reframe == "always" and n == 0)
                if window is not None:
                    moved.append(i)
            found = self._search([images[i] for i, _ in lost], [prompts[i] for i, _ in lost])
            for (i, source), window in zip(lost, found):
                if window is None:  # nowhere closer either: the first look stays, with its note
                    images[i], _ = self._cut(images[i], None, source, False)
                    continue
                window = _no_closer(window, images[i])
                note = (
                    f"reframed around an object found {SEARCH_ZOOM:g}x closer (none at the first look): "
                    f"photo window {list(window)}"
                )
                images[i] = reframe(images[i], window, note=note)
                moved.append(i)
            share = (time.perf_counter() - t0) / len(todo)  # the pass and the cuts, split evenly
            for i in todo:
                seconds[i] += share
            todo = moved
        for i, tried in looks.items():  # every input was looked at: the best look is final
            # (``always`` frames every image: not a first look at the whole photo when it was cut)
            first = 1 if self.reframe == "always" and len(tried) > 1 and tried[0].image.window is None else 0
            k = max(range(first, len(tried)), key=lambda k: tried[k].score)
            best, last = tried[k], tried[-1]
            seen[i] = best.seen
            if k < len(tried) - 1:  # an earlier look saw the object better than the last one
                why = (
                    "the photo confirms its mask, not the last one's"
                    if best.score[0] != last.score[0]
                    else "its mask fills more of its input than the last one's"
                )
                note = f"kept look {k + 1} of {len(tried)} (photo window {list(best.image.square)}): {why}"
                images[i] = dataclasses.replace(best.image, notes=[*best.image.notes, note])
        return images, masks, seconds, seen

    def _search(self, images: list[LoadedImage], prompts: list[str | None]) -> list:
        """Per image, the window (x0, y0, side, photo pixels) around the object the pixel model finds
        in the squares of :func:`~zsw.infer.image.search_windows` (all images' squares in one batch):
        in the square where the largest part of the mask that does not touch the square's edge is
        largest, that part framed as :func:`~zsw.infer.image.object_window` frames it; None where no
        square shows such a part over 0.1 % of its pixels."""
        from scipy import ndimage

        if not images:
            return []
        tiles, owner = [], []
        for k, im in enumerate(images):
            for window in search_windows(im, SEARCH_ZOOM):
                tiles.append(reframe(im, window))
                owner.append(k)
        with autocast(self.precision, self.backend.device):
            text = self.backend.embed_prompts(self._prompt_arg([prompts[k] for k in owner]), len(tiles))
            pix = self._pixel(self._batch(tiles), text)
        visible, corrected, _ = self._corrected_masks(tiles, pix)
        best: list = [(0, None)] * len(images)
        for t, (tile, k) in enumerate(zip(tiles, owner)):
            obj = visible[t] if corrected[t] is None else corrected[t]
            labels, n = ndimage.label(obj)
            if not n:
                continue
            edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
            areas = np.bincount(labels.ravel(), minlength=n + 1)
            areas[edge] = 0  # a part the square cuts is not the whole object (or is the scene)
            part = int(areas[1:].argmax()) + 1
            if areas[part] >= 1e-3 * obj.size and areas[part] > best[k][0]:
                best[k] = (int(areas[part]), object_window(labels == part, tile))
        return [window for _, window in best]

    def _corrected_masks(self, images: list[LoadedImage], pixel: PixelOutput) -> tuple[np.ndarray, list, list]:
        """The pixel model's visible masks ``[B, S, S]`` (probability >= 0.5), per image that mask
        corrected by the photo (:mod:`zsw.infer.background`: by its plain background where it has
        one, otherwise cut again by its colours where the cut agrees with the model) or None (with
        ``background="never"`` too), and per image what corrected it (:data:`MASK_CORRECTED`,
        :data:`MASK_COLOURS` or None). All are kept inside the photo (what the model marks in its
        mirrored padding is not the object) and inside an image's box
        (:attr:`~zsw.infer.image.LoadedImage.box`)."""
        from zsw.infer.background import correct_visible_mask

        visible = (pixel.visible_mask_logits[:, 0].float() >= 0).cpu().numpy()
        visible = np.stack([v & im.photo_area for v, im in zip(visible, images)])
        areas = [im.box_area for im in images]
        visible = np.stack([v if a is None else v & a for v, a in zip(visible, areas)])  # not outside a box
        if self.background == "never":
            return visible, [None] * len(images), [None] * len(images)
        occluder = (pixel.occluder_mask_logits[:, 0].float() >= 0).cpu().numpy()
        corrected, how = [], []
        for b, im in enumerate(images):
            mask, by = correct_visible_mask(im.image, visible[b], occluder[b], im.photo_area, im.alpha)
            corrected.append(mask if mask is None or areas[b] is None else mask & areas[b])
            how.append(_MASK_BY.get(by))
        return visible, corrected, how

    def _cut(self, im: LoadedImage, window: tuple[int, int, int] | None, source: str, force: bool):
        """``im`` reframed to the object's ``window`` (:func:`~zsw.infer.image.object_window` of
        the mask ``source`` names) and the window, or ``im`` (with a note when there is no object)
        and None where nothing is cut."""
        if window is None:
            return dataclasses.replace(im, notes=[*im.notes, f"not reframed: no object in {source}"]), None
        window = _no_closer(window, im)
        if not force and not reframe_worthwhile(im.square, window):
            return im, None
        return reframe(im, window, note=f"reframed around the object ({source}): photo window {list(window)}"), window

    def _run(
        self, images: list[LoadedImage], prompts: list[str | None], masks, with_mesh: bool, first_pass: list[float],
        seen: list,
    ) -> list:  # fmt: skip
        """Reconstruct one batch; ``seen``: per image the framing pass's :class:`_Seen` for this very
        input, or None (the pixel model runs again for the batch unless every image has one)."""
        backend = self.backend
        device = backend.device
        B = len(images)
        batch = self._batch(images)
        mask_t = None
        if masks is not None:
            mask_t = torch.from_numpy(np.stack(masks)).to(device)[:, None].float()
        prompt_arg = self._prompt_arg(prompts)
        timings: dict[str, float] = {}
        with autocast(self.precision, device):
            known = seen if all(p is not None for p in seen) else None
            pixel = PixelOutput.cat([p.pixel for p in known]) if known else None
            corrected_by = [None] * B  # what corrected each mask (MASK_CORRECTED, MASK_COLOURS), if anything
            # a box keeps the masks inside it, as a correction does, and so does the photo's edge
            kept = any(im.box is not None or not im.photo_area.all() for im in images)
            if masks is None and (self.background != "never" or kept) and backend.config.pixel.mask_heads:
                pixel, mask_t, corrected_by = self._background_masks(images, batch, prompt_arg, pixel, timings, known)
            pred = predict(backend, batch, prompt_arg, mask=mask_t, timings=timings, pixel=pixel, pixel_fn=self._pixel)
            mirrored = None
            if with_mesh and self.tta == "flip":  # its own pixel pass; a known or corrected mask is mirrored
                flipped = None if mask_t is None else mask_t.flip(-1)
                mirrored = predict(backend, batch.flip(-1), prompt_arg, mask=flipped, timings=timings,
                                   pixel_fn=self._pixel)  # fmt: skip
        label = self.weights_label or backend.name
        for p in (pred, mirrored):
            for name in ("depth", "intrinsics", "visible_points"):
                if p is not None and not bool(torch.isfinite(getattr(p, name)).all()):
                    raise ZswError(
                        f"the model ({label}) predicts non-finite {name.replace('_', ' ')}: "
                        "its weights are damaged or diverged"
                    )
        decode = occupancy_function(backend, pred, mirrored, self.precision, label)
        visible, occluder = host_masks(pred)  # for the carving bound and for the results
        if occluder is not None:  # what the model marks in its mirrored padding is no occluder of the photo
            occluder = occluder & np.stack([im.photo_area for im in images])
        if with_mesh:
            if self.carve:
                bound = SilhouetteBound(pred, [im.photo_area for im in images], (visible, occluder))
                decode = carved(decode, bound)
            meshes, grid_stats = grid_meshes(decode, B, self.grid, device=device)
            meshes, dropped = zip(*(drop_small_parts(mesh, self.min_part) for mesh in meshes))
            t0 = time.perf_counter()
            meshes, opened = zip(*(decimate_mesh(smooth_mesh(mesh, self.smooth), self.faces) for mesh in meshes))
            if self.faces is not None:  # the decimation's own crumbs (sheets split at a pinch) go too
                meshes, more = zip(*(drop_small_parts(mesh, self.min_part) for mesh in meshes))
                dropped = tuple(a + b for a, b in zip(dropped, more))
            edit_s = (time.perf_counter() - t0) / B
        else:
            meshes, grid_stats = [_empty_mesh() for _ in range(B)], [self._no_grid() for _ in range(B)]
            dropped, opened, edit_s = [0] * B, [0] * B, 0.0
        depth = pred.depth[:, 0].float().cpu().numpy()
        K = pred.intrinsics.float().cpu().numpy()
        center = pred.center.float().cpu().numpy()
        scale = pred.scale.float().cpu().numpy()
        surface = pred.visible_points.float().permute(0, 2, 3, 1).cpu().numpy()  # [B, S, S, 3] normalised
        ups = mean_up(pred.latents.up, mirrored.latents.up if mirrored is not None else None)
        out = []
        for b, (im, mesh, grid) in enumerate(zip(images, meshes, grid_stats)):
            s, c = float(scale[b]), center[b]
            camera = np.asarray(mesh.vertices, dtype=np.float64) * s + c
            up = ups[b] if ups is not None else None
            pose = frame_pose(self.frame, camera, up)
            mesh.vertices = pose.apply(camera)
            seen, atlas, texture_s = 0, None, 0.0
            if self.color == "photo" and len(mesh.faces):
                from zsw.infer.color import photo_colors

                colors = photo_colors(camera, np.asarray(mesh.faces), im.image, K[b], visible[b])
                alpha = np.full((len(colors.rgb), 1), 255, np.uint8)
                mesh.visual.vertex_colors = np.concatenate([colors.rgb, alpha], axis=1)
                seen = int(colors.seen.sum())
                if self.texture:
                    t0 = time.perf_counter()
                    atlas = bake_texture(camera, np.asarray(mesh.faces), im.image, K[b], visible[b], colors.rgb,
                                         colors.seen, self.texture)  # fmt: skip
                    texture_s = time.perf_counter() - t0
            rec = Reconstruction(
                name=im.name,
                mesh=mesh,
                frame=self.frame,
                image=im.image,
                depth=depth[b],
                intrinsics=K[b],
                visible_mask=visible[b],
                occluder_mask=occluder[b] if occluder is not None else None,
                center=c,
                scale=s,
                prompt=(prompts[b] or self.default_prompt()) if backend.config.text.enabled else None,
                visible_points=surface[b][visible[b]] * s + c,
                texture=atlas,
                up=up,
                pose=pose,
            )
            timing = Timings(  # shared stages are split evenly over the batch
                pixel=timings.get("pixel", 0.0) / B + first_pass[b],
                encode=timings.get("encode", 0.0) / B,
                grid_decode=grid.decode_s / B,
                marching_cubes=grid.marching_cubes_s,
                smooth_decimate=edit_s,
                texture=texture_s,
            )
            source = "given" if masks is not None else corrected_by[b] or MASK_PREDICTED
            if masks is None and im.box is not None:
                source += IN_BOX
            rec.record = self._record(rec, im, grid, timing, B, source, seen, dropped[b], opened[b])
            out.append(rec)
        return out

    def _background_masks(
        self, images: list[LoadedImage], batch: torch.Tensor, prompt_arg, pixel, timings: dict, known=None
    ):
        """The pixel model's output for ``batch`` (``pixel`` when the framing pass has it), and the
        visible masks corrected by each photo's own background (:mod:`zsw.infer.background`): a
        mask tensor ``[B, 1, S, S]`` for every image (the model's own mask where the photo tells no
        background) and, per image, what corrected its mask (None: nothing). ``known``: the framing
        pass's masks of these very inputs (:class:`_Seen`), which are not computed again."""
        if pixel is None:
            t0 = time.perf_counter()
            pixel = self._pixel(batch, self.backend.embed_prompts(prompt_arg, len(images)))
            timings["pixel"] = timings.get("pixel", 0.0) + time.perf_counter() - t0
        if known is not None:
            visible, corrected = np.stack([k.visible for k in known]), [k.corrected for k in known]
            how = [k.how for k in known]
        else:
            visible, corrected, how = self._corrected_masks(images, pixel)
        masks = [v if c is None else c for v, c in zip(visible, corrected)]
        mask_t = torch.from_numpy(np.stack(masks)).to(batch.device)[:, None].float()
        return pixel, mask_t, how

    def _no_grid(self) -> GridStats:
        n = (self.grid.resolution + 1) ** 3
        return GridStats(self.grid.extraction, self.grid.resolution, 0, n)

    def _record(
        self, rec: Reconstruction, im: LoadedImage, grid: GridStats, timings: Timings, batch: int, mask: str,
        seen: int, dropped: int, opened: int = 0,
    ) -> ResultRecord:  # fmt: skip
        """What ``result.json`` will say (the job and ``save`` add the rest, see :mod:`zsw.infer.record`)."""
        backend, g = self.backend, self.grid
        warn = list(self.warnings)
        if flat := im.alpha is None and (span := im.colour_span) <= FLAT_SPAN:
            warn.append(
                f"the photo is one colour everywhere (its pixels differ by at most {span} of 255): there is no "
                "object in it, and what the model makes of it is a guess"
            )
        if len(rec.mesh.faces) == 0 and grid.evaluated_points:
            warn.append(_empty_mesh_warning(g.threshold, grid.occupancy_range))
        if self.faces is not None and len(rec.mesh.faces) > self.faces:
            warn.append(f"decimation could not reach {self.faces} faces: the mesh keeps {len(rec.mesh.faces)}")
        if rec.texture is not None and len(rec.mesh.faces) > TEXTURE_FACES_HINT:
            warn.append(
                f"--texture charted {len(rec.mesh.faces)} faces in {timings.texture:.1f} s: with --faces "
                f"{TEXTURE_FACES_HINT // 4} or so it takes about a second and keeps the photo's detail"
            )
        if opened:
            warn.append(
                f"decimation to {self.faces} faces left {opened} edge(s) not shared by exactly two triangles: "
                "the mesh is not watertight (another --faces usually keeps it closed)"
            )
        if mask != "given" and im.box is None and (sides := im.edges_reached(rec.visible_mask)):
            edges = " and ".join(sides) + (" edges" if len(sides) > 1 else " edge")
            warn.append(
                f"the object the model outlined reaches the photo's {edges}: in a cluttered photo it may have "
                "taken in the surroundings (--cutout grabcut or rembg removes the background first, --box says "
                "where the object is); an object the frame cuts is completed by guess"
            )
        if self.background == "auto" and mask.removesuffix(IN_BOX) == MASK_PREDICTED and not flat:
            warn.append(
                "nothing in the photo confirms the object's outline (neither a plain background nor the cut by "
                "its colours agreed with the model's): unconfirmed, the model often outlines something else "
                + ("(--cutout grabcut or rembg removes the background first)" if im.box is not None else
                   "(--box X0,Y0,X1,Y1 says where the object is; --cutout grabcut or rembg removes the background "
                   "first)")
            )  # fmt: skip
        if (share := occluded_outline(rec.visible_mask, rec.occluder_mask)) >= OCCLUDED_OUTLINE:
            warn.append(
                f"the model sees something in front of the object along {share:.0%} of its outline (its occluder "
                "mask): what that hides is guessed, and a photo with nothing in front of the object gives a better mesh"
            )
        return ResultRecord(
            zsw_version=_version(), name=im.name, input=im.to_dict(), prompt=rec.prompt,
            model=ModelInfo(backend.config.name, self.weights_label, backend.name, str(backend.device), self.precision,
                            self.tta),
            mask=mask,
            camera=CameraInfo(im.size, rec.intrinsics.tolist(), original_intrinsics(rec.intrinsics, im).tolist(),
                              rec.center.tolist(), rec.scale),
            grid=GridInfo(g.resolution, g.extraction, g.threshold, g.bound, g.close, grid.evaluated_points,
                          grid.grid_points, self.carve),
            mesh=MeshInfo(self.frame, UNITS, len(rec.mesh.vertices), len(rec.mesh.faces),
                          bool(len(rec.mesh.faces)) and bool(rec.mesh.is_watertight), self.min_part, dropped,
                          self.smooth, self.faces, texture=self.texture if rec.texture is not None else None,
                          camera_to_mesh=rec.pose.matrix().tolist(), up=None if rec.up is None else rec.up.tolist()),
            colors=ColorInfo(self.color, seen, len(rec.mesh.vertices)),
            batch_size=batch, timings_s=timings, warnings=warn,
        )  # fmt: skip

    def default_prompt(self) -> str:
        """The prompt the model is conditioned on when none is given (its config's)."""
        return self.backend.config.text.default_prompt


def _empty_mesh():
    import trimesh

    return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), process=False)


def _version() -> str:
    from zsw import __version__

    return __version__


def _empty_mesh_warning(threshold: float, occupancy: tuple[float, float] | None) -> str:
    """Why an image's mesh is empty: its occupancy stays on one side of ``threshold`` (``occupancy``:
    the grid's lowest and highest probability), said with the value a user could pick instead."""
    if occupancy is None:
        return "empty mesh: the predicted occupancy never crosses the threshold"
    low, high = occupancy
    if high < threshold:
        return (
            f"empty mesh: the predicted occupancy stays under --threshold {threshold:g} "
            f"(at most {high:.3f} on the grid)"
        )
    return (
        f"empty mesh: the predicted occupancy is over --threshold {threshold:g} on the whole grid (at least "
        f"{low:.3f}): the object fills it; --close caps it at the grid's bound"
    )


def reconstruct(
    image,
    weights=None,
    *,
    prompt: str | None = None,
    mask=None,
    resolution: int = 128,
    extraction: str = "fast",
    threshold: float = 0.5,
    frame: str = "gltf",
    device: str | torch.device | None = None,
    backend: str | Backend = "auto",
    engine: str | os.PathLike | None = None,
    precision: str = "auto",
    close: bool = True,
    color: str = "photo",
    min_part: float = MIN_PART,
    smooth: int = SMOOTH,
    faces: int | None = None,
    reframe: str = "auto",
    background: str = "auto",
    tta: str = "auto",
    texture: int = 0,
    cutout="auto",
    carve: bool = True,
    box=None,
) -> Reconstruction:
    """Reconstruct the mesh of the object in one photo.

    Args:
        image: a path, a ``PIL.Image.Image``, an ``[H, W(, 3|4)]`` array (uint8, uint16 or float in
            [0, 1]) or a ``[C, H, W]`` tensor (torchvision's layout); any size (padded to a square
            around the centre and resized to the model's input).
        weights: a ``.safetensors`` checkpoint, a model, ``"demo"``, ``"random:<preset>"``, or None
            for the packaged demo model.
        prompt: category text ("chair"); ``"auto"`` (= ``"clip"``: CLIP zero-shot over the LVIS +
            ShapeNet vocabulary, needs CLIP weights) or ``"vlm:<hub id or folder>"`` to estimate it;
            None for the model's default, "object".
        mask: optional visible mask (path, PIL image, ``[H, W]`` array or ``[(1,) H, W]`` tensor at
            the image's size).
        resolution: grid cells per axis.
        extraction: ``fast`` (coarse to fine) or ``dense``.
        threshold: occupancy probability of the surface.
        frame: ``gltf`` (default: y along the camera's up, facing +z), ``upright`` (y along the
            object's predicted up, standing on y = 0) or ``camera`` (x right, y down, z forward):
            :mod:`zsw.infer.orient`.
        device: ``cuda``, ``cpu``, ... (default: CUDA if available).
        backend: ``auto`` (see :func:`~zsw.infer.weights.resolve_backend`), ``torch``, ``onnxruntime``, ``tensorrt``,
            or a :class:`~zsw.infer.backend.Backend`.
        engine: folder written by ``zsw export`` (ONNX Runtime / TensorRT backends).
        precision: ``auto`` (bf16 on CUDA, fp32 on the CPU), ``fp32``, ``bf16`` or ``fp16``.
        close: count the space outside the grid as empty (watertight meshes); False keeps
            surfaces that reach the grid's bound open.
        color: ``photo`` (vertex colours from the photo) or ``none``.
        min_part: drop disconnected parts under this fraction of the largest part's surface area
            (0 keeps everything).
        smooth: passes of Taubin smoothing (default 30, :data:`~zsw.infer.settings.SMOOTH`; 0
            keeps the marching-cubes surface).
        faces: decimate the mesh to at most this many triangles (None keeps them all).
        texture: bake the photo into a ``texture x texture`` atlas (0, the default: vertex colours
            only; :attr:`Reconstruction.texture`, :meth:`Reconstruction.textured_mesh`); meant
            for decimated meshes: ~0.6 s at 5,000 faces, ~20 s at the 40,000 of a 128 grid.
        reframe: ``auto`` (cut the model input around the object when the photo shows it small or
            off centre), ``always`` or ``never`` (see :class:`Reconstructor`).
        background: ``auto`` (correct the predicted visible mask with the photo's own background
            where it shows one: RGBA transparency, a plain border) or ``never``.
        tta: ``flip`` (average the occupancy with that of the photo mirrored left to right; twice
            the decoding), ``flip-pixel`` (average only the pixel model's outputs with the mirrored
            photo's), ``none``, or ``auto`` (flip on CUDA, flip-pixel on the CPU; see
            :class:`Reconstructor`).
        cutout: remove the photo's background first: ``auto`` (OpenCV's GrabCut from the photo's
            border where that border is not plain, and not with ``box``), ``none``, ``grabcut``,
            ``rembg``, ``rembg:<model>`` (:mod:`zsw.infer.cutout`; rembg needs ``zsw[cutout]``), or
            any callable ``rgb [H, W, 3] uint8 -> alpha [H, W]``; not used with ``mask`` or on a
            photo with transparency.
        carve: no surface where the photo shows background (default; :mod:`zsw.infer.carve`).
        box: ``(x0, y0, x1, y1)`` (or ``"x0,y0,x1,y1"``), the rectangle of the photo in its pixels
            (upright, after the EXIF rotation; from the top left) that holds the object, for a photo
            of several things: the input is framed around it and the predicted masks are kept
            inside it. None: the model finds the object.

    Returns:
        A :class:`Reconstruction`; ``.mesh`` is a ``trimesh.Trimesh``, ``.save(folder)`` writes the
        same files as ``zsw reconstruct``.

    Example::

        import zsw
        rec = zsw.reconstruct("examples/armchair.png")
        rec.mesh.export("armchair.glb")
    """
    with contextlib.ExitStack() as lent:
        if isinstance(backend, str):
            if weights is None or isinstance(weights, (str, os.PathLike)):
                backend = resolve_backend(backend, None if weights is None else str(weights), engine, device, precision)
                be, label, warning = cached_backend(backend, weights, engine, device)
            else:  # an in-memory model, given back in its own mode and on its own device
                lent.enter_context(_borrowed(weights))
                be, label, warning = open_backend(backend, weights, engine, device)
        else:
            be, label, warning = backend, getattr(backend, "name", "backend"), None
        if warning:
            warnings.warn(warning, stacklevel=2)
        if isinstance(cutout, str):
            cutout = open_cutout(cutout)
        remover = remover_for(cutout, mask=mask is not None, box=box is not None)
        loaded = load_image(image, be.config.pixel.image_size, cutout=remover)
        masks = [load_mask(mask, loaded)] if mask is not None else None
        if is_estimated_prompt(prompt):
            from zsw.infer.category import get_estimator

            prompt = get_estimator(prompt, device=be.device)([_pil(loaded.image)])[0]
        rec = Reconstructor(be, resolution=resolution, extraction=extraction, threshold=threshold, frame=frame,
                            weights_label=label, precision=precision, close=close, color=color,
                            min_part=min_part, smooth=smooth, faces=faces, reframe=reframe,
                            background=background, tta=tta, texture=texture, carve=carve)  # fmt: skip
        if warning:
            rec.warnings.append(warning)
        return rec([loaded], prompt, masks, boxes=[box])[0]


@contextlib.contextmanager
def _borrowed(model):
    """Give ``model`` back as it came: a caller's training loop must not go on in eval mode."""
    if not isinstance(model, torch.nn.Module):
        yield
        return
    training, device = model.training, next(model.parameters()).device
    try:
        yield
    finally:
        model.to(device).train(training)


def _pil(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(array)
