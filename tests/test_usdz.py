"""``--format usdz``: the mesh as a USDZ package (AR Quick Look), written with usd-core."""

from __future__ import annotations

import importlib.util
import zipfile

import numpy as np
import pytest
from PIL import Image

import zsw
from zsw.errors import OptionError
from zsw.infer.settings import ReconstructSettings

RES = 24


def _validation_errors(stage) -> list[str]:
    from pxr import UsdValidation

    registry = UsdValidation.ValidationRegistry()
    context = UsdValidation.ValidationContext(registry.GetOrLoadAllValidators())
    return [e.GetMessage() for e in context.Validate(stage)]


def test_usdz_holds_the_mesh_its_colours_and_passes_usds_validators(repo_root, tmp_path):
    """The same triangles as mesh.glb, flat (no subdivision surface), Y up in metres, the vertex
    colours as linear displayColor; read back by zsw's own USD reader (a true shape for eval)."""
    from pxr import Usd, UsdGeom

    from zsw.data.usd import read_usd

    rec = zsw.reconstruct(repo_root / "examples" / "toy.png", resolution=RES)
    assert len(rec.mesh.faces) > 0
    rec.save(tmp_path / "toy", formats=("usdz",))
    path = tmp_path / "toy" / "mesh.usdz"
    assert zipfile.ZipFile(path).namelist() == ["mesh.usdc"]

    stage = Usd.Stage.Open(str(path))
    assert _validation_errors(stage) == []
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.y and UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    mesh = UsdGeom.Mesh(stage.GetDefaultPrim().GetChild("mesh"))
    assert mesh.GetSubdivisionSchemeAttr().Get() == UsdGeom.Tokens.none
    srgb = np.asarray(rec.mesh.visual.vertex_colors)[:, :3] / 255.0
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    color = UsdGeom.PrimvarsAPI(mesh).GetPrimvar("displayColor")
    assert color.GetInterpolation() == UsdGeom.Tokens.vertex
    assert np.allclose(np.asarray(color.Get()), linear, atol=1e-6)

    back = read_usd(path)
    assert np.allclose(back.vertices, rec.mesh.vertices, atol=1e-6)
    assert np.array_equal(back.faces, rec.mesh.faces)


def test_a_textured_usdz_shows_the_atlas_through_a_preview_surface(repo_root, tmp_path):
    """With --texture, AR Quick Look's way: a UsdPreviewSurface reading the atlas (packed inside)
    at the mesh's st coordinates, on the atlas' cut mesh."""
    from pxr import Usd, UsdGeom, UsdShade

    rec = zsw.reconstruct(repo_root / "examples" / "toy.png", resolution=RES, texture=64)
    textured = rec.textured_mesh()
    rec.save(tmp_path / "toy", formats=("usdz",))
    path = tmp_path / "toy" / "mesh.usdz"
    names = zipfile.ZipFile(path).namelist()
    assert names[0] == "mesh.usdc" and len(names) == 2 and names[1].endswith("material_0.png")
    packed = np.asarray(Image.open(zipfile.ZipFile(path).open(names[1])).convert("RGB"))
    assert np.array_equal(packed, rec.texture.image)

    stage = Usd.Stage.Open(str(path))
    assert _validation_errors(stage) == []
    mesh = UsdGeom.Mesh(stage.GetDefaultPrim().GetChild("mesh"))
    assert np.allclose(np.asarray(mesh.GetPointsAttr().Get()), textured.vertices, atol=1e-6)
    st = UsdGeom.PrimvarsAPI(mesh).GetPrimvar("st")
    assert np.allclose(np.asarray(st.Get()), textured.visual.uv, atol=1e-6)
    material, _ = UsdShade.MaterialBindingAPI(mesh.GetPrim()).ComputeBoundMaterial()
    surface = material.ComputeSurfaceSource()[0]
    assert surface.GetIdAttr().Get() == "UsdPreviewSurface"
    atlas = surface.GetInput("diffuseColor").GetConnectedSources()[0][0].source
    assert UsdShade.Shader(atlas.GetPrim()).GetIdAttr().Get() == "UsdUVTexture"


def test_an_empty_mesh_is_an_empty_usdz(tmp_path):
    """A photo with no surface still gets a readable mesh.usdz, with no points."""
    import trimesh
    from pxr import Usd, UsdGeom

    from zsw.infer.usdz import usdz_bytes

    (tmp_path / "empty.usdz").write_bytes(usdz_bytes(trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), int))))
    assert zipfile.ZipFile(tmp_path / "empty.usdz").namelist() == ["mesh.usdc"]
    stage = Usd.Stage.Open(str(tmp_path / "empty.usdz"))  # held: its prims live as long as it does
    mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/root/mesh"))
    assert len(mesh.GetPointsAttr().Get()) == 0 and len(mesh.GetFaceVertexIndicesAttr().Get()) == 0


def test_usdz_without_usd_core_is_refused_before_any_photo_is_read(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pxr" else find_spec(name, *a))
    with pytest.raises(OptionError, match=r'^--format usdz needs Pixar\'s usd-core: pip install "zsw\[usd\]"$'):
        ReconstructSettings(formats=("glb", "usdz"))
    ReconstructSettings(formats=("glb",))  # the others need nothing


def test_usdz_without_a_texture_says_what_ar_quick_look_shows(repo_root, tmp_path):
    """Vertex colours are what usdview and Blender show, not AR Quick Look: the run says so once,
    and not when the mesh has a texture."""
    from typer.testing import CliRunner

    from zsw.cli.main import app

    args = ["reconstruct", str(repo_root / "examples" / "toy.png"), "--resolution", "16", "--format", "usdz"]
    plain = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "plain")])
    assert plain.exit_code == 0, plain.output
    assert plain.output.count("AR Quick Look does not show") == 1 and (tmp_path / "plain/toy/mesh.usdz").is_file()
    textured = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "textured"), "--texture", "64"])
    assert textured.exit_code == 0, textured.output
    assert "AR Quick Look" not in textured.output


def test_usdz_is_y_up_whatever_the_frame(repo_root, tmp_path):
    """The file declares Y up and AR stands it on the floor: with --frame camera (y down) the other
    files keep the camera frame, mesh.usdz is turned into the glTF frame all the same."""
    from zsw.data.usd import read_usd

    rec = zsw.reconstruct(repo_root / "examples" / "toy.png", resolution=RES, frame="camera")
    rec.save(tmp_path / "toy", formats=("usdz", "ply"))
    back = read_usd(tmp_path / "toy" / "mesh.usdz")
    assert np.allclose(back.vertices, np.asarray(rec.mesh.vertices) * [1.0, -1.0, -1.0], atol=1e-6)
    assert np.array_equal(back.faces, rec.mesh.faces) and back.volume > 0  # a turn keeps the outside out
