"""Training runs that must not be lost: batches of one, damaged checkpoints, `--resume` alone,
paths given two ways, and settings that cannot train (a NaN or negative learning rate)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from zsw.cli.main import app
from zsw.data.dataset import AugmentConfig
from zsw.errors import ConfigError
from zsw.train.config import DataConfig, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
NO_AUGMENT = AugmentConfig(occluders=(0, 0), backgrounds="never")


def _cfg(tiny64, **kw) -> TrainConfig:
    data = DataConfig(roots=(str(tiny64[0]),), workers=0, points=256, augment=NO_AUGMENT)
    base = dict(model=str(tiny64[1]), stage="full", batch_size=2, validate=False, log_every=1, data=data,
                checkpoint_every=1, keep_checkpoints=3)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _steps(run) -> list[int]:
    return [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss/total" in r]


def test_stage_full_trains_with_one_sample_per_batch(tiny64, tmp_path):
    from zsw.train.trainer import train

    result = train(_cfg(tiny64, batch_size=1, max_steps=2), tmp_path / "run", progress=False)
    assert result.step == 2 and result.nonfinite_steps == 0


def test_resume_skips_a_corrupt_latest_json_and_a_truncated_checkpoint(tiny64, tmp_path):
    from zsw.train.trainer import train

    run = tmp_path / "run"
    train(_cfg(tiny64, max_steps=3), run, progress=False)
    ckpts = run / "checkpoints"
    (ckpts / "latest.json").write_text("{not json")
    newest = ckpts / "step-00000003.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated by a crash
    messages: list[str] = []
    result = train(_cfg(tiny64, max_steps=4), run, resume=True, progress=False, echo=messages.append)
    assert any("step-00000002" in m and "newest checkpoint that loads" in m for m in messages), messages
    assert result.step == 4 and _steps(run) == [1, 2, 3, 4]  # step 3 redone from step 2, logged once
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/total")] == [1, 2, 3, 4]


@pytest.mark.parametrize("latest", ["[1, 2]", '{"model": 3, "state": null}'])
def test_resume_reads_a_latest_json_of_another_shape_as_unreadable(tiny64, tmp_path, latest):
    """JSON that is not a checkpoint record was an AttributeError traceback."""
    from zsw.train.trainer import train

    run = tmp_path / "run"
    train(_cfg(tiny64, max_steps=2), run, progress=False)
    (run / "checkpoints" / "latest.json").write_text(latest)
    messages: list[str] = []
    result = train(_cfg(tiny64, max_steps=3), run, resume=True, progress=False, echo=messages.append)
    assert any("latest.json is unreadable" in m for m in messages), messages
    assert any("resumed" in m and "at step 2" in m for m in messages), messages
    assert result.step == 3 and _steps(run) == [1, 2, 3]


def test_resume_without_config_yaml_checks_the_settings_the_checkpoint_records(tiny64, tmp_path):
    """config.yaml deleted: the checkpoint's own record of the run's settings is compared instead
    (the comparison was skipped, so any change resumed silently)."""
    from dataclasses import replace

    from zsw.train.config import OptimConfig
    from zsw.train.trainer import train

    run = tmp_path / "run"
    cfg = _cfg(tiny64, max_steps=2)
    train(cfg, run, progress=False)
    (run / "config.yaml").unlink()
    with pytest.raises(ConfigError, match=r"cannot resume .* trained with optim.lr=1e-05, now 0.002"):
        train(replace(cfg, max_steps=3, optim=OptimConfig(lr=2e-3)), run, resume=True, progress=False)
    assert train(replace(cfg, max_steps=3), run, resume=True, progress=False).step == 3


def test_resume_alone_reads_the_run_config_and_paths_compare_resolved(tiny64, tmp_path, monkeypatch):
    from zsw.config import dump_yaml

    monkeypatch.chdir(tmp_path)
    os.symlink(tiny64[0], tmp_path / "data")
    recipe = tmp_path / "recipe.yaml"
    dump_yaml(_cfg(tiny64, max_steps=2), recipe)
    args = ["train", "--config", str(recipe), "--data", "data", "--out", "run", "--no-progress"]
    assert runner.invoke(app, args).exit_code == 0
    # the same folder as an absolute path is the same dataset
    again = ["train", "--config", str(recipe), "--data", str(tmp_path / "data"), "--out", "run", "--resume",
             "--max-steps", "3", "--no-progress"]  # fmt: skip
    result = runner.invoke(app, again)
    assert result.exit_code == 0 and "at step 3" in result.output, result.output
    # --resume alone continues with the run's own config.yaml
    result = runner.invoke(app, ["train", "--out", "run", "--resume", "--max-steps", "4", "--no-progress"])
    assert result.exit_code == 0 and "at step 4" in result.output, result.output


@pytest.mark.parametrize("lr", ["nan", "-0.001", "inf"])
def test_learning_rates_that_cannot_train_are_refused_at_load(tiny64, tmp_path, lr):
    args = ["train", "--preset", str(tiny64[1]), "--data", str(tiny64[0]), "--stage", "full", "--out",
            str(tmp_path / "run"), "--lr", lr, "--no-progress"]  # fmt: skip
    result = runner.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code in (1, 2) and len(lines) == 1 and "lr" in lines[0], result.output
    assert not (tmp_path / "run").exists()
    (tmp_path / "bad.yaml").write_text(f"optim:\n  lr: {lr}\n")
    with pytest.raises(ConfigError, match="optim.lr"):
        from zsw.config import load_yaml

        load_yaml(tmp_path / "bad.yaml", TrainConfig)


class _Killed(BaseException):
    """A SIGKILL within the test's process: nothing after it runs (not even ``except Exception``)."""


def _event_steps(run, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


@pytest.mark.parametrize("kill_step, after_logging", [(3, True), (6, False)])
def test_a_run_killed_in_an_epochs_validation_validates_once_on_resume(
    tiny64, tmp_path, monkeypatch, kill_step, after_logging
):
    """The last step of an epoch is checkpointed (checkpoint_every, or the run's last step) before
    the epoch's validation, and again after it. Killed in between, the run resumes at the epoch's
    end: it validates (killed in the last epoch's validation it never did, and best.safetensors
    missed those weights), and what it had logged of that validation is not logged twice."""
    from dataclasses import replace

    from zsw.train.trainer import Trainer, train

    cfg = _cfg(tiny64, stage="pixel", validate=True, epochs=2)  # 6 training views: 3 steps an epoch
    cfg = replace(cfg, data=replace(cfg.data, val_samples=1))
    run, validate = tmp_path / "run", Trainer._validate

    def killed(self, model, val_ds, step, epoch):
        if step == kill_step and after_logging:
            validate(self, model, val_ds, step, epoch)
            self.monitor._tb.flush()  # what a killed process had written
        if step == kill_step:
            raise _Killed
        return validate(self, model, val_ds, step, epoch)

    monkeypatch.setattr(Trainer, "_validate", killed)
    with pytest.raises(_Killed):
        train(cfg, run, progress=False)
    monkeypatch.setattr(Trainer, "_validate", validate)
    assert train(cfg, run, resume=True, progress=False).step == 6
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("event") == "validation"] == [3, 6]
    assert _event_steps(run, "val/depth_ssi_mae") == [3, 6]
    assert _event_steps(run, "train/lr") == [1, 2, 3, 4, 5, 6]
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    state = torch.load(run / "checkpoints" / latest["state"], weights_only=True)
    assert (state["step"], state["epoch"], state["consumed"]) == (6, 2, 0)


def test_resuming_with_other_validation_views_chooses_the_best_weights_anew(tiny64, tmp_path):
    """data.val_roots, data.val_samples and val_resolution may change on resume, but then a score
    is no longer comparable with the best one so far: best.safetensors was kept or replaced on
    the comparison of two different measures."""
    from dataclasses import replace

    from zsw import checkpoint
    from zsw.train.trainer import train

    cfg = _cfg(tiny64, stage="pixel", validate=True, max_steps=3)  # 3 steps: one epoch, validated
    run = tmp_path / "run"
    train(replace(cfg, data=replace(cfg.data, val_samples=2)), run, progress=False)
    said: list[str] = []
    fewer = replace(cfg, max_steps=4, data=replace(cfg.data, val_samples=1))
    result = train(fewer, run, resume=True, progress=False, echo=said.append)
    assert any("validation settings changed (data.val_samples)" in m for m in said), said
    best = checkpoint.read(run / "best.safetensors")[2]
    assert best["step"] == 4 and best["val/samples"] == 1.0 and result.validation["val/samples"] == 1.0
