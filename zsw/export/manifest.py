"""``export.json``: what an export directory holds, how it was made and how well it matches eager.

Layout of a directory written by ``zsw export`` (every file written atomically; ``export.json`` is
rewritten last, so a directory is complete exactly when its manifest lists a file)::

    export.json                    this manifest
    pixel.onnx encoder.onnx decoder.onnx
    default_text_embedding.npy     CLIP embedding of the default prompt (no CLIP needed at run time)
    pixel.fp16.plan ...            TensorRT engines           (--format tensorrt)
    pixel.fp16.ep ...              torch-tensorrt programs    (--format torch-tensorrt)

Top-level keys, written by :func:`base_manifest` for every format: ``format`` (:data:`FORMAT`),
``zsw_version``, ``zsw_code`` (:data:`EXPORT_PACKAGES`' hash), ``created``, ``model`` (the
:class:`~zsw.config.ModelConfig`), ``source`` (weights path and sha256), ``precision``,
``io_dtype``, ``batch``, ``points_chunk``, ``default_text_embedding`` and ``interface`` (per graph:
inputs and outputs with symbolic dimensions, see :func:`zsw.export.graphs.graph_specs`). Then one
section per artefact kind: ``onnx`` + ``graphs`` (per graph: file, sha256, export time, validation
against eager PyTorch), ``tensorrt`` (engines, fingerprint, profiles, build times, validation
against ONNX Runtime) and ``torch_tensorrt`` (programs, fingerprint, validation against eager
PyTorch).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zsw.config import ModelConfig, from_dict, to_dict
from zsw.errors import CheckpointError, ConfigError
from zsw.export.graphs import GRAPHS, GraphSpec, TensorSpec, graph_specs

#: the code whose changes may change the traced graphs (:func:`zsw.io.code_identity`): zsw's
#: top-level modules (config, checkpoint), the model, the export and the kernels' reference paths
EXPORT_PACKAGES = ("zsw", "zsw.model", "zsw.export", "zsw.kernels")

__all__ = [
    "EXPORT_PACKAGES",
    "FORMAT",
    "MANIFEST",
    "TEXT_FILE",
    "ExportManifest",
    "read_manifest",
    "write_manifest",
    "base_manifest",
    "settings_mismatch",
    "sha256_file",
    "dumps",
    "prepare_out",
    "commit",
    "listed_files",
    "make_readable",
    "refuse_failed_validation",
]

FORMAT = "zsw-export-1"
from zsw.io import checkpoint_sha256, sha256_file  # noqa: E402 - sha256_file re-exported: the export code names it from here

MANIFEST = "export.json"
TEXT_FILE = "default_text_embedding.npy"


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def dumps(data: Any, width: int = 100) -> str:
    """JSON indented by two spaces, with every list or object that fits in ``width`` characters kept
    on one line (shapes, tensor specs, error tables)."""

    def fmt(node: Any, indent: int) -> str:
        flat = json.dumps(node)
        if not isinstance(node, (dict, list)) or len(flat) + indent <= width:
            return flat
        pad = " " * (indent + 2)
        if isinstance(node, dict):
            items = [f"{pad}{json.dumps(k)}: {fmt(v, indent + 2)}" for k, v in node.items()]
            return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
        return "[\n" + ",\n".join(pad + fmt(v, indent + 2) for v in node) + "\n" + " " * indent + "]"

    return fmt(data, 0) + "\n"


def write_manifest(root: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write ``data`` as ``root/export.json`` atomically, readable like the graph files beside it."""
    from zsw.io import atomic_write_text

    path = Path(root) / MANIFEST
    atomic_write_text(path, dumps(data))
    return make_readable(path)


def make_readable(path: Path) -> Path:
    """Give a file written through :mod:`zsw.io` (whose temporary files are private, 0600) the
    permissions a plain ``open`` would have, so a deployment directory is readable like the ONNX
    files beside it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
    return path


@dataclass
class ExportManifest:
    """A parsed ``export.json`` and the directory it describes."""

    root: Path
    data: dict[str, Any]
    config: ModelConfig

    @property
    def precision(self) -> str:
        return self.data["precision"]

    @property
    def batch(self) -> int:
        return int(self.data["batch"])

    @property
    def points_chunk(self) -> int:
        return int(self.data["points_chunk"])

    @property
    def has_onnx(self) -> bool:
        return bool(self.data.get("graphs"))

    def spec(self, graph: str) -> GraphSpec:
        g = self.data["interface"][graph]
        return GraphSpec(
            graph,
            tuple(TensorSpec.from_dict(t) for t in g["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in g["outputs"]),
        )

    def file(self, entry: dict[str, Any], verify: bool = True) -> Path:
        """The path of a manifest entry ``{"file": ..., "sha256": ...}``, checked to exist and, with
        ``verify``, to hold the bytes the manifest recorded."""
        path = self.root / entry["file"]
        if not path.is_file():
            raise CheckpointError(f"{path} is listed in {self.root / MANIFEST} but missing; {self.redo_hint()}")
        if verify and entry.get("sha256") and checkpoint_sha256(path) != entry["sha256"]:
            raise CheckpointError(
                f"{path} does not match the sha256 recorded in {MANIFEST} (changed or corrupt); {self.redo_hint()}"
            )
        return path

    def weights_option(self) -> str | None:
        """The ``--weights`` value that names the recorded weights again (None if unknown)."""
        weights = (self.data.get("source") or {}).get("weights")
        if isinstance(weights, str) and weights.startswith("demo:"):  # recorded by its file name: `--weights demo`
            return "demo"
        return weights

    def redo_hint(self) -> str:
        """The command that writes this export again (its weights, format and precision as recorded)."""
        weights = self.weights_option()
        fmt = "torch-tensorrt" if self.data.get("torch_tensorrt") else "tensorrt" if self.data.get("tensorrt") else None
        parts = ["zsw export", f"--weights {weights}" if weights else "--weights <the same weights>"]
        if fmt:  # an ONNX export is the default format
            parts.append(f"--format {fmt}")
        if self.data.get("precision") and self.data["precision"] != "fp32":
            parts.append(f"--precision {self.data['precision']}")
        return f"write it again with `{' '.join(parts)} --out {self.root} --overwrite`"

    def default_text_embedding(self):  # [T] float32 tensor, or None for a model without text
        import numpy as np
        import torch

        entry = self.data.get("default_text_embedding")
        if not entry:
            return None
        array = np.load(self.file(entry), allow_pickle=False)
        if array.shape != (self.config.text.dim,):
            path = self.root / entry["file"]
            raise CheckpointError(f"{path} holds an array of shape {array.shape}, expected ({self.config.text.dim},)")
        return torch.from_numpy(array.astype(np.float32))


def read_manifest(root: str | os.PathLike) -> ExportManifest:
    """Parse ``root/export.json``; every problem is a one-line :class:`CheckpointError`."""
    root = Path(root)
    if root.is_file():
        raise CheckpointError(f"{root} is a file; an export is the directory `zsw export --out` wrote")
    if not root.is_dir():
        raise CheckpointError(f"export directory {root} does not exist (write one with `zsw export`)")
    path = root / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{root} has no {MANIFEST}: not a (complete) export directory written by `zsw export`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a zsw export manifest (format {FORMAT!r} expected)")
    missing = [k for k in ("model", "precision", "batch", "points_chunk", "interface") if k not in data]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    try:
        config = from_dict(ModelConfig, data["model"])
    except ConfigError as e:
        raise CheckpointError(f"{path} holds an invalid model config: {e}") from None
    for section in ("interface", "graphs"):
        value = data.get(section)
        if (section == "interface" or value) and (not isinstance(value, dict) or sorted(value) != sorted(GRAPHS)):
            raise CheckpointError(f"{path}: {section} must describe the graphs {', '.join(GRAPHS)}")
    manifest = ExportManifest(root, data, config)
    expected = graph_specs(config)
    for name in GRAPHS:
        if manifest.spec(name) != expected[name]:
            raise CheckpointError(f"{path}: the {name} interface does not match the model config it records")
    return manifest


def base_manifest(
    model,
    staging: Path,
    precision: str,
    batch: int,
    points_chunk: int,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The format-independent part of a manifest for ``model``; writes the default prompt's text
    embedding into ``staging`` (moved into the export directory with the other new files)."""
    import numpy as np

    from zsw import __version__
    from zsw.io import code_identity

    text_entry = None
    if getattr(model, "text", None) is not None:
        from zsw.io import atomic_path

        with atomic_path(staging / TEXT_FILE) as tmp:
            np.save(tmp, model.text.default_embedding.detach().cpu().float().numpy(), allow_pickle=False)
        make_readable(staging / TEXT_FILE)
        text_entry = {
            "file": TEXT_FILE,
            "sha256": sha256_file(staging / TEXT_FILE),
            "prompt": model.config.text.default_prompt,
        }
    specs = graph_specs(model.config)
    return {
        "format": FORMAT,
        "zsw_version": __version__,
        "zsw_code": code_identity(EXPORT_PACKAGES),
        "created": now_iso(),
        "model": to_dict(model.config),
        "source": dict(source or {}),
        "precision": precision,
        "io_dtype": "float32",
        "batch": batch,
        "points_chunk": points_chunk,
        "default_text_embedding": text_entry,
        "interface": {
            name: {
                "inputs": [t.as_dict() for t in spec.inputs],
                "outputs": [t.as_dict() for t in spec.outputs],
            }
            for name, spec in specs.items()
        },
    }


def settings_mismatch(
    manifest: ExportManifest, precision: str, batch: int, points_chunk: int, source: dict[str, Any] | None
):
    """Why an existing export cannot be extended with these settings (None if it can).

    ``source``: the ``source`` record the weights asked for would get (``{"weights", "sha256"}``;
    a random preset has no sha256 and is known by its label), or None when no weights were asked
    for (any export's weights will do)."""
    from zsw import __version__
    from zsw.io import code_identity

    d = manifest.data
    if d.get("zsw_version") != __version__:  # another release may trace the model into other graphs
        return f"it was exported by zsw {d.get('zsw_version') or 'unknown'}, not {__version__}"
    if d.get("zsw_code") != code_identity(EXPORT_PACKAGES):  # and so may a checkout or an edit within one
        return "it was exported by other zsw code (another checkout or an edit of the model or export code)"
    wanted = {"precision": precision, "batch": batch, "points_chunk": points_chunk}
    for key, value in wanted.items():
        if d.get(key) != value:
            return f"it was exported with {key} {d.get(key)!r}, not {value!r}"
    if source:
        have = d.get("source") or {}
        if source.get("sha256"):
            same = have.get("sha256") == source["sha256"]
        else:  # weights without a file (random:PRESET): the same label and no file either
            same = not have.get("sha256") and have.get("weights") == source.get("weights")
        if not same:
            return f"it was exported from other weights ({have.get('weights') or 'unknown'})"
    return None


def refuse_failed_validation(manifest: ExportManifest, entries: dict[str, Any], kind: str, rebuild: str) -> None:
    """Refuse the engines or programs (``entries``, per graph) whose recorded validation failed: a
    build that failed its comparison still records them (to show the errors), and a backend must
    not run them as if the build had worked. ``kind``: what they are; ``rebuild``: the command."""
    for name, entry in entries.items():
        v = entry.get("validation") or {}
        if v.get("passed") is False:
            errors = v.get("max_abs_error") or {"?": float("nan")}
            worst = max(errors, key=errors.get)
            raise CheckpointError(
                f"the {name} {kind} in {manifest.root} failed its validation ({errors[worst]:.3g} on {worst}, "
                f"tolerance {v.get('tolerance', '?')} relative); rebuild it with `{rebuild}`"
            )


def prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory")
    if (out / MANIFEST).exists() and not overwrite:
        raise ConfigError(f"{out} already holds a zsw export; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    # what a killed export left behind: its staging folder and temporary files
    import shutil

    from zsw.io import remove_leftovers

    for staging in out.glob(".staging-*"):
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
    remove_leftovers(out)


def listed_files(data: dict[str, Any]) -> set[str]:
    """Every file name a manifest lists, in any section."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("file"), str):
                found.add(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(data)
    return found


def commit(out: Path, staging: Path, manifest: dict[str, Any]) -> None:
    """Replace the export in ``out`` with the files in ``staging`` and ``manifest``. The old
    manifest goes first, so an interruption leaves a directory that says it is incomplete."""
    import json

    old_files: set[str] = set()
    if (out / MANIFEST).exists():
        with contextlib.suppress(ValueError, OSError):
            old_files = listed_files(json.loads((out / MANIFEST).read_text()))
        os.unlink(out / MANIFEST)
    for item in sorted(staging.iterdir()):
        os.replace(item, out / item.name)
    write_manifest(out, manifest)
    for name in old_files - listed_files(manifest):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out / name)
