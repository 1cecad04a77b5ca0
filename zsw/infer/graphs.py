"""CUDA graphs for the fixed-shape stages of a reconstruction: the pixel model, the encoder, and the
decoder on full chunks of grid points.

On a GPU each of these stages is a hundred or more small kernels, and the host's launches set their
pace, not the device: on the H200 the pixel model of ``zeroshape-w`` took 26 ms at bf16 against 15
ms at fp32 (``bench/results/h200``), the difference being the casts autocast launches (251 more
operators); the decoder launches ~130 operators per chunk of points, 33 chunks for a dense 129^3
grid. A CUDA graph replays a stage's launches as one.

:class:`GraphedCalls` wraps one stage, a function taking and returning tensors in dataclasses,
lists, tuples or dicts. Per signature -- the inputs' structure (which fields are None) and each
tensor's shape, dtype, device and strides, the autocast state, and what the caller says decides the
computation besides (the backend: the kernels chosen, train or eval mode) -- its calls go:

1. the first runs eagerly, as without graphs: autotuning, Triton's measured choices and cuDNN's and
   cuBLAS's lazy set-up happen here, never during a capture;
2. the second runs eagerly too, then captures the stage into a graph (autocast's weight cache off,
   as CUDA graphs require) and replays it on the same inputs; the graph is kept only if that replay
   agrees with the eager result (1e-2 of each output's scale: cuBLAS may pick other algorithms on the
   capture's stream) -- otherwise, or when the capture fails (a host synchronisation or copy in the
   stage), the signature stays eager, with one warning;
3. from the third on, the inputs are copied into the graph's buffers, the graph replays, and the
   outputs are returned as copies (the next replay overwrites the graph's own).

A photo whose stages run once costs nothing extra; one that runs a stage twice (the framing pass
and the main one, or ``--tta flip``'s mirrored pass) pays a capture (about the host time of one
more eager pass) and one replay to check it; a folder run, the web app and
``zsw bench reconstruct``'s repeated runs replay. Only CUDA tensors are graphed, at most
``max_graphs`` signatures per stage (a folder run's last, smaller batch is one more; a decoder's
last chunk of a level has a data-dependent size and is rarely seen twice), and
``ZSW_CUDA_GRAPHS=0`` (or :func:`switched`) turns it off. The stages must not synchronise with the
host or copy host tensors to the device; ``tests/test_graphs.py`` checks that on the CPU for the
packaged model.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import threading
import warnings
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["GraphedCalls", "enabled", "switched", "flatten"]


_forced: bool | None = None  # set by `switched`


def enabled() -> bool:
    """Whether CUDA graphs may be used (``ZSW_CUDA_GRAPHS=0`` turns them off, :func:`switched` too)."""
    if _forced is not None:
        return _forced
    return os.environ.get("ZSW_CUDA_GRAPHS", "1") != "0"


@contextlib.contextmanager
def switched(on: bool) -> Iterator[None]:
    """CUDA graphs on or off inside the block, whatever ``ZSW_CUDA_GRAPHS`` says (benchmarks)."""
    global _forced
    before, _forced = _forced, on
    try:
        yield
    finally:
        _forced = before


def flatten(obj: Any) -> tuple[list[Tensor], Callable[[list[Tensor]], Any]]:
    """The tensors in ``obj`` (dataclasses, lists, tuples and dicts of them, any depth), in a fixed
    order, and a function that rebuilds ``obj``'s structure around other tensors in that order
    (non-tensor values are kept as they are)."""
    tensors: list[Tensor] = []

    def walk(o: Any) -> Callable[[list[Tensor]], Any]:
        if isinstance(o, Tensor):
            i = len(tensors)
            tensors.append(o)
            return lambda ts: ts[i]
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            parts = {f.name: walk(getattr(o, f.name)) for f in dataclasses.fields(o)}

            def dataclass_(ts: list[Tensor]) -> Any:
                new = copy.copy(o)
                for name, part in parts.items():
                    object.__setattr__(new, name, part(ts))
                return new

            return dataclass_
        if isinstance(o, (list, tuple)):
            items = [walk(x) for x in o]
            if hasattr(o, "_fields"):  # a named tuple takes its fields as arguments
                return lambda ts: type(o)(*(item(ts) for item in items))
            return lambda ts: type(o)(item(ts) for item in items)
        if isinstance(o, dict):
            values = {k: walk(v) for k, v in o.items()}
            return lambda ts: {k: v(ts) for k, v in values.items()}
        return lambda _ts: o

    rebuild = walk(obj)
    return tensors, rebuild


def _structure(obj: Any) -> Hashable:
    """What must match for a graph to take ``obj``'s place: its containers and None-ness, each
    tensor's shape, dtype, device and strides, other values themselves (by identity if unhashable)."""
    if isinstance(obj, Tensor):
        return ("tensor", tuple(obj.shape), obj.dtype, obj.device, obj.stride())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = tuple((f.name, _structure(getattr(obj, f.name))) for f in dataclasses.fields(obj))
        return type(obj).__qualname__, fields
    if isinstance(obj, (list, tuple)):
        return type(obj).__name__, tuple(_structure(x) for x in obj)
    if isinstance(obj, dict):
        return "dict", tuple((k, _structure(v)) for k, v in obj.items())
    try:
        hash(obj)
    except TypeError:
        return "object", id(obj)
    return "value", obj


def _signature(args: tuple, state: Hashable) -> tuple:
    autocast = tuple((torch.is_autocast_enabled(k), torch.get_autocast_dtype(k)) for k in ("cuda", "cpu"))
    return _structure(args), autocast, state


def _agree(replayed: list[Tensor], eager: list[Tensor]) -> str | None:
    """None when the replayed outputs match the eager ones, else what differs."""
    if len(replayed) != len(eager):
        return f"{len(replayed)} outputs against {len(eager)}"
    for i, (r, e) in enumerate(zip(replayed, eager)):
        if r.shape != e.shape or r.dtype != e.dtype:
            return f"output {i}: {tuple(r.shape)} {r.dtype} against {tuple(e.shape)} {e.dtype}"
        if not e.is_floating_point():
            if not torch.equal(r, e):
                return f"output {i} differs"
            continue
        scale = max(1.0, float(e.float().abs().max())) if e.numel() else 1.0
        err = float((r.float() - e.float()).abs().max()) if e.numel() else 0.0
        if not err <= 1e-2 * scale:  # also catches NaN
            return f"output {i} differs by {err:.3g} (scale {scale:.3g})"
    return None


class Capture:
    """One captured stage: the input buffers, the graph, the output buffers (see the module
    docstring). Graphs of one stage share a memory ``pool`` (they never run at the same time and
    their outputs are copied out at once). Tests substitute a class that runs on a CPU."""

    def __init__(self, fn: Callable[..., Any], args: tuple, pool: Any = None):
        tensors, rebuild = flatten(args)
        self.inputs = [t.clone() for t in tensors]
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        cuda_autocast = torch.is_autocast_enabled("cuda")
        dtype = torch.get_autocast_dtype("cuda")
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            with torch.autocast("cuda", dtype=dtype, enabled=cuda_autocast, cache_enabled=False):
                out = fn(*rebuild(self.inputs))
        self.outputs, self.rebuild = flatten(out)
        self.pool = self.graph.pool()

    def run(self) -> None:
        self.graph.replay()

    def __call__(self, tensors: list[Tensor]) -> Any:
        """Replay on ``tensors`` (the call's inputs, flattened as :func:`flatten` orders them)."""
        for buffer, t in zip(self.inputs, tensors):
            buffer.copy_(t)
        self.run()
        return self.rebuild([t.clone() for t in self.outputs])


class GraphedCalls:
    """``fn`` replayed from CUDA graphs after its first two calls per input signature (see the
    module docstring). ``name`` names the stage in the warning of a signature that stays eager;
    ``state`` returns what else decides what ``fn`` computes (the kernels it dispatches to), part
    of the signature."""

    capture: type[Capture] = Capture

    def __init__(
        self, fn: Callable[..., Any], name: str, max_graphs: int = 4, state: Callable[[], Hashable] | None = None
    ):
        self.fn = fn
        self.name = name
        self.state = state or (lambda: None)
        self.max_graphs = max_graphs
        self.graphs: dict[tuple, Capture] = {}
        self.calls: dict[tuple, int] = {}
        self.eager: set[tuple] = set()  # signatures whose capture failed or disagreed
        self.pool: Any = None  # the graphs' shared memory pool, once one is captured
        self._lock = threading.Lock()

    def applies(self, tensors: list[Tensor]) -> bool:
        """Whether graphs may take a call with these input tensors."""
        return (
            enabled()
            and bool(tensors)
            and all(t.device.type == "cuda" for t in tensors)
            and not torch.is_grad_enabled()
            and not torch.cuda.is_current_stream_capturing()
        )

    def __call__(self, *args: Any) -> Any:
        tensors = flatten(args)[0]  # once per call: the decoder's stage runs once per chunk of points
        if not self.applies(tensors):
            return self.fn(*args)
        key = _signature(args, self.state())
        if key in self.graphs:
            with self._lock:  # one replay at a time: they share the graph's buffers
                return self.graphs[key](tensors)
        out = self.fn(*args)
        if len(self.calls) > 4096:  # sizes seen once (a decoder's last chunks) in a long-lived app
            self.calls.clear()
        self.calls[key] = n = self.calls.get(key, 0) + 1
        if n == 2 and key not in self.eager and len(self.graphs) < self.max_graphs:
            self._capture(key, args, tensors, out)
        return out

    def _capture(self, key: tuple, args: tuple, tensors: list[Tensor], eager: Any) -> None:
        try:
            with self._lock:
                graph = self.capture(self.fn, args, self.pool)
                replayed = graph(tensors)
        except Exception as e:  # noqa: BLE001 - any failure leaves the stage eager, as it was
            problem = f"capture failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        else:
            problem = _agree(flatten(replayed)[0], flatten(eager)[0])
            if problem is None:
                self.graphs[key] = graph
                self.pool = graph.pool
                return
        self.eager.add(key)
        warnings.warn(f"{self.name}: runs without a CUDA graph ({problem})", RuntimeWarning, stacklevel=3)
