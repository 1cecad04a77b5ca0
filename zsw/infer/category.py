"""Category estimation for ``--prompt auto``: which word to give the model's text prompt.

ZeroShape-W conditions its visible-mask head on a category prompt. Its main setting uses the
category-agnostic "object"; the paper also reports a category-specific variant whose word comes
from a vision-language model. zsw offers two estimators behind one protocol:

* :class:`CLIPCategoryEstimator` -- open_clip zero-shot classification over the LVIS (1203) and
  ShapeNetCore (55) category names packaged in ``zsw/assets``, each class embedded as the mean of
  a few "a photo of a {}." style templates. Class embeddings are cached on disk per CLIP model.
* ``zsw.infer.vlm.VLMCategoryEstimator`` -- asks a VLM for one noun (the paper's approach).

:func:`get_estimator` builds either from a spec string: ``"clip"`` or ``"vlm:<hub id or path>"``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from zsw.errors import ConfigError, ZswError

__all__ = [
    "CategoryEstimator",
    "CLIPCategoryEstimator",
    "get_estimator",
    "vocabulary",
    "TEMPLATES",
]

#: prompt templates averaged per class (CLIP's ImageNet recipe, reduced to object photos)
TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a cropped photo of a {}.",
    "a rendering of a {}.",
)
_ASSETS = Path(__file__).resolve().parents[1] / "assets"


@runtime_checkable
class CategoryEstimator(Protocol):
    """Maps images to one lowercase category word each."""

    def __call__(self, images: Sequence) -> list[str]:  # PIL images -> categories
        ...


def _clean(name: str) -> str:
    """'bat (animal)' -> 'bat'; 'Trash_bin' -> 'trash bin'."""
    return re.sub(r"\s*\(.*?\)\s*", " ", name).replace("_", " ").strip().lower()


def vocabulary() -> list[tuple[str, str]]:
    """``(text for CLIP, category word)`` pairs: LVIS then ShapeNetCore, duplicates removed.

    The CLIP text keeps LVIS's disambiguation ("bat (animal)"); the category word drops it ("bat").
    """
    entries: list[tuple[str, str]] = []
    seen: set[str] = set()
    lvis = (_ASSETS / "lvis_categories.txt").read_text().splitlines()
    shapenet = [line.split("\t")[-1] for line in (_ASSETS / "shapenet_core55.txt").read_text().splitlines()]
    for raw in [*lvis, *shapenet]:
        raw = raw.strip().replace("_", " ")
        if not raw or raw.lower() in seen:
            continue
        seen.add(raw.lower())
        entries.append((raw, _clean(raw)))
    return entries


def _cache_dir() -> Path:
    root = os.environ.get("ZSW_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "zsw"
    )
    return Path(root)


class CLIPCategoryEstimator:
    """Zero-shot CLIP classification over a category vocabulary.

    Args:
        model_name: open_clip model (``ViT-B-32`` is the model whose text tower zsw conditions on).
        pretrained: open_clip weights tag or file (``openai``); downloaded once by open_clip.
        device: where CLIP runs (default CPU).
        vocab: ``(text, word)`` pairs; default :func:`vocabulary`.
        templates: prompt templates averaged per class.
        cache: keep the class embeddings on disk (``$ZSW_CACHE_DIR``, default ``~/.cache/zsw``).

    Raises:
        ZswError: when the CLIP weights cannot be loaded (one line saying how to get them).
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str = "openai",
        device: str | torch.device | None = None,
        vocab: Sequence[tuple[str, str]] | None = None,
        templates: Sequence[str] = TEMPLATES,
        cache: bool = True,
    ):
        from zsw.model import text as text_module

        self.device = torch.device(device or "cpu")
        self.model_name, self.pretrained = model_name, pretrained
        self.vocab = list(vocab) if vocab is not None else vocabulary()
        self.templates = tuple(templates)
        if not self.vocab:
            raise ConfigError("the category vocabulary is empty")
        # looked up on the module so tests (and users) can swap the loader; a failure is reported
        # by load_clip in one line, without the download libraries' own log lines before it
        with text_module.quiet_logging():
            self.model, self.tokenizer = text_module.load_clip(model_name, pretrained, self.device)
        self.model = self.model.to(self.device).eval()
        self.preprocess = self._transform()
        self.class_embeddings = self._class_embeddings(cache)  # [C, D] unit rows

    def _transform(self):
        import open_clip

        cfg = getattr(self.model.visual, "preprocess_cfg", {}) or {}
        size = cfg.get("size", getattr(self.model.visual, "image_size", 224))
        return open_clip.image_transform(
            size,
            is_train=False,
            mean=cfg.get("mean", open_clip.OPENAI_DATASET_MEAN),
            std=cfg.get("std", open_clip.OPENAI_DATASET_STD),
            resize_mode=cfg.get("resize_mode"),
            interpolation=cfg.get("interpolation"),
        )

    def _cache_path(self) -> Path:
        key = "\n".join([self.model_name, str(self.pretrained), *self.templates, *(t for t, _ in self.vocab)])
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.model_name}-{Path(str(self.pretrained)).name}")
        return _cache_dir() / f"clip-vocab-{safe}-{digest}.safetensors"

    @torch.no_grad()
    def _class_embeddings(self, cache: bool) -> torch.Tensor:  # [C, D]
        from safetensors.torch import load_file, save_file

        path = self._cache_path()
        if cache and path.is_file():
            try:
                emb = load_file(str(path))["embeddings"]
                if emb.shape[0] == len(self.vocab):
                    return emb.to(self.device)
            except Exception:  # a corrupt cache is rebuilt
                pass
        rows = []
        for start in range(0, len(self.vocab), 64):
            names = [t for t, _ in self.vocab[start : start + 64]]
            texts = [tpl.format(n) for n in names for tpl in self.templates]
            e = self.model.encode_text(self.tokenizer(texts).to(self.device)).float()
            e = e / e.norm(dim=-1, keepdim=True)
            e = e.view(len(names), len(self.templates), -1).mean(dim=1)
            rows.append(e / e.norm(dim=-1, keepdim=True))
        emb = torch.cat(rows)
        if cache:
            from zsw.io import atomic_path

            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp:
                    save_file({"embeddings": emb.cpu().contiguous()}, str(tmp))
            except OSError:  # a read-only home is no reason to fail
                pass
        return emb

    @torch.no_grad()
    def scores(self, images: Sequence) -> torch.Tensor:  # [B, C] cosine similarities
        """Cosine similarity of every image to every class."""
        if not images:
            return torch.zeros(0, len(self.vocab))
        batch = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        e = self.model.encode_image(batch).float()
        e = e / e.norm(dim=-1, keepdim=True)
        return e @ self.class_embeddings.T.to(e.dtype)

    def __call__(self, images: Sequence) -> list[str]:
        """The most similar category word for each PIL image."""
        best = self.scores(images).argmax(dim=-1).tolist()
        return [self.vocab[i][1] for i in best]


def get_estimator(spec: str = "clip", device: str | torch.device | None = None) -> CategoryEstimator:
    """Build a category estimator from ``"clip"`` or ``"vlm:<hub id or local folder>"``."""
    spec = spec.strip()
    if spec in ("clip", "auto"):
        return CLIPCategoryEstimator(device=device)
    if spec.startswith("vlm:"):
        model_id = spec[4:].strip()
        if not model_id:
            raise ConfigError("give the VLM as vlm:<hub id or folder>, e.g. vlm:HuggingFaceTB/SmolVLM-256M-Instruct")
        try:
            from zsw.infer.vlm import VLMCategoryEstimator
        except ImportError as e:
            raise ZswError(f"the VLM category estimator is unavailable ({e}); pip install 'zsw[synth]'") from None
        return VLMCategoryEstimator(model_id, device=None if device is None else str(device))
    raise ConfigError(f"category estimator must be 'clip' or 'vlm:<hub id or folder>', got {spec!r}")
