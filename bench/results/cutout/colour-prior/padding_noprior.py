# The padding bench with --cutout auto's GrabCut as it was before the colour prior (no prior, 5 iterations):
#   python bench/results/cutout/colour-prior/padding_noprior.py --out OUT [padding bench options]
import zsw.infer.cutout as cutout
from zsw.bench.padding import main

_init = cutout.GrabCut.__init__
cutout.GrabCut.__init__ = lambda self, *a, **k: _init(self, *a, **{**k, "prior": False, "iterations": 5})
main()
