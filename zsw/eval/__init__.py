"""Evaluation with ZeroShape's protocol: Chamfer distance and F-score on sampled surface points."""
