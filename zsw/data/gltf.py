"""What zsw does to a glTF/GLB before trimesh reads it.

trimesh decodes a glTF's accessors as stored and ignores their ``normalized`` flag, and it skips
extensions it does not know with a warning. Three things follow that would silently change a true
shape (an ``zsw eval`` ground truth, a ``zsw synthesize meshes`` object):

- **Quantized geometry** (``KHR_mesh_quantization``, as ``gltfpack`` and ``gltf-transform
  quantize`` write it): positions stored as normalized 8- or 16-bit integers, the scale back to
  metres kept in the node's transform. Read raw, a mesh comes out 32,767 times too large while its
  node's translation does not, so the parts of a scene land in the wrong places.
- **Instanced meshes** (``EXT_mesh_gpu_instancing``, as ``gltfpack -mi`` writes repeated parts):
  one node draws its mesh at every instance's place; trimesh draws it once.
- **Sparse accessors** (a base array, or zeros, with some elements replaced: what ``gltf-transform
  sparse`` writes, and exporters use for mostly-zero data): trimesh reads the base and never the
  replacements, so a sparse position accessor without a base comes out as every vertex at the
  origin.
- **Compressed geometry** trimesh cannot decode (``EXT_meshopt_compression``) would be read as
  undecoded bytes: :func:`check_extensions` refuses it with a line saying what to do. Draco is
  decoded through DracoPy.

:func:`rewritten_glb` rewrites a file with any of the first three as a GLB in memory that means
the same in plain glTF (float32 or dense accessors, one node per instance). Where the surface's
colours are read (``zsw synthesize meshes``), a base-colour texture's ``KHR_texture_transform``
(tiling, offset, turn), which trimesh ignores, is applied to the texture coordinates too.

Not rewritten: morph targets (a mesh is read in its base shape, whatever its default ``weights``)
and skins (a skinned mesh is placed by its node's transform, not its joints'); both are rare in a
true shape's file.
"""

from __future__ import annotations

import base64
import json
import struct
import urllib.parse
from pathlib import Path

import numpy as np

from zsw.data.usd import fan_triangles
from zsw.errors import InputError

GLB_MAGIC = b"glTF"
_JSON, _BIN = 0x4E4F534A, 0x004E4942  # GLB chunk types
#: a normalized integer component type -> the value that means 1.0
_NORMALIZED = {5120: 127.0, 5121: 255.0, 5122: 32767.0, 5123: 65535.0}
#: every component type -> its numpy dtype (little-endian, as glTF stores them)
_TYPES = {5120: "<i1", 5121: "<u1", 5122: "<i2", 5123: "<u2", 5125: "<u4", 5126: "<f4"}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}
_INSTANCING = "EXT_mesh_gpu_instancing"
_TEXTURE_TRANSFORM = "KHR_texture_transform"
#: attributes whose normalized integers are numbers to dequantize; colours, joints and weights
#: trimesh reads as they are meant (8-bit colours stay 0-255)
_DEQUANTIZED = ("POSITION", "NORMAL", "TANGENT", "TEXCOORD_")


def read_json(path: Path) -> dict:
    """The JSON of a ``.glb`` (its first chunk) or ``.gltf`` file; {} for other files or a JSON
    that cannot be read (trimesh's own error then names the fault)."""
    suffix = path.suffix.lower()
    tree = None
    try:
        if suffix == ".gltf":
            tree = json.loads(path.read_bytes())
        elif suffix == ".glb":
            with open(path, "rb") as f:
                head = f.read(20)
                if len(head) == 20 and head[:4] == GLB_MAGIC and head[16:20] == b"JSON":
                    (length,) = struct.unpack("<I", head[12:16])
                    tree = json.loads(f.read(min(length, 1 << 28)))
    except (OSError, ValueError):
        pass
    return tree if isinstance(tree, dict) else {}


def check_extensions(path: Path, tree: dict | None = None) -> None:
    """A glTF/GLB whose geometry needs an extension trimesh cannot decode is an
    :class:`InputError` naming it: trimesh would go on with zeros or undecoded bytes in place of
    the geometry, which would be scored (or rendered) as a shape."""
    tree = read_json(path) if tree is None else tree
    required = set(tree.get("extensionsRequired") or ())
    if "EXT_meshopt_compression" in required:
        raise InputError(
            f"cannot read the mesh {path}: its geometry is compressed with EXT_meshopt_compression, which trimesh "
            "cannot decode; write it uncompressed first (e.g. `gltf-transform copy IN OUT`, or Blender)"
        )
    if "KHR_draco_mesh_compression" in required:
        try:
            import DracoPy  # noqa: F401
        except ImportError:
            raise InputError(
                f"cannot read the mesh {path}: its geometry is compressed with Draco, which needs DracoPy: "
                "pip install DracoPy"
            ) from None


def quantized_accessors(tree: dict) -> list[int]:
    """The accessors of ``tree``'s mesh attributes (and morph targets) stored as normalized
    integers that stand for numbers: positions, normals, tangents, texture coordinates."""
    accessors = tree.get("accessors") or []
    found = set()
    for mesh in tree.get("meshes") or []:
        for primitive in mesh.get("primitives") or []:
            for attributes in [primitive.get("attributes") or {}, *(primitive.get("targets") or [])]:
                for name, index in attributes.items():
                    if not name.startswith(_DEQUANTIZED) or not isinstance(index, int):
                        continue
                    if not 0 <= index < len(accessors):
                        continue  # trimesh names the broken reference
                    a = accessors[index]
                    stored = "bufferView" in a or "sparse" in a
                    if a.get("normalized") and a.get("componentType") in _NORMALIZED and stored:
                        found.add(index)
    return sorted(found)


def sparse_accessors(tree: dict) -> list[int]:
    """The sparse accessors that ``tree``'s geometry reads: mesh attributes, indices and the
    placements of instanced nodes (morph targets aside: trimesh does not apply them)."""
    accessors = tree.get("accessors") or []
    used = set()
    for mesh in tree.get("meshes") or []:
        for primitive in (mesh.get("primitives") or []) if isinstance(mesh, dict) else []:
            if isinstance(primitive, dict):
                used.update((primitive.get("attributes") or {}).values())
                used.add(primitive.get("indices"))
    for i in instanced_nodes(tree):
        used.update(((tree["nodes"][i]["extensions"][_INSTANCING] or {}).get("attributes") or {}).values())
    valid = [i for i in used if isinstance(i, int) and 0 <= i < len(accessors) and isinstance(accessors[i], dict)]
    return sorted(i for i in valid if "sparse" in accessors[i])


def instanced_nodes(tree: dict) -> list[int]:
    """The nodes of ``tree`` that draw their mesh once per instance (``EXT_mesh_gpu_instancing``)."""
    return [
        i
        for i, node in enumerate(tree.get("nodes") or [])
        if isinstance(node, dict) and "mesh" in node and _INSTANCING in (node.get("extensions") or {})
    ]


def fan_primitives(tree: dict) -> list[tuple[int, int]]:
    """(mesh, primitive) of every primitive drawn as a triangle fan (mode 6), which trimesh skips."""
    return [
        (m, k)
        for m, mesh in enumerate(tree.get("meshes") or [])
        for k, primitive in enumerate((mesh.get("primitives") or []) if isinstance(mesh, dict) else [])
        if isinstance(primitive, dict)
        and primitive.get("mode") == 6
        and "POSITION" in (primitive.get("attributes") or {})
    ]


def texture_transforms(tree: dict) -> list[tuple[int, int, int, np.ndarray]]:
    """(mesh, primitive, texture-coordinate accessor, 3 x 3 uv matrix) of every primitive whose
    material's base-colour texture is placed by ``KHR_texture_transform`` (tiling, offset or turn:
    what Sketchfab's exports use), which trimesh ignores. The matrix is the extension's
    ``T * R * S`` on glTF's uv (v down); the accessor is the set its ``texCoord`` names."""
    materials = tree.get("materials") or []
    found = []
    for m, mesh in enumerate(tree.get("meshes") or []):
        for k, primitive in enumerate((mesh.get("primitives") or []) if isinstance(mesh, dict) else []):
            if not isinstance(primitive, dict) or not isinstance(primitive.get("material"), int):
                continue
            material = materials[primitive["material"]] if 0 <= primitive["material"] < len(materials) else None
            info = _dict(_dict(_dict(material).get("pbrMetallicRoughness")).get("baseColorTexture"))
            transform = _dict(info.get("extensions")).get(_TEXTURE_TRANSFORM)
            if not isinstance(transform, dict):
                continue
            coords = transform.get("texCoord", info.get("texCoord", 0))
            accessor = _dict(primitive.get("attributes")).get(f"TEXCOORD_{coords}")
            try:  # a malformed transform is passed over: the colours are not worth failing the mesh
                ox, oy = (float(c) for c in (transform.get("offset") or (0.0, 0.0))[:2])
                sx, sy = (float(c) for c in (transform.get("scale") or (1.0, 1.0))[:2])
                r = float(transform.get("rotation", 0.0))
            except (TypeError, ValueError):
                continue
            if not isinstance(accessor, int) or not 0 <= accessor < len(tree.get("accessors") or []):
                continue
            if not all(np.isfinite([ox, oy, sx, sy, r])):
                continue
            shift = np.array([[1.0, 0.0, ox], [0.0, 1.0, oy], [0.0, 0.0, 1.0]])
            turn = np.array([[np.cos(r), np.sin(r), 0.0], [-np.sin(r), np.cos(r), 0.0], [0.0, 0.0, 1.0]])
            found.append((m, k, accessor, shift @ turn @ np.diag([sx, sy, 1.0])))
    return found


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def rewritten_glb(path: Path, tree: dict | None = None, textures: bool = False) -> bytes | None:
    """``path`` (a ``.glb`` or ``.gltf``) as one GLB that trimesh reads as the file means it, or
    None when trimesh reads the file as it is:

    - normalized-integer positions, normals, tangents and texture coordinates
      (``KHR_mesh_quantization``) become float32;
    - a node drawing its mesh at many places (``EXT_mesh_gpu_instancing``, as ``gltfpack -mi``
      writes repeated parts: a chair's four legs) gets one child node per instance, placed by the
      instance's translation, rotation and scale: trimesh drew the mesh once, at the node;
    - a triangle fan (mode 6), which trimesh skips, becomes the triangles it draws;
    - a sparse accessor becomes the dense one it means, in its own component type;
    - with ``textures`` (the surface's colours are wanted), a base-colour texture's
      ``KHR_texture_transform`` (:func:`texture_transforms`) is applied to the primitive's texture
      coordinates, given to it as ``TEXCOORD_0``, and dropped from the material.

    The buffers are merged into the binary chunk; images referred to by URI stay so: load the
    result with a resolver in ``path``'s folder. A buffer file that is missing raises
    :class:`FileNotFoundError` naming it; a buffer too short for its accessors, an
    :class:`InputError`. ``tree``: the file's JSON when the caller has read it (:func:`read_json`)."""
    tree = read_json(path) if tree is None else tree
    todo, instanced, fans = quantized_accessors(tree), instanced_nodes(tree), fan_primitives(tree)
    sparse = [i for i in sparse_accessors(tree) if i not in todo]  # a quantized one is made dense below
    placed_uv = texture_transforms(tree) if textures else []
    if not todo and not instanced and not fans and not sparse and not placed_uv:
        return None
    buffers = _buffers(path, tree)
    merged, starts = bytearray(), []
    for data in buffers:
        starts.append(len(merged))
        merged += data + b"\0" * (-len(data) % 4)
    views = [dict(v) for v in tree.get("bufferViews") or []]
    for i, view in enumerate(views):
        b = view.get("buffer", 0)
        if not 0 <= b < len(buffers) or view.get("byteOffset", 0) + view.get("byteLength", 0) > len(buffers[b]):
            raise InputError(f"cannot read the mesh {path}: its buffer view {i} runs past the end of its buffer")
        view["byteOffset"] = starts[b] + view.get("byteOffset", 0)
        view["buffer"] = 0
    accessors = [dict(a) for a in tree.get("accessors") or []]
    for index in todo:
        a = accessors[index]
        values = _values(path, tree["accessors"][index], tree["bufferViews"], buffers)
        views.append({"buffer": 0, "byteOffset": len(merged), "byteLength": values.nbytes})
        merged += values.tobytes()
        a.update(bufferView=len(views) - 1, byteOffset=0, componentType=5126)
        a.pop("normalized", None)
        a.pop("sparse", None)
        if len(values):  # the bounds of the numbers now stored (glTF requires them on positions)
            a.update(min=values.min(0).tolist(), max=values.max(0).tolist())
    for index in sparse:
        a = accessors[index]
        values = _stored(path, tree["accessors"][index], tree["bufferViews"], buffers)
        row = values.shape[1] * values.itemsize
        stride = row + (-row % 4)  # glTF aligns a vertex attribute's elements to 4 bytes
        rows = np.zeros((len(values), stride), np.uint8)
        rows[:, :row] = np.ascontiguousarray(values).view(np.uint8).reshape(len(values), row)
        merged += b"\0" * (-len(merged) % 4)
        view = {"buffer": 0, "byteOffset": len(merged), "byteLength": rows.nbytes}
        if stride != row:  # never for indices (scalars of 1, 2 or 4 bytes are tightly packed)
            view["byteStride"] = stride
        views.append(view)
        merged += rows.tobytes()
        a.update(bufferView=len(views) - 1, byteOffset=0)
        a.pop("sparse")
    meshes = [dict(m, primitives=[dict(p) for p in m.get("primitives") or []]) for m in tree.get("meshes") or []]
    for m, k in fans:
        primitive = meshes[m]["primitives"][k]
        if "indices" in primitive:
            # the stored integers: through float32, an index past 2^24 would name another vertex
            order = _stored(path, tree["accessors"][primitive["indices"]], tree["bufferViews"], buffers)[:, 0]
            order = order.astype(np.int64)
        else:  # drawn in the order of the vertices
            order = np.arange(int(tree["accessors"][primitive["attributes"]["POSITION"]].get("count", 0)))
        faces = fan_triangles(np.array([len(order)]), order).astype("<u4").reshape(-1)
        views.append({"buffer": 0, "byteOffset": len(merged), "byteLength": faces.nbytes})
        merged += faces.tobytes()
        accessors.append({"bufferView": len(views) - 1, "componentType": 5125, "type": "SCALAR", "count": len(faces)})
        primitive.update(mode=4, indices=len(accessors) - 1)
    materials = [dict(m) if isinstance(m, dict) else m for m in tree.get("materials") or []]
    for m, k, index, matrix in placed_uv:
        uv = _values(path, tree["accessors"][index], tree["bufferViews"], buffers)[:, :2].astype(np.float64)
        uv = (uv @ matrix[:2, :2].T + matrix[:2, 2]).astype(np.float32)
        merged += b"\0" * (-len(merged) % 4)
        views.append({"buffer": 0, "byteOffset": len(merged), "byteLength": uv.nbytes})
        merged += uv.tobytes()
        accessors.append({"bufferView": len(views) - 1, "componentType": 5126, "type": "VEC2", "count": len(uv)})
        primitive = meshes[m]["primitives"][k]
        primitive["attributes"] = dict(primitive["attributes"], TEXCOORD_0=len(accessors) - 1)
        material = materials[primitive["material"]] = dict(materials[primitive["material"]])
        pbr = material["pbrMetallicRoughness"] = dict(material["pbrMetallicRoughness"])
        info = pbr["baseColorTexture"] = dict(pbr["baseColorTexture"], texCoord=0)
        info["extensions"] = {e: v for e, v in info["extensions"].items() if e != _TEXTURE_TRANSFORM}
    nodes = [dict(n) if isinstance(n, dict) else n for n in tree.get("nodes") or []]
    for index in instanced:
        node = nodes[index]
        extensions = dict(node["extensions"])
        attributes = (extensions.pop(_INSTANCING) or {}).get("attributes") or {}
        placed = {}
        for name in ("TRANSLATION", "ROTATION", "SCALE"):
            if name in attributes:
                placed[name] = _values(path, tree["accessors"][attributes[name]], tree["bufferViews"], buffers)
        count = min((len(v) for v in placed.values()), default=0)
        children = []
        for k in range(count):
            child = {"mesh": node["mesh"]}
            for name, key in (("TRANSLATION", "translation"), ("ROTATION", "rotation"), ("SCALE", "scale")):
                if name in placed:
                    child[key] = [float(c) for c in placed[name][k]]
            children.append(len(nodes))
            nodes.append(child)
        node.pop("mesh")
        node["children"] = list(node.get("children") or []) + children
        node["extensions"] = extensions
    tree = dict(
        tree, bufferViews=views, accessors=accessors, nodes=nodes, meshes=meshes, buffers=[{"byteLength": len(merged)}]
    )
    if materials:
        tree["materials"] = materials
    done = {"KHR_mesh_quantization", _INSTANCING}
    for key in ("extensionsUsed", "extensionsRequired"):
        if key in tree:
            tree[key] = [e for e in tree[key] if e not in done]
    text = json.dumps(tree).encode()
    text += b" " * (-len(text) % 4)
    merged += b"\0" * (-len(merged) % 4)
    total = 12 + 8 + len(text) + 8 + len(merged)
    return b"".join(
        [
            struct.pack("<4sII", GLB_MAGIC, 2, total),
            struct.pack("<II", len(text), _JSON),
            text,
            struct.pack("<II", len(merged), _BIN),
            bytes(merged),
        ]
    )


def _buffers(path: Path, tree: dict) -> list[bytes]:
    """The bytes of each of ``tree``'s buffers: a GLB's binary chunk, data URIs, files beside it."""
    out = []
    for i, buffer in enumerate(tree.get("buffers") or []):
        uri = buffer.get("uri")
        if uri is None:
            if path.suffix.lower() != ".glb" or i != 0:
                raise InputError(f"cannot read the mesh {path}: its buffer {i} has no data")
            out.append(_glb_binary(path))
        elif uri.startswith("data:"):
            out.append(base64.b64decode(uri.split(",", 1)[1]))
        else:
            out.append((path.parent / urllib.parse.unquote(uri)).read_bytes())
    return out


def _glb_binary(path: Path) -> bytes:
    """The binary chunk of the GLB ``path`` (empty if it has none)."""
    data = path.read_bytes()
    offset = 12
    while offset + 8 <= len(data):
        length, kind = struct.unpack("<II", data[offset : offset + 8])
        if kind == _BIN:
            return data[offset + 8 : offset + 8 + length]
        offset += 8 + length + (-length % 4)
    return b""


def _stored(path: Path, accessor: dict, views: list, buffers: list[bytes]) -> np.ndarray:  # [count, width]
    """The numbers of one accessor as stored (its component type; a view of the buffer, or for a
    sparse accessor its base -- zeros without one -- with the replaced elements in place)."""
    sparse = accessor.get("sparse")
    if not isinstance(sparse, dict):
        return _dense(path, accessor, views, buffers)
    width = _WIDTH.get(accessor.get("type"), 0)
    count = int(accessor.get("count", 0))
    if "bufferView" in accessor:
        values = _dense(path, {k: v for k, v in accessor.items() if k != "sparse"}, views, buffers).copy()
    elif accessor.get("componentType") in _TYPES and width:
        values = np.zeros((count, width), _TYPES[accessor["componentType"]])
    else:
        raise InputError(f"cannot read the mesh {path}: an accessor it needs has no data zsw can read")
    k = int(sparse.get("count", 0))
    where, replaced = sparse.get("indices") or {}, sparse.get("values") or {}
    if where.get("componentType") not in (5121, 5123, 5125) or "bufferView" not in replaced:
        raise InputError(f"cannot read the mesh {path}: a sparse accessor it needs has no data zsw can read")
    at = _dense(path, dict(where, type="SCALAR", count=k), views, buffers)[:, 0].astype(np.int64)
    new = _dense(path, dict(replaced, componentType=accessor.get("componentType"), type=accessor.get("type"), count=k),
                 views, buffers)  # fmt: skip
    if k and (at.min() < 0 or at.max() >= count):
        raise InputError(f"cannot read the mesh {path}: a sparse accessor replaces an element past its end")
    values[at] = new
    return values


def _dense(path: Path, accessor: dict, views: list, buffers: list[bytes]) -> np.ndarray:  # [count, width]
    """The numbers of one accessor stored whole in a buffer view (a view of the buffer)."""
    kind = accessor.get("componentType")
    if kind not in _TYPES or "bufferView" not in accessor or not 0 <= accessor["bufferView"] < len(views):
        raise InputError(f"cannot read the mesh {path}: an accessor it needs has no data zsw can read")
    view = views[accessor["bufferView"]]
    dtype = _TYPES[kind]
    width = _WIDTH.get(accessor.get("type"), 0)
    count = int(accessor.get("count", 0))
    item = np.dtype(dtype).itemsize
    stride = int(view.get("byteStride") or width * item)
    start = int(view.get("byteOffset", 0)) + int(accessor.get("byteOffset", 0))
    b = view.get("buffer", 0)
    buffer = buffers[b] if 0 <= b < len(buffers) else b""
    end = start + (count - 1) * stride + width * item if count else start
    view_end = int(view.get("byteOffset", 0)) + int(view.get("byteLength", 0))
    if not width or end > min(len(buffer), view_end):
        raise InputError(f"cannot read the mesh {path}: an accessor runs past the end of its buffer view")
    return np.ndarray((count, width), dtype=dtype, buffer=buffer, offset=start, strides=(stride, item))


def _values(path: Path, accessor: dict, views: list, buffers: list[bytes]) -> np.ndarray:  # [count, width] float32
    """The numbers of one accessor as float32, as the glTF specification maps them: floats as they
    are, integers as they are unless normalized, normalized ones ``c / 255`` or ``c / 65535``
    unsigned, ``max(c / 127, -1)`` or ``max(c / 32767, -1)`` signed."""
    kind = accessor.get("componentType")
    values = _stored(path, accessor, views, buffers).astype(np.float32)
    if accessor.get("normalized") and kind in _NORMALIZED:
        values = np.maximum(values / np.float32(_NORMALIZED[kind]), np.float32(-1.0))
    return values
