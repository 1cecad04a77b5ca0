"""Shared pytest fixtures for zsw.

Runs with ``--import-mode=importlib`` (see pyproject): test modules cannot import each other, so
shared helpers live in fixtures here or in the package itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Without a GPU, Triton kernels run under the interpreter. The flag is read when a kernel is
# decorated, so it must be set before anything imports zsw.kernels.
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not _HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One intra-op thread (opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``): on a
    busy 2-core machine, OpenMP threads that spin-wait for each other make small models many times
    slower (8 tiny training steps: 34 CPU-s with 2 threads, 3.6 with 1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny64(tmp_path_factory):
    """(dataset root, model YAML) for training tests: 8 procedural views at 64 px (4 objects, 2
    views each: 6 train, 2 val) and the tiny preset at 64 px, whose steps are 10x cheaper."""
    from dataclasses import replace

    from zsw.config import dump_yaml, get_model_config
    from zsw.synth.procedural import ProceduralConfig, generate

    base = tmp_path_factory.getbasetemp()
    root = base / "zsw-proc64-4x2"
    generate(root, ProceduralConfig(objects=4, views=2, seed=0, size=64, categories=("box", "mug", "chair", "cone")))
    tiny = get_model_config("tiny")
    model = base / "tiny64.yaml"
    dump_yaml(replace(tiny, pixel=replace(tiny.pixel, image_size=64)), model)
    return root, model


@pytest.fixture(scope="module")
def tiny_model():
    """The tiny preset with random weights (seed 0), in eval mode; one per test module, which may
    change it."""
    import torch

    from zsw.model import build_model

    torch.manual_seed(0)
    return build_model("tiny").eval()


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_model, tmp_path_factory):
    """:func:`tiny_model` saved as a checkpoint."""
    from zsw import checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    checkpoint.save(tiny_model, path)
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def zeroshape_keys() -> list:
    """The 813 (name, shape, dtype) entries of an official ZeroShape shape-model state dict."""
    path = REPO / "tests" / "data" / "zeroshape_state_dict_keys.json"
    return json.loads(path.read_text())


@pytest.fixture
def memory_path(tmp_path):
    """A temporary folder in memory (``/dev/shm``) where the machine has one with room, else
    ``tmp_path``: for tests that write and read full-size checkpoints (0.8 GB each), whose time on
    a disk is the fsync of what they write, not the code they test."""
    import shutil
    import tempfile

    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 6 * 2**30):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="zsw-test-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def official_state_dict(zeroshape_keys) -> dict:
    """A fabricated official ZeroShape state dict: every listed tensor, random but well scaled
    (fan-in normal weights, BN statistics near identity), so that a forward pass stays finite and
    its outputs are O(1). The decoder position embedding is the true fixed sin-cos table."""
    import torch

    from zsw.model.geometry import sincos_pos_embed_2d

    g = torch.Generator().manual_seed(1234)
    sd = {}
    for name, shape, dtype in zeroshape_keys:
        leaf = name.rsplit(".", 1)[-1]
        if dtype == "int64":
            sd[name] = torch.tensor(100)
        elif leaf == "running_var":
            sd[name] = torch.rand(shape, generator=g) + 0.5
        elif leaf == "running_mean":
            sd[name] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1 and ("norm" in name or ".bn" in name or name.endswith(("bn1.weight", "bn2.weight"))):
            sd[name] = (
                1 + 0.1 * torch.randn(shape, generator=g) if leaf == "weight" else 0.1 * torch.randn(shape, generator=g)
            )
        elif len(shape) >= 2 and leaf == "weight":
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            sd[name] = torch.randn(shape, generator=g) * (1.0 / fan_in) ** 0.5
        else:
            sd[name] = 0.02 * torch.randn(shape, generator=g)
    sd["impl_network.pos_embed"] = sincos_pos_embed_2d(256, 14)[None]
    sd["intr_proj.weight"] = 0.01 * torch.randn(3, 768, generator=g)
    return sd
