"""``mesh.usdz``: the mesh as a USDZ package, the format of Apple's AR Quick Look (a USDZ opens in
3D and in AR on an iPhone or iPad from Files, Messages or Safari), also read by Blender, usdview,
Omniverse and Reality Composer. Written with Pixar's ``usd-core`` (the ``usd`` extra).

One ``UsdGeom.Mesh`` at ``/root/mesh``, Y up and one metre a unit (the GLB's frame and units), its
triangles flat (``subdivisionScheme = none``: USD's default would smooth them as a subdivision
surface), with vertex normals. Colours:

* with a texture (``--texture``), a ``UsdPreviewSurface`` whose diffuse colour is the atlas (sRGB),
  read through the ``st`` coordinates: what AR Quick Look shows;
* otherwise the vertex colours as ``primvars:displayColor`` (linear, as USD's colours are), which
  usdview, Blender and Omniverse show; AR Quick Look draws such a mesh untextured, so for it
  reconstruct with ``--faces N --texture SIZE``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from zsw.errors import OptionError

__all__ = ["usd_available", "require_usd", "usdz_bytes"]

_INSTALL = 'pip install "zsw[usd]"'


def usd_available() -> bool:
    """Whether ``usd-core`` (its ``pxr`` package) is installed, without importing it."""
    import importlib.util

    return importlib.util.find_spec("pxr") is not None


def require_usd() -> None:
    """An :class:`~zsw.errors.OptionError` naming ``--format usdz`` when ``usd-core`` is missing."""
    if not usd_available():
        raise OptionError(f"--format usdz needs Pixar's usd-core: {_INSTALL}")


def usdz_bytes(mesh, textured=None) -> bytes:
    """``mesh`` (a ``trimesh.Trimesh``, vertex colours optional) or, when given, ``textured`` (the
    same surface cut along its atlas' seams, :meth:`~zsw.infer.result.Reconstruction.textured_mesh`)
    as the bytes of a USDZ package (see the module)."""
    require_usd()
    from pxr import Sdf, Usd, UsdGeom, UsdUtils, Vt

    with tempfile.TemporaryDirectory(prefix="zsw-usdz-") as tmp:
        folder = Path(tmp)
        stage = Usd.Stage.CreateNew(str(folder / "mesh.usdc"))
        UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
        UsdGeom.SetStageMetersPerUnit(stage, 1.0)
        root = UsdGeom.Xform.Define(stage, "/root")
        stage.SetDefaultPrim(root.GetPrim())
        surface = textured if textured is not None else mesh
        geom = UsdGeom.Mesh.Define(stage, "/root/mesh")
        geom.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
        vertices = np.asarray(surface.vertices, dtype=np.float32)
        faces = np.asarray(surface.faces, dtype=np.int32)
        geom.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(vertices))
        geom.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(len(faces), 3, np.int32)))
        geom.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(faces.reshape(-1)))
        if len(vertices):
            geom.CreateExtentAttr(Vt.Vec3fArray.FromNumpy(np.stack([vertices.min(0), vertices.max(0)])))
        if len(faces):
            normals = np.asarray(surface.vertex_normals, dtype=np.float32)
            geom.CreateNormalsAttr(Vt.Vec3fArray.FromNumpy(normals))
            geom.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
        api = UsdGeom.PrimvarsAPI(geom)
        if textured is not None:
            image = textured.visual.material.image
            image.save(folder / "material_0.png")
            st = api.CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex)
            st.Set(Vt.Vec2fArray.FromNumpy(np.asarray(textured.visual.uv, dtype=np.float32)))
            _bind_atlas(stage, geom, "material_0.png")
        elif getattr(mesh.visual, "kind", None) == "vertex" and len(vertices):
            from zsw.infer.colorspace import srgb8_to_linear

            linear = srgb8_to_linear(np.asarray(mesh.visual.vertex_colors)[:, :3])
            color = api.CreatePrimvar("displayColor", Sdf.ValueTypeNames.Color3fArray, UsdGeom.Tokens.vertex)
            color.Set(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(linear)))
        stage.GetRootLayer().Save()
        del stage
        package = folder / "mesh.usdz"
        if not UsdUtils.CreateNewARKitUsdzPackage(Sdf.AssetPath(str(folder / "mesh.usdc")), str(package)):
            raise RuntimeError("usd-core could not write the USDZ package")
        return package.read_bytes()


def _bind_atlas(stage, geom, texture: str) -> None:
    """A UsdPreviewSurface (rough, not metallic) whose diffuse colour is ``texture`` at ``st``."""
    from pxr import Sdf, UsdShade

    material = UsdShade.Material.Define(stage, "/root/material")
    shader = UsdShade.Shader.Define(stage, "/root/material/surface")
    shader.CreateIdAttr("UsdPreviewSurface")
    shader.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(0.0)
    shader.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(1.0)
    reader = UsdShade.Shader.Define(stage, "/root/material/st")
    reader.CreateIdAttr("UsdPrimvarReader_float2")
    reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("st")
    atlas = UsdShade.Shader.Define(stage, "/root/material/atlas")
    atlas.CreateIdAttr("UsdUVTexture")
    atlas.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(texture)
    atlas.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set("sRGB")
    atlas.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(reader.ConnectableAPI(), "result")
    atlas.CreateOutput("rgb", Sdf.ValueTypeNames.Float3)
    shader.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).ConnectToSource(atlas.ConnectableAPI(), "rgb")
    material.CreateSurfaceOutput().ConnectToSource(shader.ConnectableAPI(), "surface")
    UsdShade.MaterialBindingAPI.Apply(geom.GetPrim()).Bind(material)
