"""Prompt embeddings from a frozen CLIP text tower (open_clip), loaded only when needed.

The embedding of the default prompt ("object") is a buffer of the model, so it travels in every
checkpoint and default inference needs no CLIP weights. Any other prompt is encoded with open_clip
(``clip_model`` / ``clip_pretrained`` of :class:`~zsw.config.TextConfig`) the first time it is seen
and cached for the session. The CLIP tower is never registered as a submodule: it is not trained,
not saved and not counted in the model's parameters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from zsw.config import TextConfig
from zsw.errors import ZswError

__all__ = ["PromptEmbedder", "load_clip", "quiet_logging"]


def load_clip(model_name: str, pretrained: str, device: torch.device | str = "cpu"):
    """open_clip model and tokenizer, in eval mode with gradients off, or a one-line ZswError.

    Offline first: the local cache (or a weights file) is tried without any network access; only
    when the weights are not there, and the hub answers at all, are they downloaded. Without a
    network the error comes at once, not after a minute of download retries."""
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - open_clip is a core dependency
        raise ZswError(f"open_clip is not installed ({e}); pip install open_clip_torch") from None
    if (model_name, pretrained) in _FAILED:  # said once; a folder of photos does not retry per photo
        raise ZswError(_FAILED[model_name, pretrained])
    try:
        return _load_clip(open_clip, model_name, pretrained, device)
    except ZswError as e:
        _FAILED[model_name, pretrained] = str(e)
        raise


#: CLIP weights that could not be loaded in this process, and why
_FAILED: dict[tuple[str, str], str] = {}


def _load_clip(open_clip, model_name: str, pretrained: str, device):
    def create():
        return open_clip.create_model(
            model_name, pretrained=pretrained or None, device=device, require_pretrained=bool(pretrained)
        )

    try:
        with _hub_offline(), quiet_logging():  # open_clip logs its failed offline attempt as an ERROR
            model = create()
    except Exception as offline_error:
        from zsw import hub

        reason = hub.hub_unreachable()
        if reason is not None:
            raise ZswError(
                f"cannot load CLIP {model_name!r} with weights {pretrained!r}: they are not in the local cache "
                f"({type(offline_error).__name__}) and the hub is unreachable ({reason}); download them once "
                "with network access or set HF_HUB_CACHE to a folder that holds them"
            ) from None
        try:
            model = create()
        except Exception as e:
            raise ZswError(
                f"cannot load CLIP {model_name!r} with weights {pretrained!r} "
                f"({type(e).__name__}: {str(e).splitlines()[0]}); "
                "download them once with network access or set HF_HUB_CACHE to a folder that holds them"
            ) from None
    model.eval().requires_grad_(False)
    return model, open_clip.get_tokenizer(model_name)


@contextlib.contextmanager
def quiet_logging():
    """Silence log records up to ERROR (huggingface_hub's retries, open_clip's 'failed to
    download') while a hub model loads, our own error saying what went wrong; then restore the
    caller's ``logging.disable`` level, whatever it was."""
    import logging

    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.ERROR))
    try:
        yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def _hub_offline():
    """huggingface_hub reads its offline switch at call time: flip it for the duration."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


class PromptEmbedder(nn.Module):
    """Category prompt(s) -> L2-normalised CLIP text embeddings ``[B, dim]``."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        # filled by `init_default_embedding`; stored in checkpoints
        self.register_buffer("default_embedding", torch.zeros(cfg.dim))
        self._cache: dict[str, Tensor] = {}
        self._clip = None  # (model, tokenizer), deliberately not a submodule

    @torch.no_grad()
    def init_default_embedding(self, use_clip: bool) -> str:
        """Set the stored embedding of the default prompt: from CLIP when ``use_clip`` (needs the
        weights), else a fixed pseudo-random unit vector, which keeps models trained without CLIP
        self-consistent. Returns a short description of the source."""
        if use_clip:
            self.default_embedding.copy_(self.encode([self.cfg.default_prompt])[0])
            return f"clip:{self.cfg.clip_model}/{self.cfg.clip_pretrained}"
        g = torch.Generator().manual_seed(0)
        v = torch.randn(self.cfg.dim, generator=g)
        self.default_embedding.copy_(v / v.norm())
        return "random-unit"

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Tensor:  # [P, dim] float32, on CPU
        """Encode prompts with the CLIP text tower (loading it on first use)."""
        if self._clip is None:
            self._clip = load_clip(self.cfg.clip_model, self.cfg.clip_pretrained)
        model, tokenizer = self._clip
        emb = model.encode_text(tokenizer(list(prompts)), normalize=True).float()
        if emb.shape[-1] != self.cfg.dim:
            raise ZswError(
                f"CLIP {self.cfg.clip_model!r} gives {emb.shape[-1]}-d text embeddings but the model expects "
                f"text.dim={self.cfg.dim}"
            )
        return emb

    def forward(self, prompts: Sequence[str] | None, batch: int) -> Tensor:  # [batch, dim]
        """Embeddings for ``prompts`` (one per image, or one for all); None means the default."""
        if prompts is None:
            prompts = [self.cfg.default_prompt]
        # CLIP's tokenizer lowercases and collapses whitespace: "Object" is the default prompt, exactly
        prompts = [" ".join(p.split()).lower() if isinstance(p, str) else p for p in prompts]
        if any(not isinstance(p, str) or not p for p in prompts):
            raise ZswError("prompts must be non-empty strings")
        if len(prompts) == 1:
            prompts = prompts * batch
        if len(prompts) != batch:
            raise ZswError(f"got {len(prompts)} prompts for a batch of {batch} images")
        missing = sorted({p for p in prompts if p != self.cfg.default_prompt and p not in self._cache})
        if missing:
            for p, e in zip(missing, self.encode(missing)):
                self._cache[p] = e
        device = self.default_embedding.device
        rows = [self.default_embedding if p == self.cfg.default_prompt else self._cache[p].to(device) for p in prompts]
        return torch.stack(rows)
