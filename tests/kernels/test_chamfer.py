"""Chamfer / nearest-neighbour search against the PyTorch reference: exact indices on tie-free
clouds, the reference's distances bit for bit, gradients, padding with lengths, empty clouds."""

from __future__ import annotations

import re

import pytest
import torch

from zsw.kernels import reference
from zsw.kernels.chamfer import chamfer_distance, nearest_neighbors
from zsw.kernels.testing import assert_close, nan_poison, nn_margin

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _poison_outputs():
    with nan_poison():
        yield


def _clouds(B, N, M, dtype=torch.float32, device=DEVICE, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(B, N, 3, generator=g) * 2 - 1
    b = torch.rand(B, M, 3, generator=g) * 2 - 1
    return a.to(device, dtype).requires_grad_(), b.to(device, dtype).requires_grad_()


def _grads(result, a, b, seed=1):
    """Gradients of a random weighting of the finite squared distances (both directions)."""
    g = torch.Generator().manual_seed(seed)
    loss = 0
    for d in (result[0], result[1]):
        w = torch.rand(d.shape, generator=g).to(d.device)
        loss = loss + (d.float().nan_to_num(posinf=0.0) * w).sum()
    return torch.autograd.grad(loss, (a, b))


SHAPES = [
    pytest.param(1, 1, 1, id="B1-N1-M1"),
    pytest.param(3, 1000, 700, id="B3-N1000-M700"),
    pytest.param(2, 4097, 300, id="B2-N4097-M300"),
    pytest.param(1, 2, 5000, id="B1-N2-M5000"),
]


@pytest.mark.parametrize("B, N, M", SHAPES)
def test_indices_exact_and_distances_identical_to_reference(B, N, M):
    a, b = _clouds(B, N, M)
    # tie-free: the second-nearest point is always farther than the nearest by far more than fp32
    # rounding of a squared distance (a few 1e-7, relative)
    assert nn_margin(a, b) > 1e-5 and nn_margin(b, a) > 1e-5
    got = chamfer_distance(a, b)
    ref = reference.chamfer_distance(a, b)
    assert torch.equal(got.idx_ab, ref.idx_ab) and torch.equal(got.idx_ba, ref.idx_ba)
    assert got.idx_ab.dtype == torch.int64
    assert torch.equal(got.sq_dist_ab, ref.sq_dist_ab) and torch.equal(got.sq_dist_ba, ref.sq_dist_ba)
    nn = nearest_neighbors(a, b)
    assert torch.equal(nn.idx, ref.idx_ab) and torch.equal(nn.sq_dist, ref.sq_dist_ab)
    for name, x, y in zip(("grad_a", "grad_b"), _grads(got, a, b), _grads(ref, a, b)):
        assert_close(x, y, atol=1e-6, rtol=1e-5, name=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_inputs_search_in_fp32_with_lowest_index_ties(dtype):
    # bf16 coordinates coincide often: equal distances must resolve to the lowest index, as torch's argmin
    a, b = _clouds(2, 1000, 700, dtype)
    got = chamfer_distance(a, b)
    ref = reference.chamfer_distance(a, b)
    for x, y in zip(got, ref):
        assert x.dtype == y.dtype and torch.equal(x, y)
    for name, x, y in zip(("grad_a", "grad_b"), _grads(got, a, b), _grads(ref, a, b)):
        assert_close(x, y, atol=0, rtol=0, name=name)


def test_padded_batches_follow_the_reference_rules():
    a, b = _clouds(4, 600, 500, seed=3)
    lengths_a = torch.tensor([600, 1, 0, 257], device=DEVICE)
    lengths_b = torch.tensor([500, 0, 300, 64], device=DEVICE)
    got = chamfer_distance(a, b, lengths_a, lengths_b)
    ref = reference.chamfer_distance(a, b, lengths_a, lengths_b)
    for x, y in zip(got, ref):
        assert torch.equal(x, y)
    assert torch.isinf(got.sq_dist_ab[1]).all() and (got.idx_ab[1] == -1).all()  # b is empty
    assert (got.sq_dist_ab[3, 257:] == 0).all() and (got.idx_ab[3, 257:] == -1).all()  # padding of a
    nn = nearest_neighbors(a, b, lengths_a, lengths_b)
    assert torch.equal(nn.idx, ref.idx_ab) and torch.equal(nn.sq_dist, ref.sq_dist_ab)
    for name, x, y in zip(("grad_a", "grad_b"), _grads(got, a, b), _grads(ref, a, b)):
        assert_close(x, y, atol=1e-6, rtol=1e-5, name=name)


@pytest.mark.parametrize("N, M", [(0, 5), (5, 0), (0, 0)])
def test_empty_clouds(N, M):
    a, b = _clouds(2, N, M)
    got = chamfer_distance(a, b)
    ref = reference.chamfer_distance(a, b)
    for x, y in zip(got, ref):
        assert x.shape == y.shape and torch.equal(x, y)


@pytest.mark.parametrize(
    "a_shape, b_shape, lengths",
    [((2, 5, 3), (2, 5, 2), None), ((2, 5, 3), (3, 5, 3), None), ((5, 3), (5, 3), None), ((2, 5, 3), (2, 4, 3), (3,))],
)
def test_bad_inputs_raise_value_error(a_shape, b_shape, lengths):
    lengths_a = torch.ones(lengths, dtype=torch.long) if lengths else None
    with pytest.raises(ValueError):
        chamfer_distance(torch.rand(a_shape), torch.rand(b_shape), lengths_a)


@pytest.mark.parametrize("impl", [chamfer_distance, reference.chamfer_distance], ids=["triton", "reference"])
@pytest.mark.parametrize("which, shape", [("a", (1,)), ("a", (3,)), ("b", (2, 1)), ("b", ())])
def test_lengths_of_the_wrong_shape_raise_the_same_error_everywhere(impl, which, shape):
    """The reference broadcast a ``[1]`` (or ``[2, 1]``) ``lengths`` over the batch without a word."""
    a, b = torch.rand(2, 5, 3), torch.rand(2, 4, 3)
    lengths = torch.full(shape, 3, dtype=torch.long)
    kwargs = {f"lengths_{which}": lengths}
    with pytest.raises(ValueError, match=rf"^lengths_{which} must be \[B=2\], got {re.escape(str(shape))}$"):
        impl(a, b, **kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("B, N, M", [(1, 10_000, 10_000), (24, 10_000, 10_000), (1, 100_000, 3_000), (3, 4097, 257)])
def test_gpu_compiled_kernel(B, N, M):
    a, b = _clouds(B, N, M, device="cuda", seed=N + M)
    got = chamfer_distance(a, b)
    ref = reference.chamfer_distance(a, b)
    # at this size a few near-ties within fp32 rounding are possible: every differing index must
    # then point at a point exactly as near (the distances themselves must agree everywhere)
    pairs = [(got.idx_ab, ref.idx_ab, got.sq_dist_ab, ref.sq_dist_ab)]
    pairs.append((got.idx_ba, ref.idx_ba, got.sq_dist_ba, ref.sq_dist_ba))
    for idx, ridx, d, rd in pairs:
        assert (idx != ridx).float().mean().item() < 1e-4
        assert_close(d, rd, atol=1e-7, rtol=1e-6, name="sq_dist")
    for name, x, y in zip(("grad_a", "grad_b"), _grads(got, a, b), _grads(ref, a, b)):
        assert_close(x, y, atol=1e-5, rtol=1e-4, name=name)


def test_an_interpreter_too_old_for_the_kernels_is_a_one_line_error(monkeypatch):
    """triton 3.6's interpreter (the lent GPU image's) cannot run loops bounded by program ids:
    interpreted launches say which version they need instead of failing deep inside it."""
    import triton

    from zsw.kernels import _utils

    _utils.check_interpreter.cache_clear()
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    a, b = torch.rand(1, 40, 3), torch.rand(1, 30, 3)
    try:
        with pytest.raises(RuntimeError, match=r"triton 3\.6\.0 .*needs triton >= 3\.7"):
            nearest_neighbors(a, b)
    finally:
        _utils.check_interpreter.cache_clear()
    monkeypatch.undo()
    d, i = nearest_neighbors(a, b)  # the installed triton runs it
    assert torch.equal(i, reference.nearest_neighbors(a, b)[1])
