"""Background removal before reconstruction (``--cutout``): a pluggable segmenter.

On a cluttered photo -- a cup on a wooden table filling the frame -- the packaged model's visible
mask takes in the table and the mesh grows a slab of it, and the photo has no plain border for
``--background auto`` to use. Peers (TripoSR, SF3D, InstantMesh) run a background remover first;
``--cutout rembg`` does the same with `rembg <https://github.com/danielgatis/rembg>`_ (``pip install
"zsw[cutout]"``): its mask becomes the photo's alpha channel, so the photo goes on exactly as an
RGBA file would (:func:`zsw.infer.image.load_image`): composited on white, framed around the
object, the transparent pixels taken from the predicted visible mask and its holes inside filled
(:mod:`zsw.infer.background`). The occluder mask stays the model's.

Specs (``--cutout``):

* ``auto`` (the default): ``grabcut`` (below) where the photo's border is not one plain or graded
  colour (:func:`zsw.infer.background.plain_background`, on a copy of at most
  :data:`PLAIN_CHECK_SIDE` pixels) and the photo has no transparency of its own; a photo with a
  plain border is left as it is (``--background auto`` corrects the model's mask by it), and so is a
  photo with a ``--box`` (the object is where the user says, not what stands out) or a mask;
* ``none``: the photo as it is;
* ``grabcut``: no download, nothing to install: OpenCV's GrabCut on the photo (at most
  :data:`GRABCUT_SIDE` pixels on its longer side), its outer band (:data:`GRABCUT_BAND` of the
  shorter side) taken as background and the rest as probably the object; the largest part it keeps
  is the object. It finds what stands out from the photo's border by its colours: on ZeroShape's
  objects pasted into textured photos at half their side the final mask's IoU is 0.96 where it was
  0.67 (square photos; ``bench/results/cutout/``); an object that touches or fills the photo's border, or wears its
  colours, is not found that way;
* ``rembg``: rembg's default model (``bria-rmbg`` in rembg 2.0.86);
* ``rembg:<model>``: any model rembg names (``u2net``, ``isnet-general-use``, ``birefnet-general``,
  ``birefnet-general-lite``, ...).

rembg downloads a model on its first use into ``~/.rembg/models/<model>/``; on a machine without
internet, put the model's ``.onnx`` file into ``$U2NET_HOME`` (rembg's own setting). A photo that
already has transparency keeps its own alpha, and a photo with a ``--masks`` mask is not cut out:
the user's outline wins. Where the remover finds nothing (every pixel under half opaque), the
photo is used whole, with a note.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from zsw.errors import InputError, OptionError

__all__ = [
    "CUTOUT_CHOICES", "AutoCutout", "Cutout", "GrabCut", "apply_cutout", "check_cutout", "open_cutout", "remover_for",
]  # fmt: skip

#: the removers ``--cutout`` knows (``<remover>`` or ``<remover>:<model>``; ``grabcut`` takes no model)
REMOVERS = ("grabcut", "rembg")
#: the longer side, in pixels, of the copy of the photo GrabCut cuts (its mask is scaled back up)
GRABCUT_SIDE = 400
#: the outer band of the photo GrabCut takes as background, as a share of its shorter side
GRABCUT_BAND = 0.06
#: the share of the photo the object GrabCut keeps may take: outside it, it found no object
GRABCUT_SHARE = (0.01, 0.8)
#: the longer side, in pixels, of the copy on which ``auto`` looks for a plain border
PLAIN_CHECK_SIDE = 256
#: models the web app offers besides ``rembg``'s default (any other rembg model name also works)
CUTOUT_CHOICES = ("rembg:u2net", "rembg:isnet-general-use", "rembg:birefnet-general")


def check_cutout(spec: str) -> str:
    """``spec`` normalised (``none``, ``rembg`` or ``rembg:<model>``), or an OptionError naming it."""
    if spec is not None and not isinstance(spec, str):
        raise OptionError(
            f"--cutout: {type(spec).__name__} is not a remover's name; a function from RGB to alpha goes to "
            "zsw.reconstruct(cutout=...)"
        )
    spec = (spec or "none").strip()
    if spec in ("none", "auto"):
        return spec
    remover, _, model = spec.partition(":")
    if remover not in REMOVERS:
        raise OptionError(
            f"--cutout: unknown remover {spec!r}; use auto, none, grabcut, rembg or rembg:<model> (e.g. rembg:u2net)"
        )
    if remover == "grabcut":
        if ":" in spec:
            raise OptionError(f"--cutout: {spec!r}: grabcut takes no model; use --cutout grabcut")
        return remover
    if ":" in spec and not model.strip():
        raise OptionError(f"--cutout: {spec!r} names no model; use rembg or rembg:<model> (e.g. rembg:u2net)")
    return f"{remover}:{model.strip()}" if model.strip() else remover


class Cutout:
    """A background remover: ``cutout(rgb)`` with ``rgb [H, W, 3]`` uint8 gives the object's alpha
    ``[H, W]`` uint8 (255 the object, 0 the background). ``name`` says which remover and model,
    ``identity`` what ``result.json`` records and a rerun compares (the remover's version, model
    and the model file's SHA-256)."""

    def __init__(self, session, name: str, identity: str):
        self.session = session
        self.name = name
        self.identity = identity

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from PIL import Image
        from rembg import remove

        mask = remove(Image.fromarray(np.ascontiguousarray(rgb)), session=self.session, only_mask=True)
        return np.asarray(mask.convert("L"), dtype=np.uint8)


class GrabCut:
    """The ``grabcut`` remover (module docstring): ``cutout(rgb)`` with ``rgb [H, W, 3]`` uint8
    gives the alpha ``[H, W]`` uint8 of what stands out from the photo's border by its colours,
    all 0 where that is under or over :data:`GRABCUT_SHARE` of the photo."""

    name = "grabcut"

    def __init__(self, side: int = GRABCUT_SIDE, band: float = GRABCUT_BAND, iterations: int = 5):
        import cv2

        self.side, self.band, self.iterations = side, band, iterations
        self.identity = f"grabcut (OpenCV {cv2.__version__}, side {side}, band {band}, {iterations} iterations)"

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import cv2
        from scipy import ndimage as ndi

        from zsw.infer.background import grabcut

        H, W = rgb.shape[:2]
        small = _shrunk(rgb, self.side)
        h, w = small.shape[:2]
        b = max(2, round(self.band * min(h, w)))
        if min(h, w) <= 2 * b + 2:  # a strip of a photo: nothing inside the band to cut out
            return np.zeros((H, W), np.uint8)
        labels = np.full((h, w), cv2.GC_PR_FGD, np.uint8)
        labels[:b], labels[-b:], labels[:, :b], labels[:, -b:] = (cv2.GC_BGD,) * 4
        parts, n = ndi.label(grabcut(small, labels, self.iterations))
        if not n:
            return np.zeros((H, W), np.uint8)
        cut = parts == np.bincount(parts.ravel())[1:].argmax() + 1  # its largest part (specks of the border go)
        lo, hi = GRABCUT_SHARE
        if not lo <= cut.mean() <= hi:
            return np.zeros((H, W), np.uint8)
        alpha = cv2.resize(cut.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR) if (h, w) != (H, W) else cut
        return np.where(alpha >= 0.5, 255, 0).astype(np.uint8)


class AutoCutout(GrabCut):
    """``--cutout auto``: :class:`GrabCut`, except on a photo whose border is plain or graded
    (:meth:`skip` says why; :func:`zsw.infer.image.load_image` then leaves the photo as it is)."""

    def __init__(self):
        super().__init__()
        self.identity = f"auto: {self.identity} where the border is not plain"

    def skip(self, rgb: np.ndarray) -> str | None:
        """Why the photo ``rgb [H, W, 3]`` is not cut out, or None."""
        from zsw.infer.background import plain_background

        if plain_background(_shrunk(rgb, PLAIN_CHECK_SIDE)) is not None:
            return "its border is plain (--background corrects the model's mask by it)"
        return None


def _shrunk(rgb: np.ndarray, side: int) -> np.ndarray:  # [H, W, 3+] -> [h, w, 3] uint8
    """The photo's RGB, area-averaged down to at most ``side`` pixels on its longer side."""
    import cv2

    H, W = rgb.shape[:2]
    small = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    s = side / max(H, W)
    if s >= 1.0:
        return small
    return cv2.resize(small, (max(8, round(W * s)), max(8, round(H * s))), interpolation=cv2.INTER_AREA)


def remover_for(cutout, mask: bool, box: bool):
    """The remover to apply to one photo: none where the user gave its outline (a mask), nor
    ``auto``'s where the user gave a box (the object is where the box says, not what stands out
    from the border); a remover asked for by name still cuts a boxed photo."""
    if mask or (box and isinstance(cutout, AutoCutout)):
        return None
    return cutout


def open_cutout(spec: str) -> Cutout | GrabCut | None:
    """The remover ``spec`` names (:func:`check_cutout`), its model loaded once per process; None
    for ``none``. Raises OptionError when rembg is not installed or its model cannot be had."""
    spec = check_cutout(spec)
    if spec == "auto":
        return AutoCutout()
    if spec == "grabcut":
        return GrabCut()
    return None if spec == "none" else _open(spec)


@functools.lru_cache(maxsize=4)
def _open(spec: str) -> Cutout:
    try:
        import rembg
        from rembg import new_session
    except ImportError as e:
        raise OptionError(
            f'--cutout {spec} needs rembg, which is not installed ({e}); pip install "zsw[cutout]"'
        ) from None
    _, _, model = spec.partition(":")
    try:
        session = new_session(model) if model else new_session()
    except ValueError as e:  # an unknown model name, or a model path rembg refuses
        raise OptionError(f"--cutout {spec}: {e}") from None
    except Exception as e:  # noqa: BLE001 - rembg's download (pooch, requests) raises many kinds
        raise OptionError(
            f"--cutout {spec}: rembg cannot load its model ({type(e).__name__}: {e}); without internet, "
            f"put the model's .onnx file into a folder named by $U2NET_HOME"
        ) from None
    name = f"rembg:{session.model_name}"
    return Cutout(session, name, f"{name} (rembg {rembg.__version__}, model {_model_file_id(session)})")


def _model_file_id(session) -> str:
    """The model file's content hash, as zsw names its own weights (:func:`zsw.io.checkpoint_sha256`:
    read once per process for each state of the file), or ``remote`` for a remover without a local
    file."""
    from zsw.io import checkpoint_sha256

    try:
        path = type(session).download_models()  # the existing file: nothing is downloaded
        return f"sha256:{checkpoint_sha256(path)}"
    except Exception:  # noqa: BLE001 - sessions that run elsewhere have no file
        return "remote"


def apply_cutout(rgb: np.ndarray, cutout: Callable[[np.ndarray], np.ndarray], label: str) -> np.ndarray | None:
    """The alpha ``[H, W]`` uint8 that ``cutout`` gives the photo ``rgb``, or None where it finds
    no object (no pixel at least half opaque). A remover that fails or returns the wrong shape is
    an InputError naming the photo."""
    try:
        alpha = np.asarray(cutout(rgb))
    except Exception as e:  # noqa: BLE001 - a third-party model can fail in many ways
        raise InputError(f"{label}: the background remover failed ({type(e).__name__}: {e})") from None
    if alpha.shape != rgb.shape[:2]:
        raise InputError(f"{label}: the background remover gave a {alpha.shape} mask for a {rgb.shape[:2]} photo")
    if alpha.dtype != np.uint8:
        alpha = (np.clip(np.nan_to_num(alpha.astype(np.float32)), 0.0, 1.0) * 255).round().astype(np.uint8)
    return alpha if (alpha > 127).any() else None
