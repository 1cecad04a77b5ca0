"""Reruns keyed on what was asked: a folder run redoes a photo only when its earlier result was
made from another input, mask, settings or weights, or lost a file.

Each result folder's ``result.json`` records the request (:func:`request_record`); output folders
belong to one photo each (:func:`output_name`), so reruns with some of the inputs never write over
another photo's result.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from zsw.errors import ZswError

__all__ = ["request_record", "find_mask", "plan_reruns", "output_name", "finished_with"]


def request_record(image: str | os.PathLike, mask: str | os.PathLike | None, settings: dict) -> dict:
    """What a result was made from: the input's (and mask's) content hash and every setting that
    changes the output. ``result.json`` stores it; a rerun reuses a result only when it is equal."""
    from zsw.io import sha256_file

    return {
        "input_sha256": sha256_file(image),
        "mask_sha256": sha256_file(mask) if mask is not None else None,
        **settings,
    }


def find_mask(folder: str | os.PathLike, image: str | os.PathLike) -> Path | None:
    """The mask in ``folder`` named like ``image`` (``<stem>.png`` first, then any image suffix)."""
    from zsw.infer.image import IMAGE_SUFFIXES

    for suffix in (".png", *IMAGE_SUFFIXES):
        candidate = Path(folder) / f"{Path(image).stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def plan_reruns(
    paths: Sequence[Path],
    out: str | os.PathLike,
    settings: dict,
    masks: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> tuple[list[tuple[Path, str, dict]], int, list[tuple[Path, str]]]:
    """Which images of a folder run need work: ``(todo, redone, errors)``. ``todo`` holds
    ``(path, output name, request)`` for every image without a complete result recording the same
    request (see :func:`request_record`); ``redone`` counts those whose earlier result came from
    another input, settings or weights, or lost a file; ``errors`` the images that could not be
    read to hash them. Output names follow :func:`output_name`."""
    todo, redone, errors, used = [], 0, [], set()
    for path in paths:
        try:
            request = request_record(path, find_mask(masks, path) if masks is not None else None, settings)
        except (OSError, ZswError) as e:
            errors.append((path, str(e)))
            continue
        name = output_name(path, request, out, used)
        used.add(name)
        state = "none" if overwrite else finished_with(Path(out) / name, request)
        redone += state == "other"
        if state != "same":
            todo.append((path, name, request))
    return todo, redone, errors


def output_name(path: Path, request: dict, out: str | os.PathLike, used: set[str] = frozenset()) -> str:
    """The result folder of ``path`` under ``out``: its file stem or ``stem-2``, ``stem-3``, ...
    Of this stem's folders that this run has not used, the one whose ``result.json`` names the same
    file, else one that holds the same content, else the first that holds no result (none yet, an
    unreadable one, or one a killed run left without its ``result.json``). All of them are looked
    at before one is picked, so a rerun with some of the inputs finds each one's folder again and
    never writes over another's (``a.png`` and ``a.webp`` stay ``a`` and ``a-2`` whichever is
    given, even after ``a``'s rerun was killed), and a photo edited into another's content keeps
    its own folder."""
    same_content = free = None
    k = 0
    while True:
        k += 1
        name = path.stem if k == 1 else f"{path.stem}-{k}"
        if name in used:
            continue
        folder = Path(out) / name
        if not folder.exists():  # past this stem's last folder
            return same_content or free or name
        try:
            record = json.loads((folder / "result.json").read_text())
            source = Path(record["input"]["source"])
            sha = (record.get("request") or {}).get("input_sha256")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            free = free or name  # no result there (or an unreadable one, redone anyway)
            continue
        # a relative source (results from before sources were absolute) says nothing: which
        # folder it was relative to is not recorded
        if source.is_absolute() and source.resolve() == Path(path).resolve():
            return name
        if sha == request["input_sha256"]:
            same_content = same_content or name


def finished_with(out_dir: str | os.PathLike, request: dict) -> str:
    """``"same"`` if ``out_dir/result.json`` records ``request`` and every file it lists is there,
    ``"other"`` if it records something else (another photo, other settings or weights) or lost a
    file, ``"none"`` if there is no result."""
    path = Path(out_dir) / "result.json"
    if not path.is_file():
        return "none"
    try:
        record = json.loads(path.read_text())
        recorded, files = record.get("request"), record.get("files", [])
        complete = all((Path(out_dir) / f).is_file() for f in files)
    except (OSError, ValueError, AttributeError, TypeError):
        return "other"
    return "same" if recorded == request and complete else "other"
