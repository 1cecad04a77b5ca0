"""Reruns keyed on what was asked: a folder run redoes a photo only when its earlier result was
made from another input, mask, settings or weights, or lost a file.

Each result folder's ``result.json`` records the request (:func:`request_record`); output folders
belong to one photo each (:func:`output_name`), so reruns with some of the inputs never write over
another photo's result.

Several processes may reconstruct into one output folder at once (``xargs -P4 zsw reconstruct {}
-o out``, two shells, the web app beside the CLI): a process writes a result folder only while it
holds the folder's lock (:func:`claim_output`, :mod:`zsw.locks`). A folder another process holds
is never picked as free: a photo that did not find its own folder waits until the holder is done,
then looks again, so two photos of one stem end in two folders and a photo another process is
reconstructing is reused (or redone, if its request differs) rather than computed twice into one
folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from zsw.errors import ZswError
from zsw.io import folder_key
from zsw.locks import Lock, try_lock_folder

__all__ = [
    "request_record",
    "find_mask",
    "plan_reruns",
    "output_name",
    "claim_output",
    "Claim",
    "finished_with",
    "without_results",
    "masks_among",
    "FolderNames",
    "folders_by_key",
]


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
    """The mask in ``folder`` named like ``image`` (``<stem>.png`` first, then any image suffix);
    never the image itself (masks kept beside their photos: ``--masks`` is the photos' folder).
    Names are matched as a Mac matches them (:func:`~zsw.io.folder_key`): ``IMG_1.PNG`` is the
    mask of ``IMG_1.jpg`` on Linux too; a spelling of the exact case comes first."""
    from zsw.infer.image import IMAGE_SUFFIXES

    stem = Path(image).stem
    suffixes = (".png", *IMAGE_SUFFIXES)
    for suffix in suffixes:
        candidate = Path(folder) / f"{stem}{suffix}"
        if candidate.is_file() and not _same_file(candidate, image):
            return candidate
    listing = _listing(Path(folder))
    for suffix in suffixes:  # in the same order of preference, any spelling
        for name in listing.get(folder_key(f"{stem}{suffix}"), ()):
            candidate = Path(folder) / name
            if candidate.is_file() and not _same_file(candidate, image):
                return candidate
    return None


def _listing(folder: Path) -> dict[str, list[str]]:
    """:func:`folders_by_key` of ``folder``, read again only when its modification time changes (a
    folder run looks up every photo's mask)."""
    try:
        stamp = folder.stat().st_mtime_ns
    except OSError:
        return {}
    cached = _LISTINGS.get(folder)
    if cached is None or cached[0] != stamp:
        cached = _LISTINGS[folder] = (stamp, folders_by_key(folder))
    return cached[1]


_LISTINGS: dict[Path, tuple[int, dict[str, list[str]]]] = {}


def masks_among(paths: Sequence[Path], folder: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """``paths`` split into photos and the masks of other photos among them (``photo.jpg`` beside
    its mask ``photo.png``, both in the folder given to ``zsw reconstruct`` and as ``--masks``):
    a mask is not a photo to reconstruct. Of two files that would be each other's mask, the PNG
    (the name a mask is looked up by first) is the mask."""
    masks = set()
    for p in paths:
        m = find_mask(folder, p)
        if m is None:
            continue
        back = find_mask(folder, m)
        if p.suffix.lower() == ".png" and back is not None and _same_file(back, p):
            continue  # p and m would be each other's mask: p, the PNG, is the mask
        masks.add(m.resolve())
    photos = [p for p in paths if p.resolve() not in masks]
    return photos, [p for p in paths if p.resolve() in masks]


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def plan_reruns(
    paths: Sequence[Path],
    out: str | os.PathLike,
    settings: dict,
    masks: str | os.PathLike | None = None,
    overwrite: bool = False,
    used: FolderNames | None = None,
    box_of: Callable[[Path], tuple | None] | None = None,
) -> tuple[list[tuple[Path, str, dict]], int, list[tuple[Path, str]]]:
    """Which images of a folder run need work: ``(todo, redone, errors)``. ``todo`` holds
    ``(path, output name, request)`` for every image without a complete result recording the same
    request (see :func:`request_record`); ``redone`` counts those whose earlier result came from
    another input, settings, weights or zsw code, or lost a file; ``errors`` the images that could not be
    read to hash them. Output names follow :func:`output_name`; ``used``, if given, receives every
    name given out (those of skipped images too); ``box_of``, if given, each photo's own box
    (``--box FILE``), recorded in its request in place of the run's. A plan, not a claim: the writer
    claims each folder with :func:`claim_output` before it writes."""
    todo, redone, errors, used = [], 0, [], FolderNames() if used is None else used
    on_disk = folders_by_key(Path(out))  # nothing is made while planning: one listing serves every photo
    for path in paths:
        own = settings
        if box_of is not None:
            box = box_of(path)
            own = {**settings, "box": None if box is None else list(box)}
        try:
            request = request_record(path, find_mask(masks, path) if masks is not None else None, own)
        except (OSError, ZswError) as e:
            errors.append((path, str(e)))
            continue
        name = _choose(path, request, Path(out), used, claim=False, on_disk=on_disk).name
        used.add(name)
        state = "none" if overwrite else finished_with(Path(out) / name, request)
        redone += state == "other"
        if state != "same":
            todo.append((path, name, request))
    return todo, redone, errors


def without_results(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """``paths`` split into photos and the images zsw itself wrote into result folders (the depth
    map, masks, preview and texture that a folder's ``result.json`` lists among its files). A rerun
    over a recursive pattern (``'photos/**/*.png'``) or a folder inside the output would otherwise
    reconstruct those as photos."""
    listed: dict[Path, set[str]] = {}

    def written(path: Path) -> bool:
        folder = path.parent
        if folder not in listed:
            try:
                record = json.loads((folder / "result.json").read_text())
                files = record["files"] if "zsw_version" in record else []
                listed[folder] = {f for f in files if isinstance(f, str)}
            except (OSError, ValueError, TypeError, KeyError):  # no result folder, or not zsw's
                listed[folder] = set()
        return path.name in listed[folder]

    photos, ours = [], []
    for p in paths:
        (ours if written(p) else photos).append(p)
    return photos, ours


def output_name(path: Path, request: dict, out: str | os.PathLike, used: set[str] = frozenset()) -> str:
    """The result folder of ``path`` under ``out``: its file stem or ``stem-2``, ``stem-3``, ...
    Of this stem's folders that this run has not used, the one whose ``result.json`` names the same
    file, else one that holds the same content, else the first that holds no result (none yet, an
    unreadable one, or one a killed run left without its ``result.json``). All of them are looked
    at before one is picked, so a rerun with some of the inputs finds each one's folder again and
    never writes over another's (``a.png`` and ``a.webp`` stay ``a`` and ``a-2`` whichever is
    given, even after ``a``'s rerun was killed), and a photo edited into another's content keeps
    its own folder. Names are compared as a case-insensitive file system compares them
    (:func:`folder_key`): ``Photo.png`` never gets a folder beside ``photo.png``'s that differs from
    it only in case, and finds its folder again whatever the case of its spelling. This is the
    plan; :func:`claim_output` picks by the same rules for a writer, skipping the folders other
    processes hold."""
    return _choose(path, request, Path(out), used, claim=False).name


@dataclass
class Claim:
    """What :func:`claim_output` got: the folder ``name`` under ``out`` with its ``lock`` held
    (release it once the result is written), or, when the photo must wait, the ``busy`` folders
    other processes hold (``name`` and ``lock`` None)."""

    name: str | None = None
    lock: Lock | None = None
    busy: list[Path] = field(default_factory=list)


def claim_output(path: Path, request: dict, out: str | os.PathLike, used: set[str] = frozenset()) -> Claim:
    """:func:`output_name` for a process about to write: each folder of the stem is locked while
    it is looked at, and the one picked comes back locked (a new one is made), so no other process
    writes into it meanwhile. A folder another process holds counts as used, never as free: unless
    the photo's own folder is among the others (then it is picked at once), the photo must wait
    until those folders are released (:func:`zsw.locks.wait_folder`) and claim again -- the holder
    may be reconstructing this very photo (then the folder is this photo's own, with a result to
    reuse when :func:`finished_with` says ``"same"``) or another photo of the stem (then this one
    takes the next folder). Never blocks; never holds a lock but the one it returns."""
    return _choose(path, request, Path(out), used, claim=True)


class FolderNames(set):
    """The result-folder names a run has given out, compared by :func:`folder_key`: ``Photo`` is
    taken once ``photo`` is, so one run never gives two photos folders that a case-insensitive file
    system would merge, and an output folder made on Linux can be copied to a Mac or a Windows
    machine whole."""

    def __init__(self, names=()):
        super().__init__(folder_key(n) for n in names)

    def add(self, name: str) -> None:
        super().add(folder_key(name))

    def discard(self, name: str) -> None:
        super().discard(folder_key(name))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(folder_key(name))


def folders_by_key(out: Path) -> dict[str, list[str]]:
    """The entries of ``out`` by :func:`~zsw.io.folder_key` (each key's names sorted; several only
    on a case-sensitive file system: in an output folder an earlier release of zsw wrote, or masks
    named ``a.png`` and ``A.png``)."""
    found: dict[str, list[str]] = {}
    try:
        with os.scandir(out) as entries:
            for entry in entries:
                found.setdefault(folder_key(entry.name), []).append(entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {key: sorted(names) for key, names in found.items()}


def _choose(
    path: Path, request: dict, out: Path, used: set[str], claim: bool, on_disk: dict[str, list[str]] | None = None
) -> Claim:
    """``on_disk``: :func:`folders_by_key` of ``out`` when the caller has it (a plan lists ``out``
    once for all its photos); a claim lists it afresh."""
    used = used if isinstance(used, FolderNames) else FolderNames(used)
    on_disk = folders_by_key(out) if on_disk is None else on_disk
    same_content = free = None
    held: dict[str, Lock] = {}
    busy: list[Path] = []
    k = 0
    try:
        while True:
            k += 1
            name = path.stem if k == 1 else f"{path.stem}-{k}"
            if name in used:
                continue
            # the stem's k-th folder whatever its spelling's case: the one folder a Mac would see
            if not (spellings := on_disk.get(folder_key(name))):  # past this stem's last folder
                break
            for spelling in spellings:
                folder = out / spelling
                if claim:
                    if not folder.is_dir():  # a file of that name: nothing to write into
                        continue
                    if (lock := try_lock_folder(folder, create=False)) is None:
                        busy.append(folder)  # another process writes there: not free, and maybe this photo's
                        continue
                    held[spelling] = lock
                state = _holds(folder, path, request)
                if state == "own":
                    return _keep(spelling, held)
                if state == "same content":
                    same_content = same_content or spelling
                elif state == "free":
                    free = free or spelling
        if busy:
            return Claim(busy=busy)
        chosen = same_content or free or name
        if not claim:
            return Claim(name=chosen)
        if chosen not in held:  # a new folder
            if (lock := try_lock_folder(out / chosen)) is None:  # made and claimed by another process just now
                return Claim(busy=[out / chosen])
            held[chosen] = lock
        return _keep(chosen, held)
    finally:
        for lock in held.values():
            lock.release()


def _keep(name: str, held: dict[str, Lock]) -> Claim:
    """The claim of ``name``, taken out of ``held`` (whose other locks the caller releases)."""
    return Claim(name=name, lock=held.pop(name, None))


def _holds(folder: Path, path: Path, request: dict) -> str:
    """What ``folder``'s ``result.json`` says of ``path``: ``"own"`` (it names the same file),
    ``"same content"``, ``"free"`` (no result, or an unreadable one, redone anyway) or ``"other"``."""
    try:
        record = json.loads((folder / "result.json").read_text())
        source = Path(record["input"]["source"])
        sha = (record.get("request") or {}).get("input_sha256")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "free"
    # a relative source (results from before sources were absolute) says nothing: which folder it
    # was relative to is not recorded
    if source.is_absolute() and source.resolve() == Path(path).resolve():
        return "own"
    return "same content" if sha == request["input_sha256"] else "other"


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
