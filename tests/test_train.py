"""Training: parameter groups, sampler, configs, the trainer end to end, resume, NaN handling."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from zsw.config import dump_yaml, load_yaml, replace
from zsw.data.dataset import AugmentConfig
from zsw.errors import CheckpointError, ConfigError
from zsw.synth.procedural import ProceduralConfig, generate
from zsw.train.config import DataConfig, OptimConfig, TrainConfig
from zsw.train.distributed import ResumableSampler
from zsw.train.step import param_groups, set_trainable

runner = CliRunner()
NO_AUGMENT = AugmentConfig(occluders=(0, 0), backgrounds="never")


pytestmark = pytest.mark.usefixtures("one_thread")


def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _cfg(tiny64, **kw) -> TrainConfig:
    data = DataConfig(roots=(str(tiny64[0]),), workers=0, points=512, val_samples=2)
    base = dict(model=str(tiny64[1]), stage="full", batch_size=2, validate=False, log_every=1, data=data)
    return TrainConfig(**{**base, **kw})


# --------------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------------


def test_param_groups_follow_the_paper():
    from zsw.model import build_model

    model = build_model("tiny")
    cfg = OptimConfig(lr=1e-5, lr_pretrained=1e-6, weight_decay=0.05)
    set_trainable(model, "pixel")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("pixel.") for n in trainable)
    groups = param_groups(model, "pixel", cfg)
    assert {g["lr"] for g in groups} == {1e-5}
    assert sum(len(g["params"]) for g in groups) == len(trainable)

    set_trainable(model, "full")
    groups = {g["name"]: g for g in param_groups(model, "full", cfg)}
    assert set(groups) == {"main", "main-no-decay", "pixel", "pixel-no-decay"}
    assert groups["pixel"]["lr"] == groups["pixel-no-decay"]["lr"] == 1e-6
    assert groups["main"]["lr"] == 1e-5 and groups["main"]["weight_decay"] == 0.05
    assert groups["main-no-decay"]["weight_decay"] == 0.0 and groups["pixel-no-decay"]["weight_decay"] == 0.0
    assert all(p.ndim <= 1 for g in ("main-no-decay", "pixel-no-decay") for p in groups[g]["params"])
    assert all(p.ndim > 1 for g in ("main", "pixel") for p in groups[g]["params"])
    ids = {id(p) for g in groups.values() for p in g["params"]}
    assert ids == {id(p) for p in model.parameters()}
    pixel_ids = {id(p) for p in model.pixel.parameters()}
    assert {id(p) for g in ("pixel", "pixel-no-decay") for p in groups[g]["params"]} == pixel_ids


def test_sampler_global_batches_are_the_same_on_any_number_of_ranks():
    n, G = 23, 4
    one = ResumableSampler(n, G, 0, 1, seed=5)
    two = [ResumableSampler(n, G, r, 2, seed=5) for r in range(2)]
    for s in (one, *two):
        s.set_epoch(3)
    perm = list(one)
    assert len(perm) == one.samples_per_epoch == 20 and len(set(perm)) == 20
    per_rank = [list(s) for s in two]
    for step in range(one.steps_per_epoch):  # each global step sees the same samples
        ranks = per_rank[0][step * 2 : step * 2 + 2] + per_rank[1][step * 2 : step * 2 + 2]
        assert sorted(perm[step * G : (step + 1) * G]) == sorted(ranks)
    one.set_epoch(3, start=8)  # resume after two steps
    assert list(one) == perm[8:] and len(one) == 12
    one.set_epoch(4)
    assert list(one) != perm
    with pytest.raises(ConfigError, match=r"fewer than one global batch of 4 \(--batch-size 3 or less"):
        ResumableSampler(3, 4)


def test_train_config_yaml_and_errors(tmp_path):
    cfg = replace(TrainConfig(stage="full", batch_size=8), data=DataConfig(roots=("a", "b")))
    dump_yaml(cfg, tmp_path / "t.yaml")
    assert load_yaml(tmp_path / "t.yaml", TrainConfig) == cfg
    assert TrainConfig(stage="pixel").num_epochs == 10 and TrainConfig(stage="full").num_epochs == 15
    assert TrainConfig().optim.betas == (0.9, 0.95) and TrainConfig().batch_size == 80
    # YAML 1.1 reads 1e-3 (no dot) as a string; it is the usual way to write a learning rate
    (tmp_path / "lr.yaml").write_text("optim:\n  lr: 1e-3\n  weight_decay: 5E-2\n")
    assert load_yaml(tmp_path / "lr.yaml", TrainConfig).optim.lr == 1e-3
    assert load_yaml(tmp_path / "lr.yaml", TrainConfig).optim.weight_decay == 0.05
    (tmp_path / "lr.yaml").write_text("optim:\n  lr: 1e-3x\n")
    with pytest.raises(ConfigError, match="optim.lr: expected a number"):
        load_yaml(tmp_path / "lr.yaml", TrainConfig)
    (tmp_path / "bad.yaml").write_text("optim:\n  momentum: 0.9\n")
    with pytest.raises(ConfigError, match="momentum"):
        load_yaml(tmp_path / "bad.yaml", TrainConfig)
    with pytest.raises(ConfigError, match="stage"):
        TrainConfig(stage="joint")
    with pytest.raises(ConfigError, match="amp"):
        TrainConfig(amp="int8")
    with pytest.raises(ConfigError, match="optim.ema"):
        OptimConfig(ema=1.0)
    # a negative loss weight maximises its term; an infinite SDF offset labels everything inside
    for text, culprit in (("loss:\n  occupancy: -1\n", "loss.occupancy"), ("loss:\n  depth: .nan\n", "loss.depth"),
                          ("loss:\n  aux_depth_eps: 0\n", "loss.aux_depth_eps"),
                          ("data:\n  sdf_offset: .inf\n", "data.sdf_offset"),
                          ("keep_checkpoints: 0\n", "keep_checkpoints"),
                          ("val_points: 0\n", "val_points"), ("val_resolution: 1\n", "val_resolution"),
                          ("data:\n  val_samples: -1\n", "val_samples")):  # fmt: skip
        (tmp_path / "w.yaml").write_text(text)
        with pytest.raises(ConfigError, match=culprit):
            load_yaml(tmp_path / "w.yaml", TrainConfig)


def test_yaml_recipes_load(repo_root):
    paper = {}
    for stage in ("pixel", "full"):
        cfg = load_yaml(repo_root / "configs" / f"zeroshape-w-{stage}.yaml", TrainConfig)
        assert cfg.model == "zeroshape-w" and cfg.stage == stage and cfg.batch_size == 80
        assert cfg.num_epochs == {"pixel": 10, "full": 15}[stage] and cfg.optim.lr == 1e-5
        paper[stage] = cfg
    assert paper["full"].optim.lr_pretrained == 1e-6 and paper["full"].optim.betas == (0.9, 0.95)
    assert load_yaml(repo_root / "configs" / "tiny-cpu.yaml", TrainConfig).model == "tiny"


def test_validation_reports_mesh_metrics(tiny64, monkeypatch):
    import zsw.infer.grid
    from zsw.data.dataset import ShapeDataset
    from zsw.infer.settings import MIN_PART
    from zsw.model import build_model
    from zsw.train.validate import validate

    model = build_model(str(tiny64[1]))
    ds = ShapeDataset(tiny64[0], "val", size=64, with_shape=False)
    drop = zsw.infer.grid.drop_small_parts
    fractions = []  # the meshes scored are the ones `zsw reconstruct` writes: crumbs dropped
    monkeypatch.setattr(zsw.infer.grid, "drop_small_parts", lambda m, f: (fractions.append(f), drop(m, f))[1])
    metrics = validate(model, ds, "full", torch.device("cpu"), max_samples=2, resolution=8, surface_points=500)
    assert fractions == [MIN_PART, MIN_PART]
    assert metrics["val/samples"] == 2
    for key in ("val/depth_ssi_mae", "val/intrinsics", "val/visible_iou", "val/cd", "val/fscore@0.05"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert 0 <= metrics["val/visible_iou"] <= 1 and metrics["val/cd"] > 0
    assert model.training  # restored
    # stage shape decodes the true visible surface: no depth or K errors (0 by construction) are reported
    shape = validate(model, ds, "shape", torch.device("cpu"), max_samples=2, resolution=8, surface_points=500)
    assert "val/cd" in shape and not {"val/depth_ssi_mae", "val/intrinsics"} & shape.keys()


def test_validation_samples_views_from_every_root_not_the_first_ones(tiny64, monkeypatch, tmp_path):
    """``val_samples`` below the number of views takes views spread over the whole list, which runs
    root by root and category by category: the first ones would all be one root's first category."""
    import shutil

    from zsw.data.dataset import ShapeDataset
    from zsw.model import build_model
    from zsw.train.validate import spread, validate

    assert spread(10, 3) == [0, 3, 6] and spread(4, 9) == [0, 1, 2, 3] and spread(5, 0) == []
    shutil.copytree(tiny64[0], tmp_path / "copy")  # a second root with the same views
    ds = ShapeDataset([tiny64[0], tmp_path / "copy"], "val", size=64, with_shape=False)
    half = len(ds) // 2
    read = []
    get = ShapeDataset.__getitem__
    monkeypatch.setattr(ShapeDataset, "__getitem__", lambda self, i: (read.append(i), get(self, i))[1])
    metrics = validate(build_model(str(tiny64[1])), ds, "pixel", torch.device("cpu"), max_samples=2)
    assert metrics["val/samples"] == 2 and read == [0, half]  # one view of each root


def test_validation_says_which_view_it_could_not_score(tiny64, tmp_path, caplog):
    """A non-finite point cloud in the val split: the view is skipped with a warning naming it and
    counted (``val/skipped``), never dropped from the mean without a word."""
    import shutil

    from zsw.data.dataset import ShapeDataset
    from zsw.model import build_model
    from zsw.train.validate import validate

    data = shutil.copytree(tiny64[0], tmp_path / "data")
    ds = ShapeDataset(data, "val", size=64, with_shape=False)
    layout, sid = ds.sample_id(0)
    cloud = np.load(layout.pointcloud(sid))
    cloud[0, 0] = np.nan
    np.save(layout.pointcloud(sid), cloud)
    with caplog.at_level("WARNING"):
        metrics = validate(build_model(str(tiny64[1])), ds, "full", torch.device("cpu"), max_samples=2, resolution=8,
                           surface_points=500)  # fmt: skip
    views = sum(ds.sample_id(i)[0].pointcloud(ds.sample_id(i)[1]) == layout.pointcloud(sid) for i in range(2))
    assert metrics["val/skipped"] == views and metrics["val/samples"] == 2  # the object's views of the two
    assert ("val/cd" in metrics) == (views < 2) and "not [M, 3] finite points" in caplog.text
    assert "validation skips view" in caplog.text


# --------------------------------------------------------------------------------------------
# the trainer end to end
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_cli_lowers_the_loss_on_a_fixed_batch(tiny64, tmp_path):
    """``zsw train`` on the tiny preset (at 64 px): 16 steps on one fixed batch lower every loss."""
    from zsw import checkpoint
    from zsw.cli.main import app

    model = tiny64[1]
    data = tmp_path / "one"  # one object, two views: without augmentation every step sees the same batch
    one = ProceduralConfig(objects=1, views=2, seed=4, size=64, categories=("mug",), split_fractions=(1, 0, 0))
    generate(data, one)
    recipe = tmp_path / "recipe.yaml"
    dump_yaml(TrainConfig(data=DataConfig(augment=NO_AUGMENT, points=512)), recipe)
    run = tmp_path / "run"
    args = ["train", "--preset", str(model), "--data", str(data), "--stage", "full", "--out", str(run), "--config",
            str(recipe), "--batch-size", "2", "--epochs", "100", "--max-steps", "16", "--lr", "1e-3",
            "--lr-pretrained", "1e-3", "--workers", "0", "--log-every", "1", "--no-validate",
            "--no-progress"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "stage full at step 16" in result.output
    steps = [m for m in _metrics(run) if "loss/total" in m]
    assert [m["step"] for m in steps] == list(range(1, 17))
    first, last = steps[0], steps[-1]
    assert last["loss/total"] < 0.7 * first["loss/total"]
    for term in ("occupancy", "depth", "visible_mask", "occluder_mask"):
        assert last[f"loss/{term}"] < first[f"loss/{term}"], term
    assert all(m["samples_per_s"] > 0 and m["nonfinite_steps"] == 0 for m in steps)
    assert checkpoint.load(run / "final.safetensors").config.pixel.image_size == 64
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 16
    # --init starts a new run from those weights: its first loss is the trained one, not the fresh one
    init_run = tmp_path / "from-init"
    init_args = [*args[: args.index("--out")], "--out", str(init_run), *args[args.index("--out") + 2 :]]
    result = runner.invoke(app, [*init_args, "--init", str(run / "final.safetensors"), "--max-steps", "1"])
    assert result.exit_code == 0, result.output
    resumed_first = next(m for m in _metrics(init_run) if "loss/total" in m)["loss/total"]
    assert resumed_first < 0.8 * first["loss/total"]
    # the same command again refuses to overwrite; a conflicting resume names the key
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "--resume" in again.output
    conflict = runner.invoke(app, [*args, "--resume", "--seed", "3"])
    assert conflict.exit_code == 1 and "seed" in conflict.output


def _wait_for_step(run, step: int, proc: subprocess.Popen, timeout: float = 240) -> int:
    latest = run / "checkpoints" / "latest.json"
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        try:
            done = json.loads(latest.read_text())["step"]
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= step:
            return done
        time.sleep(0.05)
    return -1


@pytest.mark.slow
def test_kill_and_resume_gives_the_uninterrupted_state(tiny64, tmp_path):
    from zsw import checkpoint
    from zsw.train.trainer import Trainer

    # 6 train views, batch 2: 3 steps per epoch, so 6 steps cross an epoch boundary; augmentation on
    cfg = _cfg(tiny64, max_steps=6, checkpoint_every=1, seed=3, optim=OptimConfig(lr=1e-3))
    straight = Trainer(cfg, tmp_path / "straight", progress=False).fit()
    assert straight.step == 6 and straight.epoch == 2

    run = tmp_path / "killed"
    recipe = tmp_path / "cfg.yaml"
    dump_yaml(cfg, recipe)
    # one thread like this process (oneDNN convolutions round differently with other thread counts)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "zsw", "train", "--config", str(recipe), "--out", str(run), "--no-progress"]
    child = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    reached = _wait_for_step(run, 2, child)
    child.send_signal(signal.SIGKILL)
    output = child.communicate()[0].decode()
    assert reached >= 2 or child.returncode == 0, output

    resumed = Trainer(cfg, run, resume=True, progress=False).fit()
    assert resumed.step == 6
    a, _, _ = checkpoint.read(tmp_path / "straight" / "final.safetensors")
    b, _, _ = checkpoint.read(run / "final.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(tmp_path / "straight" / "checkpoints" / "step-00000006.state.pt", weights_only=True)
    sb = torch.load(run / "checkpoints" / "step-00000006.state.pt", weights_only=True)
    clock = {"optimizer", "seconds"}  # the wall-clock seconds trained differ from run to run
    assert {k: v for k, v in sa.items() if k not in clock} == {k: v for k, v in sb.items() if k not in clock}
    for key, st in sa["optimizer"]["state"].items():
        assert all(torch.equal(st[n], sb["optimizer"]["state"][key][n]) for n in st)
    assert not list(run.rglob(".*tmp*"))  # the kill left no half-written file behind


def test_validation_folders_named_in_the_config_must_exist(tiny64, tmp_path):
    """Without val_roots, data without val lists turns validation off with a note; a val_roots
    folder that is not there, or a val_split other than the default that the data lacks (a typo),
    is an error naming it (they silently trained without validation)."""
    import shutil

    from zsw.train.setup import datasets

    said = []
    shutil.copytree(tiny64[0], tmp_path / "noval")
    for f in (tmp_path / "noval" / "lists").glob("*_val.list"):
        f.unlink()
    cfg = _cfg(tiny64, validate=True, data=DataConfig(roots=(str(tmp_path / "noval"),), workers=0))
    assert datasets(cfg, 64, said.append)[1] is None and "validation is off" in said[0]
    cfg = _cfg(tiny64, validate=True, data=DataConfig(roots=(str(tmp_path / "noval"),), workers=0, val_split="test"))
    with pytest.raises(ConfigError, match=r"^data.val_split 'test': no test samples in"):
        datasets(cfg, 64, said.append)
    with pytest.raises(ConfigError, match=r"^data.val_split must be one of train, val, test, got 'vall'"):
        _cfg(tiny64, validate=True, data=DataConfig(roots=(str(tiny64[0]),), val_split="vall"))
    missing = str(tmp_path / "nowhere")
    cfg = _cfg(tiny64, validate=True, data=DataConfig(roots=(str(tiny64[0]),), workers=0, val_roots=(missing,)))
    with pytest.raises(ConfigError, match="nowhere"):
        datasets(cfg, 64, said.append)


def test_a_run_stopping_mid_epoch_validates_its_last_weights(tiny64, tmp_path):
    from zsw.train.trainer import Trainer

    data = DataConfig(roots=(str(tiny64[0]),), workers=0, points=256, val_samples=2)
    cfg = _cfg(tiny64, validate=True, max_steps=2, val_resolution=8, val_points=300, data=data)  # 3 steps an epoch
    result = Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert result.step == 2 and "val/cd" in result.validation and result.best is not None


def test_the_packaged_model_can_be_fine_tuned_by_name(tmp_path):
    """``--preset demo --init demo``: the packaged architecture (the config its checkpoint embeds)
    and its weights; the weights with another architecture say which preset fits them."""
    from zsw import checkpoint
    from zsw.config import get_model_config
    from zsw.infer.weights import demo_weights
    from zsw.train.config import compose
    from zsw.train.setup import build_model_for

    assert get_model_config("demo") == checkpoint.read(demo_weights())[1]
    cfg = compose(model="demo", init="demo", stage="full")
    assert cfg.init == str(demo_weights())
    model = build_model_for(cfg)
    tensors, _, _ = checkpoint.read(demo_weights())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tensors.items())
    with pytest.raises(CheckpointError, match="--preset demo"):
        build_model_for(compose(model="tiny", init="demo"))


def test_resume_refuses_a_model_yaml_edited_since(tiny64, tmp_path):
    """The run's config names the same YAML, the tensors have the same shapes, but the model is
    another (Softplus sharpness): resuming would train a model its checkpoints do not describe."""
    import shutil

    from zsw.config import ModelConfig
    from zsw.train.trainer import Trainer

    yaml = shutil.copy(tiny64[1], tmp_path / "model.yaml")
    cfg = _cfg(tiny64, model=str(yaml), max_steps=1)
    Trainer(cfg, tmp_path / "run", progress=False).fit()
    edited = load_yaml(yaml, ModelConfig)
    dump_yaml(replace(edited, decoder=replace(edited.decoder, softplus_beta=5.0)), yaml)
    with pytest.raises(CheckpointError, match=r"decoder.softplus_beta=100.0, the model config now says 5.0"):
        Trainer(replace(cfg, max_steps=2), tmp_path / "run", resume=True, progress=False).fit()


def test_best_weights_are_chosen_on_one_metric_per_stage(tiny64, tmp_path):
    """Stage full's best is by CD: a validation in which no view could be scored (every val point
    cloud unreadable) keeps the best as it was instead of falling back to the depth error."""
    import shutil

    from zsw.data.dataset import ShapeDataset
    from zsw.train.trainer import Trainer

    data = shutil.copytree(tiny64[0], tmp_path / "data")
    val = ShapeDataset(data, "val", size=64, with_shape=False)
    for i in range(len(val)):
        layout, sid = val.sample_id(i)
        np.save(layout.pointcloud(sid), np.full((10, 3), np.nan, np.float32))
    said = []
    cfg = _cfg(tiny64, validate=True, max_steps=1, val_resolution=8, val_points=300,
               data=DataConfig(roots=(str(data),), workers=0, points=256, val_samples=2))  # fmt: skip
    result = Trainer(cfg, tmp_path / "run", progress=False, echo=said.append).fit()
    assert "val/depth_ssi_mae" in result.validation and "val/cd" not in result.validation
    assert result.best is None and any("has no val/cd" in line for line in said)


def test_loader_workers_leave_stopping_to_the_trainer():
    """A Ctrl-C or a SIGTERM sent to the whole process group (torchrun stopping a rank, a scheduler
    stopping a job) reaches the data loader's workers too: they must keep loading until the
    trainer has finished its step and shuts them down, or the step fails half done."""
    from zsw.train.setup import _ignore_ctrl_c

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _ignore_ctrl_c(0)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_within_a_step_saves_that_step_whole(tiny64, tmp_path, monkeypatch, signum):
    """Ctrl-C (or a termination request: ``kill``, a scheduler) lands after step 2's forward pass
    (BatchNorm's running statistics already moved) and before its optimiser step: the run
    finishes step 2, saves it, and the saved state is the uninterrupted run's step 2, so the
    resumed run ends where the straight one does."""
    from zsw import checkpoint
    from zsw.train.step import TrainStep
    from zsw.train.trainer import Trainer

    cfg = _cfg(tiny64, max_steps=4, checkpoint_every=1, seed=3, optim=OptimConfig(lr=1e-3))
    Trainer(cfg, tmp_path / "straight", progress=False).fit()
    forward, calls = TrainStep.forward, []

    def interrupted(self, batch):
        out = forward(self, batch)
        calls.append(1)
        if len(calls) == 3:  # the first is set-up's probe for unused parameters; the third is step 2's
            os.kill(os.getpid(), signum)
            time.sleep(0.1)  # the handler runs here, mid-step
        return out

    def unhandled(signum, frame):  # instead of SIGTERM's default, which would end this test process
        raise RuntimeError("SIGTERM reached the handler the trainer should have replaced")

    monkeypatch.setattr(TrainStep, "forward", interrupted)
    said, before = [], signal.signal(signal.SIGTERM, unhandled)
    try:
        with pytest.raises(KeyboardInterrupt):
            Trainer(cfg, tmp_path / "stopped", progress=False, echo=said.append).fit()
        assert signal.getsignal(signal.SIGTERM) is unhandled  # the handlers are put back
    finally:
        signal.signal(signal.SIGTERM, before)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.setattr(TrainStep, "forward", forward)
    # step 2 was checkpointed as it ended (checkpoint_every=1): the message still names it
    assert any("after step 2, which is saved" in line for line in said), said
    assert ("interrupted: stopping after this step (Ctrl-C again to stop at once)" if signum == signal.SIGINT
                       else "asked to terminate: stopping after this step (SIGKILL stops at once)") in said  # fmt: skip
    saved = json.loads((tmp_path / "stopped" / "checkpoints" / "latest.json").read_text())["step"]
    assert saved == 2
    name = "checkpoints/step-00000002.safetensors"
    a, _, _ = checkpoint.read(tmp_path / "straight" / name)
    b, _, _ = checkpoint.read(tmp_path / "stopped" / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # running stats included
    Trainer(cfg, tmp_path / "stopped", resume=True, progress=False).fit()
    a, _, _ = checkpoint.read(tmp_path / "straight" / "final.safetensors")
    b, _, _ = checkpoint.read(tmp_path / "stopped" / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_weight_average_is_what_is_validated_and_saved(tiny64, tmp_path):
    from zsw import checkpoint
    from zsw.model import build_model
    from zsw.train.trainer import Trainer

    torch.manual_seed(0)
    init = checkpoint.save(build_model(str(tiny64[1])), tmp_path / "init.safetensors")
    cfg = _cfg(tiny64, max_steps=4, checkpoint_every=1, keep_checkpoints=10, init=str(init), seed=1,
               validate=True, val_every=4, val_resolution=16, val_points=500,
               optim=OptimConfig(lr=3e-3, ema=0.8))  # fmt: skip
    result = Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert result.step == 4 and result.validation

    # the average, recomputed from the initial weights and each step's checkpointed raw weights
    expected, _, _ = checkpoint.read(init)
    for n in range(4):
        raw, _, _ = checkpoint.read(tmp_path / "run" / "checkpoints" / f"step-{n + 1:08d}.safetensors")
        expected = {k: 0.8 * expected[k] + 0.2 * raw[k] if raw[k].is_floating_point() else raw[k] for k in raw}
    final, _, _ = checkpoint.read(tmp_path / "run" / "final.safetensors")
    best, _, _ = checkpoint.read(tmp_path / "run" / "best.safetensors")
    assert all(torch.allclose(final[k], expected[k], atol=1e-6) for k in expected)
    assert all(torch.equal(final[k], best[k]) for k in final)  # validated at step 4: the average
    # ... which is not the last step's raw weights
    assert max(float((final[k] - raw[k]).abs().max()) for k in raw if raw[k].is_floating_point()) > 1e-4

    # resumed from step 2, the average continues exactly
    first = Trainer(replace(cfg, max_steps=2, validate=False), tmp_path / "split", progress=False).fit()
    assert first.step == 2
    resumed = Trainer(replace(cfg, validate=False), tmp_path / "split", resume=True, progress=False).fit()
    assert resumed.step == 4
    again, _, _ = checkpoint.read(tmp_path / "split" / "final.safetensors")
    assert all(torch.equal(again[k], final[k]) for k in final)
    state = torch.load(tmp_path / "split" / "checkpoints" / "step-00000004.state.pt", weights_only=True)
    assert int(state["ema"]["n_averaged"]) == 5  # the initial weights and 4 updates


@pytest.mark.slow
def test_nonfinite_losses_are_skipped_and_stop_training(tiny64, tmp_path, monkeypatch):
    import zsw.train.trainer as trainer_mod
    from zsw.train.step import TrainStep
    from zsw.train.trainer import Trainer, TrainingError

    bad_calls: set[int] = set()
    calls = {"n": 0}

    class Flaky(TrainStep):
        def forward(self, batch):
            out = super().forward(batch)
            if not self.model.training:  # the trainer's unused-parameter probe
                return out
            calls["n"] += 1
            if calls["n"] in bad_calls or -1 in bad_calls:
                out["total"] = out["total"] * float("nan")
            return out

    monkeypatch.setattr(trainer_mod, "TrainStep", Flaky)
    bad_calls.update({2})
    cfg = _cfg(tiny64, stage="pixel", max_steps=3, nan_patience=2)
    result = Trainer(cfg, tmp_path / "once", progress=False).fit()
    assert result.step == 3 and result.nonfinite_steps == 1
    logged = [m for m in _metrics(tmp_path / "once") if "loss/total" in m]
    assert math.isnan(logged[1]["loss/total"]) and logged[2]["nonfinite_steps"] == 1
    from zsw import checkpoint

    weights, _, _ = checkpoint.read(tmp_path / "once" / "final.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())

    calls["n"] = 0
    bad_calls.clear()
    bad_calls.add(-1)  # every step
    with pytest.raises(TrainingError, match="2 consecutive non-finite"):
        Trainer(cfg, tmp_path / "always", progress=False).fit()


def test_train_errors_are_one_line(tiny64, tmp_path):
    from zsw.cli.main import app

    proc = tiny64[0]
    base = ["train", "--preset", str(tiny64[1]), "--out", str(tmp_path / "r"), "--no-progress", "--batch-size", "2"]
    cases = [
        ([], "no training data"),
        (["--data", str(proc), "--amp", "fp16", "--device", "cpu"], "fp16 needs a CUDA device"),
        (["--data", str(proc), "--batch-size", "3", "--grad-accum", "2"], "multiple of ranks x grad_accum"),
        (["--data", str(tmp_path / "nowhere")], "does not exist"),
        (["--data", str(tiny64[1])], "is a file"),  # said "dataset folder ... does not exist"
        (["--data", str(proc), "--init", str(tmp_path / "none.safetensors")], "--init: checkpoint"),
        (["--data", str(proc), "--init", str(proc)], "is a folder, not a checkpoint"),  # said "does not exist"
        (["--data", str(proc), "--stage", "joint"], "stage must be"),
        (["--data", str(proc), "--seed", "-1"], "seed must be"),  # was a traceback from numpy's SeedSequence
        (["--data", str(proc), "--seed", str(2**64)], "seed must be"),
    ]
    for extra, fragment in cases:
        result = runner.invoke(app, [*base, *extra])
        lines = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == 1 and len(lines) == 1 and fragment in lines[0], (extra, result.output)
        assert not (tmp_path / "r").exists(), extra  # a start that fails leaves no run folder behind


@pytest.mark.slow
def test_bench_train_cli_bf16(tiny64, tmp_path):
    import re

    from zsw.bench._harness import read_csv
    from zsw.cli.main import app

    csv_path = tmp_path / "train.csv"
    args = ["bench", "train", "--preset", str(tiny64[1]), "--batch-size", "2", "--points", "256", "--amp", "bf16",
            "--impl", "torch", "--impl", "triton", "--rep-ms", "1", "--out", str(csv_path),
            "--device", "cpu", "--profile"]  # fmt: skip
    result = runner.invoke(app, args, env={"TRITON_INTERPRET": "0"})
    assert result.exit_code == 0, result.output
    # --profile: where the torch step spent its time, by part (the triton row could not run)
    assert result.output.count("Where a training step of") == 1
    parts = dict(re.findall(r"^\| (?:- )?([a-z. ,()]+) \| ([\d.-]+) \|$", result.output, re.M))
    assert {"forward", "pixel", "encoder", "decoder.decode", "backward", "optimizer"} <= set(parts)
    assert all(float(parts[k]) > 0 for k in ("forward", "pixel", "decoder.decode", "backward"))
    assert float(parts["forward"]) >= float(parts["pixel"]) + float(parts["decoder.decode"])
    assert "aten::" in result.output  # the operators table
    rows = read_csv(csv_path)
    assert [(r["op"], r["provider"], r["dtype"]) for r in rows] == [
        ("train_step", "torch", "bf16"),
        ("train_step", "triton", "bf16"),
    ]
    assert float(rows[0]["throughput"]) > 0 and rows[0]["throughput_unit"] == "samples/s"
    assert "peak RSS" in rows[0]["note"]
    assert rows[1]["p50_ms"] == "nan" and "CUDA" in rows[1]["note"]  # no GPU, no interpreter: said so


def test_the_step_profile_leaves_the_model_as_it_found_it(tiny64):
    """profile_step ranges the decoder's methods by instance attributes and its parts by hooks:
    gone afterwards, so the next timed steps are the model's own."""
    from zsw.bench.train import _step_fn, profile_step
    from zsw.train.config import TrainConfig

    cfg = TrainConfig(model=str(tiny64[1]), stage="full", batch_size=1)
    fn = _step_fn(str(tiny64[1]), "torch", cfg, torch.device("cpu"), 64)
    text = profile_step(fn, torch.device("cpu"), "torch", top=3)
    assert "| - decoder.decode |" in text and text.count("| `") == 3
    decoder = fn.model.decoder
    assert "decode" not in vars(decoder) and "encode" not in vars(decoder)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in fn.model.modules())


def test_a_second_run_into_a_run_folder_in_use_stops_in_one_line(tiny64, tmp_path):
    """Two processes training into one folder (a run restarted in another terminal while the first
    goes on) both wrote checkpoints, metrics.jsonl and latest.json: the second's resume rewound the
    log over the first's steps and then died on a checkpoint the first had pruned. The run folder is
    locked for the whole run: a second start, with or without --resume, stops before it reads or
    writes anything, naming the holder."""
    import fcntl

    from zsw.cli.main import app

    run = tmp_path / "run"
    run.mkdir()
    base = ["train", "--preset", str(tiny64[1]), "--data", str(tiny64[0]), "--out", str(run), "--no-progress",
            "--batch-size", "2", "--max-steps", "1", "--workers", "0", "--device", "cpu", "--no-validate"]  # fmt: skip
    fd = os.open(run, os.O_RDONLY)  # what the first run holds (any flock on the folder)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for extra in ([], ["--resume"]):
            result = runner.invoke(app, [*base, *extra])
            lines = [line for line in result.output.splitlines() if line.startswith("error:")]
            assert result.exit_code == 1 and len(lines) == 1, result.output
            assert f"another process is writing to {run} (pid {os.getpid()}" in lines[0], lines[0]
            assert lines[0].endswith("stop it or choose another --out"), lines[0]
            assert not any(run.iterdir())  # nothing read or written: no config.yaml, no log
    finally:
        os.close(fd)
    result = runner.invoke(app, base)  # free again: the run goes on as ever, and lets go of the folder
    assert result.exit_code == 0 and (run / "final.safetensors").is_file(), result.output
    again = runner.invoke(app, [*base, "--resume", "--max-steps", "2"])
    assert again.exit_code == 0 and "resumed" in again.output, again.output
