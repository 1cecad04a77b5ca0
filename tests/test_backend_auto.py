"""`--backend auto`: the packaged model on a CPU runs its shipped ONNX graphs (pixel model, encoder)
on ONNX Runtime and its decoder in PyTorch, without importing timm; everything else stays on the
PyTorch model. What is checked: which backend `auto` picks and when it must not; that the shipped
graphs belong to the shipped weights; that the meshes match the PyTorch backend's; that the
process never imports timm, torchvision or triton; and that reruns record the resolved backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from zsw.errors import CheckpointError, ConfigError
from zsw.infer import weights as rmod
from zsw.infer.reconstruct import reconstruct
from zsw.infer.weights import demo_engine, demo_weights, resolve_backend


def test_the_packaged_graphs_were_exported_from_the_packaged_weights():
    """A new default model must ship with its own export (`zsw export --out zsw/assets/demo/onnx`):
    a stale export is never used, so forgetting it would silently slow the CPU path down."""
    from zsw.io import sha256_file

    folder = demo_engine()
    assert folder is not None, "zsw/assets/demo/onnx is missing or was exported from other weights"
    manifest = json.loads((folder / "export.json").read_text())
    assert manifest["source"] == {"weights": f"demo:{demo_weights().name}", "sha256": sha256_file(demo_weights())}
    for graph in ("pixel", "encoder", "decoder"):
        entry = manifest["graphs"][graph]
        assert sha256_file(folder / entry["file"]) == entry["sha256"] and entry["validation"]["passed"]


def test_auto_picks_onnxruntime_plus_torch_only_for_the_packaged_model_at_fp32_on_a_cpu(tmp_path, monkeypatch):
    assert resolve_backend("auto", None, None, "cpu", "auto") == "onnxruntime+torch"
    assert resolve_backend("auto", "demo", None, "cpu", "fp32") == "onnxruntime+torch"
    assert resolve_backend("auto", str(tmp_path / "mine.safetensors"), None, "cpu", "auto") == "torch"
    assert resolve_backend("auto", "random:tiny", None, "cpu", "auto") == "torch"
    assert resolve_backend("auto", None, None, "cpu", "bf16") == "torch"  # graphs are fp32
    assert resolve_backend("auto", None, None, "cuda", "auto") == "torch"
    for kind in ("torch", "onnxruntime", "tensorrt"):
        assert resolve_backend(kind, None, None, "cpu", "auto") == kind
    with pytest.raises(ConfigError, match="--engine"):
        resolve_backend("auto", None, tmp_path, "cpu", "auto")
    # a stale export (other weights) or no onnxruntime: the PyTorch model
    monkeypatch.setattr(rmod, "demo_engine", lambda: None)
    assert resolve_backend("auto", None, None, "cpu", "auto") == "torch"
    monkeypatch.undo()
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # installed but failing to import is as absent
    assert resolve_backend("auto", None, None, "cpu", "auto") == "torch"


def test_a_stale_export_is_not_the_packaged_engine(tmp_path, monkeypatch):
    import shutil

    demo = tmp_path / "demo"
    shutil.copytree(demo_engine(), demo / "onnx")
    shutil.copy(demo_weights(), demo / demo_weights().name)
    monkeypatch.setattr(rmod, "DEMO_DIR", demo)
    assert rmod.demo_engine() == demo / "onnx"
    manifest = json.loads((demo / "onnx" / "export.json").read_text())
    manifest["source"]["sha256"] = "0" * 64
    (demo / "onnx" / "export.json").write_text(json.dumps(manifest))
    assert rmod.demo_engine() is None


@pytest.mark.parametrize("damage", ["missing encoder", "changed pixel graph", "missing embedding"])
def test_auto_runs_pytorch_when_the_packaged_export_is_damaged(damage, tmp_path, monkeypatch, repo_root):
    """A packaged graph deleted or changed (a broken install, a hand edit): ``auto`` runs the
    PyTorch model instead of failing on the file it was about to read."""
    import shutil

    demo = tmp_path / "demo"
    shutil.copytree(demo_engine(), demo / "onnx")
    shutil.copy(demo_weights(), demo / demo_weights().name)
    if damage == "missing encoder":
        (demo / "onnx" / "encoder.onnx").unlink()
    elif damage == "changed pixel graph":
        with open(demo / "onnx" / "pixel.onnx", "r+b") as f:
            f.seek(1000)
            f.write(b"\0" * 16)
    else:
        (demo / "onnx" / "default_text_embedding.npy").unlink()
    monkeypatch.setattr(rmod, "DEMO_DIR", demo)
    assert rmod.demo_engine() is None
    assert resolve_backend("auto", None, None, "cpu", "auto") == "torch"
    rec = reconstruct(repo_root / "examples" / "teddy_bear.png", resolution=16, device="cpu")
    assert rec.info["model"]["backend"] == "torch" and len(rec.mesh.faces) > 0


def test_the_checkpoint_hash_is_computed_once_and_follows_the_file(tmp_path, monkeypatch):
    import zsw.io as zio

    reads = []
    real = zio.sha256_file
    monkeypatch.setattr(zio, "sha256_file", lambda p: reads.append(p) or real(p))
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"one")
    first = zio.checkpoint_sha256(path)
    assert zio.checkpoint_sha256(tmp_path / "." / "w.safetensors") == first and len(reads) == 1
    path.write_bytes(b"other")  # another state of the file: hashed again
    assert zio.checkpoint_sha256(path) == real(path) != first and len(reads) == 2
    # replaced, or rewritten in place, by bytes of the same size with the old modification time
    # kept (cp -p, rsync -t, tar x): hashed again each time
    for i, content in enumerate((b"OTHER", b"other")):
        st = path.stat()
        if i == 0:
            (tmp_path / "new").write_bytes(content)
            os.replace(tmp_path / "new", path)
        else:
            path.write_bytes(content)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
        assert zio.checkpoint_sha256(path) == real(path) and len(reads) == 3 + i


def test_the_decoder_must_come_from_the_checkpoint_the_graphs_were_exported_from(tmp_path):
    from zsw import checkpoint
    from zsw.infer.backend import load_backend
    from zsw.model import build_model

    other = tmp_path / "other.safetensors"
    checkpoint.save(build_model("tiny"), other)
    with pytest.raises(ConfigError, match="not the checkpoint the graphs"):
        load_backend("onnxruntime+torch", weights=other, engine=demo_engine(), device="cpu")
    be = load_backend("onnxruntime+torch", weights=demo_weights(), engine=demo_engine(), device="cpu")
    assert be.name == "onnxruntime+torch" and "decoder" not in be.sessions


def _vertex_agreement(a: np.ndarray, b: np.ndarray, tol: float) -> float:
    """Share of the vertices of either mesh within ``tol`` of a vertex of the other."""
    from scipy.spatial import cKDTree

    da = cKDTree(b).query(a)[0]
    db = cKDTree(a).query(b)[0]
    return float(np.concatenate([da, db]).__le__(tol).mean())


def test_auto_on_a_cpu_gives_the_meshes_of_the_pytorch_backend(repo_root):
    """The graphs agree with eager PyTorch to ~1e-4, so the meshes are the same up to the odd
    vertex of a grid cell whose corners straddle the threshold within that rounding."""
    photo = repo_root / "examples" / "teddy_bear.png"
    auto = reconstruct(photo, resolution=64)
    ref = reconstruct(photo, resolution=64, backend="torch")
    assert auto.info["model"]["backend"] == "onnxruntime+torch" and auto.info["model"]["precision"] == "fp32"
    assert ref.info["model"]["backend"] == "torch"
    va, vb = np.asarray(auto.mesh.vertices), np.asarray(ref.mesh.vertices)
    assert abs(len(va) - len(vb)) <= 0.01 * len(vb), (len(va), len(vb))
    cell = float(np.ptp(vb, axis=0).max()) / 64
    assert _vertex_agreement(va, vb, 0.05 * cell) >= 0.99
    assert _vertex_agreement(va, vb, 1.0 * cell) == 1.0
    np.testing.assert_allclose(auto.info["camera"]["intrinsics"], ref.info["camera"]["intrinsics"], rtol=1e-4)


def test_the_onnxruntime_backend_without_an_engine_runs_the_packaged_graphs(repo_root):
    rec = reconstruct(repo_root / "examples" / "teddy_bear.png", resolution=32, backend="onnxruntime")
    assert rec.info["model"]["backend"] == "onnxruntime" and len(rec.mesh.faces) > 100
    assert rec.info["model"]["weights"] == f"demo:{demo_weights().name} (ONNX)"
    assert not any("--precision" in w for w in rec.info["warnings"])
    # a precision the graphs do not compute in is said, not dropped in silence
    bf16 = reconstruct(repo_root / "examples" / "teddy_bear.png", resolution=8, backend="onnxruntime", precision="bf16")
    assert bf16.info["model"]["precision"] == "engine"
    assert any(w.startswith("--precision bf16 is for the torch backend") for w in bf16.info["warnings"])


def test_the_cpu_path_never_imports_timm_torchvision_or_triton(repo_root, tmp_path):
    """What the CPU start-up saves (timm pulls in torchvision and torch._dynamo: ~2 s of a 2-core
    CPU; triton ~0.2 s) holds only while nothing on the path imports them: checked in a fresh
    process running the CLI's job, without the test suite's TRITON_INTERPRET."""
    code = (
        "import sys\n"
        "from zsw.infer.jobs import reconstruct_many\n"
        "from zsw.infer.settings import GridSettings, ReconstructSettings\n"
        f"r = reconstruct_many([{str(repo_root / 'examples' / 'teddy_bear.png')!r}], {str(tmp_path)!r},"
        " ReconstructSettings(grid=GridSettings(resolution=32)))\n"
        "assert r.ok and len(r.written) == 1, r.failed\n"
        "heavy = ('timm', 'torchvision', 'triton', 'torch._dynamo', 'torch.onnx')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ZSW_KERNELS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
    result = json.loads((tmp_path / "teddy_bear" / "result.json").read_text())
    assert result["model"]["backend"] == "onnxruntime+torch"
    assert result["request"]["backend"] == "onnxruntime+torch"  # what auto resolved to, for reruns


def test_a_rerun_with_another_resolved_backend_is_redone(repo_root, tmp_path):
    from zsw.infer.jobs import reconstruct_many
    from zsw.infer.settings import GridSettings, ReconstructSettings

    photo = [str(repo_root / "examples" / "teddy_bear.png")]
    grid = GridSettings(resolution=16)
    first = reconstruct_many(photo, tmp_path, ReconstructSettings(grid=grid))
    assert len(first.written) == 1
    assert reconstruct_many(photo, tmp_path, ReconstructSettings(grid=grid)).skipped == 1
    again = reconstruct_many(photo, tmp_path, ReconstructSettings(grid=grid, backend="torch"))
    assert again.redone == 1 and len(again.written) == 1


def test_a_result_made_by_another_zsw_release_is_redone(repo_root, tmp_path, monkeypatch):
    """Another release may mesh the same photo differently: its result is not reused."""
    import zsw
    from zsw.infer.jobs import reconstruct_many
    from zsw.infer.settings import GridSettings, ReconstructSettings

    photo = [str(repo_root / "examples" / "teddy_bear.png")]
    settings = ReconstructSettings(grid=GridSettings(resolution=16))
    assert len(reconstruct_many(photo, tmp_path, settings).written) == 1
    monkeypatch.setattr(zsw, "__version__", "99.0.0")
    again = reconstruct_many(photo, tmp_path, settings)
    assert again.redone == 1 and len(again.written) == 1
    record = json.loads((tmp_path / "teddy_bear" / "result.json").read_text())
    assert record["request"]["zsw_version"] == "99.0.0"
    assert reconstruct_many(photo, tmp_path, settings).skipped == 1


def test_a_result_made_by_other_code_of_the_same_release_is_redone(repo_root, tmp_path, monkeypatch):
    """A checkout or an edit within one release may read or mesh a photo differently (a new colour
    conversion, another resize): what older code made is not reused."""
    import zsw.io
    from zsw.infer.jobs import reconstruct_many
    from zsw.infer.settings import GridSettings, ReconstructSettings

    photo = [str(repo_root / "examples" / "teddy_bear.png")]
    settings = ReconstructSettings(grid=GridSettings(resolution=16))
    assert len(reconstruct_many(photo, tmp_path, settings).written) == 1
    record = json.loads((tmp_path / "teddy_bear" / "result.json").read_text())
    assert record["request"]["zsw_code"] == zsw.io.code_identity()
    monkeypatch.setattr(zsw.io, "code_identity", lambda *packages: "other code")
    again = reconstruct_many(photo, tmp_path, settings)
    assert again.redone == 1 and len(again.written) == 1
    assert reconstruct_many(photo, tmp_path, settings).skipped == 1


def test_code_identity_follows_the_files_not_where_they_lie(tmp_path, monkeypatch):
    """The hash names the code by its files' names and bytes: a fresh clone of the same code agrees
    (modification times and folders differ), an edited or added module does not."""
    import shutil

    from zsw.io import code_identity

    def package(root, text):
        pkg = root / "zswfake_pkg"
        (pkg / "sub").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "sub" / "__init__.py").write_text("")
        (pkg / "sub" / "mesh.py").write_text(text)
        return root

    def identity(root):
        monkeypatch.syspath_prepend(str(root))
        code_identity.cache_clear()
        try:
            return code_identity(("zswfake_pkg",))
        finally:
            sys.path.remove(str(root))
            sys.modules.pop("zswfake_pkg", None)
            code_identity.cache_clear()

    first = identity(package(tmp_path / "a", "LEVEL = 0.5\n"))
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # another clone: other folder, other times
    assert identity(tmp_path / "b") == first
    (tmp_path / "b" / "zswfake_pkg" / "sub" / "mesh.py").write_text("LEVEL = 0.4\n")
    assert identity(tmp_path / "b") != first
    (tmp_path / "a" / "zswfake_pkg" / "sub" / "extra.py").write_text("")
    assert identity(tmp_path / "a") != first
    assert len(code_identity()) == 64 and code_identity() == code_identity()


def test_the_decoder_alone_loads_from_a_checkpoint_and_decodes_like_the_model(tmp_path):
    from zsw import checkpoint
    from zsw.model import build_model

    torch.manual_seed(3)
    model = build_model("tiny").eval()
    path = tmp_path / "m.safetensors"
    checkpoint.save(model, path)
    decoder = checkpoint.load_decoder(path)
    out = model(torch.rand(1, 3, model.config.pixel.image_size, model.config.pixel.image_size))
    points = torch.rand(1, 300, 3) * 2 - 1
    with torch.inference_mode():
        expected = model.decode(out, points)
        got = decoder.decode(model.latents(out), points)
    torch.testing.assert_close(got, expected)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    broken = {k: v for k, v in checkpoint.read(path)[0].items() if not k.startswith("decoder.blocks.0.mlp")}
    save_file(broken, str(tmp_path / "broken.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match=r"\(decoder\) does not fit .*missing"):
        checkpoint.load_decoder(tmp_path / "broken.safetensors")


def test_the_decoder_mlp_has_timms_parameter_names_and_output():
    """FeedForward replaced timm's Mlp in the decoder: checkpoints must load either way."""
    from timm.layers import Mlp

    from zsw.model.layers import FeedForward

    ours, theirs = FeedForward(16, 64), Mlp(16, 64, act_layer=torch.nn.GELU)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 16)
    torch.testing.assert_close(ours(x), theirs(x))
