"""The ZeroShape-W / ZeroShape network (see :mod:`zsw.model.zeroshape_w`)."""

from zsw.model.decoder import DecoderLatents, PixelView, PointDecoder, silhouette_distance
from zsw.model.pixel import PixelOutput
from zsw.model.zeroshape_w import (
    LiftedSurface,
    ModelOutput,
    SurfacePrediction,
    ZeroShapeW,
    build_decoder,
    build_model,
    count_parameters,
    lift_surface,
)

__all__ = [
    "build_model",
    "build_decoder",
    "ZeroShapeW",
    "ModelOutput",
    "SurfacePrediction",
    "PixelOutput",
    "LiftedSurface",
    "lift_surface",
    "PointDecoder",
    "DecoderLatents",
    "PixelView",
    "silhouette_distance",
    "count_parameters",
]
