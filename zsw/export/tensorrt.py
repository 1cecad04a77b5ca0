"""TensorRT engines from the exported ONNX graphs: build, fingerprint, load, run.

Built with the ``tensorrt`` Python API, for TensorRT 10 and 11:

* **strongly typed networks**: precision comes from the ONNX graph's dtypes (``--precision fp16``
  exports half-precision graphs). TensorRT 11 removed the weak-typing flags (``BuilderFlag.FP16``
  and friends) and is strongly typed by default; on TensorRT 10 the ``STRONGLY_TYPED`` creation
  flag gives the same behaviour, probed with ``hasattr(trt.BuilderFlag, "FP16")``. fp32 engines
  also clear ``BuilderFlag.TF32`` so that they compute what the fp32 graph says.
* **one optimisation profile per engine**: batch ``[1, batch, batch]`` (min, opt, max) and, for the
  decoder, exactly ``points_chunk`` points (a static shape tunes best; the runtime pads the last
  chunk); a workspace limit (``--workspace-gib``).
* **name-based I/O** (TensorRT >= 10): ``set_input_shape`` / ``set_tensor_address`` on torch CUDA
  tensors and ``execute_async_v3`` on torch's current stream.
* **fingerprints**: each plan is recorded in ``export.json`` with its sha256, the sha256 of the ONNX
  file it came from and an :class:`~zsw.export.fingerprint.EngineFingerprint`; a plan built for
  another GPU architecture or TensorRT version is refused before deserialisation.

Builds are resumable: each engine is written atomically and recorded in the manifest as soon as it
is built, and a rerun skips engines that are already valid for this machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from zsw.errors import CheckpointError, ConfigError, ZswError
from zsw.export.deps import require, require_cuda
from zsw.export.fingerprint import EngineFingerprint, check_fingerprint, current_fingerprint
from zsw.export.graphs import GRAPHS, GraphSpec, object_mask
from zsw.export.manifest import (
    ExportManifest,
    make_readable,
    read_manifest,
    refuse_failed_validation,
    sha256_file,
    write_manifest,
)
from zsw.export.runtime import OnnxRuntimeBackend, RuntimeBackend

__all__ = [
    "build_engines",
    "build_engine",
    "engine_profiles",
    "check_engines",
    "load_engines",
    "TensorRTEngine",
    "TOLERANCE",
]

#: validation bound per precision: max |TensorRT - ONNX Runtime| <= TOLERANCE * max(1, max |ONNX Runtime|)
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2}


def engine_profiles(spec: GraphSpec, batch: int, points_chunk: int) -> dict[str, list[list[int]]]:
    """``{input: [min, opt, max]}`` shapes of the one optimisation profile of a graph's engine."""
    ranges = {"batch": (1, batch, batch), "points": (points_chunk, points_chunk, points_chunk)}
    profiles = {}
    for t in spec.inputs:
        profiles[t.name] = [[ranges[d][i] if isinstance(d, str) else d for d in t.shape] for i in range(3)]
    return profiles


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.bool: torch.bool}
    for name, torch_dtype in (("bfloat16", torch.bfloat16), ("int64", torch.int64), ("int8", torch.int8)):
        if hasattr(trt, name):
            table[getattr(trt, name)] = torch_dtype
    if dtype not in table:
        raise ZswError(f"TensorRT tensor type {dtype} has no torch equivalent")
    return table[dtype]


def build_engine(
    onnx_path,
    plan_path,
    profiles: dict[str, list[list[int]]],
    precision: str,
    workspace_bytes: int,
) -> dict[str, Any]:
    """Parse ``onnx_path``, build a serialised engine and write it to ``plan_path`` atomically."""
    trt = require("tensorrt", "building TensorRT engines")
    from zsw.io import atomic_write_bytes

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    weak_typing = hasattr(trt.BuilderFlag, "FP16")  # TensorRT <= 10; 11 is strongly typed only
    flags = 0
    if weak_typing and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no details"
        raise ZswError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: no 10-bit-mantissa tensor-core math
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in profiles:
            raise ZswError(f"{onnx_path} has an input {name!r} that its interface does not list")
        profile.set_shape(name, *[tuple(s) for s in profiles[name]])
    config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if plan is None:
        raise ZswError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above)")
    atomic_write_bytes(plan_path, bytes(plan))
    make_readable(plan_path)
    return {"build_s": round(seconds, 2), "strongly_typed": bool(flags) or not weak_typing}


class TensorRTEngine:
    """A deserialised engine and one execution context, run on torch CUDA tensors by tensor name."""

    def __init__(self, plan: bytes, spec: GraphSpec, device: torch.device, what: str):
        trt = require("tensorrt", "the tensorrt backend")
        self.trt = trt
        self.spec = spec
        self.device = device
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(device):
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(plan)
            if self.engine is None:
                raise CheckpointError(f"TensorRT cannot deserialise {what}; rebuild it: zsw export --format tensorrt")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if sorted(inputs) != sorted(spec.input_names) or sorted(outputs) != sorted(spec.output_names):
            raise CheckpointError(f"{what} has tensors {names}, not those of the {spec.name} graph")
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        first = spec.inputs[0].name
        self.max_batch = int(self.engine.get_tensor_profile_shape(first, 0)[2][0])

    def run(self, args: list[Tensor]) -> list[Tensor]:
        """Inputs in interface order (CUDA, contiguous) -> outputs in interface order."""
        ctx = self.context
        keep = []
        for t, x in zip(self.spec.inputs, args):
            x = x.to(device=self.device, dtype=self.dtypes[t.name]).contiguous()
            keep.append(x)
            ctx.set_input_shape(t.name, tuple(x.shape))
            ctx.set_tensor_address(t.name, x.data_ptr())
        outs = []
        for t in self.spec.outputs:
            y = torch.empty(tuple(ctx.get_tensor_shape(t.name)), dtype=self.dtypes[t.name], device=self.device)
            ctx.set_tensor_address(t.name, y.data_ptr())
            outs.append(y)
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise ZswError(f"TensorRT failed to run the {self.spec.name} engine")
        return [y if y.dtype == torch.float32 else y.float() for y in outs]


def _fingerprint(section: dict[str, Any]) -> EngineFingerprint:
    return EngineFingerprint.from_dict(section.get("fingerprint") or {})


def check_engines(manifest: ExportManifest, device: torch.device) -> None:
    """Refuse the engines of ``manifest`` if they were built for another GPU or TensorRT."""
    section = manifest.data["tensorrt"]
    stored = _fingerprint(section)
    current = current_fingerprint(stored.precision, device=device.index)
    first = next(iter(section["engines"].values()))
    check_fingerprint(stored, current, str(manifest.root / first["file"]))


def load_engines(manifest: ExportManifest, device: torch.device) -> dict[str, TensorRTEngine]:
    section = manifest.data["tensorrt"]
    engines = {}
    for name in GRAPHS:
        entry = section["engines"].get(name)
        if entry is None:
            raise CheckpointError(f"{manifest.root} lacks the {name} engine; run `zsw export --format tensorrt` again")
        path = manifest.file(entry)
        engines[name] = TensorRTEngine(path.read_bytes(), manifest.spec(name), device, str(path))
    return engines


def _validate(manifest: ExportManifest, device: torch.device, cases: int = 2) -> dict[str, dict[str, Any]]:
    """Compare each engine with ONNX Runtime (CPU) on the same inputs, produced by running the ONNX
    graphs on noise images: realistic encoder inputs and latents without needing the weights."""
    from zsw.model import lift_surface

    ort = OnnxRuntimeBackend(manifest, torch.device("cpu"))
    engines = load_engines(manifest, device)
    S = manifest.config.pixel.image_size
    g = torch.Generator().manual_seed(0)
    errors: dict[str, dict[str, float]] = {name: {} for name in GRAPHS}
    scale: dict[str, dict[str, float]] = {name: {} for name in GRAPHS}
    for batch in sorted({1, manifest.batch})[:cases]:
        image = torch.rand(batch, 3, S, S, generator=g)
        text = ort.embed_prompts(None, batch)
        mask = None if manifest.config.pixel.mask_heads else object_mask(batch, S)
        pix = ort.pixel(image, text)
        lifted = lift_surface(pix, manifest.config, mask)
        latents = ort.encode(lifted.encoder_input, text)
        view = lifted.pixel_view(pix.intrinsics)
        feeds = {
            "pixel": {"image": image, "text": text},
            "encoder": {"encoder_input": lifted.encoder_input, "text": text},
            "decoder": {
                "points": torch.rand(batch, manifest.points_chunk, 3, generator=g) * 3 - 1.5,
                "query_text": latents.text,
                "view_surface": view.surface,
                "view_projection": view.projection,
                "center_offset": latents.center_offset,
                "view_anchor": view.center_anchor() if manifest.config.decoder.mirror_queries else None,
                "view_distance": view.edge_distance() if manifest.config.decoder.silhouette_distance else None,
                "object_up": latents.up,
                "token_map": latents.token_map,
                **{f"latent_{c}{i}": kv[j] for i, kv in enumerate(latents.kv) for j, c in enumerate("kv")},
            },
        }
        for name in GRAPHS:
            spec = manifest.spec(name)
            args = [feeds[name][t.name].float().contiguous() for t in spec.inputs]
            want = ort._run(name, args)
            got = engines[name].run([a.to(device) for a in args])
            for t, w, y in zip(spec.outputs, want, got):
                err = (y.cpu() - w).abs().max().item()
                errors[name][t.name] = max(errors[name].get(t.name, 0.0), err)
                scale[name][t.name] = max(scale[name].get(t.name, 0.0), w.abs().max().item())
    tol = TOLERANCE.get(manifest.precision, 2e-2)
    return {
        name: {
            "against": "onnxruntime (CPU) on the same graph",
            "max_abs_error": errors[name],
            "max_abs_reference": scale[name],
            "tolerance": tol,
            "passed": all(errors[name][k] <= tol * max(1.0, scale[name][k]) for k in errors[name]),
        }
        for name in GRAPHS
    }


def build_engines(
    export_dir,
    *,
    workspace_gib: float = 4.0,
    device: int | None = None,
    force: bool = False,
    validate: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ExportManifest:
    """Build (or reuse) the TensorRT engines of an ONNX export directory and record them.

    Args:
        export_dir: a directory written by :func:`zsw.export.onnx.export_onnx`.
        workspace_gib: TensorRT's workspace memory limit, GiB.
        device: CUDA device index (default: the current device).
        force: rebuild engines even when valid ones for this machine exist.
        validate: compare each engine with ONNX Runtime and store the maximum absolute errors.
        progress: called with a short description before each step.
    """
    trt = require("tensorrt", "building TensorRT engines")
    require_cuda("building TensorRT engines")
    note = progress or (lambda _msg: None)
    manifest = read_manifest(export_dir)
    if not manifest.has_onnx:
        raise CheckpointError(f"{manifest.root} holds no ONNX graphs to build engines from")
    if manifest.precision not in TOLERANCE:
        raise ZswError(f"TensorRT engines are built from fp32 or fp16 graphs, not {manifest.precision}")
    index = torch.cuda.current_device() if device is None else device
    fingerprint = current_fingerprint(manifest.precision, trt.__version__, index)
    section = manifest.data.get("tensorrt") or {}
    reuse = not force and section.get("fingerprint") == fingerprint.as_dict()
    engines = dict(section.get("engines") or {}) if reuse else {}
    section = {
        "fingerprint": fingerprint.as_dict(),
        "workspace_bytes": int(workspace_gib * (1 << 30)),
        "engines": engines,
    }
    with torch.cuda.device(index):
        for name in GRAPHS:
            onnx_entry = manifest.data["graphs"][name]
            onnx_path = manifest.file(onnx_entry)
            plan_name = f"{name}.{manifest.precision}.plan"
            old = engines.get(name)
            if (
                old
                and (old.get("validation") or {}).get("passed") is not False  # a failed engine is built again
                and old.get("onnx_sha256") == onnx_entry["sha256"]
                and (manifest.root / plan_name).is_file()
                and sha256_file(manifest.root / plan_name) == old.get("sha256")
            ):
                note(f"reusing the {name} engine")
                continue
            note(f"building the {name} engine")
            profiles = engine_profiles(manifest.spec(name), manifest.batch, manifest.points_chunk)
            info = build_engine(
                onnx_path, manifest.root / plan_name, profiles, manifest.precision, section["workspace_bytes"]
            )
            engines[name] = {
                "file": plan_name,
                "sha256": sha256_file(manifest.root / plan_name),
                "onnx_sha256": onnx_entry["sha256"],
                "profiles": profiles,
                **info,
            }
            manifest.data["tensorrt"] = section
            write_manifest(manifest.root, manifest.data)  # resumable: each engine is recorded when built
        manifest.data["tensorrt"] = section
        if validate:
            note("validating the engines against ONNX Runtime")
            results = _validate(manifest, torch.device("cuda", index))
            for name, result in results.items():
                engines[name]["validation"] = result
            write_manifest(manifest.root, manifest.data)
            failed = [n for n, r in results.items() if not r["passed"]]
            if failed:
                r = results[failed[0]]
                worst = max(r["max_abs_error"], key=r["max_abs_error"].get)
                raise ZswError(
                    f"the {failed[0]} engine differs from ONNX Runtime by {r['max_abs_error'][worst]:.3g} on {worst} "
                    f"(tolerance {r['tolerance']:g} relative); see {manifest.root / 'export.json'}"
                )
        write_manifest(manifest.root, manifest.data)
    return read_manifest(manifest.root)


class TensorRTBackend(RuntimeBackend):
    """Serialised TensorRT engines (``zsw export --format tensorrt``) on torch CUDA tensors."""

    name = "tensorrt"

    def __init__(self, manifest: ExportManifest, device: torch.device):
        section = manifest.data.get("tensorrt") or {}
        if not section.get("engines"):
            raise CheckpointError(
                f"{manifest.root} holds no TensorRT engines; build them with `zsw export --format tensorrt`"
            )
        refuse_failed_validation(
            manifest, section["engines"], "engine", f"zsw export --format tensorrt --out {manifest.root}"
        )
        if device.type != "cuda":
            raise ConfigError("the tensorrt backend runs on a CUDA device, not on the CPU")
        check_engines(manifest, device)  # refuse engines built elsewhere before touching the GPU
        super().__init__(manifest, device)
        self.engines = load_engines(manifest, device)
        for g, engine in self.engines.items():
            self.max_batch[g] = engine.max_batch

    def _run(self, graph: str, args: list[Tensor]) -> list[Tensor]:
        engine = self.engines[graph]
        if graph != "decoder" or args[0].shape[1] == self.points_chunk:
            return engine.run(args)
        # the decoder engine is built for exactly points_chunk points: pad the last chunk
        points = args[0]
        n = points.shape[1]
        padded = points.new_zeros(points.shape[0], self.points_chunk, 3)
        padded[:, :n] = points
        (logits,) = engine.run([padded, *args[1:]])
        return [logits[:, :n]]
