"""Ridge refit of the centre-offset rows of the decoder's centre head (stage-full frame, as the
training's centre loss). Collect (hidden, true offset) on sets; fit on the first; report the rest.
Diagnosis only (bench/results/shape-learning.md (jj)); run from the repository root, with
data/up/probe made as docs/training.md item 28 says and data/demo/{val,test} as docs/data.md:

    python bench/results/error-decomposition/centre_refit.py      # ~1 min on 2 cores
"""

import numpy as np
import torch

from zsw import checkpoint
from zsw.data.dataset import ShapeDataset
from zsw.infer.weights import demo_weights
from zsw.train import losses as L
from zsw.train.up_head import fit_up_rows

torch.set_grad_enabled(False)
model = checkpoint.load(demo_weights()).eval()
head = model.decoder.center_head


def collect(root, split):
    seen = []
    h = head[2].register_forward_hook(lambda m, i, o: seen.append(o.float().numpy()))
    ds = ShapeDataset(root, split, points=16, augment=None, size=224)
    H, N, O, C = [], [], [], []
    for batch in torch.utils.data.DataLoader(ds, batch_size=16, num_workers=1):
        seen.clear()
        B = batch["image"].shape[0]
        text = model.embed_prompts(None, B)
        pix = model.pixel(batch["image"], text)
        vis, occ = pix.visible_mask_logits >= 0, pix.occluder_mask_logits >= 0
        lat = model.latents(model.encode_surface(pix, text, vis.float(), occ.float()))
        _, gc, gs = L.visible_frame(batch["depth"], batch["intrinsics"], batch["visible_mask"] > 0.5)
        true = L.query_points(batch["points"].new_zeros(B, 1, 3), batch["extrinsics"], gc, gs)[:, 0]
        H.append(seen[0])
        N.append((true - lat.view.center_anchor().float()).numpy())
        O.append(lat.center_offset.float().numpy())
        C += list(batch["category"])
    h.remove()
    return np.concatenate(H).astype(np.float64), np.concatenate(N), np.concatenate(O), np.array(C)


sets = {
    name: collect(root, split)
    for name, root, split in [
        ("probe", "data/up/probe", "test"),
        ("val", "data/demo/val", "val"),
        ("test", "data/demo/test", "test"),
    ]
}
H, N, _, _ = sets["probe"]
for ridge in (10.0, 100.0, 1000.0):
    W, b = fit_up_rows(H, N, ridge)
    for name, (h, n, o, _) in sets.items():
        f = h @ W.T + b  # the refitted offsets; o: the shipped head's, n: the true ones
        err_old, err_new = np.abs(o - n).sum(1).mean(), np.abs(f - n).sum(1).mean()
        slope_old, slope_new = (np.polyfit(n[:, 2], x[:, 2], 1)[0] for x in (o, f))
        print(
            f"ridge {ridge:6.0f} {name:5s} n={len(h)}: |err| L1 old {err_old:.3f} new {err_new:.3f}"
            f"  z-slope old {slope_old:.2f} new {slope_new:.2f}"
        )
