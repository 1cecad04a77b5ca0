"""Small file helpers shared by every writer in zsw.

Everything zsw writes goes through :func:`atomic_write`: data lands in a temporary file in the
destination folder and is renamed over the target only once complete, so an interrupted run never
leaves a half-written checkpoint, mesh, image or array behind.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

# the process umask, read once at import: os.umask can only be read by setting it, which would
# briefly change it for every thread if done per write
_UMASK = os.umask(0o022)
os.umask(_UMASK)

__all__ = [
    "atomic_path",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_write_json",
    "sha256_file",
    "folder_key",
    "find_named_file",
    "checkpoint_sha256",
    "code_identity",
    "remove_leftovers",
    "check_out_folder",
    "IMAGE_SUFFIXES",
]

#: the suffixes of the photos zsw reads (a folder's images for ``zsw reconstruct``, the ``folder``
#: evaluation format's photos, the app's uploads); the kind is read from the content
#: (``zsw.infer.image``): GIF's and APNG's first frame, HEIC/HEIF through pillow-heif, AVIF,
#: JPEG 2000, QOI, Targa and the netpbm formats through Pillow, JPEG XL and OpenEXR through their
#: extras; ``.jfif`` and ``.jpe`` are JPEGs as browsers save them
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jfif", ".jpe", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".apng",
                  ".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".exr", ".qoi", ".tga", ".ppm", ".pgm",
                  ".pnm")  # fmt: skip


def check_out_folder(folder: str | os.PathLike, option: str = "--out") -> None:
    """Before any work: ``folder`` is a folder or can be made one (neither it nor a folder above
    it is a file or a link to nowhere), else a one-line error naming ``option`` (not a bare "File
    exists" after it)."""
    from zsw.errors import OptionError

    path = Path(folder)
    for above in (path, *path.parents):
        if above.exists():
            if not above.is_dir():
                what = "is a file" if above == path else f"is under {above}, which is a file"
                raise OptionError(f"{option} {folder} {what}, not a folder")
            return
        if above.is_symlink():  # an unmounted drive's folder, say: nothing can be made under it
            what = "is" if above == path else f"is under {above}, which is"
            raise OptionError(f"{option} {folder} {what} a link to a folder that does not exist ({os.readlink(above)})")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``.

    For libraries that want a file name (safetensors, trimesh, PIL). The temporary name keeps the
    target's suffix (``.mesh.glb.tmp-ab12.glb``), so format inference by suffix still works. On any
    exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-", suffix=path.suffix)
    os.close(fd)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield Path(tmp)
        # writers that recreate the file (safetensors does) bring back mkstemp's 0600: set it again
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` for writing; on success rename it to ``path``."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as strict JSON to ``path`` atomically: a NaN or infinity anywhere is a
    ``ValueError`` (bare ``NaN`` is not JSON), never a file other tools cannot read."""
    atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """:func:`sha256_file` of a checkpoint or an exported graph, computed once per process for each
    state of the file (keyed on its resolved path, size, inode, modification and change times): a
    run names its weights by this hash and checks an export's source and graphs against it, so the
    same files are otherwise read several times."""
    p = Path(path).resolve()
    st = p.stat()
    # the inode and change time too: a file replaced by one of the same size with its modification
    # time kept (cp -p, rsync -t, tar x) has another of either, and no tool can set the change time
    return _sha256_of_state(str(p), st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


@functools.lru_cache(maxsize=32)
def _sha256_of_state(path: str, mtime_ns: int, size: int, inode: int, ctime_ns: int) -> str:
    return sha256_file(path)


# the packages whose code decides what a photo's result holds: the model, its inputs, inference and
# meshing, the exported graphs' runtime, the kernels, and zsw's own top-level modules (``zsw``
# itself: its folder's files only). The command line, benchmarks, training, synthesis and
# evaluation only call them.
RESULT_PACKAGES = ("zsw", "zsw.model", "zsw.data", "zsw.infer", "zsw.export", "zsw.kernels")


@functools.cache
def code_identity(packages: tuple[str, ...] = RESULT_PACKAGES) -> str:
    """SHA-256 over the Python files of ``packages`` (names and bytes), computed once per process:
    what identifies the code that made a result (an evaluation adds ``zsw.eval``, which scores it).
    zsw's release number alone does not: a checkout or an upgrade within one release (or an edit in
    an editable install) may read, decode or mesh the same photo differently, and a rerun must not
    reuse what older code made."""
    import hashlib
    import importlib.util

    h = hashlib.sha256()
    for name in packages:
        spec = importlib.util.find_spec(name)
        for folder in (spec.submodule_search_locations or []) if spec is not None else []:
            folder = Path(folder)
            files = folder.glob("*.py") if name == "zsw" else folder.rglob("*.py")
            for f in sorted(files, key=lambda f: f.relative_to(folder).as_posix()):
                h.update(f"{name}/{f.relative_to(folder).as_posix()}\0".encode())
                h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def remove_leftovers(folder: str | os.PathLike, *, recursive: bool = False, names: Iterable[str] | None = None) -> int:
    """Delete the temporary files an interrupted :func:`atomic_path` left in ``folder`` (a killed
    process cannot clean up after itself); returns how many were removed.

    ``recursive``: in every folder below too (a dataset or run folder the caller alone writes);
    ``names``: only those of these target files (``results.json``: ``.results.json.tmp-*``), for a
    folder that holds other people's files too. Never call it on a folder another live process is
    writing into: its temporary files look the same."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    patterns = [f".{name}.tmp-*" for name in names] if names is not None else [".*.tmp-*"]
    found = (tmp for pattern in patterns for tmp in (folder.rglob if recursive else folder.glob)(pattern))
    for tmp in found:
        if tmp.is_file():
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed += 1
    return removed


def folder_key(name: str) -> str:
    """``name`` as a case-insensitive file system compares it (macOS's APFS, Windows's NTFS, exFAT
    drives): case folded and, as APFS also does, Unicode normalisation ignored. Two names with one
    key are one file there, so names zsw derives from its users' file names are told apart by it."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


def find_named_file(folder: str | os.PathLike, name: str) -> Path | None:
    """The file that another file (an OBJ's ``mtllib``, an ``.mtl``'s ``map_Kd``) names ``name``,
    relative to ``folder``, as the tools that wrote it would find it: ``\\`` read as a separator,
    ``..`` allowed (ShapeNet's ``../images/texture0.jpg``), each part of the path matched without
    regard to case where no exact match exists (:func:`folder_key`: a Windows exporter's
    ``Wood.PNG`` for ``wood.png``), and an absolute path from another machine
    (``C:\\Users\\...\\wood.png``), or a relative one that leads nowhere, looked for by its
    file name in ``folder``. None when nothing matches."""
    text = name.strip().strip('"').replace("\\", "/")
    if not text:
        return None
    candidates = [] if text.startswith("/") or (len(text) > 1 and text[1] == ":") else [text]
    candidates.append(text.rsplit("/", 1)[-1])
    for candidate in candidates:
        here: Path | None = Path(folder)
        for part in candidate.split("/"):
            if part in ("", "."):
                continue
            here = here.parent if part == ".." else _child(here, part)
            if here is None:
                break
        if here is not None and here.is_file():
            return here
    return None


def _child(folder: Path, name: str) -> Path | None:
    """``folder / name``, or the one entry of ``folder`` whose name matches it but for case."""
    exact = folder / name
    if exact.exists():
        return exact
    try:
        matches = sorted(c for c in folder.iterdir() if folder_key(c.name) == folder_key(name))
    except OSError:
        return None
    return matches[0] if matches else None
