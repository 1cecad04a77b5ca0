"""A mesh's own colours in ``zsw synthesize meshes`` (zsw.synth.mesh_colors): glTF textures and
base colours, an OBJ's ``.mtl`` and ``map_Kd`` image beside it, PLY vertex colours, trimesh's
placeholder material (no colour), ``--appearance random``, and what a resumed or changed dataset
does with them."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from typer.testing import CliRunner

from zsw.cli.main import app
from zsw.synth.mesh_sdf import MeshShape
from zsw.synth.render import View, look_at, render, sample_material

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()
RED, BLUE = (230, 20, 20), (20, 20, 230)
GRID = 48


def _halves(width: int = 16, height: int = 8) -> Image.Image:
    """Left half red, right half blue."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:, : width // 2], img[:, width // 2 :] = RED, BLUE
    return Image.fromarray(img)


def _textured_box(material=None) -> trimesh.Trimesh:
    """A 1 x 0.6 x 0.4 box, subdivided, whose u follows x: red where x < 0, blue where x > 0."""
    box = trimesh.creation.box((1.0, 0.6, 0.4)).subdivide().subdivide()
    uv = np.stack([(box.vertices[:, 0] + 0.5) * 0.9 + 0.05, box.vertices[:, 1] / 0.6 + 0.5], axis=1)
    material = material or trimesh.visual.material.PBRMaterial(baseColorTexture=_halves())
    box.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return box


def _linear(rgb) -> np.ndarray:
    return (np.asarray(rgb, np.float32) / 255) ** 2.2


def _front_points(xs) -> torch.Tensor:  # points on the box's +z face
    return torch.tensor([[x, 0.0, 0.2] for x in xs], dtype=torch.float32)


def test_a_textured_glb_is_drawn_in_its_texture(tmp_path):
    path = tmp_path / "box.glb"
    _textured_box().export(path)
    shape = MeshShape.from_file(path, grid=GRID, colors=True)
    assert shape.colors is not None and shape.colors.has_texture
    rgb = shape.albedo(_front_points([-0.3, 0.3])).numpy()
    assert np.allclose(rgb[0], _linear(RED), atol=0.02) and np.allclose(rgb[1], _linear(BLUE), atol=0.02)
    # rendered head-on from +z (x to the right): the left of the object red, its right blue
    K = np.array([[120.0, 0, 32], [0, 120.0, 32], [0, 0, 1]])
    view = View(K=K, Rt=look_at(np.array([0.0, 0.0, 3.0]), np.zeros(3)), size=64, meta={})
    material = sample_material(np.random.default_rng(0), 1)
    image = render(shape, view, material).image.astype(float)
    left, right = image[28:36, 14:24].mean((0, 1)), image[28:36, 40:50].mean((0, 1))
    assert left[0] > left[2] + 60 and right[2] > right[0] + 60, (left, right)
    # without colours (--appearance random): one colour across the face
    plain = render(MeshShape.from_file(path, grid=GRID), view, material).image.astype(float)
    assert np.abs(plain[28:36, 14:24].mean((0, 1)) - plain[28:36, 40:50].mean((0, 1))).max() < 10


def test_an_objs_mtl_and_texture_beside_it_are_read_and_fingerprinted(tmp_path):
    from zsw.synth.meshes import fingerprint

    box = _textured_box()
    box.visual = trimesh.visual.TextureVisuals(uv=box.visual.uv, material=trimesh.visual.material.SimpleMaterial())
    v, f, uv = box.vertices, box.faces + 1, box.visual.uv
    lines = ["mtllib box.mtl", "usemtl halves"]
    lines += [f"v {a:.6f} {b:.6f} {c:.6f}" for a, b, c in v] + [f"vt {a:.6f} {b:.6f}" for a, b in uv]
    lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in f]
    (tmp_path / "box.obj").write_text("\n".join(lines) + "\n")
    (tmp_path / "box.mtl").write_text("newmtl halves\nKd 1 1 1\nmap_Kd -s 1 1 1 halves.png\n")
    _halves().save(tmp_path / "halves.png")
    shape = MeshShape.from_file(tmp_path / "box.obj", grid=GRID, colors=True)
    assert shape.colors is not None and shape.colors.has_texture
    rgb = shape.albedo(_front_points([-0.3, 0.3])).numpy()
    assert rgb[0, 0] > 5 * rgb[0, 2] and rgb[1, 2] > 5 * rgb[1, 0], rgb
    # names as Windows tools and ShapeNet write them: backslashes, another case, "..", another
    # machine's absolute path
    (tmp_path / "models").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "box.obj").rename(tmp_path / "models" / "box.obj")
    _halves().save(tmp_path / "images" / "Halves.PNG")
    for name in ("..\\images\\halves.png", "../IMAGES/halves.png"):
        (tmp_path / "models" / "box.mtl").write_text(f"newmtl halves\nKd 1 1 1\nmap_Kd {name}\n")
        shape = MeshShape.from_file(tmp_path / "models" / "box.obj", grid=GRID, colors=True)
        assert shape.colors is not None and shape.colors.has_texture, name
    (tmp_path / "models" / "halves.png").write_bytes((tmp_path / "images" / "Halves.PNG").read_bytes())
    (tmp_path / "models" / "box.mtl").write_text("newmtl halves\nmap_Kd C:\\Users\\me\\Desktop\\halves.png\n")
    assert MeshShape.from_file(tmp_path / "models" / "box.obj", grid=GRID, colors=True).colors.has_texture
    for name in ("box.obj", "box.mtl", "halves.png"):
        (tmp_path / "models" / name).rename(tmp_path / name)
    (tmp_path / "box.mtl").write_text("newmtl halves\nKd 1 1 1\nmap_Kd -s 1 1 1 halves.png\n")
    # the texture is part of what a dataset checks when the meshes' colours are drawn
    before, geometry = fingerprint(tmp_path / "box.obj", True), fingerprint(tmp_path / "box.obj")
    _halves(32, 8).save(tmp_path / "halves.png")
    assert fingerprint(tmp_path / "box.obj", True) != before and fingerprint(tmp_path / "box.obj") == geometry


def test_vertex_colours_a_base_colour_and_trimeshs_placeholder(tmp_path):
    ball = trimesh.creation.icosphere(3)
    top = ball.vertices[:, 1:2] > 0
    ball.visual.vertex_colors = np.where(top, [255, 0, 0, 255], [0, 255, 0, 255]).astype(np.uint8)
    ball.export(tmp_path / "ball.ply")
    shape = MeshShape.from_file(tmp_path / "ball.ply", grid=GRID, colors=True)
    rgb = shape.albedo(torch.tensor([[0.0, 0.45, 0.1], [0.0, -0.45, 0.1]])).numpy()
    assert rgb[0, 0] > 0.9 and rgb[0, 1] < 0.05 and rgb[1, 1] > 0.9 and rgb[1, 0] < 0.05, rgb
    # a glTF material with a base colour and no texture: that colour (linear, as glTF stores it)
    green = trimesh.creation.box((1.0, 0.5, 0.5))
    green.visual = trimesh.visual.TextureVisuals(
        material=trimesh.visual.material.PBRMaterial(baseColorFactor=[51, 204, 102, 255])
    )
    green.export(tmp_path / "green.glb")
    rgb = MeshShape.from_file(tmp_path / "green.glb", grid=GRID, colors=True).albedo(_front_points([0.0])).numpy()
    assert np.allclose(rgb[0], [0.2, 0.8, 0.4], atol=0.01), rgb
    # uv coordinates and no material: trimesh's grey placeholder is no colour of the mesh's
    (tmp_path / "tri.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nvt 0 0\nvt 1 0\nvt 0 1\nvt 1 1\n"
                                      "f 1/1 3/3 2/2\nf 1/1 2/2 4/4\nf 1/1 4/4 3/3\nf 2/2 3/3 4/4\n")  # fmt: skip
    assert MeshShape.from_file(tmp_path / "tri.obj", grid=GRID, colors=True).colors is None


def test_a_scenes_parts_keep_their_own_colours_in_place(tmp_path):
    """A GLB of three placed parts -- a plain cylinder (no material), the textured box, a green
    vertex-coloured ball -- each keeps its own colours after the concatenation (a misaligned face
    order would give the box the ball's colours or none)."""
    scene = trimesh.Scene()
    plain = trimesh.creation.cylinder(0.2, 0.6)
    plain.visual = trimesh.visual.ColorVisuals(plain)  # no colours at all
    scene.add_geometry(plain, transform=trimesh.transformations.translation_matrix([-1.5, 0, 0]))
    scene.add_geometry(_textured_box())
    ball = trimesh.creation.icosphere(2, radius=0.3)
    ball.visual.vertex_colors = [0, 255, 0, 255]
    scene.add_geometry(ball, transform=trimesh.transformations.translation_matrix([1.5, 0, 0]))
    scene.export(tmp_path / "scene.glb")
    shape = MeshShape.from_file(tmp_path / "scene.glb", grid=96, colors=True)
    lo, hi = scene.bounds  # the object frame: centred on the bounding box, longest side 1
    points = (np.array([[-1.5, 0.0, 0.2], [-0.3, 0.0, 0.2], [0.3, 0.0, 0.2], [1.5, 0.3, 0.0]]) - (lo + hi) / 2) / (
        hi - lo
    ).max()
    rgb = shape.albedo(torch.tensor(points, dtype=torch.float32)).numpy()
    assert np.isnan(rgb[0]).all()  # the cylinder: the renderer's random colour
    assert np.allclose(rgb[1], _linear(RED), atol=0.02) and np.allclose(rgb[2], _linear(BLUE), atol=0.02)
    assert np.allclose(rgb[3], [0.0, 1.0, 0.0], atol=0.01)


def _edited_glb(glb: bytes, edit) -> bytes:
    """``glb`` with ``edit(tree)`` applied to its JSON chunk (the binary chunk kept)."""
    (length,) = struct.unpack("<I", glb[12:16])
    tree = json.loads(glb[20 : 20 + length])
    edit(tree)
    text = json.dumps(tree).encode()
    text += b" " * (-len(text) % 4)
    rest = glb[20 + length :]
    head = struct.pack("<4sII", b"glTF", 2, 20 + len(text) + len(rest)) + struct.pack("<I4s", len(text), b"JSON")
    return head + text + rest


def test_a_gltf_texture_transform_places_the_texture(tmp_path):
    """KHR_texture_transform (what Sketchfab's exports tile textures with), which trimesh ignores:
    an offset of half the texture swaps the box's red and blue halves, and only the colours read
    it (the geometry, as zsw eval reads it, is the same)."""
    from zsw.data.eval_sets import read_mesh_file

    plain = trimesh.exchange.gltf.export_glb(trimesh.Scene(_textured_box()))

    def shift(tree):
        info = tree["materials"][0]["pbrMetallicRoughness"]["baseColorTexture"]
        info["extensions"] = {"KHR_texture_transform": {"offset": [0.5, 0.0]}}
        tree["extensionsUsed"] = ["KHR_texture_transform"]

    (tmp_path / "plain.glb").write_bytes(plain)
    (tmp_path / "shifted.glb").write_bytes(_edited_glb(plain, shift))
    points = _front_points([-0.3, 0.3])
    before = MeshShape.from_file(tmp_path / "plain.glb", grid=GRID, colors=True).albedo(points).numpy()
    after = MeshShape.from_file(tmp_path / "shifted.glb", grid=GRID, colors=True).albedo(points).numpy()
    assert np.allclose(before[0], _linear(RED), atol=0.02) and np.allclose(before[1], _linear(BLUE), atol=0.02)
    assert np.allclose(after[0], _linear(BLUE), atol=0.02) and np.allclose(after[1], _linear(RED), atol=0.02)
    a, b = read_mesh_file(tmp_path / "plain.glb"), read_mesh_file(tmp_path / "shifted.glb")
    assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.faces, b.faces)


def test_usd_colours_a_packaged_texture_corner_uvs_and_display_colours(tmp_path):
    """A phone scan's USDZ (a UsdPreviewSurface whose diffuse colour is a packaged texture, as
    `zsw reconstruct --format usdz` and Apple's Object Capture write it), a .usda whose texture lies
    beside it with per-corner (faceVarying) uv, and display colours per vertex and per face."""
    from pxr import Sdf, Usd, UsdGeom, UsdShade, Vt

    from zsw.infer.usdz import usdz_bytes

    box = _textured_box(trimesh.visual.material.SimpleMaterial(image=_halves()))  # as zsw's atlas is
    plain = trimesh.Trimesh(box.vertices, box.faces, process=False)
    (tmp_path / "box.usdz").write_bytes(usdz_bytes(plain, box))
    shape = MeshShape.from_file(tmp_path / "box.usdz", grid=GRID, colors=True)
    assert shape.colors is not None and shape.colors.has_texture
    rgb = shape.albedo(_front_points([-0.3, 0.3])).numpy()
    assert np.allclose(rgb[0], _linear(RED), atol=0.02) and np.allclose(rgb[1], _linear(BLUE), atol=0.02)

    # a quad per face of a cube, uv per corner: each face's left half red, right half blue
    _halves().save(tmp_path / "halves.png")
    stage = Usd.Stage.CreateNew(str(tmp_path / "cube.usda"))
    cube = trimesh.creation.box((1.0, 1.0, 1.0))
    quads = np.array([[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]])
    geom = UsdGeom.Mesh.Define(stage, "/cube")
    geom.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(cube.vertices.astype(np.float32)))
    geom.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(6, 4, np.int32)))
    geom.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(quads.reshape(-1).astype(np.int32)))
    st = UsdGeom.PrimvarsAPI(geom).CreatePrimvar("uv", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.faceVarying)
    corners = np.tile(np.array([[0.1, 0.1], [0.1, 0.9], [0.9, 0.9], [0.9, 0.1]], np.float32), (6, 1))
    st.Set(Vt.Vec2fArray.FromNumpy(corners))
    material = UsdShade.Material.Define(stage, "/m")
    surface = UsdShade.Shader.Define(stage, "/m/surface")
    surface.CreateIdAttr("UsdPreviewSurface")
    reader = UsdShade.Shader.Define(stage, "/m/st")
    reader.CreateIdAttr("UsdPrimvarReader_float2")
    reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("uv")
    image = UsdShade.Shader.Define(stage, "/m/image")
    image.CreateIdAttr("UsdUVTexture")
    image.CreateInput("file", Sdf.ValueTypeNames.Asset).Set("halves.png")
    image.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(reader.ConnectableAPI(), "result")
    image.CreateOutput("rgb", Sdf.ValueTypeNames.Float3)
    diffuse = surface.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f)
    diffuse.ConnectToSource(image.ConnectableAPI(), "rgb")
    material.CreateSurfaceOutput().ConnectToSource(surface.ConnectableAPI(), "surface")
    UsdShade.MaterialBindingAPI.Apply(geom.GetPrim()).Bind(material)
    stage.GetRootLayer().Save()
    shape = MeshShape.from_file(tmp_path / "cube.usda", grid=GRID, colors=True)
    assert shape.colors is not None and shape.colors.has_texture
    rgb = shape.albedo(torch.tensor([[0.0, 0.0, 0.5]])).numpy()  # a face's centre: u = 0.5, the seam
    assert rgb[0, 0] > 0.05 and rgb[0, 2] > 0.05  # both halves meet there
    # every corner of every face samples the texture at u 0.1 or 0.9: red or blue, never the default
    samples = shape.albedo(torch.tensor(cube.vertices * 0.98, dtype=torch.float32)).numpy()
    assert np.all((samples[:, 0] > 0.5) ^ (samples[:, 2] > 0.5)), samples

    # display colours: per vertex (green) and per face (a constant red)
    for name, how, values in (
        ("green", UsdGeom.Tokens.vertex, np.tile([0.0, 1.0, 0.0], (8, 1))),
        ("red", UsdGeom.Tokens.uniform, np.tile([1.0, 0.0, 0.0], (6, 1))),
    ):
        stage = Usd.Stage.CreateNew(str(tmp_path / f"{name}.usda"))
        geom = UsdGeom.Mesh.Define(stage, "/cube")
        geom.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(cube.vertices.astype(np.float32)))
        geom.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(6, 4, np.int32)))
        geom.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(quads.reshape(-1).astype(np.int32)))
        color = UsdGeom.PrimvarsAPI(geom).CreatePrimvar("displayColor", Sdf.ValueTypeNames.Color3fArray, how)
        color.Set(Vt.Vec3fArray.FromNumpy(values.astype(np.float32)))
        stage.GetRootLayer().Save()
        rgb = MeshShape.from_file(tmp_path / f"{name}.usda", grid=GRID, colors=True).albedo(_front_points([0.0]))
        assert np.allclose(rgb.numpy()[0], values[0], atol=0.01), (name, rgb)


def test_colours_that_cannot_be_read_never_fail_the_mesh(tmp_path, monkeypatch):
    import zsw.data.usd as usd
    from zsw.infer.usdz import usdz_bytes

    (tmp_path / "ball.usdz").write_bytes(usdz_bytes(trimesh.creation.icosphere(2)))

    def broken(*_args):
        raise RuntimeError("a shader network zsw cannot follow")

    monkeypatch.setattr(usd, "_colored_part", broken)
    shape = MeshShape.from_file(tmp_path / "ball.usdz", grid=GRID, colors=True)
    assert shape.colors is None and len(shape.triangles) == len(trimesh.creation.icosphere(2).faces)


def test_a_large_texture_is_reduced():
    from zsw.synth.mesh_colors import MAX_TEXTURE, _texture

    tex = _texture(_halves(4 * MAX_TEXTURE, 8).convert("RGBA"))
    assert tex.shape == (2, MAX_TEXTURE, 3) and tex.dtype == np.uint8
    assert np.array_equal(tex[0, 0], RED) and np.array_equal(tex[0, -1], BLUE)


def test_the_cli_draws_the_colours_says_so_and_keeps_a_dataset_in_one_appearance(tmp_path):
    src, out = tmp_path / "meshes", tmp_path / "mine"
    src.mkdir()
    _textured_box().export(src / "box.glb")
    trimesh.creation.cylinder(0.3, 1.0).export(src / "plain.stl")
    options = ["--views", "1", "--size", "64", "--grid", str(GRID), "--workers", "1", "--splits", "1,0,0"]
    result = runner.invoke(app, ["synthesize", "meshes", str(src), "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    assert "drawn in their textures 1, a random colour 1" in result.output
    stamp = (out / "mesh_sources" / "object" / "object_box.json").read_text()
    assert '"colors": "texture"' in stamp
    image = np.asarray(Image.open(out / "images_processed" / "object" / "object_box_00.png").convert("RGB"), float)
    obj = np.abs(image - 255).sum(-1) > 30
    reds = ((image[..., 0] > image[..., 2] + 60) & obj).sum()
    blues = ((image[..., 2] > image[..., 0] + 60) & obj).sum()
    assert reds > 0.1 * obj.sum() and blues > 0.1 * obj.sum(), (reds, blues, obj.sum())
    # the other appearance cannot resume this dataset
    result = runner.invoke(
        app, ["synthesize", "meshes", str(src), "--out", str(out), *options, "--appearance", "random"]
    )
    assert result.exit_code != 0 and "appearance='mesh'" in result.output, result.output
    # a dataset from before the meshes' colours were read: resumed only in random colours
    settings = out / "meshes.yaml"
    kept = [line for line in settings.read_text().splitlines(True) if "appearance" not in line]
    settings.write_text("".join(kept))
    result = runner.invoke(app, ["synthesize", "meshes", str(src), "--out", str(out), *options])
    assert result.exit_code != 0 and "appearance='random', not 'mesh'" in result.output, result.output
    result = runner.invoke(
        app, ["synthesize", "meshes", str(src), "--out", str(out), *options, "--appearance", "random"]
    )
    assert result.exit_code == 0 and "rendered 0 views" in result.output, result.output
    assert "2 were already there" in result.output and "appearance: random" in settings.read_text()
