"""The CPU inference paths (zsw.kernels.cpu): the reference's results, and chosen only where they
apply (CPU tensors, no gradient, impl auto, not forced by ZSW_KERNELS, not exporting)."""

from __future__ import annotations

import math

import pytest
import torch

from zsw import kernels
from zsw.kernels import cpu, reference


def _attention_inputs(B=2, H=2, N=1000, D=32, L=198, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, N, D, generator=g) for _ in range(3))
    kl, vl = torch.randn(B, H, L, D, generator=g), torch.randn(B, H, L, D, generator=g)
    return q, k, v, kl, vl


@pytest.mark.parametrize("L", [1, 7, 198])
def test_fused_attention_equals_the_reference(L):
    # large logits (x3) make the point's own key dominate some rows and vanish in others
    q, k, v, kl, vl = (t * 3 for t in _attention_inputs(L=L))
    with torch.no_grad():
        ref = reference.point_cross_attention(q, k, v, kl, vl)
        out = cpu.point_cross_attention(q, k, v, kl, vl)
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
        scaled = cpu.point_cross_attention(q, k, v, kl, vl, scale=0.05)
        torch.testing.assert_close(scaled, reference.point_cross_attention(q, k, v, kl, vl, 0.05), atol=2e-5, rtol=1e-5)


def test_fused_attention_in_bf16_stays_near_the_fp32_result():
    inputs = _attention_inputs()
    with torch.no_grad():
        ref = reference.point_cross_attention(*inputs)
        out = cpu.point_cross_attention(*(t.bfloat16() for t in inputs))
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_fused_attention_hands_what_it_cannot_compute_to_the_reference():
    """No points or no latent tokens (the fused kernel stops the process with SIGFPE on either:
    checked in a child process) and float64 (which it would compute in float32)."""
    import subprocess
    import sys

    code = (
        "import torch; from zsw import kernels as K; x = torch.randn(1, 2, 3, 16); e = torch.randn(1, 2, 0, 16)\n"
        "with torch.no_grad():\n"
        "    assert K.point_cross_attention(e, e, e, x, x).shape == (1, 2, 0, 16)\n"
        "    assert torch.equal(K.point_cross_attention(x, x, x * 2, e, e), x * 2)  # only its own value\n"
        "print('ok')"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-500:]
    inputs = [t.double() * 3 for t in _attention_inputs(N=100, L=7)]
    with torch.no_grad():
        out = kernels.point_cross_attention(*inputs)
    torch.testing.assert_close(out, reference.point_cross_attention(*inputs), atol=1e-12, rtol=1e-12)


def _mlp(c_in=67, width=64, layers=8, skip_in=(2, 4, 6), seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    weights, biases = [], []
    for l in range(layers):
        n_in = c_in if l == 0 else width + (c_in if l in skip_in else 0)
        n_out = 1 if l == layers - 1 else width
        weights.append(torch.randn(n_out, n_in, generator=g) / math.sqrt(n_in))
        biases.append(torch.randn(n_out, generator=g) * 0.1 if bias else None)
    return weights, biases


@pytest.mark.parametrize("bias", [True, False])
def test_split_skip_mlp_equals_the_reference(bias):
    weights, biases = _mlp(bias=bias)
    x = torch.randn(2, 3000, 67) * 0.3
    with torch.no_grad():
        ref = reference.occupancy_mlp(x, weights, biases, (2, 4, 6), 100.0)
        out = cpu.occupancy_mlp(x, weights, biases, (2, 4, 6), 100.0)
    assert out.shape == (2, 3000, 1)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="biases"):
        cpu.occupancy_mlp(x, weights, biases[:-1])
    for beta in (0.0, -5.0, math.nan):  # not a Softplus: refused by every implementation
        with pytest.raises(ValueError, match="beta must be"):
            kernels.occupancy_mlp(x, weights, biases, (2, 4, 6), beta)


def test_dispatch_uses_the_cpu_paths_only_where_they_apply(monkeypatch):
    calls = []
    for name in ("point_cross_attention", "occupancy_mlp"):
        real = getattr(cpu, name)
        monkeypatch.setattr(cpu, name, lambda *a, _real=real, _name=name, **kw: calls.append(_name) or _real(*a, **kw))
    monkeypatch.delenv("ZSW_KERNELS", raising=False)
    q, k, v, kl, vl = _attention_inputs(N=50)
    weights, biases = _mlp()
    x = torch.randn(1, 50, 67)

    def run(impl="auto"):
        calls.clear()
        kernels.point_cross_attention(q, k, v, kl, vl, impl=impl)
        kernels.occupancy_mlp(x, weights, biases, impl=impl)
        return list(calls)

    with torch.no_grad():
        assert run() == ["point_cross_attention", "occupancy_mlp"]
        assert run("torch") == []  # an explicit impl gets the reference
        with kernels.exportable():
            assert run() == []
        monkeypatch.setenv("ZSW_KERNELS", "torch")
        assert run() == []
        monkeypatch.delenv("ZSW_KERNELS")
    q.requires_grad_(True)
    weights[0].requires_grad_(True)
    assert run() == []  # autograd needs the reference's differentiable ops


@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_linear_equals_the_reference(activation, bias):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 300, 64, generator=g)
    w = torch.randn(256, 64, generator=g) * 0.1
    b = torch.randn(256, generator=g) if bias else None
    expected = reference.linear(x, w, b, activation)
    got = cpu.linear(x, w, b, activation)
    assert got.shape == (2, 300, 256)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if activation == "gelu":  # the exact (erf) GELU, not the tanh approximation
        tanh = torch.nn.functional.gelu(torch.nn.functional.linear(x, w, b), approximate="tanh")
        assert (got - tanh).abs().max() > 1e-4


def test_fused_linear_is_taken_only_for_fp32_cpu_inference(monkeypatch):
    if cpu._LINEAR_POINTWISE is None:
        pytest.skip("this PyTorch build has no oneDNN fused linear")
    calls = []
    real = cpu._LINEAR_POINTWISE
    monkeypatch.setattr(cpu, "_LINEAR_POINTWISE", lambda *a: calls.append(1) or real(*a))
    monkeypatch.delenv("ZSW_KERNELS", raising=False)
    x, w, b = torch.randn(10, 8), torch.randn(4, 8, requires_grad=True), torch.randn(4, requires_grad=True)

    def taken(impl="auto", dtype=torch.float32) -> bool:
        calls.clear()
        kernels.linear(x.to(dtype), w.to(dtype), b.to(dtype), "gelu", impl=impl)
        return bool(calls)

    with torch.no_grad():
        assert taken()
        assert not taken("torch")
        with kernels.exportable():
            assert not taken()
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's bf16 GEMM, as before
            assert not taken()
        assert not taken(dtype=torch.float64)
    assert not taken()  # the weights need gradients: autograd takes the reference
    with pytest.raises(ValueError, match="activation"):
        reference.linear(x, w, b, "relu")


@pytest.mark.parametrize("fault", ["raises", "differs"])
def test_a_fused_linear_that_fails_on_this_cpu_is_never_used(monkeypatch, fault):
    """The fused linear is a private oneDNN op: a build for another CPU (an Arm build's oneDNN)
    may register it and then raise or compute something else. A check on first use sends every
    linear to the reference then, with the reference's result."""

    def broken(x, w, b, attr, scalars, algorithm):
        if fault == "raises":
            raise RuntimeError("mkldnn: not supported on this platform")
        return torch.zeros(x.shape[0], w.shape[0])

    monkeypatch.setattr(cpu, "_LINEAR_POINTWISE", broken)
    monkeypatch.setattr(cpu, "_LINEAR_CHECKED", None)
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(6, 8, generator=g), torch.randn(4, 8, generator=g), torch.randn(4, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(cpu.linear(x, w, b, "gelu"), reference.linear(x, w, b, "gelu"))
    assert cpu._LINEAR_CHECKED is False


def test_softplus_without_log1p_matches_torch_to_the_last_place():
    """The CPU path's Softplus (log instead of the slow log1p, clamped exponent) against
    F.softplus(beta=100) over the range a decoder meets: within a unit in the last place, the
    identity above the threshold, never a subnormal; 16-bit inputs take F.softplus itself."""
    import torch.nn.functional as F

    from zsw.kernels.cpu import _softplus

    z = torch.cat([torch.linspace(-3, 3, 200_001), torch.randn(100_000) * 0.05, torch.tensor([0.2, 0.2001, -0.2])])
    got = _softplus(z.clone(), 100.0)
    want = F.softplus(z, beta=100.0, threshold=20.0)
    torch.testing.assert_close(got, want, rtol=2e-7, atol=3e-8)
    above = z > 0.2
    assert torch.equal(got[above], z[above])
    tiny = got[(got != 0)].abs().min()
    assert tiny >= torch.finfo(torch.float32).tiny  # no subnormal outputs
    half = torch.randn(1000).to(torch.bfloat16)
    assert torch.equal(_softplus(half.clone(), 100.0), F.softplus(half.clamp(min=-0.2), beta=100.0, threshold=20.0))
