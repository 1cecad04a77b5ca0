"""One-off recipe of ``README.md`` here: ``zsw eval``'s defaults on the procedural test views, their
background removed by an *ideal* remover, the views' true masks as the photo's alpha channel.

    python bench/results/cutout/ideal_remover.py data/demo/test OUT.json MODE [hint]

MODE: ``union`` (the object's and the occluders' true masks: a remover that keeps what stands in
front of the object), ``visible`` (the object's alone: a remover that cuts the occluders away too),
``visible+predocc`` (the object's true mask and the occluders the pixel model sees in the photo).
``hint``: the alpha only corrects the predicted visible mask and frames the input; the photo is
not composited on white. It patches ``zsw.eval.evaluate._model_input``: a measurement, not a feature.
"""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zsw.eval import evaluate
from zsw.eval.jobs import EvalJobSettings, evaluate_set
from zsw.infer.tta import pixel_function
from zsw.infer.weights import open_backend

data, out, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
hint = sys.argv[4:] == ["hint"]
model_input = evaluate._model_input
pixel = pixel_function(open_backend(weights="demo")[0], "flip-pixel") if mode == "visible+predocc" else None


def ideal_input(sample, size, cutout=None):
    def true_mask(kind):
        return np.asarray(Image.open(data / kind / sample.category / f"{sample.name}.png")) > 127

    rgb = np.asarray(sample.image)
    visible, occluder = true_mask("visible_masks"), true_mask("occluder_masks")
    if mode == "visible+predocc":
        with torch.no_grad():
            out = pixel(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255, None)
        occluder = (out.occluder_mask_logits[0, 0] >= 0).numpy()
    alpha = visible if mode == "visible" else visible | occluder

    def ideal(_rgb):
        return np.where(alpha, 255, 0).astype(np.uint8)

    ideal.name = f"ideal ({mode})"
    im, mask = model_input(sample, size, ideal)
    if hint:
        im = dataclasses.replace(im, image=rgb.copy(), pixels=rgb.copy())
    return im, mask


evaluate._model_input = ideal_input
print(evaluate_set(data, out, EvalJobSettings(format="procedural")).summary["overall"])
