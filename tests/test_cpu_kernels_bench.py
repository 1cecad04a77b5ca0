"""``python -m zsw.bench.cpu_kernels``: it times what the decoder really hands the kernels."""

from __future__ import annotations

import torch

from zsw.bench import cpu_kernels


def test_capture_records_the_decoders_real_inputs_and_joins_the_chunks(repo_root):
    got = cpu_kernels.capture(repo_root / "examples" / "toy.png", points=20000)
    q, k, v, k_latent, v_latent, scale = got["attention"]
    assert q.shape[2] == k.shape[2] == v.shape[2] == 20000 < got["decoded"]  # several grid chunks joined
    assert k_latent.shape[:2] == q.shape[:2] and k_latent.shape[2] > 1 and scale > 0
    x, weights, *_ = got["mlp"]
    decoder, latents, points = got["decode"]
    assert x.shape[:2] == (1, 20000) and x.shape[2] == weights[0].shape[1] and points.shape == (1, 20000, 3)
    assert len(torch.unique(points.reshape(-1, 3), dim=0)) > 19000  # grid points, not one chunk repeated
    # the recording is gone afterwards: the kernels' entry points are the package's own again
    from zsw import kernels
    from zsw.model.decoder import PointDecoder

    assert kernels.point_cross_attention.__module__ == "zsw.kernels" and PointDecoder.decode.__name__ == "decode"
    assert PointDecoder.decode.__qualname__ == "PointDecoder.decode"


def test_compare_reports_times_and_how_far_the_outputs_differ():
    a = torch.arange(6.0)
    rows = cpu_kernels.compare({"op": (lambda: a + 1e-3, lambda: a, 1)}, rounds=2, repeats=2)
    r = rows["op"]
    assert abs(r["max_abs_diff"] - 1e-3) < 1e-6 and r["scale"] == 5.0 and r["threads"] == 1
    assert 0 < r["fast_best_s"] <= r["fast_s"] and 0 < r["ref_best_s"] <= r["ref_s"]
    text = cpu_kernels.markdown({"rows": rows, "points": 6, "decoded": 6, "rounds": 2, "repeats": 2,
                                 "shapes": {"q": [1], "k_latent": [1], "mlp_in": [1]}}, "x.png")  # fmt: skip
    assert "| op | 1 |" in text and "1.0e-03 (5)" in text
