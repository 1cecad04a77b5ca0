"""Prompts and per-sample randomness for diffusion synthesis (the paper's Algorithm 1).

Appearance prompts are "a [color] [material] [object]" and background prompts "a [object] in the
[scene]", with the paper's colour and material lists (each with an empty entry, so some prompts
name no colour or no material) and the packaged scene list (``zsw/assets/scenes.txt``).

Every random choice of a sample comes from a seed derived from ``(run seed, stage, sample name,
attempt)`` by hashing, never from a shared stream: a sample's prompt, guidance perturbation and
diffusion noise are the same whatever the batch it lands in, the shard that runs it, or how often
the run was interrupted and resumed.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

import numpy as np

__all__ = [
    "COLORS",
    "MATERIALS",
    "AppearanceDraw",
    "derive_seed",
    "category_noun",
    "appearance_prompt",
    "background_prompt",
    "draw_appearance",
    "draw_scene",
    "load_scenes",
]

# The paper's lists; "" means the word is left out of the prompt.
COLORS: tuple[str, ...] = (
    "red",
    "pink",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "brown",
    "white",
    "black",
    "gray",
    "",
)
MATERIALS: tuple[str, ...] = ("metal", "wood", "plastic", "ceramic", "stone", "rubber", "leather", "")


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed from a run seed and any keys (stage name, sample name, attempt number).

    Stable across processes and Python versions (BLAKE2b, not ``hash()``), and small enough for
    ``torch.Generator.manual_seed``.
    """
    text = "\x1f".join([str(int(seed)), *(str(k) for k in keys)])
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@functools.cache
def _shapenet_names() -> dict[str, str]:
    from importlib.resources import files

    text = files("zsw").joinpath("assets/shapenet_core55.txt").read_text()
    return dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line)


def category_noun(category: str) -> str:
    """The words a prompt uses for a dataset category.

    ShapeNet synset ids become their names (``03001627`` -> ``chair``), LVIS qualifiers are dropped
    (``bow_(weapon)`` -> ``bow``), underscores become spaces (``teddy_bear`` -> ``teddy bear``).
    """
    name = _shapenet_names().get(category, category)
    name = re.sub(r"\(.*?\)", " ", name.replace("_", " "))
    return " ".join(name.split()).lower() or "object"


def _with_article(words: list[str]) -> str:
    phrase = " ".join(w for w in words if w)
    return ("an " if phrase[:1] in "aeiou" and phrase else "a ") + phrase


def appearance_prompt(noun: str, color: str, material: str) -> str:
    """``a [color] [material] [object]``; empty colour or material words are left out."""
    return _with_article([color, material, noun])


def background_prompt(noun: str, scene: str) -> str:
    """``a [object] in the [scene]``."""
    return f"{_with_article([noun])} in the {scene}"


@dataclass(frozen=True)
class AppearanceDraw:
    """The random choices of one appearance attempt, all from ``seed``."""

    seed: int
    color: str
    material: str
    prompt: str


def draw_appearance(noun: str, seed: int) -> AppearanceDraw:
    """Colour and material for one attempt, drawn uniformly from the paper's lists."""
    rng = np.random.default_rng(seed)
    color = COLORS[int(rng.integers(len(COLORS)))]
    material = MATERIALS[int(rng.integers(len(MATERIALS)))]
    return AppearanceDraw(seed, color, material, appearance_prompt(noun, color, material))


@functools.cache
def load_scenes() -> tuple[str, ...]:
    """The packaged background scene names (Places365 and SUN397 categories)."""
    from importlib.resources import files

    text = files("zsw").joinpath("assets/scenes.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def draw_scene(seed: int, scenes: tuple[str, ...] | None = None) -> str:
    """A scene drawn uniformly from ``scenes`` (default: :func:`load_scenes`)."""
    scenes = load_scenes() if scenes is None else scenes
    return scenes[int(np.random.default_rng(seed).integers(len(scenes)))]
