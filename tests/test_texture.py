"""--texture: the photo baked into a texture atlas (zsw.infer.texture), and the files it goes into."""

from __future__ import annotations

import json
import struct
import sys

import numpy as np
import pytest
import trimesh

from zsw.errors import ConfigError, OptionError
from zsw.infer.color import _bilinear
from zsw.infer.texture import bake_texture, check_texture_size

S = 64
K = np.array([[60.0, 0, (S - 1) / 2], [0, 60.0, (S - 1) / 2], [0, 0, 1]])


def _photo() -> np.ndarray:  # [S, S, 3]: detail no vertex colour of a coarse mesh can hold
    y, x = np.mgrid[0:S, 0:S]
    return np.stack([x * 4, y * 4, ((x // 4 + y // 4) % 2) * 255], axis=-1).astype(np.uint8)


def _texture_at(uv: np.ndarray, image: np.ndarray) -> np.ndarray:  # [P, 2] (v up) -> [P, 3]
    H, W = image.shape[:2]
    return _bilinear(image, uv[:, 0] * W - 0.5, (1.0 - uv[:, 1]) * H - 0.5)


def _points(tex, vertices, bary):  # each atlas face's point at ``bary`` and its uv
    return (vertices[tex.vertex_index][tex.faces] * bary[:, None]).sum(1), (tex.uv[tex.faces] * bary[:, None]).sum(1)


def test_seen_texels_carry_the_photo_and_hidden_ones_the_vertex_colours():
    # a box 2 units in front of the camera: its front face (z = 1.5) is seen, the rest is not
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    box = box.subdivide().subdivide()  # 8 x 8 quads on a face: far coarser than the photo's checks
    vertices = np.asarray(box.vertices) + [0.0, 0.0, 2.0]
    faces = np.asarray(box.faces)
    seen = vertices[:, 2] < 1.5 + 1e-9
    rgb = np.where(seen[:, None], 0, [[10, 200, 30]]).astype(np.uint8)  # the colour rule's stand-in
    mask = np.ones((S, S), dtype=bool)
    tex = bake_texture(vertices, faces, _photo(), K, mask, rgb, seen, size=256)

    assert tex.image.shape == (256, 256, 3) and tex.uv.min() >= 0 and tex.uv.max() <= 1
    assert tex.faces.shape[1] == 3 and len(tex.vertex_index) >= len(vertices)  # seams duplicate vertices
    assert 0 < tex.seen_texels < tex.covered_texels <= 256 * 256
    bary = np.array([0.2, 0.3, 0.5])
    points, uv = _points(tex, vertices, bary)
    colour = _texture_at(uv, tex.image)
    front = (seen[tex.vertex_index][tex.faces]).all(axis=1)
    u = K[0, 0] * points[:, 0] / points[:, 2] + K[0, 2]
    v = K[1, 1] * points[:, 1] / points[:, 2] + K[1, 2]
    inner = front & (u > 2) & (u < S - 3) & (v > 2) & (v < S - 3)  # off the shrunk mask's rim
    assert inner.sum() > 20
    photo = _bilinear(_photo(), u[inner], v[inner])
    assert np.abs(colour[inner] - photo).mean() < 6.0  # the checks survive: vertex colours would be 0
    back = ~(seen[tex.vertex_index][tex.faces]).any(axis=1)
    assert np.abs(colour[back] - [10, 200, 30]).max() < 1.5  # the hidden side: the vertex colours
    assert (tex.image.reshape(-1, 3).max(axis=1) > 0).all()  # the gaps between charts are filled too


def test_bad_sizes_and_a_missing_xatlas_say_what_to_do(monkeypatch):
    for bad in (-1, 8, 10**5, True, 64.0):
        with pytest.raises(OptionError, match="--texture"):
            check_texture_size(bad)
    check_texture_size(0)
    check_texture_size(64)
    monkeypatch.setitem(sys.modules, "xatlas", None)  # `import xatlas` raises ModuleNotFoundError
    box = trimesh.creation.box()
    with pytest.raises(ConfigError, match=r'pip install "zsw\[texture\]"'):
        bake_texture(np.asarray(box.vertices) + [0, 0, 3], box.faces, _photo(), K, np.ones((S, S), bool),
                     np.zeros((8, 3), np.uint8), np.zeros(8, bool), size=64)  # fmt: skip


def test_textured_files_are_written_kept_in_step_and_keyed(repo_root, tmp_path):
    from zsw.infer.jobs import reconstruct_many
    from zsw.infer.settings import GridSettings, ReconstructSettings

    photo = repo_root / "examples" / "toy.png"
    grid = GridSettings(resolution=32)

    def run(**options):
        settings = ReconstructSettings(device="cpu", grid=grid, formats=("glb", "obj", "ply"), preview=False, **options)
        return reconstruct_many([photo], tmp_path, settings)

    run(faces=400, texture=128)
    out = tmp_path / "toy"
    info = json.loads((out / "result.json").read_text())
    assert info["mesh"]["texture"] == 128 and info["timings_s"]["texture"] > 0
    assert {"mesh.mtl", "material_0.png"} <= set(info["files"])
    glb = trimesh.load(out / "mesh.glb", force="mesh", process=False)
    assert glb.visual.kind == "texture" and glb.visual.material.baseColorTexture.size == (128, 128)
    assert info["mesh"]["watertight"] and trimesh.Trimesh(glb.vertices, glb.faces).is_watertight  # seams merged
    obj = trimesh.load(out / "mesh.obj", force="mesh", process=False)
    assert obj.visual.kind == "texture" and len(obj.faces) == len(glb.faces)
    ply = trimesh.load(out / "mesh.ply", process=False)
    assert ply.visual.kind == "vertex"  # PLY keeps the vertex colours
    assert run(faces=400, texture=128).skipped == 1
    assert len(run(faces=400, texture=0).written) == 1  # another texture setting redoes the image
    info = json.loads((out / "result.json").read_text())
    assert info["mesh"]["texture"] is None
    assert not (out / "mesh.mtl").exists() and not (out / "material_0.png").exists()  # folder matches result.json
    with pytest.raises(OptionError, match="--texture.*--color photo"):
        ReconstructSettings(texture=256, color="none")
    with pytest.raises(OptionError, match="--texture: .* asks for ply, stl only"):  # no file would hold the atlas
        ReconstructSettings(texture=256, formats=("ply", "stl"))


def _glb_json(path) -> dict:
    import struct

    data = path.read_bytes()
    (length,) = struct.unpack("<I", data[12:16])
    return json.loads(data[20 : 20 + length])


def test_mesh_files_look_in_viewers_as_meant(repo_root, tmp_path):
    """What viewers read, at the format level: normals in the GLB (glTF viewers shade a mesh
    without them flat, facets and all), the atlas at full strength and not metal (trimesh's default
    material made it a 40 % grey metal: baseColorFactor and mesh.mtl's Kd of 0.4), and an empty
    mesh.obj without number-less "v" and "f" lines."""
    from dataclasses import replace

    from zsw.infer.jobs import reconstruct_many
    from zsw.infer.settings import GridSettings, ReconstructSettings

    photo = repo_root / "examples" / "toy.png"
    settings = ReconstructSettings(
        device="cpu", grid=GridSettings(resolution=32), formats=("glb", "obj"), preview=False
    )
    reconstruct_many([photo], tmp_path / "plain", settings)
    reconstruct_many([photo], tmp_path / "tex", replace(settings, faces=400, texture=128))
    for folder in ("plain", "tex"):
        tree = _glb_json(tmp_path / folder / "toy" / "mesh.glb")
        assert "NORMAL" in tree["meshes"][0]["primitives"][0]["attributes"], folder
        glb = trimesh.load(tmp_path / folder / "toy" / "mesh.glb", force="mesh", process=False)
        assert np.allclose(np.linalg.norm(glb.vertex_normals, axis=1), 1, atol=1e-4)
    plain = trimesh.load(tmp_path / "plain" / "toy" / "mesh.glb", force="mesh", process=False)
    assert plain.visual.kind == "vertex"  # the photo's colours, as trimesh and peers' exports read them
    pbr = _glb_json(tmp_path / "tex" / "toy" / "mesh.glb")["materials"][0]["pbrMetallicRoughness"]
    assert pbr["baseColorFactor"] == [1.0, 1.0, 1.0, 1.0] and pbr["metallicFactor"] == 0.0
    mtl = (tmp_path / "tex" / "toy" / "mesh.mtl").read_text()
    assert "Kd 1.0" in mtl and "Ks 0.0" in mtl and "map_Kd material_0.png" in mtl
    empty = replace(settings, grid=GridSettings(resolution=16, threshold=0.999), formats=("obj", "glb"))
    reconstruct_many([photo], tmp_path / "empty", replace(empty, weights="random:tiny"))
    assert json.loads((tmp_path / "empty" / "toy" / "result.json").read_text())["mesh"]["faces"] == 0
    lines = (tmp_path / "empty" / "toy" / "mesh.obj").read_text().splitlines()
    assert not [line for line in lines if line.split() in (["v"], ["f"])], lines
    # an empty GLB holds a JSON chunk only: trimesh wrote an empty BIN chunk with no buffer, which
    # glTF forbids (Babylon.js: "Unexpected BIN chunk")
    data = (tmp_path / "empty" / "toy" / "mesh.glb").read_bytes()
    (json_length,) = struct.unpack("<I", data[12:16])
    assert struct.unpack("<4sII", data[:12]) == (b"glTF", 2, len(data)) and len(data) == 20 + json_length
    tree = _glb_json(tmp_path / "empty" / "toy" / "mesh.glb")
    assert "buffers" not in tree and "meshes" not in tree and tree["asset"]["version"] == "2.0"
    assert len(trimesh.load(tmp_path / "empty" / "toy" / "mesh.glb").geometry) == 0


def test_texture_bench_compares_the_texture_with_the_vertex_colours(repo_root):
    from zsw.bench.texture import markdown, measure

    (row,) = measure([repo_root / "examples" / "toy.png"], budgets=(500,), size=128)
    assert row["meshes"] == 1 and row["points"] > 0 and row["seconds"] > 0
    assert row["texture_mean"] < row["vertex_mean"]  # a coarse mesh's vertex colours lose the photo's detail
    assert "| 500 |" in markdown([row], 128, 1)


def test_texture_on_a_large_mesh_says_to_decimate(repo_root, monkeypatch):
    import zsw
    import zsw.infer.reconstruct as R

    monkeypatch.setattr(R, "TEXTURE_FACES_HINT", 100)  # any mesh of this test is "large"
    rec = zsw.reconstruct(repo_root / "examples" / "toy.png", resolution=32, texture=64)
    assert any("--texture charted" in w and "--faces 25" in w for w in rec.record.warnings), rec.record.warnings
    rec = zsw.reconstruct(repo_root / "examples" / "toy.png", resolution=32, texture=64, faces=90)
    assert not any("--texture" in w for w in rec.record.warnings)


def test_the_command_says_each_images_own_warnings_and_the_runs_once(repo_root, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import zsw.infer.reconstruct as R
    from zsw.cli.main import app

    monkeypatch.setattr(R, "TEXTURE_FACES_HINT", 10)
    photos = [str(repo_root / "examples" / name) for name in ("toy.png", "case.png")]
    args = ["reconstruct", *photos, "-o", str(tmp_path), "--weights", "random:tiny", "--resolution", "16",
            "--texture", "64", "--no-preview"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    texture = [line for line in lines if "--texture charted" in line]
    assert len(texture) == 2 and all(line.startswith("WARNING: ") for line in texture), lines
    assert {"toy.png", "case.png"} == {name for name in ("toy.png", "case.png") for line in texture if name in line}
    assert sum("random" in line.lower() and "weights" in line.lower() for line in lines) == 1, lines  # said once
