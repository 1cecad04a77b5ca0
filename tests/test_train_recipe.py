"""The shape-learning recipe's training options: stage ``shape`` (ground-truth surfaces, no pixel
model), the ``teacher_surface`` schedule, far/near query-point sampling, the cosine learning-rate
schedule, ``init_pixel`` and step-wise validation. Each test fails when its option is ignored."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zsw.data.dataset import AugmentConfig, ShapeDataset
from zsw.errors import CheckpointError, ConfigError
from zsw.train.config import DataConfig, OptimConfig, TrainConfig
from zsw.train.step import TrainStep, set_trainable, synthetic_batch

pytestmark = pytest.mark.usefixtures("one_thread")
NO_AUGMENT = AugmentConfig(occluders=(0, 0), backgrounds="never")


def _cfg(tiny64, **kw) -> TrainConfig:
    data = DataConfig(roots=(str(tiny64[0]),), workers=0, points=256, val_samples=2, augment=NO_AUGMENT)
    base = dict(model=str(tiny64[1]), stage="full", batch_size=2, validate=False, log_every=1, data=data)
    return TrainConfig(**{**base, **kw})


def _encoder_inputs(model) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    model.encoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    return seen


def _distorted_batch(size: int = 64) -> dict:
    """A synthetic batch whose GT surface differs from anything an untrained pixel model predicts."""
    batch = synthetic_batch(2, size, 32)
    batch["depth"] = batch["depth"] * (1 + torch.linspace(0, 1, size)[None, None, :, None])  # a tilted disc
    return batch


def test_stage_shape_trains_the_shape_path_on_ground_truth_without_the_pixel_model(tiny64):
    from zsw.model import build_model
    from zsw.train import losses as L

    model = build_model(str(tiny64[1]))
    set_trainable(model, "shape")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("pixel.") for n in trainable)
    assert any(n.startswith("decoder.") for n in trainable) and any(n.startswith("encoder.") for n in trainable)

    def refuse(*_args):
        raise AssertionError("stage shape must not run the pixel model")

    model.pixel.forward = refuse
    seen = _encoder_inputs(model)
    batch = _distorted_batch()
    result = TrainStep(model, _cfg(tiny64, stage="shape"))(batch)
    assert set(k for k in result if not k.startswith("pred_")) >= {"total", "occupancy", "occupancy_iou"}
    assert "depth" not in result and float(result["total"].detach()) == pytest.approx(
        float(result["occupancy"].detach())
    )
    gt, _, _ = L.visible_frame(batch["depth"], batch["intrinsics"], batch["visible_mask"] > 0.5)
    lifted = seen[0][:, :3].flatten(2).transpose(1, 2)  # [B, S*S, 3]
    torch.testing.assert_close(lifted, gt)


def test_stage_shape_loads_its_data_without_the_colour_work_it_never_reads(tiny64):
    """The loader of stage shape skips backgrounds, textures and jitter (with_appearance=False):
    correct only while that stage's losses do not depend on the image, which this checks (a batch
    with its image replaced by noise gives the same losses); the other stages keep it."""
    from zsw.model import build_model
    from zsw.train.setup import datasets

    torch.manual_seed(0)
    model = build_model(str(tiny64[1]))
    step = TrainStep(model, _cfg(tiny64, stage="shape"))
    batch = _distorted_batch()
    noisy = {**batch, "image": torch.rand_like(batch["image"])}
    torch.manual_seed(1)
    a = step(batch)
    torch.manual_seed(1)
    b = step(noisy)
    for key in ("total", "occupancy", "occupancy_iou"):
        assert torch.equal(a[key], b[key]), key
    for stage, appearance in (("shape", False), ("full", True), ("pixel", True)):
        train, _ = datasets(_cfg(tiny64, stage=stage), 64, lambda _msg: None)
        assert train.with_appearance is appearance, stage


def test_lr_pretrained_zero_freezes_the_pixel_model_in_stage_full(tiny64):
    from zsw.train.distributed import DistInfo
    from zsw.train.setup import training_parts

    def parts(lr_pretrained: float):
        cfg = _cfg(tiny64, teacher_masks=False, optim=OptimConfig(lr=1e-3, lr_pretrained=lr_pretrained))
        return training_parts(cfg, DistInfo(0, 1, 0, torch.device("cpu")), lambda _msg: None)

    for lr_pretrained, pixel_moves in ((0.0, False), (1e-3, True)):
        p = parts(lr_pretrained)
        pixel = {n: v.detach().clone() for n, v in p.model.pixel.state_dict().items() if v.is_floating_point()}
        decoder = {n: v.detach().clone() for n, v in p.model.decoder.named_parameters()}
        names = {g["name"] for g in p.optimizer.param_groups}
        assert ("pixel" in names) == pixel_moves and "main" in names
        result = p.runner(_distorted_batch())
        result["total"].backward()
        grads = [v.grad for n, v in p.model.pixel.named_parameters() if v.grad is not None]
        assert bool(grads) == pixel_moves
        p.optimizer.step()
        weights = {n: v for n, v in p.model.pixel.state_dict().items() if n in pixel and "running" not in n}
        changed = any(not torch.equal(weights[n], pixel[n]) for n in weights)
        assert changed == pixel_moves
        assert any(not torch.equal(v.detach(), decoder[n]) for n, v in p.model.decoder.named_parameters())


@pytest.mark.parametrize("stage", ["pixel", "full"])
def test_the_focal_loss_trains_the_intrinsics_head_towards_the_true_focal_length(tiny64, stage):
    """``loss.focal`` adds ``log(f_pred / f_true) ** 2`` to the total; its gradient moves the
    intrinsics head's focal output towards the truth (here 1.5x the default the head starts at)."""
    from zsw.model import build_model
    from zsw.train.config import LossConfig

    torch.manual_seed(0)
    model = build_model(str(tiny64[1]))
    set_trainable(model, stage)
    batch = _distorted_batch()
    batch["intrinsics"] = batch["intrinsics"].clone()
    batch["intrinsics"][:, 0, 0] *= 1.5
    batch["intrinsics"][:, 1, 1] *= 1.5
    off, on = (TrainStep(model, _cfg(tiny64, stage=stage, loss=LossConfig(focal=w))) for w in (0.0, 1.0))
    a, b = off(batch), on(batch)
    assert "focal" not in a and float(b["focal"].detach()) > 0.05  # the untrained head is near the default
    assert float((b["total"] - a["total"]).detach()) == pytest.approx(float(b["focal"].detach()), rel=1e-3, abs=1e-5)
    head = model.pixel.intrinsics_head
    model.zero_grad()
    b["focal"].backward()
    grads = [p.grad for p in head.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    # one small step down the gradient, on the head alone, lowers the focal error
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    with torch.no_grad():
        for p in head.parameters():
            if p.grad is not None:
                p -= 1e-2 * p.grad / norm
    assert float(on(batch)["focal"].detach()) < float(b["focal"].detach())


def test_teacher_surface_schedule_picks_ground_truth_or_predicted_surfaces(tiny64):
    from zsw.model import build_model
    from zsw.train import losses as L

    torch.manual_seed(0)
    model = build_model(str(tiny64[1])).eval()
    batch = _distorted_batch()
    gt, _, _ = L.visible_frame(batch["depth"], batch["intrinsics"], batch["visible_mask"] > 0.5)
    seen = _encoder_inputs(model)
    step = TrainStep(model, _cfg(tiny64, teacher_surface=(1.0, 0.0)))
    assert step.teacher_p == 1.0
    step(batch)  # step 0: every sample lifted from the ground truth
    torch.testing.assert_close(seen[-1][:, :3].flatten(2).transpose(1, 2), gt)
    step.set_progress(1.0)  # the last step: predicted depth and K
    assert step.teacher_p == 0.0
    step(batch)
    assert (seen[-1][:, :3].flatten(2).transpose(1, 2) - gt).abs().max() > 1e-2
    step.set_progress(0.25)
    assert step.teacher_p == pytest.approx(0.75)
    with pytest.raises(ConfigError, match="teacher_surface"):
        TrainConfig(teacher_surface=(1.5, 0.0))


def test_align_labels_moves_the_queries_onto_the_surface_the_decoder_is_given(tiny64):
    from zsw.model import build_model
    from zsw.train import losses as L

    torch.manual_seed(0)
    model = build_model(str(tiny64[1])).eval()
    batch = _distorted_batch()
    seen: list[torch.Tensor] = []
    decode = model.decoder.decode
    model.decoder.decode = lambda latents, pts: seen.append(pts.detach().clone()) or decode(latents, pts)
    visible = batch["visible_mask"] > 0.5
    gt, center, scale = L.visible_frame(batch["depth"], batch["intrinsics"], visible)
    plain = L.query_points(batch["points"], batch["extrinsics"], center, scale)

    TrainStep(model, _cfg(tiny64))(batch)
    torch.testing.assert_close(seen[-1], plain)  # the ground truth's frame
    TrainStep(model, _cfg(tiny64, align_labels=True))(batch)
    moved = seen[-1]
    assert (moved - plain).abs().max() > 1e-2
    # the queries moved exactly as the ground-truth surface must move to match the lifted one
    with torch.no_grad():  # teacher_masks: the predicted depth lifted on the true masks
        text = model.embed_prompts(None, 2)
        pix = model.pixel(batch["image"], text)
        out = model.encode_surface(pix, text, batch["visible_mask"], batch["occluder_mask"])
    lifted = out.visible_points.flatten(2).transpose(1, 2)
    a, b = L.surface_alignment(gt, visible.reshape(2, -1), lifted, out.visible_mask.reshape(2, -1) > 0.5)
    torch.testing.assert_close(moved, plain * a[:, None] + b[:, None])
    # stage shape lifts the ground truth: nothing to align
    TrainStep(model, _cfg(tiny64, stage="shape", align_labels=True))(batch)
    torch.testing.assert_close(seen[-1], plain)


def test_far_fraction_draws_that_share_of_points_away_from_the_surface(tiny64):
    def far_share(ds) -> float:
        shares = []
        for i in range(len(ds)):
            sdf = ds[i]["sdf"].numpy()
            layout, sid = ds.sample_id(i)
            pts, _ = layout.read_gt_sdf(sid)
            extent = float((pts.max(0) - pts.min(0)).max())
            shares.append(float((np.abs(sdf) >= 0.02 * extent).mean()))
        return float(np.mean(shares))

    plain = ShapeDataset(tiny64[0], "train", points=400, size=64)
    far = ShapeDataset(tiny64[0], "train", points=400, size=64, far_fraction=0.6, near_band=0.02)
    assert far_share(far) == pytest.approx(0.6, abs=1e-6)
    assert abs(far_share(plain) - 0.6) > 0.1  # the files hold mostly near-surface samples
    with pytest.raises(ConfigError, match="far_fraction"):
        ShapeDataset(tiny64[0], "train", far_fraction=1.5)


def test_soft_labels_keep_the_surface_and_fall_off_with_distance(tiny64):
    hard = ShapeDataset(tiny64[0], "train", points=400, size=64)
    soft = ShapeDataset(tiny64[0], "train", points=400, size=64, label_softness=0.01)
    a, b = hard[0], soft[0]
    assert torch.equal(a["sdf"], b["sdf"])  # the same points: only the targets differ
    sdf, target = b["sdf"].numpy().astype(np.float64), b["occupancy"].numpy()
    # the same 0.5 level set as the hard labels, so the meshes' threshold stays 0.5
    assert np.array_equal(target > 0.5, a["occupancy"].numpy() > 0.5)
    np.testing.assert_allclose(target, 1 / (1 + np.exp((sdf - 0.003) / 0.01)), atol=1e-6)
    near, far = np.abs(sdf - 0.003) < 0.005, np.abs(sdf - 0.003) > 0.1
    assert near.any() and far.any()
    assert np.all(np.abs(target[near] - 0.5) < 0.13) and np.all(np.abs(target[far] - 0.5) > 0.49)
    with pytest.raises(ConfigError, match="label_softness"):
        ShapeDataset(tiny64[0], "train", label_softness=-1.0)


def test_a_training_step_scores_soft_targets_at_their_surface(tiny64):
    from zsw.model import build_model

    model = build_model(str(tiny64[1])).eval()  # no dropout or batch statistics between the two calls
    step = TrainStep(model, _cfg(tiny64, stage="shape"))
    hard = synthetic_batch(2, 64, 256)
    soft = {**hard, "occupancy": torch.sigmoid(-(hard["sdf"] - 0.003) / 0.01)}
    a, b = step(hard), step(soft)
    # accuracy and IoU compare at 0.5, so soft targets with the same surface score the same
    for key in ("occupancy_acc", "occupancy_iou"):
        assert float(b[key]) == pytest.approx(float(a[key]))
    # while the loss does see the soft targets
    assert float(b["occupancy"].detach()) != pytest.approx(float(a["occupancy"].detach()))


def test_cosine_schedule_with_warmup():
    opt = OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=4)
    factors = [opt.lr_factor(s, 100) for s in range(100)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))
    assert factors[-1] == pytest.approx(0.01)
    assert OptimConfig().lr_factor(50, 100) == 1.0
    for bad in (dict(lr=float("nan")), dict(lr=-1e-3), dict(schedule="step"), dict(weight_decay=float("inf"))):
        with pytest.raises(ConfigError):
            OptimConfig(**bad)


def test_trainer_follows_the_schedule_and_validates_every_n_steps(tiny64, tmp_path):
    from zsw.train.trainer import train

    cfg = _cfg(
        tiny64, stage="shape", max_steps=4, validate=True, val_every=2, val_resolution=8, val_points=300,
        optim=OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=1),
    )  # fmt: skip
    train(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "loss/total" in r]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5) and lrs == sorted(lrs, reverse=True)
    validations = [r for r in rows if r.get("event") == "validation"]
    assert [r["step"] for r in validations] == [2, 4] and all("val/cd" in r for r in validations)
    assert (tmp_path / "run" / "best.safetensors").is_file()


def test_a_resumed_run_says_when_a_new_length_stretches_the_cosine_schedule(tiny64, tmp_path):
    """max_steps may change on resume; with a cosine schedule that moves the learning rate of the
    steps left (here from the 1 % floor back up): it is said, not done silently."""
    from zsw.config import replace
    from zsw.train.trainer import train

    optim = OptimConfig(lr=1e-3, schedule="cosine")
    cfg = _cfg(tiny64, stage="pixel", max_steps=2, checkpoint_every=1, optim=optim)
    train(cfg, tmp_path / "run", progress=False)
    said: list[str] = []
    train(replace(cfg, max_steps=4), tmp_path / "run", resume=True, progress=False, echo=said.append)
    assert any("now ends at step 4, not 2" in m and "at step 2: 0.01 -> 0.258" in m for m in said), said
    said.clear()
    train(replace(cfg, max_steps=4), tmp_path / "run", resume=True, progress=False, echo=said.append)
    assert not any("now ends" in m for m in said), said  # the same length: nothing to say


def test_max_minutes_ends_the_run_and_its_cosine_schedule_on_time(tiny64, tmp_path, monkeypatch):
    """A time limit ends the run after the step that spends it -- final weights saved, the last
    weights validated -- with the cosine learning rate decaying over the minutes, not over the
    steps it will never reach. Resumed, the minutes add up; a larger limit continues the run."""
    import types

    from zsw.config import replace
    from zsw.train import trainer

    ticks = iter(range(10**6))  # a clock that moves one second each time it is read
    monkeypatch.setattr(trainer, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    optim = OptimConfig(lr=1e-3, schedule="cosine")
    cfg = _cfg(tiny64, stage="shape", max_steps=1000, max_minutes=0.2, validate=True, optim=optim, val_resolution=8)
    result = trainer.train(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "loss/total" in r]
    assert 3 <= result.step == len(lrs) < 12, result.step  # 12 s of a clock read a few times a step
    assert result.final is not None and result.final.is_file()
    assert [r["step"] for r in rows if r.get("event") == "validation"][-1] == result.step
    # by the steps alone the factor would still be above 0.99 (step 11 of 1000)
    assert lrs[0] == pytest.approx(1e-3, rel=0.05) and lrs == sorted(lrs, reverse=True) and lrs[-1] < 2e-4
    state = torch.load(tmp_path / "run" / "checkpoints" / f"step-{result.step:08d}.state.pt", weights_only=False)
    assert state["seconds"] >= 12
    again = trainer.train(cfg, tmp_path / "run", resume=True, progress=False)  # the minutes are spent
    assert again.step == result.step
    longer = trainer.train(replace(cfg, max_minutes=0.4), tmp_path / "run", resume=True, progress=False)
    assert result.step < longer.step < 1000
    with pytest.raises(ConfigError, match="max_minutes"):
        _cfg(tiny64, max_minutes=0)


def test_a_time_limited_schedule_follows_rank_0s_seconds(tiny64, tmp_path, monkeypatch):
    """Under torchrun each rank has its own clock; the learning rate of a time-limited cosine run
    must come from rank 0's seconds (broadcast), or the ranks' rates differ and the replicas
    diverge. Here the broadcast hands back 100 s of a 200 s limit: the rate is half-way down."""
    from zsw.train import trainer

    rank0 = iter([100.0, 100.0, 250.0])  # at the start, after step 1, after step 2 (past the limit)
    monkeypatch.setattr(trainer, "broadcast_float", lambda value, device: next(rank0))
    optim = OptimConfig(lr=1e-3, schedule="cosine")
    cfg = _cfg(tiny64, stage="shape", max_steps=1000, max_minutes=200 / 60, optim=optim)
    assert trainer.train(cfg, tmp_path / "run", progress=False).step == 2  # ended by rank 0's minutes
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "loss/total" in r]
    assert lrs and all(lr == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5)) for lr in lrs), lrs


def test_init_pixel_takes_the_pixel_model_from_another_checkpoint(tiny64, tmp_path):
    from zsw import checkpoint
    from zsw.model import build_model
    from zsw.train.setup import build_model_for

    torch.manual_seed(1)
    a = build_model(str(tiny64[1]))
    torch.manual_seed(2)
    b = build_model(str(tiny64[1]))
    checkpoint.save(a, tmp_path / "a.safetensors")
    checkpoint.save(b, tmp_path / "b.safetensors")
    cfg = _cfg(tiny64, init=str(tmp_path / "a.safetensors"), init_pixel=str(tmp_path / "b.safetensors"))
    model = build_model_for(cfg)
    for name, value in model.state_dict().items():
        source = b if name.startswith("pixel.") else a
        torch.testing.assert_close(value, source.state_dict()[name], msg=name)
    other = build_model("tiny")  # another pixel model (224 px)
    checkpoint.save(other, tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match="init_pixel .* pixel config differs"):
        build_model_for(_cfg(tiny64, init_pixel=str(tmp_path / "c.safetensors")))
    # another decoder, the same pixel model: the pixel run still serves (a decoder change does
    # not void stage pixel), while --init, which takes everything, refuses
    from zsw.config import get_model_config, replace

    mine = get_model_config(str(tiny64[1]))
    wide = build_model(replace(mine, decoder=replace(mine.decoder, width=2 * mine.decoder.width)))
    checkpoint.save(wide, tmp_path / "d.safetensors")
    model = build_model_for(_cfg(tiny64, init_pixel=str(tmp_path / "d.safetensors")))
    for name, value in model.state_dict().items():
        if name.startswith("pixel."):
            torch.testing.assert_close(value, wide.state_dict()[name], msg=name)
    with pytest.raises(CheckpointError, match="--init"):
        build_model_for(_cfg(tiny64, init=str(tmp_path / "d.safetensors")))


def test_every_committed_recipe_and_model_config_loads(repo_root):
    """configs/demo/ (the default model's recipe) and configs/experiments/ stay loadable."""
    from zsw.config import ModelConfig, get_model_config, load_yaml

    recipes = sorted((repo_root / "configs").rglob("*.yaml"))
    assert any(p.name == "full.yaml" for p in recipes)
    for path in recipes:
        text = path.read_text()
        if text.lstrip("#").lstrip().startswith("name:") or "\nname:" in text:  # a model config
            assert isinstance(load_yaml(path, ModelConfig), ModelConfig)
            continue
        cfg = load_yaml(path, TrainConfig)
        model = repo_root / cfg.model if cfg.model.endswith(".yaml") else cfg.model
        get_model_config(str(model))
    demo = load_yaml(repo_root / "configs" / "demo" / "full.yaml", TrainConfig)
    assert demo.teacher_surface == (1.0, 0.0) and demo.init_pixel and demo.stage == "full"
    assert get_model_config(str(repo_root / demo.model)).decoder.pixel_aligned
