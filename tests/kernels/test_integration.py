"""The kernels inside zsw: dispatch table, torch.compile policy (custom ops), and a few training
steps of the `tiny` model with the Triton kernels against the same steps with the references."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from zsw import kernels
from zsw.kernels.testing import assert_close, rms_ratio

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OPS = ["point_cross_attention", "occupancy_mlp", "nearest_neighbors", "chamfer_distance"]


# ---------------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPS)
def test_every_triton_kernel_is_registered(name):
    assert kernels.triton_available(name), kernels.dispatch._triton_errors.get(name)


@pytest.mark.parametrize(
    "impl, env, device, interpret, expected",
    [
        ("auto", None, "cuda", "0", "triton"),
        ("auto", None, "cpu", "1", "torch"),
        ("auto", "torch", "cuda", "0", "torch"),
        ("auto", "triton", "cpu", "1", "triton"),
        ("torch", "triton", "cuda", "0", "torch"),  # an explicit impl beats the environment
        ("triton", None, "cpu", "1", "triton"),
        (None, None, "cuda", "0", "triton"),
    ],
)
def test_dispatch_table(monkeypatch, impl, env, device, interpret, expected):
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    if env is None:
        monkeypatch.delenv("ZSW_KERNELS", raising=False)
    else:
        monkeypatch.setenv("ZSW_KERNELS", env)
    for name in OPS:
        assert kernels.resolve_impl(name, impl, torch.device(device)) == expected
        with kernels.exportable():  # export always traces the references
            assert kernels.resolve_impl(name, impl, torch.device(device)) == "torch"


def test_auto_runs_the_reference_where_it_was_measured_faster_on_a_gpu(monkeypatch):
    """On CUDA tensors `auto` runs the reference for IEEE fp32 attention and MLP and for the MLP
    with a gradient (bench/results/h200/README.md); bf16 and Chamfer stay on Triton, and asking
    for Triton by name still gets it."""
    from zsw.kernels import dispatch, reference

    monkeypatch.delenv("ZSW_KERNELS", raising=False)
    monkeypatch.setattr(dispatch, "resolve_impl", lambda name, impl, device: "triton")  # as on a GPU
    x32 = torch.randn(8, 259)
    w = [torch.randn(256, 259, requires_grad=True)]
    q = torch.randn(1, 2, 8, 16)
    with torch.no_grad():
        assert dispatch._pick("occupancy_mlp", None, x32.device, x32, *w) is reference.occupancy_mlp
        assert dispatch._pick("point_cross_attention", None, q.device, q) is reference.point_cross_attention
        assert dispatch._pick("occupancy_mlp", None, x32.device, x32.bfloat16(), *w) is not reference.occupancy_mlp
        with torch.autocast("cpu", dtype=torch.bfloat16):  # computes in bf16
            assert dispatch._pick("point_cross_attention", None, q.device, q) is not reference.point_cross_attention
        assert dispatch._pick("occupancy_mlp", "triton", x32.device, x32, *w) is not reference.occupancy_mlp
        assert dispatch._pick("chamfer_distance", None, x32.device, x32) is not reference.chamfer_distance
    before = torch.backends.cuda.matmul.allow_tf32  # a property of torch's, which monkeypatch cannot undo
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32: the kernels
    try:
        with torch.no_grad():
            assert dispatch._pick("occupancy_mlp", None, x32.device, x32, *w) is not reference.occupancy_mlp
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    # training: the MLP's backward was slower than the reference's, the attention's faster
    xb = x32.bfloat16()
    assert dispatch._pick("occupancy_mlp", None, xb.device, xb, *w) is reference.occupancy_mlp
    assert dispatch._pick("point_cross_attention", None, q.device, q.bfloat16().requires_grad_()) is not (
        reference.point_cross_attention
    )


def test_triton_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        kernels.resolve_impl("chamfer_distance", "triton", torch.device("cpu"))
    monkeypatch.setenv("ZSW_KERNELS", "fast")
    with pytest.raises(ValueError, match="ZSW_KERNELS"):
        kernels.resolve_impl("chamfer_distance", "auto", torch.device("cpu"))


def test_a_second_registration_of_an_op_is_refused():
    # what importing kernels/ a second time as a top-level package would do
    from zsw.kernels._utils import custom_op

    with pytest.raises(ImportError, match="imported twice"):
        custom_op("zsw::point_attn_fwd")


# ---------------------------------------------------------------------------------------------
# torch.compile policy: every launcher is a custom op with a fake implementation
# ---------------------------------------------------------------------------------------------


def _small_problem(requires_grad=True):
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(DEVICE).requires_grad_(requires_grad)

    attn = [randn(1, 2, 20, 16) for _ in range(3)] + [randn(1, 2, 5, 16) for _ in range(2)]
    mlp_x = randn(30, 7)
    mlp_w = [randn(16, 7) * 0.3, randn(16, 16) * 0.3, randn(1, 16 + 7) * 0.3]
    mlp_b = [randn(16) * 0.1, randn(16) * 0.1, randn(1) * 0.1]
    clouds = [randn(2, 30, 3), randn(2, 20, 3)]
    return attn, (mlp_x, mlp_w, mlp_b), clouds


def _all_kernels(attn, mlp, clouds, impl):
    x, w, b = mlp
    out = kernels.point_cross_attention(*attn, impl=impl).sum()
    out = out + kernels.occupancy_mlp(x, w, b, (2,), impl=impl).sum()
    c = kernels.chamfer_distance(*clouds, impl=impl)
    return out + c.sq_dist_ab.sum() + c.sq_dist_ba.sum() + kernels.nearest_neighbors(*clouds, impl=impl).sq_dist.sum()


@pytest.mark.slow
def test_torch_compile_traces_the_kernels_without_graph_breaks():
    attn, mlp, clouds = _small_problem()
    leaves = [*attn, mlp[0], *mlp[1], *mlp[2], *clouds]
    compiled = torch.compile(_all_kernels, backend="aot_eager", fullgraph=True)
    out = compiled(attn, mlp, clouds, "triton")
    grads = torch.autograd.grad(out, leaves)
    ref = _all_kernels(attn, mlp, clouds, "torch")
    ref_grads = torch.autograd.grad(ref, leaves)
    assert_close(out, ref, atol=1e-4, rtol=1e-5, name="loss")
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert_close(g, r, atol=1e-4, rtol=1e-4, name=f"grad {i}")


@pytest.mark.slow
def test_custom_ops_pass_opcheck():
    from zsw.kernels.chamfer import nn_index
    from zsw.kernels.occupancy_mlp import occ_mlp_fwd, pack_weights
    from zsw.kernels.point_cross_attention import point_attn_fwd

    attn, (x, w, b), (a, c) = _small_problem()
    torch.library.opcheck(point_attn_fwd, (*attn, 0.25))
    w_packed, b_packed, width, _, c_out, x_layers = pack_weights(w, b, (2,), torch.float32)
    w_packed, b_packed = w_packed.detach().requires_grad_(), b_packed.detach().requires_grad_()
    torch.library.opcheck(occ_mlp_fwd, (x, w_packed, b_packed, width, c_out, x_layers, 100.0, True))
    torch.library.opcheck(occ_mlp_fwd, (x, w_packed, b_packed, width, c_out, x_layers, 100.0, False))
    lengths = torch.tensor([20, 5], device=DEVICE)
    torch.library.opcheck(nn_index, (a.detach(), c.detach(), None, lengths, True))
    from zsw.kernels.feed_forward import ffn_fwd  # inference only: no autograd registered

    g = torch.Generator().manual_seed(2)
    ffn_args = [
        torch.randn(*s, generator=g).to(DEVICE, torch.bfloat16) for s in ((10, 16), (64, 16), (64,), (16, 64), (16,))
    ]
    torch.library.opcheck(ffn_fwd, tuple(ffn_args), test_utils=("test_schema", "test_faketensor"))


# ---------------------------------------------------------------------------------------------
# the model: a few training steps with the kernels equal the same steps with the references
# ---------------------------------------------------------------------------------------------


def _train(model, impl, images, masks, points, steps=2):
    model.set_kernel_impl(impl)
    # plain SGD: parameter differences stay proportional to gradient differences (Adam's first
    # steps divide by |g| and would amplify rounding noise on near-zero gradients)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    occupancy = (points.norm(dim=-1) < 0.6).float()  # a sphere: some points in, some out
    losses, grads = [], []
    for _ in range(steps):
        out = model(images, mask=masks[0], occluder_mask=masks[1])
        logits = model.decode(out, points)
        loss = F.binary_cross_entropy_with_logits(logits, occupancy)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        opt.step()
        losses.append(loss.item())
    return losses, grads, dict(model.named_parameters())


@pytest.mark.slow
def test_tiny_model_training_steps_match_between_triton_and_torch():
    from zsw.model import build_model

    torch.manual_seed(0)
    # BatchNorm on running statistics: in batch mode the encoder's global head normalises two
    # pooled 1x1 maps per channel, which turns rounding noise into O(1) differences after one
    # update even between two runs of the references alone (checked: points permuted)
    model = build_model("tiny").to(DEVICE).eval()
    twin = copy.deepcopy(model)
    images = torch.rand(2, 3, 224, 224, device=DEVICE)
    # given masks: thresholding predicted mask logits would turn rounding noise into flipped
    # pixels after the first update, and the runs would legitimately diverge
    yy, xx = torch.meshgrid(torch.arange(224), torch.arange(224), indexing="ij")
    visible = (((yy - 112) ** 2 + (xx - 100) ** 2) < 70**2).float()
    occluder = ((xx > 150) & (yy > 60)).float()
    masks = [m.expand(2, 1, 224, 224).to(DEVICE) for m in (visible * (1 - occluder), occluder)]
    points = torch.rand(2, 48, 3, device=DEVICE) * 2 - 1
    losses, grads, params = _train(model, "triton", images, masks, points)
    ref_losses, ref_grads, ref_params = _train(twin, "torch", images, masks, points)

    assert losses == pytest.approx(ref_losses, rel=1e-5)
    for step, (g, ref_g) in enumerate(zip(grads, ref_grads)):
        assert g.keys() == ref_g.keys()
        # the decoder's latent K/V gradients flow back into the encoder and the pixel model
        assert any(n.startswith("encoder.") for n in g) and any(n.startswith("pixel.") for n in g)
        for name in g:
            # fp32 rounding in the kernels (~1e-7) grows to a few 1e-6 through the whole model
            assert rms_ratio(g[name], ref_g[name]) < 1e-4, (step, name, rms_ratio(g[name], ref_g[name]))
    for name, p in params.items():
        assert_close(p, ref_params[name], atol=1e-6, rtol=1e-5, name=name)
