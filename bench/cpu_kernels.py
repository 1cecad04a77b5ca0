"""The decoder's CPU inference paths (``zsw.kernels.cpu``) against the reference kernels
(``zsw.kernels.reference``, what ``ZSW_KERNELS=torch`` runs), on the packaged model's real inputs.

One reconstruction of a photo is run with the kernels' entry points wrapped, which records what
the decoder hands them while it decodes the grid (its attention's q/k/v and latent K/V, the
occupancy MLP's input, and the decoder's own points and latents); the chunks are joined into
``--points`` points and each operation is then timed both ways, alternating, in one process:
the point cross-attention and the occupancy MLP on one thread (as the earlier profile), the whole
decoder (``Decoder.decode``) on ``--threads``. Both outputs are compared: the largest absolute
difference is in the table, so a faster path that computes something else shows.

    python -m zsw.bench.cpu_kernels examples/teddy_bear.png --out bench/results/cpu-kernels.md
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch


@contextlib.contextmanager
def _recording(calls: dict[str, list]):
    """Wrap the kernels' entry points and ``Decoder.decode``: their arguments go to ``calls``."""
    from zsw import kernels
    from zsw.model.decoder import PointDecoder as Decoder

    saved = {name: getattr(kernels, name) for name in ("point_cross_attention", "occupancy_mlp")}
    saved_decode = Decoder.decode

    def wrap(name: str, fn: Callable) -> Callable:
        def recorded(*args, **kwargs):
            calls.setdefault(name, []).append((args, kwargs))
            return fn(*args, **kwargs)

        return recorded

    for name, fn in saved.items():
        setattr(kernels, name, wrap(name, fn))

    def decode(self, latents, points):
        calls.setdefault("decode", []).append((self, latents, points))
        return saved_decode(self, latents, points)

    Decoder.decode = decode
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(kernels, name, fn)
        Decoder.decode = saved_decode


def capture(photo: str | os.PathLike, points: int) -> dict:
    """The decoder's inputs while ``zsw reconstruct`` (torch backend, the packaged model, no
    mirrored pass) decodes ``photo``'s grid, joined into ``points`` points (fewer if the grid
    decoded fewer): ``attention`` (q, k, v, k_latent, v_latent, scale) of the first block,
    ``mlp`` (x, weights, biases, skip_in, beta) and ``decode`` (decoder, latents, points)."""
    import zsw

    calls: dict[str, list] = {}
    with _recording(calls), torch.inference_mode():
        zsw.reconstruct(photo, backend="torch", tta="none", color="none")
    blocks = len(calls["point_cross_attention"]) // len(calls["decode"])
    first = calls["point_cross_attention"][::blocks]  # block 0 of every decoder call

    def join(rows: list[torch.Tensor], dim: int) -> torch.Tensor:
        return torch.cat(rows, dim=dim).narrow(dim, 0, min(points, sum(r.shape[dim] for r in rows)))

    (_, _, _, k_latent, v_latent, scale), _ = first[0]
    attention = (*(join([c[0][i] for c in first], 2) for i in range(3)), k_latent, v_latent, scale)
    (_, weights, biases, skip_in, beta), _ = calls["occupancy_mlp"][0]
    mlp = (join([c[0][0] for c in calls["occupancy_mlp"]], 1), weights, biases, skip_in, beta)
    decoder, latents, _ = calls["decode"][0]
    decode = (decoder, latents, join([c[2] for c in calls["decode"]], 1))
    return {
        "attention": attention,
        "mlp": mlp,
        "decode": decode,
        "decoded": sum(c[2].shape[1] for c in calls["decode"]),
    }


def _time(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[list[float], torch.Tensor]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def compare(cases: dict[str, tuple[Callable, Callable, int]], rounds: int, repeats: int) -> dict[str, dict]:
    """Each case ``name: (fast, reference, threads)`` timed in ``rounds`` alternating rounds of
    ``repeats`` calls; the median over all calls, the best, and the outputs' largest difference."""
    rows = {}
    for name, (fast, ref, threads) in cases.items():
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                fast(), ref()  # warm-up
                t_fast, t_ref, out_fast, out_ref = [], [], None, None
                for _ in range(rounds):
                    t, out_fast = _time(fast, repeats)
                    t_fast += t
                    t, out_ref = _time(ref, repeats)
                    t_ref += t
        finally:
            torch.set_num_threads(previous)
        diff = float((out_fast.float() - out_ref.float()).abs().max())
        rows[name] = {"threads": threads, "fast_s": statistics.median(t_fast), "ref_s": statistics.median(t_ref),
                      "fast_best_s": min(t_fast), "ref_best_s": min(t_ref), "max_abs_diff": diff,
                      "scale": float(out_ref.float().abs().max())}  # fmt: skip
    return rows


def measure(photo: str | os.PathLike, points: int = 65536, threads: int = 2, rounds: int = 3, repeats: int = 3) -> dict:
    from zsw.kernels import cpu, reference

    got = capture(photo, points)
    att, mlp, (decoder, latents, pts) = got["attention"], got["mlp"], got["decode"]

    def whole(impl: str) -> Callable[[], torch.Tensor]:  # the decoder with ZSW_KERNELS=impl (read per call)
        def run() -> torch.Tensor:
            with mock.patch.dict(os.environ, {"ZSW_KERNELS": impl}):
                return decoder.decode(latents, pts)

        return run

    cases = {
        "point cross-attention (block 1)": (
            lambda: cpu.point_cross_attention(*att),
            lambda: reference.point_cross_attention(*att),
            1,
        ),
        "occupancy MLP": (lambda: cpu.occupancy_mlp(*mlp), lambda: reference.occupancy_mlp(*mlp), 1),
        "whole decoder": (whole("auto"), whole("torch"), threads),
    }
    return {"rows": compare(cases, rounds, repeats), "points": int(pts.shape[1]), "decoded": got["decoded"],
            "shapes": {"q": list(att[0].shape), "k_latent": list(att[3].shape), "mlp_in": list(mlp[0].shape)},
            "rounds": rounds, "repeats": repeats}  # fmt: skip


def markdown(result: dict, photo: str) -> str:
    from zsw.bench._harness import environment

    env = environment("cpu")
    s = result["shapes"]
    lines = [
        "# The decoder's CPU inference paths against the reference kernels",
        "",
        f"`python -m zsw.bench.cpu_kernels {photo}`: the packaged model's decoder inputs while it decodes "
        f"this photo's grid ({result['decoded']:,} points, `fast`), joined into {result['points']:,} points; "
        f"attention q {s['q']} over latent keys {s['k_latent']}, MLP input {s['mlp_in']}. Median of "
        f"{result['rounds']} alternating rounds of {result['repeats']} calls (best in brackets). "
        f"Host: {env.gpu.removeprefix('cpu: ')}, {os.cpu_count()} logical CPUs, torch {env.torch}, zsw {env.git_sha}.",
        "",
        "| operation | threads | reference (`ZSW_KERNELS=torch`) | `zsw.kernels.cpu` (`auto`) | speed-up "
        "| max abs difference (of values up to) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    for name, r in result["rows"].items():
        lines.append(
            f"| {name} | {r['threads']} | {r['ref_s'] * 1e3:.0f} ms ({r['ref_best_s'] * 1e3:.0f}) "
            f"| {r['fast_s'] * 1e3:.0f} ms ({r['fast_best_s'] * 1e3:.0f}) | {r['ref_s'] / r['fast_s']:.2f}x "
            f"| {r['max_abs_diff']:.1e} ({r['scale']:.3g}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photo")
    parser.add_argument("--points", type=int, default=65536)
    parser.add_argument("--threads", type=int, default=2, help="threads of the whole-decoder row")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the table here (markdown)")
    args = parser.parse_args(argv)
    result = measure(args.photo, args.points, args.threads, args.rounds, args.repeats)
    text = markdown(result, args.photo)
    if args.out:
        from zsw.io import atomic_write_text

        atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
