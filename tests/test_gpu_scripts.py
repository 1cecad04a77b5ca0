"""The lent-GPU scripts cannot run here, but they must parse, install only what they carry, and
give every training stage of the GPU recipe a config that loads."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "script", ["gpu_env.sh", "gpu_prepare.sh", "gpu_session.sh", "gpu_train_demo.sh", "gpu_image_check.sh"]
)
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
    # stage shape continues the packaged model (SHAPE=wide: a wider one from scratch); stage full
    # takes its shape path and v6's pixel model
    shape_cmd = next(line for line in script.splitlines() if "configs/gpu/shape.yaml" in line and "zsw train" in line)
    full_cmd = next(line for line in script.splitlines() if "configs/gpu/full.yaml" in line and "zsw train" in line)
    assert '"${shape_args[@]}"' in shape_cmd and '"${model[@]}"' in full_cmd and "--out runs/gpu-shape" in script
    assert "shape_args=(--init demo --lr 0.0005); model=()" in script
    assert 'model=(--preset configs/gpu/model-wide.yaml); shape_args=("${model[@]}")' in script
    assert stages["full"].init == "runs/gpu-shape/best.safetensors" and stages["full"].init_pixel == "demo"
    assert "configs/gpu/pixel.yaml" not in script  # the first run's stage pixel, no longer run
    assert all(c.data.val_roots == ("data/gpu/val",) for c in stages.values()) and "--out data/gpu/val" in script


def test_gpu_scripts_keep_the_tree_off_sys_path(repo_root, tmp_path):
    """The scripts run from the repository root with zsw installed from a wheel: the tree's zsw/
    folder (which lacks zsw.kernels, zsw.cli and zsw.bench) must not shadow it, for `python3 -c`
    and `python3 -m` alike (seen on the CPU with the lent GPU's Python, torch and triton). Run from
    a stand-in root holding gpu_env.sh alone, so that no carried wheels get installed."""
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "gpu_env.sh").write_text((repo_root / "bench" / "gpu_env.sh").read_text())

    def run(command: str) -> str:
        script = f"export ZSW_GPU_OPTIONAL=1; source bench/gpu_env.sh && {command}"
        return subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True).stdout

    if sys.version_info < (3, 11):  # PYTHONSAFEPATH is 3.11's: the script says so instead of shadowing zsw
        failed = subprocess.run(["bash", "-c", "source bench/gpu_env.sh"], cwd=tmp_path, capture_output=True, text=True)
        assert failed.returncode == 2 and "need Python 3.11 or newer for PYTHONSAFEPATH" in failed.stderr
        return
    probe = "import os, sys; print(os.getcwd() in {os.path.abspath(p or '.') for p in sys.path})"
    assert run(f'python3 -c "{probe}"').strip() == "False"
    listed = run("python3 -m site")  # prints sys.path, one quoted entry a line
    assert f"'{tmp_path}'," not in listed, listed


def test_the_wide_gpu_variant_takes_v6s_pixel_model(repo_root):
    """SHAPE=wide's stage full builds the wider model and loads the packaged model's pixel weights
    into it (init_pixel: demo checks that the pixel configs match); its shape path is wider."""
    import dataclasses

    import torch

    from zsw import checkpoint
    from zsw.config import get_model_config
    from zsw.infer.weights import demo_weights
    from zsw.train.config import compose
    from zsw.train.setup import build_model_for

    wide = str(repo_root / "configs" / "gpu" / "model-wide.yaml")
    cfg = compose(repo_root / "configs" / "gpu" / "full.yaml", model=wide)
    cfg = dataclasses.replace(cfg, init=None)  # runs/gpu-shape/ exists only on the lent machine
    model = build_model_for(cfg)
    ours, theirs = model.state_dict(), checkpoint.read(demo_weights())[0]
    pixel = [k for k in theirs if k.startswith("pixel.")]
    assert pixel and all(torch.equal(ours[k], theirs[k]) for k in pixel)
    demo, wider = get_model_config("demo"), get_model_config(wide)
    assert wider.pixel == demo.pixel and wider.decoder.width == 2 * demo.decoder.width
    assert wider.encoder.token_dim == 2 * demo.encoder.token_dim
