"""Per-part latency of deployed backends against the PyTorch (Triton) path, in one run.

``zsw bench reconstruct --backend ...`` measures whole reconstructions; this measures the three
graphs one by one, which is where TensorRT and the Triton kernels differ: the pixel model (conv +
ViT), the encoder (ResNet + latent K/V) and one decoder call of ``points_chunk`` points. Every
backend gets the same inputs; times are CUDA-event medians after warm-up, reported with the ratio
to the torch backend measured in the same process::

    python -m zsw.bench.profile EXPORT_DIR --weights W [--backends onnxruntime,tensorrt]

``W`` names the weights the export was made from, as ``zsw export --weights`` takes them: a
checkpoint, ``demo`` or ``random:PRESET``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["time_call", "part_latencies", "compare"]


def time_call(fn: Callable[[], object], device: torch.device, warmup: int = 3, iters: int = 20) -> float:
    """Median milliseconds of ``fn()`` (CUDA events on a GPU, wall clock on the CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@torch.inference_mode()
def part_latencies(backend, batch: int, points: int, warmup: int = 3, iters: int = 20) -> dict[str, float]:
    """Milliseconds of ``pixel``, ``encode`` and one ``decode`` call of ``points`` points."""
    from zsw.export.graphs import object_mask
    from zsw.infer.backend import predict
    from zsw.model import lift_surface

    S = backend.config.pixel.image_size
    g = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 3, S, S, generator=g).to(backend.device)
    pts = (torch.rand(batch, points, 3, generator=g) * 3 - 1.5).to(backend.device)
    text = backend.embed_prompts(None, batch)
    mask = None if backend.config.pixel.mask_heads else object_mask(batch, S, backend.device)
    # the latents as zsw reconstruct decodes them: a pixel-aligned decoder's carry the view
    latents = predict(backend, image, None, mask).latents
    enc_in = lift_surface(backend.pixel(image, text), backend.config, mask).encoder_input
    return {
        "pixel": time_call(lambda: backend.pixel(image, text), backend.device, warmup, iters),
        "encode": time_call(lambda: backend.encode(enc_in, text), backend.device, warmup, iters),
        "decode": time_call(lambda: backend.decode(latents, pts), backend.device, warmup, iters),
    }


def compare(
    export_dir,
    weights,
    backends=("onnxruntime", "tensorrt"),
    batch: int = 1,
    device=None,
    warmup: int = 3,
    iters: int = 20,
) -> list[dict]:
    """Rows ``{backend, part, ms, ratio_to_torch}`` for the torch backend and ``backends``."""
    from zsw.export.manifest import read_manifest
    from zsw.infer.backend import load_backend
    from zsw.infer.weights import resolve_weights

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    points = read_manifest(export_dir).points_chunk
    model, _, _ = resolve_weights(weights)  # a checkpoint, "demo" or "random:PRESET", as `zsw export` takes
    torch_backend = load_backend("torch", weights=model, device=device)
    results = {"torch": part_latencies(torch_backend, batch, points, warmup, iters)}
    for kind in backends:
        backend = load_backend(kind, engine=export_dir, device=device)
        results[kind] = part_latencies(backend, batch, points, warmup, iters)
    rows = []
    for kind, parts in results.items():
        for part, ms in parts.items():
            ratio = ms / results["torch"][part]
            rows.append({"backend": kind, "part": part, "ms": round(ms, 3), "ratio_to_torch": round(ratio, 3)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--backends", default="onnxruntime,tensorrt")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    rows = compare(args.export_dir, args.weights, tuple(args.backends.split(",")), args.batch, args.device)
    print(json.dumps({"device": gpu, "batch": args.batch, "rows": rows}, indent=1))


if __name__ == "__main__":  # pragma: no cover
    main()
