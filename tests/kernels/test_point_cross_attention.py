"""Point cross-attention kernel against the PyTorch reference: forward and backward, awkward shapes,
fp32 with explicit tolerances, fp16/bf16 with the relative rule, NaN-poisoned outputs.

On CPU the kernels run under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET), so
the shapes stay small; the `gpu` tests repeat the check at model scale on compiled kernels.
"""

from __future__ import annotations

import pytest
import torch

from zsw.kernels import reference
from zsw.kernels.point_cross_attention import point_cross_attention
from zsw.kernels.testing import assert_close, assert_relative, nan_poison

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _poison_outputs():
    with nan_poison():
        yield


def _inputs(B, H, N, L, D, dtype, device=DEVICE):
    g = torch.Generator().manual_seed(B * 1000 + N + L + D)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    # a fused [B, N, 3, H, D] projection, split as the model does: q, k, v are strided views
    qkv = randn(B, N, 3, H, D).permute(2, 0, 3, 1, 4)
    q, k, v = (t.requires_grad_() for t in qkv.detach().clone().unbind(0))
    kl, vl = (randn(B, H, L, D).requires_grad_() for _ in range(2))
    return [q, k, v, kl, vl]


def _run(fn, inputs, grad_out=None, dtype=None):
    """Forward and backward of ``fn`` on copies of ``inputs`` cast to ``dtype``."""
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in inputs]
    out = fn(*leaves)
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.device)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    return out, grads, grad_out


NAMES = ["out", "dq", "dk", "dv", "dk_latent", "dv_latent"]

FP32_CASES = [
    pytest.param(1, 1, 1, 1, 16, id="B1-H1-N1-L1-D16"),
    pytest.param(3, 1, 1000, 197, 32, id="B3-H1-N1000-L197-D32"),
    pytest.param(1, 2, 4097, 1, 64, id="B1-H2-N4097-L1-D64"),
    pytest.param(1, 1, 70, 300, 32, id="B1-H1-N70-L300-D32"),  # latents in several chunks
    pytest.param(2, 1, 33, 0, 32, id="B2-H1-N33-L0-D32"),  # no latents: out = v
    pytest.param(1, 3, 50, 5, 20, id="B1-H3-N50-L5-D20"),  # head dim not a power of two
]


@pytest.mark.parametrize("B, H, N, L, D", FP32_CASES)
def test_fp32_matches_reference(B, H, N, L, D):
    inputs = _inputs(B, H, N, L, D, torch.float32)
    out, grads, g = _run(point_cross_attention, inputs)
    ref, ref_grads, _ = _run(reference.point_cross_attention, inputs, g, torch.float64)
    assert_close(out, ref, atol=2e-5, rtol=1e-4, name="out")
    for name, a, e in zip(NAMES[1:], grads, ref_grads):
        assert_close(a, e, atol=1e-4, rtol=1e-4, name=name)


LOW_CASES = [
    pytest.param(1, 1, 1, 1, 16, id="B1-H1-N1-L1-D16"),
    pytest.param(1, 2, 1000, 197, 32, id="B1-H2-N1000-L197-D32"),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("B, H, N, L, D", LOW_CASES)
def test_half_precision_within_twice_torch_error(B, H, N, L, D, dtype):
    inputs = _inputs(B, H, N, L, D, dtype)
    out, grads, g = _run(point_cross_attention, inputs)
    ref, ref_grads, _ = _run(reference.point_cross_attention, inputs, g, torch.float64)
    low, low_grads, _ = _run(reference.point_cross_attention, inputs, g)
    assert out.dtype == dtype
    assert_relative(out, ref, low, factor=2, name="out")
    for name, a, e, p in zip(NAMES[1:], grads, ref_grads, low_grads):
        assert_relative(a, e, p, factor=3, floor=1e-4, name=name)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy on NaN
def test_a_nan_input_gives_nan_where_torch_gives_it():
    """A diverging model must show as NaN: a NaN query or value poisons its own point's row, a NaN
    latent key every point of its image, as in PyTorch (an online softmax whose running maximum
    dropped NaN would return finite rows instead; on a GPU this checks the compiled max)."""
    q, k, v, kl, vl = (t.detach() for t in _inputs(2, 2, 40, 9, 16, torch.float32))
    q[0, 1, 3, 5] = float("nan")
    v[0, 0, 7, 2] = float("nan")
    kl[1, 0, 4, 1] = float("nan")
    out = point_cross_attention(q, k, v, kl, vl)
    ref = reference.point_cross_attention(q, k, v, kl, vl)
    nan = ref.isnan().any(-1)  # [B, H, N]
    assert nan[0, 1, 3] and nan[0, 0, 7] and nan[1, 0].all() and not nan[1, 1].any()  # what torch does
    assert torch.equal(out.isnan().any(-1), nan)
    assert_close(out[~nan], ref[~nan], atol=2e-5, rtol=1e-4, name="finite rows")


def test_output_is_point_major_so_heads_merge_for_free():
    q, k, v, kl, vl = (t.detach() for t in _inputs(2, 4, 10, 3, 16, torch.float32))
    out = point_cross_attention(q, k, v, kl, vl)
    merged = out.transpose(1, 2)  # [B, N, H, D] as the model's head merge produces it
    assert merged.is_contiguous()
    torch.testing.assert_close(out, reference.point_cross_attention(q, k, v, kl, vl), atol=2e-5, rtol=1e-4)


def test_custom_scale_and_mixed_input_dtypes():
    q, k, v, kl, vl = (t.detach() for t in _inputs(1, 2, 40, 7, 16, torch.float32))
    out = point_cross_attention(q, k, v, kl.double(), vl, scale=0.3)  # latents cast to q's dtype
    ref = reference.point_cross_attention(q, k, v, kl, vl, scale=0.3)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "shapes",
    [
        ((1, 2, 5, 16), (1, 2, 6, 16), (1, 2, 3, 16)),  # k differs from q
        ((1, 2, 5, 16), (1, 2, 5, 16), (1, 3, 3, 16)),  # latent heads differ
        ((1, 2, 5, 16), (1, 2, 5, 16), (1, 2, 3, 8)),  # latent head dim differs
        ((2, 5, 16), (2, 5, 16), (2, 3, 16)),  # not 4-D
    ],
)
def test_bad_shapes_raise_value_error(shapes):
    qs, ks, ls = shapes
    with pytest.raises(ValueError, match="point_cross_attention"):
        point_cross_attention(torch.randn(qs), torch.randn(ks), torch.randn(qs), torch.randn(ls), torch.randn(ls))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize(
    "B, H, N, L, D",
    [
        pytest.param(2, 8, 65536, 197, 32, id="model-B2-N65536"),
        pytest.param(3, 4, 4097, 197, 64, id="B3-N4097-D64"),
        pytest.param(1, 8, 1000, 1, 16, id="B1-N1000-L1-D16"),
        pytest.param(1, 2, 3000, 700, 32, id="L700-chunked"),
    ],
)
def test_gpu_compiled_kernels(B, H, N, L, D, dtype):
    inputs = _inputs(B, H, N, L, D, dtype, device="cuda")
    out, grads, g = _run(point_cross_attention, inputs)
    ref, ref_grads, _ = _run(reference.point_cross_attention, inputs, g, torch.float64)
    if dtype == torch.float32:
        assert_close(out, ref, atol=2e-5, rtol=1e-4, name="out")
        for name, a, e in zip(NAMES[1:], grads, ref_grads):
            assert_close(a, e, atol=2e-4, rtol=1e-4, name=name)
        return
    low, low_grads, _ = _run(reference.point_cross_attention, inputs, g)
    assert_relative(out, ref, low, factor=2, name="out")
    for name, a, e, p in zip(NAMES[1:], grads, ref_grads, low_grads):
        assert_relative(a, e, p, factor=3, floor=1e-4, name=name)
