"""The fused feed-forward (fc1 -> GELU -> fc2 in one kernel) against the PyTorch reference: 16-bit
inputs at the decoder's and odd shapes, partial tiles, where it steps aside, the dispatch."""

from __future__ import annotations

import importlib

import pytest
import torch

from zsw import kernels
from zsw.kernels import reference
from zsw.kernels.testing import assert_relative, nan_poison

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ffn = importlib.import_module("zsw.kernels.feed_forward")  # the module (the package keeps the function)


@pytest.fixture(autouse=True)
def _poison_outputs():
    with nan_poison():
        yield


def _params(C, H, dtype, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return ((torch.rand(*shape, generator=g) * 2 - 1) * scale).to(device, dtype)

    return rand(H, C, scale=C**-0.5), rand(H, scale=0.1), rand(C, H, scale=H**-0.5), rand(C, scale=0.1)


def _check(x, params, name):
    with torch.no_grad():
        out = ffn.feed_forward(x, *params, fused="always")
        ref = reference.feed_forward(x.double(), *[p.double() for p in params])
        low = reference.feed_forward(x, *params)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert_relative(out, ref, low, factor=2, name=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize(
    "lead, C, H",
    [
        pytest.param((1,), 64, 256, id="tiny-M1"),
        pytest.param((2, 77), 64, 256, id="tiny-B2-N77"),  # 154 rows: a partial last tile of 64
        pytest.param((3,), 16, 64, id="C16-H64"),
        pytest.param((70,), 256, 1024, id="decoder-M70"),
    ],
)
def test_fused_within_twice_torch_error(lead, C, H, dtype):
    params = _params(C, H, dtype, seed=C + H)
    x = (torch.randn(*lead, C, generator=torch.Generator().manual_seed(1)) * 0.7).to(DEVICE, dtype)
    _check(x, params, f"feed_forward {tuple(lead)} C={C} H={H}")


def test_a_strided_input_is_copied_into_rows_tma_can_read():
    params = _params(64, 128, torch.bfloat16, seed=3)
    base = torch.randn(40, 65, generator=torch.Generator().manual_seed(3)).to(DEVICE, torch.bfloat16)
    _check(base[:, 1:], params, "feed_forward, unaligned rows")  # rows 130 bytes apart: copied for TMA


def test_where_the_fused_kernel_does_not_apply_the_reference_runs():
    x = torch.randn(5, 64).to(DEVICE, torch.bfloat16)
    w1, b1, w2, b2 = _params(64, 96, torch.bfloat16)  # H = 96: not whole 64-unit slices
    assert not ffn.fused_applies(x, w1, w2)
    assert not ffn.fused_applies(x.float(), *_params(64, 128, torch.float32)[::2])  # fp32
    assert not ffn.fused_applies(torch.randn(5, 48).half(), torch.randn(128, 48).half(), torch.randn(48, 128).half())
    with torch.no_grad():
        assert torch.equal(
            ffn.feed_forward(x, w1, b1, w2, b2, fused="always"), reference.feed_forward(x, w1, b1, w2, b2)
        )
    # a gradient is needed: the reference, differentiable
    params = [p.requires_grad_() for p in _params(64, 128, torch.bfloat16)]
    out = ffn.feed_forward(x, *params, fused="always")
    out.float().sum().backward()
    assert all(p.grad is not None for p in params)
    with pytest.raises(ValueError, match="fused must be"):
        ffn.feed_forward(x, *params, fused="yes")


def test_the_dispatch_keeps_the_cpu_path_and_the_interpreter_keeps_auto_on_the_reference():
    """On CPU tensors ``auto`` is the oneDNN path (fp32) and, under the interpreter, the Triton
    function's ``auto`` is the reference: nothing is timed without a GPU."""
    from zsw.kernels._utils import measured_choices

    w1, b1, w2, b2 = _params(64, 128, torch.float32, device="cpu")
    x = torch.randn(7, 64)
    with torch.no_grad():
        got = kernels.feed_forward(x, w1, b1, w2, b2)
        ref = reference.feed_forward(x, w1, b1, w2, b2)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    before = dict(measured_choices)
    with torch.no_grad():
        ffn.feed_forward(x.to(DEVICE).bfloat16(), *[p.to(DEVICE).bfloat16() for p in (w1, b1, w2, b2)])
    if DEVICE == "cpu":
        assert measured_choices == before


@pytest.mark.gpu
def test_gpu_fused_at_the_decoder_shape_and_the_measured_choice():
    from zsw.kernels._utils import device_capability, measured_choices

    if device_capability(torch.device("cuda")) < 90:
        pytest.skip("the fused feed-forward needs compute capability 9.0 (TMA)")
    for dtype in (torch.bfloat16, torch.float16):
        params = _params(256, 1024, dtype, seed=5, device="cuda")
        x = (torch.randn(70_001, 256, device="cuda") * 0.7).to(dtype)
        _check(x, params, f"feed_forward {dtype}")
        measured_choices.clear()
        with torch.no_grad():
            auto = ffn.feed_forward(x, *params)
            ref = reference.feed_forward(x.double(), *[p.double() for p in params])
            low = reference.feed_forward(x, *params)
        assert list(measured_choices.values()) in (["fused"], ["reference"])
        assert_relative(auto, ref, low, factor=2, name="auto")
