"""The recipe behind "Every look kept" (../README.md): record every framing look zsw takes on the
padding bench's photos -- per look the window, the object mask, its IoU with the truth and what a
rule may read (how the photo corrected the mask, its share of the input, the share of confident
pixels near it) -- then score six rules for which look to reconstruct.

    python bench/results/padding/looks/looks.py 0.5     # writes looks-0.5.pkl, prints the rules
"""

import pickle
import sys
import zlib

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

import zsw.infer.reconstruct as R
from zsw.bench import padding as P
from zsw.infer.image import object_window

LOG = []
orig = R.Reconstructor._corrected_masks
state = {"search": False}


def rec_masks(self, images, pixel):
    vis, cor, how = orig(self, images, pixel)
    if not state["search"]:
        for b, im in enumerate(images):
            obj = vis[b] if cor[b] is None else cor[b]
            p = torch.sigmoid(pixel.visible_mask_logits[b, 0].float()).cpu().numpy()
            conf = float(p[obj].mean()) if obj.any() else 0.0
            sure = (
                float((np.abs(p - 0.5) > 0.4)[ndimage.binary_dilation(obj, iterations=4)].mean()) if obj.any() else 0.0
            )
            edge = float(np.concatenate([obj[0], obj[-1], obj[:, 0], obj[:, -1]]).mean())
            win = object_window(obj, im)
            LOG.append(
                (
                    im.square,
                    obj.copy(),
                    dict(
                        conf=conf,
                        sure=sure,
                        edge=edge,
                        area=float(obj.mean()),
                        how=how[b],
                        fixed=bool(win is not None and not R.reframe_worthwhile(im.square, win)),
                    ),
                )
            )
    return vis, cor, how


R.Reconstructor._corrected_masks = rec_masks
osearch = R.Reconstructor._search


def search(self, images, prompts):
    state["search"] = True
    try:
        out = osearch(self, images, prompts)
    finally:
        state["search"] = False
    if images:
        LOG.append(("search", out))
    return out


R.Reconstructor._search = search


def to_photo(square, mask, H, W):
    x0, y0, side = square
    big = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((side, side), Image.NEAREST)) > 127
    out = np.zeros((H, W), bool)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, W), min(y0 + side, H)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0:sy1, sx0:sx1] = big[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
    return out


def photos(fraction):
    names = sorted(p.stem for p in (P.REPO / "examples").glob("*.png"))
    for kind in ("gravel", "grass", "brick"):
        for shape in P.SHAPES:
            H, W = P.SHAPES[shape]
            bg = P.texture(kind, H, W)
            for name in names:
                obj = np.asarray(Image.open(P.REPO / "examples" / f"{name}.png").convert("RGB"))
                mask = np.asarray(Image.open(P.REPO / "examples" / "masks" / f"{name}.png").convert("L")) > 127
                rng = np.random.default_rng(zlib.crc32(f"{kind}/{shape}/{name}".encode()))
                photo, truth = P.paste(bg, obj, mask, fraction, rng)
                yield f"{kind}/{shape}/{name}", photo, truth


if __name__ == "__main__":
    fraction = float(sys.argv[1])
    recon = P._reconstructor(None, "auto")
    rows = []
    for key, photo, truth in photos(fraction):
        LOG.clear()
        got, rec = P.final_mask(recon, photo, key.split("/")[-1])
        H, W = photo.shape[:2]
        looks = [(l[0], P.iou(to_photo(l[0], l[1], H, W), truth), l[1], l[2]) if l[0] != "search" else l for l in LOG]
        rows.append(
            {
                "key": key,
                "final": P.iou(got, truth),
                "window": rec.info["input"]["window"],
                "looks": looks,
                "shape": (H, W),
            }
        )
        print(key, f"{rows[-1]['final']:.3f}", [(l[0], round(l[1], 3)) for l in looks if l[0] != "search"], flush=True)
    pickle.dump(rows, open(f"looks-{fraction}.pkl", "wb"))
    good = lambda d: d["how"] is not None  # noqa: E731
    rules = {
        "last": lambda ls: ls[-1],
        "last confirmed": lambda ls: ([lk for lk in ls if good(lk[3])] or ls)[-1],
        "first confirmed after the first": lambda ls: ([lk for lk in ls[1:] if good(lk[3])] or ls)[0],
        "confirmed, then most confident": lambda ls: max(ls, key=lambda lk: (good(lk[3]), lk[3]["sure"])),
        "confirmed, then largest (zsw)": lambda ls: max(ls, key=lambda lk: (good(lk[3]), lk[3]["area"])),
        "largest": lambda ls: max(ls, key=lambda lk: lk[3]["area"]),
    }
    for name, rule in rules.items():
        picked = [rule([lk for lk in r["looks"] if lk[0] != "search"])[1] for r in rows]
        print(f"{name}: mean IoU {np.mean(picked):.3f}")
