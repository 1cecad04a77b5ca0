"""Category estimation with a vision-language model, for images without a category.

ZeroShape-W can condition its visible-mask head on a category prompt; the paper gets the word
from a frozen VLM asked for the category of the salient object (its main setting uses the
category-agnostic "object" instead). :class:`VLMCategoryEstimator` asks any transformers
image-text-to-text model that question with greedy decoding and reduces the answer to one
lowercase noun with :func:`parse_category`.

The generation backend is a plain callable ``(images, prompt) -> list[str]``, so tests (and other
runtimes such as vLLM) can supply their own; the default one is transformers'
``AutoProcessor`` + ``AutoModelForImageTextToText`` with the model's chat template.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["CATEGORY_PROMPT", "DEFAULT_VLM", "VLMCategoryEstimator", "parse_category", "TransformersVLM"]

DEFAULT_VLM = "HuggingFaceTB/SmolVLM-256M-Instruct"

CATEGORY_PROMPT = (
    "What is the category of the salient object in this image? Answer with a single lowercase noun, nothing else."
)

Generate = Callable[[Sequence[Any], str], list[str]]

_LEAD_INS = re.compile(
    r"^(?:(?:answer|assistant|category|object|noun)\s*:\s*)*"
    r"(?:(?:the\s+)?(?:salient\s+|main\s+)?(?:object|category|item|thing)\s+(?:is|appears\s+to\s+be|looks\s+like)\s+"
    r"|(?:this|it)\s+(?:is|looks\s+like|appears\s+to\s+be)\s+|there\s+is\s+)?"
)
# words that end the noun phrase ("a chair with armrests" -> "a chair")
_PHRASE_END = re.compile(r"\b(?:with|in|on|of|for|and|or|that|which|at|near|from|made|sitting|standing)\b|[,;:.!?()]")
_ARTICLES = {"a", "an", "the", "some", "one"}


def parse_category(text: str, fallback: str = "object") -> str:
    """Reduce a VLM answer to one lowercase noun: the head (last word) of its first noun phrase.

    ``"Chair."`` -> ``chair``; ``"The object is a wooden chair."`` -> ``chair``;
    ``"a red mug with a handle"`` -> ``mug``; an empty or unusable answer -> ``fallback``.
    """
    s = text.strip().lower().replace("\u2019", "'")
    s = s.splitlines()[0] if s else s
    s = re.sub(r"[*_`\"“”]", " ", s).strip()
    s = _LEAD_INS.sub("", s).strip()
    s = _PHRASE_END.split(s, maxsplit=1)[0]
    words = [w for w in re.findall(r"[a-z][a-z'-]*", s) if w not in _ARTICLES]
    return words[-1].strip("'-") if words else fallback


class TransformersVLM:
    """Default backend: greedy ``generate`` of a transformers image-text-to-text model."""

    def __init__(self, model_id: str, device: str | None = None, dtype: Any = None, max_new_tokens: int = 8):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from zsw.hub import load_pretrained, resolve_device, resolve_dtype

        self.device = resolve_device(device)
        dtype = resolve_dtype(dtype, self.device) if dtype is None or isinstance(dtype, str) else dtype
        kw = dict(what="vision-language model", option="--prompt vlm:{}", default_id=DEFAULT_VLM)
        self.processor = load_pretrained(AutoProcessor.from_pretrained, model_id, **kw)
        model = load_pretrained(AutoModelForImageTextToText.from_pretrained, model_id, dtype=dtype, **kw)
        self.model = model.to(self.device).eval()
        self.max_new_tokens = max_new_tokens
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # batched generation continues every row at its end

    def __call__(self, images: Sequence[Any], prompt: str) -> list[str]:
        import torch

        conversations = [
            [{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": prompt}]}]
            for im in images
        ]
        options = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
        # transformers 5 takes processor options in `processor_kwargs`; 4.x took them as keywords
        if "processor_kwargs" in inspect.signature(self.processor.apply_chat_template).parameters:
            options["processor_kwargs"] = {"padding": True}
        else:
            options["padding"] = True
        inputs = self.processor.apply_chat_template(
            conversations,
            **options,
        ).to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            ids = self.model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens)
        return self.processor.batch_decode(ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


class VLMCategoryEstimator:
    """Category of the salient object of each image, as one lowercase noun.

    Args:
        model_id: hub id or local folder of an image-text-to-text model
            (e.g. ``HuggingFaceTB/SmolVLM-256M-Instruct``, ``Qwen/Qwen2.5-VL-3B-Instruct``).
        device: torch device (default: CUDA when available).
        dtype: torch dtype or ``fp16``/``bf16``/``fp32`` (default: fp16 on GPU, fp32 on CPU).
        prompt: the question asked for every image.
        batch_size: images per ``generate`` call.
        generate: a backend ``(images, prompt) -> answers`` replacing the transformers one.
        fallback: the category returned for an unusable answer ("object", the paper's default).
    """

    def __init__(
        self,
        model_id: str,
        device: str | None = None,
        *,
        dtype: Any = None,
        prompt: str = CATEGORY_PROMPT,
        batch_size: int = 8,
        generate: Generate | None = None,
        fallback: str = "object",
    ):
        self.model_id = model_id
        self.prompt = prompt
        self.batch_size = max(1, batch_size)
        self.fallback = fallback
        self.generate: Generate = generate if generate is not None else TransformersVLM(model_id, device, dtype)
        self.last_answers: list[str] = []

    def __call__(self, images: Sequence[Any]) -> list[str]:
        """One noun per image (PIL images), in order; raw answers are kept in ``last_answers``."""
        answers: list[str] = []
        for start in range(0, len(images), self.batch_size):
            chunk = list(images[start : start + self.batch_size])
            out = self.generate(chunk, self.prompt)
            if len(out) != len(chunk):
                raise RuntimeError(f"VLM backend returned {len(out)} answers for {len(chunk)} images")
            answers += out
        self.last_answers = answers
        return [parse_category(a, self.fallback) for a in answers]
