"""Point decoder: occupancy of any 3D point given the image's tokens.

ZeroShape's implicit network, restructured for inference. The tokens ``[B, L, C_tok]`` are
projected, get a fixed 2-D sin-cos position embedding (zero for the global token) and pass through
``blocks`` pre-norm transformer blocks in which they self-attend among themselves and never see
the points. Each query point is embedded (one Linear on xyz for ZeroShape; two Linears on xyz
concatenated with a projected CLIP embedding for ZeroShape-W) and, in every block, attends to the
latent keys plus its own key (:func:`zsw.kernels.point_cross_attention`). After a final LayerNorm,
``cat(xyz, feature)`` goes through the Softplus skip-MLP (:func:`zsw.kernels.occupancy_mlp`) to
one occupancy logit.

A pixel-aligned decoder (``DecoderConfig.pixel_aligned``) also feeds each query the visible
surface map sampled at its pixel (:class:`PixelView`); with ``mirror_queries`` (``axial_queries``)
also at the query reflected through the object's predicted centre (turned about its predicted up
axis), so the hidden side of a symmetric object can be read off its visible side; with
``silhouette_distance`` also how deep each of those pixels lies inside the visible mask, and with
``token_features`` the encoder's local tokens, laid out on their grid, at the same places.

Because the latent path does not depend on the points, :meth:`PointDecoder.encode` computes the
per-block latent K/V once per image and :meth:`PointDecoder.decode` streams any number of points
through them -- the grid-evaluation hot path. ``decoder(tokens, points)`` does both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from zsw import kernels
from zsw.config import DecoderConfig
from zsw.model.geometry import sincos_pos_embed_2d
from zsw.model.layers import FeedForward, LayerNorm, OccupancyMLP, PointCrossAttention

__all__ = [
    "PointDecoder",
    "DecoderLatents",
    "PixelView",
    "box_center",
    "camera_projection",
    "project_points",
    "silhouette_distance",
]


@dataclass
class PixelView:
    """What pixel-aligned decoding (``DecoderConfig.pixel_aligned``) samples for each query point."""

    surface: Tensor  # [B, C, S, S]: normalised visible xyz, visible mask (and occluder mask)
    projection: Tensor  # [B, 3, 4]: normalised point -> homogeneous pixel, K @ [scale * I | center]
    # [B, 3]: centre of the visible surface's robust bounding box, the point from which a
    # mirror-query decoder predicts the object's centre; derived from ``surface`` on first use
    # (:meth:`center_anchor`) unless given (the exported decoder graph takes it as an input)
    anchor: Tensor | None = None
    # [B, 1, S, S]: each visible pixel's distance to the visible mask's edge (:func:`silhouette_distance`),
    # derived from ``surface`` on first use (:meth:`edge_distance`) unless given (an exported graph's input)
    distance: Tensor | None = None

    @staticmethod
    def from_surface(
        visible_points: Tensor,  # [B, 3, S, S] normalised, 0 outside the mask
        visible_mask: Tensor,  # [B, 1, S, S]
        occluder_mask: Tensor | None,  # [B, 1, S, S]
        intrinsics: Tensor,  # [B, 3, 3]
        center: Tensor,  # [B, 3]
        scale: Tensor,  # [B]
    ) -> PixelView:
        maps = [visible_points, visible_mask] + ([occluder_mask] if occluder_mask is not None else [])
        surface = torch.cat([m.to(visible_points.dtype) for m in maps], dim=1)
        return PixelView(surface, camera_projection(intrinsics, center, scale))

    def center_anchor(self) -> Tensor:  # [B, 3]
        """:func:`box_center` of the visible xyz (channels 0-2) on the visible mask (channel 3),
        computed once per view: every chunk of a grid decodes against the same anchor."""
        if self.anchor is None:
            self.anchor = box_center(self.surface[:, :3], self.surface[:, 3:4])
        return self.anchor

    def edge_distance(self) -> Tensor:  # [B, 1, S, S]
        """:func:`silhouette_distance` of the visible mask (channel 3), computed once per view."""
        if self.distance is None:
            self.distance = silhouette_distance(self.surface[:, 3:4])
        return self.distance

    def sample(
        self, points: Tensor, features: Tensor | None = None, distance: bool = False
    ) -> Tensor:  # [B, N, 3] -> [B, N, C + 3 (+ 1) (+ C_f)]
        """The surface map at each point's pixel (bilinear; zeros off the image and behind the
        camera), the point minus the sampled surface point, with ``distance`` the pixel's
        :meth:`edge_distance` and, given ``features [B, C_f, G, G]`` (a map over the same image at a
        coarser grid: the decoder's token features), those at the same place. Always computed in
        float32, also under autocast: pixel coordinates up to the image size need more than bf16's
        8 bits."""
        with torch.autocast(points.device.type, enabled=False):
            pts = points.float()
            B, C, S, _ = self.surface.shape
            uv, front = project_points(pts, self.projection)
            grid = torch.where(front, uv * (2.0 / (S - 1)) - 1.0, torch.full_like(uv, -4.0))  # pixel centres at +-1
            sampled = F.grid_sample(self.surface.float(), grid[:, :, None, :], align_corners=True)
            sampled = sampled[..., 0].transpose(1, 2)  # [B, N, C]
            out = [sampled, pts - sampled[..., :3]]
            if distance:
                d = F.grid_sample(self.edge_distance().float(), grid[:, :, None, :], align_corners=True)
                out.append(d[..., 0].transpose(1, 2))  # [B, N, 1]
            if features is not None:
                # pixel u's centre lies at (u + 0.5) / S of the image, whatever the map's grid
                cells = torch.where(front, (2.0 * uv + 1.0) / S - 1.0, torch.full_like(uv, -4.0))
                f = F.grid_sample(features.float(), cells[:, :, None, :], align_corners=False)
                out.append(f[..., 0].transpose(1, 2))  # [B, N, C_f]
        return torch.cat(out, dim=-1).to(points.dtype)


def _mlp_input(points: Tensor, feature: Tensor, aligned: bool) -> Tensor:  # [B, N, 3], [B, N, C] -> [B, N, 3 + C]
    """``cat(xyz, feature)`` for the occupancy MLP, in the feature's dtype: under autocast the 16-bit
    dtype the MLP computes in anyway, not an fp32 copy it would cast back. ``aligned`` (the decoder
    asks for it on a GPU): rows 16 bytes apart, a view of a padded buffer (259 bf16 values in rows
    of 264), so that the MLP's on-chip forward loads them by TMA without copying them first."""
    points = points.to(feature.dtype)
    if not aligned:
        return torch.cat([points, feature], dim=-1)
    width = 3 + feature.shape[-1]
    per_row = 16 // feature.element_size()
    out = feature.new_empty(*feature.shape[:-1], -(-width // per_row) * per_row)[..., :width]
    out[..., :3] = points
    out[..., 3:] = feature
    return out


def camera_projection(intrinsics: Tensor, center: Tensor, scale: Tensor) -> Tensor:  # -> [B, 3, 4]
    """``K @ [scale * I | center]`` in float32: a normalised point to its homogeneous pixel
    (``camera = normalised * scale + center``; ``intrinsics [B, 3, 3]``, ``center [B, 3]``, ``scale [B]``)."""
    eye = torch.eye(3, device=center.device, dtype=torch.float32)
    pose = torch.cat([scale.float()[:, None, None] * eye, center.float()[:, :, None]], dim=2)
    return intrinsics.float() @ pose


def project_points(points: Tensor, projection: Tensor) -> tuple[Tensor, Tensor]:  # [B, N, 3], [B, 3, 4]
    """Pixel coordinates ``uv [B, N, 2]`` (pixel centres at integers) of ``points`` through
    ``projection`` (:func:`camera_projection`), in float32, and ``front [B, N, 1]``: in front of
    the camera (``uv`` is not divided by the depth elsewhere). Autocast is off inside: pixel
    coordinates up to the image size need more than bf16's 8 bits."""
    with torch.autocast(points.device.type, enabled=False):
        P = projection.float()
        uvw = points.float() @ P[:, :, :3].transpose(1, 2) + P[:, None, :, 3]
        w = uvw[..., 2:]
        front = w > 1e-6
        return uvw[..., :2] / torch.where(front, w, torch.ones_like(w)), front


def box_center(points: Tensor, mask: Tensor, q: float = 0.02) -> Tensor:  # [B, 3, S, S], [B, 1, S, S] -> [B, 3]
    """Centre of the masked points' bounding box between the ``q`` and ``1 - q`` quantiles of each
    axis (robust to the stray pixels a predicted mask and depth leave at the silhouette), on every
    other pixel of every other row; 0 for an empty mask. For a convex object the bounding box of
    what is seen is centred on the object's own in x and y far better than the centroid is."""
    pts = points.detach().float()[:, :, ::2, ::2].flatten(2)  # [B, 3, P]
    seen = (mask.detach()[:, :, ::2, ::2] > 0.5).flatten(2)  # [B, 1, P]
    pts = torch.where(seen, pts, torch.full_like(pts, float("nan")))
    out = []
    for part in pts.split(128):  # torch.nanquantile takes at most 2^24 elements
        # q as numbers, not a tensor made on the host: its copy would wait for the device (and
        # break a CUDA graph's capture)
        out.append((torch.nanquantile(part, q, dim=-1) + torch.nanquantile(part, 1.0 - q, dim=-1)) / 2)
    return torch.nan_to_num(torch.cat(out), nan=0.0)


def silhouette_distance(mask: Tensor) -> Tensor:  # [B, 1, S, S] -> [B, 1, S, S]
    """How far each pixel of ``mask`` (> 0.5) lies inside it: 1 plus the number of erosions it
    survives, alternating a 3x3 square and a plus (an octagonal distance: up to ~10 % short of the
    Euclidean one), pixels beyond the image counting as outside, divided by the radius of a disc of
    the mask's area (about 1 at the centre of a round silhouette, small on thin parts such as legs,
    handles and rims); 0 outside the mask and for an empty one. A shape-from-silhouette cue: a
    round object is about as deep at a pixel as its silhouette is wide there."""
    with torch.autocast(mask.device.type, enabled=False):
        inside = (mask.detach().float() > 0.5).float()
        area = inside.flatten(1).sum(1).clamp_min(1.0)  # [B]
        current, total = inside, inside.clone()
        for step in range(max(mask.shape[-2:]) // 2 + 1):
            padded = F.pad(current, (1, 1, 1, 1))  # zeros beyond the image
            rows = torch.minimum(torch.minimum(padded[..., :-2, :], padded[..., 2:, :]), padded[..., 1:-1, :])
            if step % 2 == 0:  # the 3x3 square, separably: rows, then columns
                current = torch.minimum(torch.minimum(rows[..., :-2], rows[..., 2:]), rows[..., 1:-1])
            else:  # the plus
                cols = torch.minimum(padded[..., 1:-1, :-2], padded[..., 1:-1, 2:])
                current = torch.minimum(rows[..., 1:-1], cols)
            total = total + current
            if step % 8 == 7 and not bool(current.any()):  # a host sync only every 8 erosions
                break
        return total / torch.sqrt(area / torch.pi)[:, None, None, None]


@dataclass
class DecoderLatents:
    """What every query point of an image needs, computed once by :meth:`PointDecoder.encode`."""

    kv: list[tuple[Tensor, Tensor]]  # per block: latent keys and values, [B, H, L, D] each
    text: Tensor | None = None  # [B, C_text]: the text part of every query (ZeroShape-W)
    # stochastic depth (training only): per block, keep/scale factors [B, 1, 1] of the attention
    # and MLP residuals, shared by the latent and point paths exactly as in the joint sequence
    keep: list[tuple[Tensor, Tensor]] | None = field(default=None, repr=False)
    # the image's visible surface and camera (pixel-aligned decoders only)
    view: PixelView | None = field(default=None, repr=False)
    # the object's predicted centre minus the view's anchor (the visible surface's bounding-box
    # centre), normalised frame, [B, 3] (mirror-query decoders only)
    center_offset: Tensor | None = None
    # the object's predicted up axis, a unit vector in the camera's axes, [B, 3] (axial queries)
    up: Tensor | None = None
    # the local tokens' features on their grid, [B, C_f, G, G] (``DecoderConfig.token_features``)
    token_map: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.kv[0][0].shape[0]

    def object_center(self) -> Tensor:  # [B, 3] float32, normalised frame
        """The object's predicted centre: the view's anchor plus the decoder's offset."""
        if self.center_offset is None or self.view is None:
            raise ValueError("this decoder reflects its queries: its latents need a centre offset and a PixelView")
        return self.view.center_anchor().float() + self.center_offset.float()


def _drop(x: Tensor, keep: Tensor | None) -> Tensor:
    return x if keep is None else x * keep


class DecoderBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))`` on both paths."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, last: bool):
        super().__init__()
        self.last = last
        self.norm1 = LayerNorm(dim, eps=1e-6)
        self.attn = PointCrossAttention(dim, heads)
        self.norm2 = LayerNorm(dim, eps=1e-6)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio))

    def latent(self, x: Tensor, keep: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Latent K/V of this block and the updated latent tokens (None after the last block)."""
        k, v, out = self.attn.latent(self.norm1(x), update=not self.last)
        if self.last:
            return k, v, None
        keep_attn, keep_mlp = keep if keep is not None else (None, None)
        x = x + _drop(out, keep_attn)
        x = x + _drop(self.mlp(self.norm2(x)), keep_mlp)
        return k, v, x

    def points(self, x: Tensor, k: Tensor, v: Tensor, keep: tuple[Tensor, Tensor] | None = None) -> Tensor:
        keep_attn, keep_mlp = keep if keep is not None else (None, None)
        x = x + _drop(self.attn.points(self.norm1(x), k, v), keep_attn)
        return x + _drop(self.mlp(self.norm2(x)), keep_mlp)


class PointDecoder(nn.Module):
    """Tokens ``[B, L, C_tok]`` and points ``[B, N, 3]`` (normalised frame) -> logits ``[B, N]``."""

    def __init__(
        self,
        cfg: DecoderConfig,
        token_dim: int,
        token_grid: int,
        text_dim: int = 0,
        text_embedder=None,
        view_channels: int = 0,
    ):
        super().__init__()
        self.cfg = cfg
        width = cfg.width
        self.latent_proj = nn.Linear(token_dim, width)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(width, token_grid, cls_token=True)[None])
        if cfg.pixel_aligned and view_channels < 4:
            raise ValueError("a pixel-aligned decoder needs the surface map's channel count (view_channels)")
        views = (1 + int(cfg.mirror_queries) + int(cfg.axial_queries)) if cfg.pixel_aligned else 0
        per_view = view_channels + 3 + int(cfg.silhouette_distance) + cfg.token_features
        point_in = 3 + 6 * cfg.point_frequencies + views * per_view
        self.token_grid = token_grid
        # the local tokens' features each query samples at its pixel (token_features > 0)
        self.token_proj = nn.Linear(token_dim, cfg.token_features) if cfg.token_features else None
        if cfg.point_embed == "linear":
            self.point_embed = nn.Linear(point_in, width)
            self.text_proj = None
        else:
            d = cfg.point_embed_dim
            self.point_embed = nn.Sequential(nn.Linear(point_in, d), nn.GELU(), nn.Linear(d, d))
            self.text_proj = nn.Linear(text_dim, width - d)
        self.blocks = nn.ModuleList(
            DecoderBlock(width, cfg.heads, cfg.mlp_ratio, last=i == cfg.blocks - 1) for i in range(cfg.blocks)
        )
        self.norm = LayerNorm(width, eps=1e-6)
        self.occupancy = OccupancyMLP(3 + width, cfg.occ_width, cfg.occ_layers, 1, cfg.skip_in, cfg.softplus_beta)
        # the object's centre in the normalised frame, from the global token (mirror queries)
        self.center_head = None
        if cfg.mirror_queries:
            self.center_head = nn.Sequential(
                nn.LayerNorm(token_dim),
                nn.Linear(token_dim, width),
                nn.GELU(),
                nn.Linear(width, 6 if cfg.axial_queries else 3),
            )
        self.apply(self._init_weights)
        if self.center_head is not None:  # start at the anchor, the visible surface's bounding-box centre
            nn.init.zeros_(self.center_head[-1].weight)
        if self.token_proj is not None and cfg.token_features_zero_init:
            nn.init.zeros_(self.token_proj.weight)  # start as the plain pixel-aligned decoder
        # the model's PromptEmbedder, for text=None (plain attribute: owned and saved by the model)
        self.__dict__["_text_embedder"] = text_embedder

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # ZeroShape's init: Xavier-uniform Linears with zero bias, LayerNorms at (1, 0)
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _stochastic_depth(self, batch: int, device: torch.device) -> list[tuple[Tensor, Tensor]] | None:
        p = self.cfg.drop_path
        if not self.training or p <= 0:
            return None
        keep = []
        for _ in self.blocks:
            pair = torch.empty(2, batch, 1, 1, device=device).bernoulli_(1 - p) / (1 - p)
            keep.append((pair[0], pair[1]))
        return keep

    def encode(self, tokens: Tensor, text: Tensor | None = None) -> DecoderLatents:
        """Per-block latent K/V of ``tokens [B, L, C_tok]`` (and the query text part).

        Args:
            tokens: the encoder's output tokens.
            text: CLIP embeddings ``[B, T]`` of the prompts (ZeroShape-W); None = default prompt.
        """
        B = tokens.shape[0]
        text_part = None
        if self.text_proj is not None:
            if text is None:
                if self._text_embedder is None:
                    raise ValueError("this decoder conditions on a text embedding: pass text=[B, T]")
                text = self._text_embedder(None, B)
            text_part = self.text_proj(text.to(tokens.dtype))  # [B, width - point_embed_dim]
        keep = self._stochastic_depth(B, tokens.device)
        x = self.latent_proj(tokens) + self.pos_embed.to(tokens.dtype)
        kv = []
        for i, block in enumerate(self.blocks):
            k, v, x = block.latent(x, keep[i] if keep else None)
            kv.append((k, v))
        offset = up = None
        if self.center_head is not None:
            # in float32 also under autocast: the centre places every mirrored query, and bf16's
            # 8 bits would move it by up to ~1 % of the object
            with torch.autocast(tokens.device.type, enabled=False):
                head = self.center_head(tokens[:, 0].to(self.center_head[1].weight.dtype)).float()
            offset = head[:, :3]
            if self.cfg.axial_queries:
                # from the camera's up (y points down in the image): where an upright object's axis
                # starts. On the device, not `+ new_tensor([0, -1, 0])`: a host tensor's copy would
                # wait for the device and cannot be captured in a CUDA graph
                up = head[:, 3:].clone()
                up[:, 1] -= 1.0
                up = F.normalize(up, dim=-1)
        token_map = None
        if self.token_proj is not None:  # [B, 1 + G*G, C_tok] -> [B, C_f, G, G]: the local tokens on their grid
            G = self.token_grid
            token_map = self.token_proj(tokens[:, 1:]).transpose(1, 2).reshape(B, -1, G, G)
        return DecoderLatents(kv=kv, text=text_part, keep=keep, center_offset=offset, up=up, token_map=token_map)

    def decode(self, latents: DecoderLatents, points: Tensor) -> Tensor:
        """Occupancy logits ``[B, N]`` of ``points [B, N, 3]`` against precomputed latents."""
        if points.dim() != 3 or points.shape[-1] != 3 or points.shape[0] != latents.batch_size:
            raise ValueError(f"points must be [B={latents.batch_size}, N, 3], got {tuple(points.shape)}")
        points = points.to(self.latent_proj.weight.dtype)  # parameter dtype; autocast handles the rest
        x = self.point_embed(self._point_features(points, latents))  # [B, N, d]
        if latents.text is not None:
            x = torch.cat([x, latents.text[:, None, :].expand(-1, points.shape[1], -1)], dim=-1)
        for i, (block, (k, v)) in enumerate(zip(self.blocks, latents.kv)):
            x = block.points(x, k, v, latents.keep[i] if latents.keep else None)
        x = self.norm(x)
        aligned = x.is_cuda and not kernels.is_exportable()
        return self.occupancy(_mlp_input(points, x, aligned)).squeeze(-1)

    def _point_features(self, points: Tensor, latents: DecoderLatents) -> Tensor:  # [B, N, 3] -> [B, N, F_in]
        """xyz; sin/cos of xyz at ``point_frequencies`` octaves; the pixel-aligned surface sample,
        and with mirror (axial) queries the samples at the point reflected through the object's
        centre (and turned by 180 degrees about its up axis)."""
        feats = [points]
        if self.cfg.point_frequencies:
            octaves = torch.arange(self.cfg.point_frequencies, device=points.device, dtype=points.dtype)
            angles = (points[..., None] * (torch.pi * 2.0**octaves)).flatten(-2)  # [B, N, 3F]
            feats += [torch.sin(angles), torch.cos(angles)]
        if self.cfg.pixel_aligned:
            if latents.view is None:
                raise ValueError("this decoder is pixel-aligned: its latents need a PixelView (see ZeroShapeW.latents)")
            view, token_map, dist = latents.view, latents.token_map, self.cfg.silhouette_distance
            if self.cfg.token_features and token_map is None:
                raise ValueError("this decoder samples the token grid: its latents need a token_map (see encode)")
            feats.append(view.sample(points, token_map, dist))
            if self.cfg.mirror_queries:
                center = latents.object_center()[:, None, :].to(points.dtype)  # [B, 1, 3]
                mirrored = 2.0 * center - points
                feats.append(view.sample(mirrored, token_map, dist))
            if self.cfg.axial_queries:
                if latents.up is None:
                    raise ValueError("this decoder turns its queries about an axis: its latents need the object's up")
                # 180 degrees about the axis u through c: q -> 2c - q + 2u (u . (q - c))
                u = latents.up[:, None, :].to(points.dtype)
                along = ((points - center) * u).sum(-1, keepdim=True)
                feats.append(view.sample(mirrored + 2.0 * along * u, token_map, dist))
        return torch.cat(feats, dim=-1) if len(feats) > 1 else points

    @torch.no_grad()
    def decode_chunked(self, latents: DecoderLatents, points: Tensor, chunk_size: int = 65536) -> Tensor:
        """:meth:`decode` in chunks of ``chunk_size`` points (bounded memory, no autograd)."""
        out = [self.decode(latents, points[:, i : i + chunk_size]) for i in range(0, points.shape[1], chunk_size)]
        return torch.cat(out, dim=1) if out else points.new_zeros(points.shape[:2])

    def forward(
        self, tokens: Tensor, points: Tensor, text: Tensor | None = None, view: PixelView | None = None
    ) -> Tensor:
        """Logits ``[B, N]`` for ``tokens [B, L, C_tok]`` and ``points [B, N, 3]``."""
        latents = self.encode(tokens, text)
        latents.view = view
        return self.decode(latents, points)
