"""CUDA graphs for the pixel model and the encoder (zsw.infer.graphs).

On the CPU: the call sequence (eager, eager and capture, replay), the copies in and out of the
graph's buffers, the fallbacks, with a stand-in capture that replays by running the function on the
graph's own buffers; and that the stages a reconstruction graphs neither synchronise with the host
nor copy host tensors to the device (either would break a capture). On a GPU: real captures.
"""

from __future__ import annotations

import collections
import dataclasses
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from zsw.infer.graphs import Capture, GraphedCalls, flatten

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclasses.dataclass
class Out:
    a: torch.Tensor
    pairs: list[tuple[torch.Tensor, torch.Tensor]]
    none: torch.Tensor | None = None
    label: str = "x"


class StandInCapture(Capture):
    """A 'graph' on the CPU: its buffers as a real capture keeps them, replayed by running the
    function on the input buffers and writing into the output buffers."""

    def __init__(self, fn, args, pool=None):
        self.fn = fn
        tensors, rebuild = flatten(args)
        self.inputs = [t.clone() for t in tensors]
        self.args = rebuild(self.inputs)
        self.outputs, self.rebuild = flatten(fn(*self.args))
        self.pool = pool or object()

    def run(self):
        for buffer, value in zip(self.outputs, flatten(self.fn(*self.args))[0]):
            buffer.copy_(value)


class OnCpu(GraphedCalls):
    capture = StandInCapture

    def applies(self, tensors):
        return True


def _stage(log: list):
    def fn(x, y):
        log.append("buffer" if getattr(fn, "buffers", None) and x is fn.buffers[0] else "call")
        return Out(a=x * 2, pairs=[(x + y, y.clone())], label="kept")

    return fn


def test_flatten_rebuilds_nested_dataclasses_lists_and_tuples_around_other_tensors():
    t = [torch.full((2,), float(i)) for i in range(3)]
    out = Out(a=t[0], pairs=[(t[1], t[2])], label="y")
    tensors, rebuild = flatten(out)
    assert [x is y for x, y in zip(tensors, t)] == [True] * 3
    new = rebuild([x + 10 for x in tensors])
    assert isinstance(new, Out) and new.label == "y" and new.none is None
    assert isinstance(new.pairs, list) and isinstance(new.pairs[0], tuple)
    assert torch.equal(new.pairs[0][1], t[2] + 10) and torch.equal(out.a, t[0])  # the original untouched
    pair = collections.namedtuple("Pair", "x y")
    _, rebuild = flatten({"p": pair(t[0], None)})
    rebuilt = rebuild([t[1]])["p"]
    assert isinstance(rebuilt, pair) and rebuilt.x is t[1] and rebuilt.y is None


def test_calls_run_eager_then_capture_then_replay_with_fresh_inputs_and_copied_outputs():
    log: list = []
    fn = _stage(log)
    graphed = OnCpu(fn, "stage")
    x, y = torch.ones(3), torch.arange(3.0)
    first = graphed(x, y)
    assert log == ["call"] and not graphed.graphs
    second = graphed(x, y)  # eager, then the capture and its check replay
    assert len(graphed.graphs) == 1 and log[1] == "call" and len(log) == 4
    fn.buffers = next(iter(graphed.graphs.values())).inputs
    log.clear()
    third = graphed(x + 1, y * 3)  # new values through the graph's buffers
    assert log == ["buffer"]
    assert torch.equal(third.a, (x + 1) * 2) and torch.equal(third.pairs[0][0], x + 1 + y * 3)
    fourth = graphed(x - 5, y)
    assert torch.equal(third.a, (x + 1) * 2), "a replay must not overwrite what an earlier one returned"
    assert torch.equal(fourth.a, (x - 5) * 2) and fourth.label == "kept"
    assert torch.equal(first.a, second.a)
    # another shape is another signature: eager twice again
    log.clear()
    graphed(torch.ones(4), torch.ones(4))
    assert log == ["call"] and len(graphed.graphs) == 1


def test_what_else_decides_the_computation_is_part_of_the_signature(monkeypatch):
    """A graph keeps the kernels it captured: after set_kernel_impl the backend's stages must not
    replay a graph of the other kernels."""
    from zsw.infer.backend import TorchBackend
    from zsw.model import build_model

    log: list = []
    kernels = ["triton"]
    graphed = OnCpu(_stage(log), "stage", state=lambda: kernels[0])
    x = torch.ones(3)
    for _ in range(3):
        graphed(x, x)
    kernels[0] = "torch"
    log.clear()
    graphed(x, x)
    assert log == ["call"] and len(graphed.graphs) == 1

    backend = TorchBackend(build_model("tiny"), "cpu")
    before = backend._state()
    monkeypatch.setenv("ZSW_KERNELS", "torch")  # auto's kernels as the environment asks
    assert backend._state() != before and backend._state()[0] == "torch"
    monkeypatch.delenv("ZSW_KERNELS")
    backend.model.set_kernel_impl("torch")
    assert backend._state() != before and backend._state()[0] == "torch"
    changed = backend._state()
    backend.model.train()
    assert backend._state() != changed


def test_dataclass_inputs_go_through_the_buffers_and_their_structure_is_the_signature():
    """The decoder's stage takes the image's latents (a dataclass of tensors, some None) and the
    points: a replay must see new latents, a latents object with another field set (an anchor
    computed on first use) is another signature, and the stage's graphs share one memory pool."""
    pools = []

    class Recording(StandInCapture):
        def __init__(self, fn, args, pool=None):
            pools.append(pool)
            super().__init__(fn, args, pool)

    def decode(latents: Out, points: torch.Tensor) -> torch.Tensor:
        extra = 0 if latents.none is None else latents.none.sum()
        return points.sum(-1) * latents.a.sum() + latents.pairs[0][1].sum() + extra

    graphed = OnCpu(decode, "decoder")
    graphed.capture = Recording
    pts = torch.rand(5, 3)
    for k in range(3):
        latents = Out(a=torch.full((2,), 1.0 + k), pairs=[(torch.zeros(1), torch.full((1,), float(k)))])
        assert torch.allclose(graphed(latents, pts), decode(latents, pts))
    assert len(graphed.graphs) == 1
    with_anchor = Out(a=torch.ones(2), pairs=[(torch.zeros(1), torch.ones(1))], none=torch.ones(1))
    for _ in range(3):
        assert torch.allclose(graphed(with_anchor, pts), decode(with_anchor, pts))
    assert len(graphed.graphs) == 2 and pools[0] is None and pools[1] is graphed.pool is not None


def test_a_capture_that_fails_or_disagrees_leaves_the_stage_eager_with_one_warning():
    class Failing(StandInCapture):
        def __init__(self, fn, args, pool=None):
            raise RuntimeError("operation not permitted when stream is capturing")

    class Stale(StandInCapture):
        def run(self):  # a graph that forgot to recompute: its buffers hold the capture's outputs
            for buffer in self.outputs:
                buffer.add_(1.0)

    for capture, message in ((Failing, "capture failed: RuntimeError"), (Stale, "output 0 differs by 1")):
        log: list = []
        graphed = OnCpu(_stage(log), "the stage")
        graphed.capture = capture
        x, y = torch.ones(3), torch.ones(3)
        graphed(x, y)
        with pytest.warns(RuntimeWarning, match=f"the stage: runs without a CUDA graph \\({message}"):
            out = graphed(x, y)
        assert torch.equal(out.a, x * 2) and not graphed.graphs
        log.clear()
        for _ in range(3):
            assert torch.equal(graphed(x, y).a, x * 2)
        assert log == ["call"] * 3


def test_graphs_stay_off_on_the_cpu_and_when_switched_off(monkeypatch):
    graphed = GraphedCalls(lambda x: x + 1, "stage")
    assert not graphed.applies([torch.ones(2)])
    for _ in range(3):
        graphed(torch.ones(2))
    assert not graphed.graphs and not graphed.calls
    monkeypatch.setenv("ZSW_CUDA_GRAPHS", "0")
    from zsw.infer.graphs import enabled

    assert not enabled()


class _HostTraffic(TorchDispatchMode):
    """Operators that wait for the device (a value read on the host, a data-dependent size) or
    copy a host tensor to it: on a GPU either breaks a graph capture."""

    WAITS = ("aten._local_scalar_dense", "aten.nonzero", "aten._unique", "aten.unique", "aten.masked_select")

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func)
        copied = name.startswith("aten.lift_fresh") and isinstance(out, torch.Tensor) and out.dim() > 0
        if copied or name.startswith(self.WAITS):
            where = [f for f in traceback.extract_stack() if "/zsw/" in f.filename]
            self.found.append(f"{name} at {where[-1].filename}:{where[-1].lineno}" if where else name)
        return out


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_graphed_stages_of_the_packaged_model_never_wait_for_the_device(precision):
    """Pixel model, lifting, encoder and decoder (a chunk of grid points)."""
    from zsw.infer.backend import load_backend, predict
    from zsw.infer.precision import autocast
    from zsw.infer.weights import demo_weights

    backend = load_backend("torch", weights=demo_weights(), device="cpu")
    S = backend.config.pixel.image_size
    image = torch.rand(1, 3, S, S)
    with autocast(precision, torch.device("cpu")):
        text = backend.embed_prompts(None, 1)
        pixel = backend.pixel(image, text)
        with _HostTraffic() as traffic:
            backend.pixel(image, text)
            pred = predict(backend, image, pixel=pixel)  # lifting and the encoder
            points = torch.rand(1, 512, 3) * 2 - 1
            backend.decode(pred.latents, points)  # the first call also derives the view's anchor
            backend.decode(pred.latents, points)
    assert traffic.found == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_the_pixel_model_and_encoder_replay_from_graphs_as_they_compute_eagerly():
    import warnings

    from zsw.infer.backend import load_backend, predict
    from zsw.infer.precision import autocast
    from zsw.infer.weights import demo_weights

    backend = load_backend("torch", weights=demo_weights(), device="cuda")
    S = backend.config.pixel.image_size
    images = [torch.rand(1, 3, S, S, device="cuda") for _ in range(4)]
    with autocast("bf16", torch.device("cuda")), warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*runs without a CUDA graph")  # a failed or disagreeing capture
        points = torch.rand(1, 4096, 3, device="cuda") * 2 - 1
        for image in images[:3]:
            replayed = predict(backend, image)
            for _ in range(3):
                backend.decode(replayed.latents, points)
        assert len(backend._pixel.graphs) == len(backend._encode.graphs) == len(backend._decode.graphs) == 1
        eager_backend = load_backend("torch", weights=demo_weights(), device="cuda")
        eager_backend._pixel.max_graphs = eager_backend._encode.max_graphs = eager_backend._decode.max_graphs = 0
        for image in images[2:]:
            replayed, eager = predict(backend, image), predict(eager_backend, image)
            for r, e in zip(flatten(replayed)[0], flatten(eager)[0]):
                torch.testing.assert_close(r.float(), e.float(), atol=2e-2, rtol=2e-2)
            logits = backend.decode(replayed.latents, points)
            torch.testing.assert_close(logits.float(), eager_backend.decode(eager.latents, points).float(),
                                       atol=5e-2, rtol=2e-2)  # fmt: skip
