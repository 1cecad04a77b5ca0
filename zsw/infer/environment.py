"""``zsw env``: what a bug report needs to say about the machine, in one place.

zsw's version and the identity of its code (the hash reruns compare), Python and the platform,
the versions of the packages zsw runs on and of the optional ones each feature needs (read from
their installed metadata, not imported), PyTorch's build and the devices it sees, the packaged
model and whether its ONNX graphs belong to it, and what the ``auto`` settings of ``zsw
reconstruct`` resolve to here (device, backend, precision, test-time augmentation): the same
functions decide them for a reconstruction, so the report cannot disagree with a run.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

__all__ = ["Environment", "describe_environment", "PACKAGES", "VARIABLES"]

#: environment variables that change what zsw does (reported when set)
VARIABLES = (
    "ZSW_KERNELS",  # the kernels' implementation (zsw.kernels.requested_impl)
    "ZSW_CUDA_GRAPHS",  # 0: no CUDA graphs for the model's stages (zsw.infer.graphs)
    "ZSW_CACHE_DIR",  # --prompt auto's class embeddings
    "TRITON_INTERPRET",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
)

#: (distribution, what zsw uses it for): the core dependencies first, then the extras
PACKAGES = (
    ("torch", "the model"),
    ("triton", "GPU kernels"),
    ("onnxruntime", "--backend auto on a CPU, onnxruntime"),
    ("numpy", ""),
    ("pillow", "images"),
    ("pillow-heif", "HEIC photos"),
    ("scikit-image", "marching cubes on a CPU"),
    ("scipy", ""),
    ("trimesh", "meshes"),
    ("DracoPy", "Draco-compressed glTF"),
    ("timm", "the pixel model's backbones"),
    ("open_clip_torch", "--prompt auto"),
    ("xatlas", "--texture (extra: texture)"),
    ("rembg", "--cutout rembg (extra: cutout)"),
    ("pillow-jxl-plugin", "JPEG XL photos (extra: jxl)"),
    ("OpenEXR", "OpenEXR images (extra: exr)"),
    ("usd-core", "USD/USDZ meshes read, --format usdz written (extra: usd)"),
    ("gradio", "zsw app (extra: app)"),
    ("diffusers", "zsw synthesize diffuse (extra: synth)"),
    ("transformers", "pseudo-depth, --prompt vlm: (extra: synth)"),
    ("onnx", "zsw export (extra: export)"),
    ("tensorrt", "--backend tensorrt, zsw export --format tensorrt (extra: trt)"),
    ("torch-tensorrt", "zsw export --format torch-tensorrt (extra: trt)"),
)


@dataclass(frozen=True)
class Environment:
    zsw: str
    code: str  # the hash of zsw's code that result.json records (zsw.io.code_identity)
    location: str
    python: str
    executable: str
    platform: str
    cpu_cores: int
    packages: dict[str, str | None]  # distribution -> version, None when not installed
    torch_build: str  # "CUDA 13.0", "ROCm 6.2" or "CPU only"
    torch_threads: int
    cpu_capability: str  # the vector instructions PyTorch's CPU kernels use (AVX2, AVX512, ...)
    devices: list[dict] = field(default_factory=list)  # the CUDA devices PyTorch sees
    weights: str | None = None  # the packaged model's file, None when the package has none
    onnx_graphs: str = ""  # whether --backend auto can use the packaged ONNX graphs
    defaults: dict[str, str] = field(default_factory=dict)  # what `auto` resolves to here
    variables: dict[str, str] = field(default_factory=dict)  # those of VARIABLES that are set

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """The report as text, one fact a line."""
        out = [
            f"zsw {self.zsw} (code {self.code[:12]}) in {self.location}",
            f"Python {self.python} ({self.executable}) on {self.platform}, {self.cpu_cores} CPU core(s)",
            f"PyTorch {self.packages.get('torch')}: {self.torch_build} build, {self.torch_threads} thread(s), "
            f"CPU kernels {self.cpu_capability}",
        ]
        if self.devices:
            out += [
                f"  cuda:{d['index']}: {d['name']}, sm_{d['capability']}, {d['memory_gib']:.0f} GiB, "
                f"bf16 {'yes' if d['bf16'] else 'no'}"
                for d in self.devices
            ]
        else:
            out.append("  no CUDA device visible to PyTorch")
        out.append(f"packaged model: {self.weights or 'none (random weights, with a warning)'}; {self.onnx_graphs}")
        options = {k: v for k, v in self.defaults.items() if k != "cuda_graphs"}
        line = "zsw reconstruct's auto settings here: " + ", ".join(f"--{k} {v}" for k, v in options.items())
        if "cuda_graphs" in self.defaults:
            line += f"; CUDA graphs {'on' if self.defaults['cuda_graphs'] else 'off'}"
        out.append(line)
        out.append("environment: " + (" ".join(f"{k}={v}" for k, v in self.variables.items()) or "none of zsw's set"))
        out.append("packages:")
        width = max(len(name) for name, _ in PACKAGES)
        for name, use in PACKAGES:
            version = self.packages.get(name) or "not installed"
            out.append(f"  {name:<{width}}  {version:<14} {use}".rstrip())
        return out


def _version(distribution: str) -> str | None:
    names = (distribution, "onnxruntime-gpu") if distribution == "onnxruntime" else (distribution,)
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def describe_environment() -> Environment:
    """The report of this machine and installation (imports PyTorch to ask it about devices)."""
    import torch

    import zsw
    from zsw.hub import resolve_device
    from zsw.infer.graphs import enabled as graphs_enabled
    from zsw.infer.precision import run_precision
    from zsw.infer.settings import resolve_tta
    from zsw.infer.weights import demo_engine, demo_weights, resolve_backend
    from zsw.io import code_identity

    if torch.version.cuda:
        build = f"CUDA {torch.version.cuda}"
    elif getattr(torch.version, "hip", None):
        build = f"ROCm {torch.version.hip}"
    else:
        build = "CPU only"
    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            with torch.cuda.device(i):
                bf16 = bool(torch.cuda.is_bf16_supported())
            devices.append(
                {
                    "index": i,
                    "name": props.name,
                    "capability": f"{props.major}{props.minor}",
                    "memory_gib": props.total_memory / 2**30,
                    "bf16": bf16,
                }
            )
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = "unknown"
    weights = demo_weights()
    if weights is None:
        graphs = "no ONNX graphs"
    elif demo_engine() is not None:
        graphs = "its ONNX graphs belong to it"
    else:
        graphs = "its ONNX graphs are missing or were exported from other weights (auto runs PyTorch)"
    device = resolve_device(None)
    backend = resolve_backend("auto", None, None, device, "auto")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # usable ones
    return Environment(
        zsw=zsw.__version__,
        code=code_identity(),
        location=str(Path(zsw.__file__).resolve().parent),
        python=platform.python_version(),
        executable=sys.executable,
        platform=f"{platform.system()} {platform.release()} {platform.machine()}",
        cpu_cores=int(cores or 1),
        packages={name: _version(name) for name, _ in PACKAGES},
        torch_build=build,
        torch_threads=torch.get_num_threads(),
        cpu_capability=str(capability),
        devices=devices,
        weights=weights.name if weights is not None else None,
        onnx_graphs=graphs,
        defaults={
            "device": device,
            "backend": backend,
            "precision": run_precision(backend, "auto", device),
            "tta": resolve_tta("auto", device),
            # the torch backend's stages replayed from CUDA graphs (zsw.infer.graphs)
            "cuda_graphs": backend == "torch" and device.startswith("cuda") and graphs_enabled(),
        },
        variables={k: os.environ[k] for k in VARIABLES if k in os.environ},
    )
