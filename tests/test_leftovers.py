"""Nothing lost, nothing left over: file permissions of checkpoints, temporary files of killed
runs, outputs checked before the work starts."""

from __future__ import annotations

import os
import stat

import pytest
from typer.testing import CliRunner

from zsw.cli.main import app

runner = CliRunner()


def test_checkpoints_get_the_permissions_of_a_plain_file(tmp_path):
    from zsw import checkpoint
    from zsw.model import build_model

    path = tmp_path / "m.safetensors"
    checkpoint.save(build_model("tiny"), path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_leftover_temporary_files_are_removed_by_the_next_run(repo_root, tmp_path):
    from zsw.export.manifest import prepare_out

    out = tmp_path / "out"
    (out / "bolt").mkdir(parents=True)
    stale = out / "bolt" / ".depth.png.tmp-k1ll3d.png"
    stale.write_bytes(b"half a png")
    args = ["reconstruct", str(repo_root / "examples" / "bolt.png"), "-o", str(out), "--weights", "random:tiny",
            "--resolution", "8", "--no-preview"]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    assert not stale.exists() and not list((out / "bolt").glob(".*tmp*"))
    export = tmp_path / "export"
    (export / ".staging-abc").mkdir(parents=True)
    (export / ".staging-abc" / "decoder.onnx").write_bytes(b"x")
    (export / ".export.json.tmp-zz.json").write_text("{")
    prepare_out(export, overwrite=False)
    assert sorted(p.name for p in export.iterdir()) == []


def test_eval_refuses_a_folder_as_out_before_any_work(tmp_path):
    (tmp_path / "res").mkdir()
    result = runner.invoke(app, ["eval", "--data", str(tmp_path / "nowhere"), "--format", "procedural", "--out",
                                 str(tmp_path / "res")])  # fmt: skip
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "is a folder" in lines[0], result.output


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_atomic_json_is_strict(tmp_path, bad):
    from zsw.io import atomic_write_json

    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "x.json", {"cd": float(bad)})
    assert not (tmp_path / "x.json").exists() and not list(tmp_path.iterdir())


def test_synthesis_training_and_eval_remove_what_a_killed_run_left(tmp_path):
    """Each long job cleans its own output of half-written files at start (found by the fault
    suite: a SIGKILL during a synthesis write left `.box_00002.npy.tmp-*` for good)."""
    from zsw.io import remove_leftovers
    from zsw.synth.procedural import ProceduralConfig, generate

    data = tmp_path / "data"
    cfg = ProceduralConfig(objects=1, views=1, seed=0, categories=("box",), size=64)
    generate(data, cfg)
    stale = data / "gt_sdf" / "box" / ".box_00000.npy.tmp-k1ll3d.npy"
    stale.write_bytes(b"half")
    generate(data, cfg)  # the rerun: nothing left to render, the leftover goes
    assert not stale.exists()

    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    (run / ".step-00000002.state.pt.tmp-ab.pt").write_bytes(b"half")
    from zsw.train.config import TrainConfig
    from zsw.train.run_folder import RunFolder

    RunFolder(tmp_path / "run", print).write_config(TrainConfig())
    assert not list((tmp_path / "run").rglob(".*.tmp-*"))

    shared = tmp_path / "results"  # a folder with other people's files: only ours go
    shared.mkdir()
    ours, theirs = shared / ".r.json.tmp-1.json", shared / ".notes.txt.tmp-2.txt"
    ours.write_text("{"), theirs.write_text("x")
    assert remove_leftovers(shared, names=["r.json", "r.md"]) == 1 and not ours.exists() and theirs.exists()
