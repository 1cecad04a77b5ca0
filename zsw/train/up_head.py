"""Refit the decoder's up axis on views whose true up is known, leaving everything else as it is.

A decoder with axial queries predicts the object's up axis from its global token (the last three
outputs of its centre head, ``DecoderLatents.up``): its queries turn about it, and ``zsw reconstruct
--frame upright`` stands the mesh on it. Trained as one loss among many, on cameras 5-65 degrees
above the object, that axis regresses to the mean: ``zsw-demo-v6`` put every eye-level photo ~25
degrees off (``bench/results/upright/``). This refits only those three rows of the head's last
layer, by ridge regression of the true up on the head's hidden activations, computed as ``zsw
reconstruct`` computes them (framing, mask correction, test-time augmentation) on a ``procedural``
set rendered with ``--bake test`` (its ``camera_data/extr`` holds each view's true up):

    zsw synthesize procedural --out data/up-fit --objects 400 --views 4 --splits 0,0,1 --bake test \\
        --seed 7 --elevation -10,65 -c sphere,box,cylinder,cone,torus,capsule,table,chair,mug,lamp,bottle
    python -m zsw.train.up_head --data data/up-fit --weights IN.safetensors --out OUT.safetensors

The centre offset (the first three outputs) and every other weight stay bit for bit; the shapes
change only through the axial queries' turn.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

__all__ = ["up_views", "head_activations", "fit_up_rows", "set_up_rows", "refit_up_head"]


def up_views(data: str | Path, split: str = "test") -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
    """(name, category, image [S, S, 3] uint8, true up [3] camera frame) of every view of a baked
    ``procedural`` set: the object frame's y axis, from the view's ``camera_data/extr``."""
    from zsw.data.eval_sets import open_eval_set
    from zsw.data.layout import SampleId, ZeroShapeLayout

    layout = ZeroShapeLayout(data)
    for sample in open_eval_set(Path(data), "procedural", split=split):
        extr = np.load(layout.extrinsics(SampleId.parse(sample.category, sample.name)))
        up = np.asarray(extr[:3, 1], dtype=np.float64)
        yield sample.name, sample.category, np.asarray(sample.image), up / np.linalg.norm(up)


def _head(model):
    head = getattr(model.decoder, "center_head", None)
    if head is None or not model.config.decoder.axial_queries:
        raise ValueError(f"the {model.config.name} model predicts no up axis (its decoder has no axial queries)")
    return head


@torch.no_grad()
def head_activations(model, views: Iterable[tuple[str, str, np.ndarray, np.ndarray]], **reconstructor) -> tuple:
    """``(H [N, width], T [N, 3])``: the centre head's hidden activations (after its GELU) for each
    view, as :class:`~zsw.infer.reconstruct.Reconstructor` (``reconstructor``: its options) runs the
    model, and the views' true up axes."""
    from zsw.infer.backend import TorchBackend
    from zsw.infer.image import load_image
    from zsw.infer.reconstruct import Reconstructor

    head = _head(model)
    seen: list[np.ndarray] = []
    hook = head[2].register_forward_hook(lambda m, i, out: seen.append(out.detach().float().cpu().numpy()))
    try:
        backend = TorchBackend(model, next(model.parameters()).device)
        recon = Reconstructor(backend, **{"color": "none", **reconstructor})
        size = model.config.pixel.image_size
        H, T = [], []
        for name, _, image, up in views:
            seen.clear()
            recon([load_image(image, size, name=name)], with_mesh=False)
            H.append(seen[0][0])  # the photo's own encoding (flip TTA encodes its mirror image second)
            T.append(up)
    finally:
        hook.remove()
    if not H:
        raise ValueError("no views to fit the up axis on")
    return np.stack(H).astype(np.float64), np.stack(T).astype(np.float64)


def fit_up_rows(H: np.ndarray, T: np.ndarray, ridge: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression of the true up ``T [N, 3]`` on activations ``H [N, width]``, each
    activation standardised over the views (``ridge`` in those units), folded back into one affine
    map: returns ``(W [3, width], b [3])`` with ``H @ W.T + b`` the fitted up."""
    mu, sd = H.mean(axis=0), H.std(axis=0) + 1e-6
    A = np.concatenate([(H - mu) / sd, np.ones((len(H), 1))], axis=1)
    reg = ridge * np.eye(A.shape[1])
    reg[-1, -1] = 0.0  # the intercept is not shrunk
    coef = np.linalg.solve(A.T @ A + reg, A.T @ T)  # [width + 1, 3]
    W = (coef[:-1] / sd[:, None]).T
    return W, coef[-1] - W @ mu


def set_up_rows(model, W: np.ndarray, b: np.ndarray) -> None:
    """Make the head's last layer predict ``H @ W.T + b`` as the up axis. The decoder subtracts the
    camera's down axis (0, 1, 0) from those outputs before normalising them, so it is added here."""
    last = _head(model)[-1]
    with torch.no_grad():
        last.weight[3:] = torch.as_tensor(W, dtype=last.weight.dtype)
        last.bias[3:] = torch.as_tensor(np.asarray(b) + np.array([0.0, 1.0, 0.0]), dtype=last.bias.dtype)


def refit_up_head(model, views, ridge: float = 100.0, **reconstructor) -> dict:
    """Refit ``model``'s up rows in place on ``views`` (see :func:`up_views`); returns the median
    angle to the truth before and after, in degrees, on those views."""
    H, T = head_activations(model, views, **reconstructor)
    last = _head(model)[-1]
    old = H @ last.weight[3:].detach().double().cpu().numpy().T + last.bias[3:].detach().double().cpu().numpy()
    W, b = fit_up_rows(H, T, ridge)
    set_up_rows(model, W, b)

    def median_deg(raw: np.ndarray) -> float:
        u = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        return float(np.degrees(np.median(np.arccos(np.clip((u * T).sum(axis=1), -1.0, 1.0)))))

    return {"views": len(T), "before_deg": median_deg(old - [0.0, 1.0, 0.0]), "after_deg": median_deg(H @ W.T + b)}


def main() -> None:
    from zsw import checkpoint
    from zsw.errors import ZswError

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="a procedural set rendered with --bake test")
    ap.add_argument("--split", default="test")
    ap.add_argument("--weights", type=Path, required=True, help="the checkpoint to refit")
    ap.add_argument("--out", type=Path, required=True, help="the refitted checkpoint (.safetensors)")
    ap.add_argument("--ridge", type=float, default=100.0)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    try:
        model, extra = checkpoint.load_with_extra(args.weights)
        stats = refit_up_head(model, up_views(args.data, args.split), args.ridge)
    except (ZswError, ValueError) as e:  # a bad checkpoint or data folder, a model without an up axis
        raise SystemExit(f"error: {e}") from None
    extra = {k: v for k, v in extra.items() if k != "zsw_version"}  # save() writes its own
    checkpoint.save(model, args.out, extra={**extra, "up_head": {**stats, "ridge": args.ridge, "data": str(args.data)}})
    print(f"{args.out}: up axis refitted on {stats['views']} views; median angle to the truth on them "
          f"{stats['before_deg']:.1f} -> {stats['after_deg']:.1f} degrees")  # fmt: skip


if __name__ == "__main__":
    main()
