"""The lent-GPU scripts cannot run here, but they must parse, install only what they carry, and
give every training stage of the GPU recipe a config that loads."""

from __future__ import annotations

import subprocess

import pytest


@pytest.mark.parametrize("script", ["gpu_env.sh", "gpu_prepare.sh", "gpu_session.sh", "gpu_train_demo.sh"])
def test_script_parses(repo_root, script):
    subprocess.run(["bash", "-n", str(repo_root / "bench" / script)], check=True)


def test_gpu_scripts_install_only_the_carried_wheels(repo_root):
    env = (repo_root / "bench" / "gpu_env.sh").read_text()
    assert "--no-index" in env and "--no-deps" in env  # the lent machine has no package registry
    for script in ("gpu_session.sh", "gpu_train_demo.sh"):
        text = (repo_root / "bench" / script).read_text()
        assert "source bench/gpu_env.sh" in text and "pip install" not in text


def test_gpu_training_configs_chain_their_stages(repo_root):
    from zsw.config import load_yaml
    from zsw.train.config import TrainConfig

    folder = repo_root / "configs" / "gpu"
    stages = {n: load_yaml(folder / f"{n}.yaml", TrainConfig) for n in ("pixel", "shape", "full")}
    assert [c.stage for c in stages.values()] == ["pixel", "shape", "full"]
    script = (repo_root / "bench" / "gpu_train_demo.sh").read_text()
    assert stages["full"].init == "runs/gpu-shape/best.safetensors" and "--out runs/gpu-shape" in script
    assert stages["full"].init_pixel == "runs/gpu-pixel/last-pixel.safetensors" and "--out runs/gpu-pixel" in script
    assert all(c.data.val_roots == ("data/gpu/val",) for c in stages.values()) and "--out data/gpu/val" in script
