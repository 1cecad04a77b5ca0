"""The ZeroShape-W / ZeroShape network (see :mod:`zsw.model.zeroshape_w`)."""

from zsw.model.decoder import DecoderLatents, PointDecoder
from zsw.model.zeroshape_w import ModelOutput, ZeroShapeW, build_model, count_parameters

__all__ = ["build_model", "ZeroShapeW", "ModelOutput", "PointDecoder", "DecoderLatents", "count_parameters"]
