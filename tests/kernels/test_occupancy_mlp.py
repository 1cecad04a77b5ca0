"""Fused occupancy MLP against the PyTorch reference: forward and backward (stored and recomputed
activations), the tiny and the real decoder shapes, odd shapes, all dtypes, NaN-poisoned outputs."""

from __future__ import annotations

import pytest
import torch

from zsw.kernels import reference
from zsw.kernels.occupancy_mlp import occupancy_mlp
from zsw.kernels.testing import assert_close, assert_relative, nan_poison

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _poison_outputs():
    with nan_poison():
        yield


def _layers(c_in, width, hidden, c_out, skip_in, seed, device=DEVICE):
    """nn.Linear-like weights (Xavier scale) and small non-zero biases."""
    g = torch.Generator().manual_seed(seed)
    dims = [c_in] + [width] * hidden + [c_out]
    weights, biases = [], []
    for l in range(len(dims) - 1):
        fan_in = dims[l] + (c_in if l in skip_in else 0)
        bound = (6 / (fan_in + dims[l + 1])) ** 0.5
        weights.append(((torch.rand(dims[l + 1], fan_in, generator=g) * 2 - 1) * bound).to(device))
        biases.append((0.02 * torch.randn(dims[l + 1], generator=g)).to(device))
    return weights, biases


def _run(fn, x, weights, biases, skip_in, grad_out=None, dtype=None, **kwargs):
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in (x, *weights, *biases)]
    n = len(weights)
    out = fn(leaves[0], leaves[1 : 1 + n], leaves[1 + n :], skip_in, 100.0, **kwargs)
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(out.device)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    return out, grads, grad_out


def _names(n):
    return ["x"] + [f"W{l}" for l in range(n)] + [f"b{l}" for l in range(n)]


TINY = (67, 64, 8, 1, (2, 4, 6))  # the `tiny` preset's decoder MLP: cat(xyz, 64-d feature)
REAL = (259, 256, 8, 1, (2, 4, 6))  # ZeroShape's

FP32_CASES = [
    pytest.param(1, TINY, False, id="tiny-M1"),
    pytest.param(1000, TINY, False, id="tiny-M1000"),
    pytest.param(300, TINY, True, id="tiny-M300-recompute"),
    pytest.param(130, REAL, False, id="real-M130"),
    pytest.param(70, (10, 16, 2, 3, (2,)), False, id="odd-C10-W16-C3"),
    pytest.param(33, (5, 32, 0, 2, ()), False, id="single-linear"),
]


@pytest.mark.parametrize("M, shape, recompute", FP32_CASES)
def test_fp32_matches_reference(M, shape, recompute):
    c_in, width, hidden, c_out, skip_in = shape
    weights, biases = _layers(*shape, seed=M)
    x = torch.randn(M, c_in, generator=torch.Generator().manual_seed(M)).to(DEVICE) * 0.5
    out, grads, g = _run(occupancy_mlp, x, weights, biases, skip_in, recompute=recompute)
    ref, ref_grads, _ = _run(reference.occupancy_mlp, x, weights, biases, skip_in, g, torch.float64)
    scale = ref.abs().max().item()
    assert_close(out, ref, atol=1e-5 * scale, rtol=1e-4, name="out")
    for name, a, e in zip(_names(len(weights)), grads, ref_grads):
        assert_close(a, e, atol=1e-5 * max(e.abs().max().item(), 1e-3), rtol=1e-4, name=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("M, shape", [pytest.param(1, TINY, id="tiny-M1"), pytest.param(1000, TINY, id="tiny-M1000")])
def test_half_precision_within_twice_torch_error(M, shape, dtype):
    c_in, width, hidden, c_out, skip_in = shape
    weights, biases = _layers(*shape, seed=M)
    x = (torch.randn(M, c_in, generator=torch.Generator().manual_seed(M)) * 0.5).to(DEVICE, dtype)
    weights = [w.to(dtype) for w in weights]
    biases = [b.to(dtype) for b in biases]
    out, grads, g = _run(occupancy_mlp, x, weights, biases, skip_in)
    ref, ref_grads, _ = _run(reference.occupancy_mlp, x, weights, biases, skip_in, g, torch.float64)
    low, low_grads, _ = _run(reference.occupancy_mlp, x, weights, biases, skip_in, g)
    assert out.dtype == dtype
    assert_relative(out, ref, low, factor=2, name="out")
    for name, a, e, p in zip(_names(len(weights)), grads, ref_grads, low_grads):
        assert_relative(a, e, p, factor=3, floor=1e-4, name=name)


def test_inference_forward_reuses_scratch_across_tiles():
    # no autograd: activations round-trip through one scratch tile per program, reused by every
    # layer and by the next tile of the same program (on CPU: 7 tiles of 256 over 6 programs, the
    # last one with a single point)
    weights, biases = _layers(*TINY, seed=1)
    x = torch.randn(6 * 256 + 1, TINY[0], generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with torch.no_grad():
        out = occupancy_mlp(x, weights, biases, TINY[4])
    ref = reference.occupancy_mlp(x.double(), [w.double() for w in weights], [b.double() for b in biases], TINY[4])
    assert_close(out, ref, atol=1e-5 * ref.abs().max().item(), rtol=1e-4, name="out")


ONCHIP_CASES = [
    pytest.param(1, TINY, id="tiny-M1"),
    pytest.param(300, TINY, id="tiny-M300"),  # partial last tile, C_in = 67 over 16-column K slices
    pytest.param(70, (10, 128, 3, 3, (2,)), id="C10-W128-C3"),  # an input narrower than one K slice
    pytest.param(65, REAL, id="real-M65"),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("M, shape", ONCHIP_CASES)
def test_onchip_forward_within_twice_torch_error(M, shape, dtype):
    """The inference forward that keeps the activations on chip and loads the weights by TMA (the
    interpreter runs the same descriptor loads, zero-filling past the last row and column)."""
    from zsw.kernels.occupancy_mlp import forward_variant

    c_in, width, hidden, c_out, skip_in = shape
    weights, biases = _layers(*shape, seed=M + 7)
    weights, biases = [w.to(dtype) for w in weights], [b.to(dtype) for b in biases]
    x = (torch.randn(M, c_in, generator=torch.Generator().manual_seed(M)) * 0.5).to(DEVICE, dtype)
    with torch.no_grad(), forward_variant("onchip"):
        out = occupancy_mlp(x, weights, biases, skip_in)
    with torch.no_grad():
        layered = occupancy_mlp(x, weights, biases, skip_in)  # auto: the layered forward here
        low = reference.occupancy_mlp(x, weights, biases, skip_in)
    ref = reference.occupancy_mlp(x.double(), [w.double() for w in weights], [b.double() for b in biases], skip_in)
    assert out.shape == (M, c_out) and out.dtype == dtype
    assert_relative(out, ref, low, factor=2, name="onchip")
    assert_relative(layered, ref, low, factor=2, name="layered")


def test_onchip_forward_reads_unaligned_rows_and_leaves_other_cases_to_the_layered_one():
    """x rows of 67 fp16 values (134 bytes) are not 16-byte aligned for TMA: the launcher copies
    them into aligned rows. A skip into the output layer, fp32 or an odd width run layered."""
    from zsw.kernels.occupancy_mlp import forward_variant, onchip_applies, pack_weights

    weights, biases = _layers(*TINY, seed=5)
    weights, biases = [w.half() for w in weights], [b.half() for b in biases]
    base = torch.randn(40, TINY[0] + 1, generator=torch.Generator().manual_seed(5)).to(DEVICE).half()
    x = base[:, 1:]  # rows start 2 bytes in: misaligned base and stride
    with torch.no_grad(), forward_variant("onchip"):
        out = occupancy_mlp(x, weights, biases, TINY[4])
    ref = reference.occupancy_mlp(x.double(), [w.double() for w in weights], [b.double() for b in biases], TINY[4])
    low = reference.occupancy_mlp(x, weights, biases, TINY[4])
    assert_relative(out, ref, low, factor=2, name="onchip, unaligned")

    def applies(shape, dtype=torch.float16):
        ws, bs = _layers(*shape, seed=0)
        w_packed, _, W, C_in, C_out, x_layers = pack_weights(ws, bs, shape[4], dtype)
        return onchip_applies(torch.empty(1, C_in, dtype=dtype), w_packed, W, C_out, x_layers)

    assert applies(TINY) and applies(REAL)
    assert not applies(TINY, torch.float32)
    assert not applies((10, 48, 3, 1, ()))  # width 48
    assert not applies((10, 64, 3, 1, (3,)))  # the output layer (3) reads x
    assert not applies((10, 64, 0, 1, ()))  # a single Linear
    with pytest.raises(ValueError, match="forward variant"):
        with forward_variant("fastest"):
            pass


def test_softplus_regimes_and_tails_match_torch():
    # one hidden unit driven across Softplus' regimes: far negative (log1p of a tiny exp), around 0,
    # just below and above the linear threshold beta * z = 20
    z = torch.tensor([-3.0, -0.2, -1e-3, 0.0, 1e-3, 0.05, 0.19999, 0.2, 0.20001, 1.5])
    x = z[:, None].to(DEVICE)
    w0, w1 = torch.ones(1, 1, device=DEVICE), torch.ones(1, 1, device=DEVICE)
    zero = torch.zeros(1, device=DEVICE)
    out = occupancy_mlp(x, [w0, w1], [zero, zero], (), 100.0)
    ref = torch.nn.functional.softplus(x.double(), beta=100.0, threshold=20.0)
    assert_close(out, ref, atol=1e-12, rtol=2e-6, name="softplus")


def test_a_nan_input_gives_a_nan_output_as_in_torch():
    """A diverging decoder must show as NaN, not be turned into finite occupancy by the Softplus."""
    x = torch.tensor([[0.1], [float("nan")], [-0.3], [0.5]], device=DEVICE)
    w0, w1 = torch.ones(2, 1, device=DEVICE), torch.ones(1, 2, device=DEVICE)
    zero1, zero2 = torch.zeros(1, device=DEVICE), torch.zeros(2, device=DEVICE)
    out = occupancy_mlp(x, [w0, w1], [zero2, zero1], (), 100.0)
    ref = reference.occupancy_mlp(x, [w0, w1], [zero2, zero1], (), 100.0)
    assert torch.equal(out.isnan(), ref.isnan()) and out.isnan().flatten().tolist() == [False, True, False, False]
    assert_close(out[~out.isnan()], ref[~ref.isnan()], atol=1e-6, rtol=1e-5, name="finite rows")


def test_autocast_and_batched_input_shape():
    weights, biases = _layers(*TINY, seed=0)
    x = torch.randn(2, 50, TINY[0], device=DEVICE) * 0.5
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = occupancy_mlp(x, weights, biases, TINY[4])
        low = reference.occupancy_mlp(x, weights, biases, TINY[4])
    ref = reference.occupancy_mlp(x.double(), [w.double() for w in weights], [b.double() for b in biases], TINY[4])
    assert out.shape == (2, 50, 1) and out.dtype == torch.bfloat16
    assert_relative(out, ref, low, factor=2, name="out")


@pytest.mark.parametrize(
    "weights, skip_in, match",
    [
        ([(8, 5), (8, 8), (1, 8)], (0,), "layer 0"),
        ([(8, 5), (7, 8), (1, 7)], (), "layer 1 weight"),
        ([(8, 5), (8, 8), (1, 8)], (2,), "layer 2 weight"),  # a skip layer needs 8 + 5 inputs
    ],
)
def test_unsupported_or_inconsistent_layers_raise(weights, skip_in, match):
    ws = [torch.randn(s) for s in weights]
    bs = [torch.randn(s[0]) for s in weights]
    with pytest.raises(ValueError, match=match):
        occupancy_mlp(torch.randn(4, 5), ws, bs, skip_in)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recompute"])
@pytest.mark.parametrize("M", [1, 4097, 65536])
def test_gpu_compiled_kernels(M, recompute, dtype):
    c_in, width, hidden, c_out, skip_in = REAL
    weights, biases = _layers(*REAL, seed=M, device="cuda")
    x = (torch.randn(M, c_in, device="cuda") * 0.5).to(dtype)
    weights = [w.to(dtype) for w in weights]
    biases = [b.to(dtype) for b in biases]
    out, grads, g = _run(occupancy_mlp, x, weights, biases, skip_in, recompute=recompute)
    ref, ref_grads, _ = _run(reference.occupancy_mlp, x, weights, biases, skip_in, g, torch.float64)
    if dtype == torch.float32:
        scale = ref.abs().max().item()
        assert_close(out, ref, atol=1e-5 * scale, rtol=1e-4, name="out")
        for name, a, e in zip(_names(len(weights)), grads, ref_grads):
            assert_close(a, e, atol=1e-5 * max(e.abs().max().item(), 1e-3), rtol=1e-4, name=name)
        return
    low, low_grads, _ = _run(reference.occupancy_mlp, x, weights, biases, skip_in, g)
    assert_relative(out, ref, low, factor=2, name="out")
    for name, a, e, p in zip(_names(len(weights)), grads, ref_grads, low_grads):
        assert_relative(a, e, p, factor=3, floor=1e-4, name=name)


def _config_ids(kind):
    import importlib

    mod = importlib.import_module("zsw.kernels.occupancy_mlp")
    return [
        pytest.param(kind, c, id=f"{kind}-{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']}x{c.kwargs['BLOCK_K']}-"
                     f"w{c.num_warps}-s{c.num_stages}")
        for c in mod._FAMILY_CONFIGS[kind]["16bit"]
    ]  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("kind, config", _config_ids("fwd") + _config_ids("bwd"))
def test_gpu_every_16bit_config_is_correct(kind, config, monkeypatch):
    """The autotuner keeps the fastest config without checking it: each 16-bit config of the forward
    (inference, no activations stored) and of the backward, forced alone, against the reference at
    the real shapes (BLOCK_N = 128 and 256 = W included)."""
    import importlib

    import triton

    mod = importlib.import_module("zsw.kernels.occupancy_mlp")
    from zsw.kernels._utils import device_capability

    if mod._MIN_ARCH[kind, "16bit", config] > device_capability(torch.device("cuda")):
        pytest.skip("config not tried on this architecture")
    attr, fn, key = ("_fwd_tuned", mod._occ_mlp_fwd_kernel, [*mod._KEY, "SAVE"]) if kind == "fwd" else (
        "_bwd_tuned", mod._occ_mlp_bwd_kernel, mod._KEY)  # fmt: skip
    monkeypatch.setattr(mod, attr, triton.autotune([config], key=key)(fn))
    dtype, M = torch.bfloat16, 4097
    c_in, width, hidden, c_out, skip_in = REAL
    weights, biases = _layers(*REAL, seed=M, device="cuda")
    x = (torch.randn(M, c_in, device="cuda") * 0.5).to(dtype)
    weights = [w.to(dtype) for w in weights]
    biases = [b.to(dtype) for b in biases]
    if kind == "fwd":
        with torch.no_grad(), mod.forward_variant("layered"):  # not the on-chip forward auto may choose
            out = occupancy_mlp(x, weights, biases, skip_in)
            ref = reference.occupancy_mlp(x.double(), [w.double() for w in weights], [b.double() for b in biases],
                                          skip_in)  # fmt: skip
            low = reference.occupancy_mlp(x, weights, biases, skip_in)
        assert_relative(out, ref, low, factor=2, name="out")
        return
    out, grads, g = _run(occupancy_mlp, x, weights, biases, skip_in)
    ref, ref_grads, _ = _run(reference.occupancy_mlp, x, weights, biases, skip_in, g, torch.float64)
    low, low_grads, _ = _run(reference.occupancy_mlp, x, weights, biases, skip_in, g)
    for name, a, e, p in zip(_names(len(weights)), grads, ref_grads, low_grads):
        assert_relative(a, e, p, factor=3, floor=1e-4, name=name)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_onchip_forward_and_the_measured_choice(dtype):
    """The on-chip forward compiled (TMA, wgmma) at the real shapes, an odd number of points, and
    auto's first-use timing: it picks one of the two and keeps it for the shape."""
    import importlib

    from zsw.kernels._utils import device_capability

    mod = importlib.import_module("zsw.kernels.occupancy_mlp")
    if device_capability(torch.device("cuda")) < 90:
        pytest.skip("the on-chip forward needs compute capability 9.0 (TMA)")
    c_in, width, hidden, c_out, skip_in = REAL
    weights, biases = _layers(*REAL, seed=11, device="cuda")
    weights, biases = [w.to(dtype) for w in weights], [b.to(dtype) for b in biases]
    x = (torch.randn(70_001, c_in, device="cuda") * 0.5).to(dtype)
    with torch.no_grad():
        with mod.forward_variant("onchip"):
            out = occupancy_mlp(x, weights, biases, skip_in)
        ref = reference.occupancy_mlp(x.double(), [w.double() for w in weights], [b.double() for b in biases], skip_in)
        low = reference.occupancy_mlp(x, weights, biases, skip_in)
        assert_relative(out, ref, low, factor=2, name="onchip")
        from zsw.kernels._utils import measured_choices

        measured_choices.clear()
        auto = occupancy_mlp(x, weights, biases, skip_in)
    assert list(measured_choices.values()) in (["onchip"], ["layered"])
    assert_relative(auto, ref, low, factor=2, name="auto")
