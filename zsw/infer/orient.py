"""Which way is up: the frame a reconstruction's mesh is written in (``--frame``).

The model works in the camera frame of the photo (x right, y down, z forward). A mesh leaves it
in one of three frames, each a rigid motion of the camera frame (:class:`FramePose`):

* ``gltf`` (default): the camera frame turned 180 degrees about x, ``(x, y, z) -> (x, -y, -z)``:
  y up along the **camera's** up, the camera at the origin looking down -z, so a glTF camera
  there with the predicted K sees the mesh exactly as in the photo. An object photographed from
  above leans back by the camera's elevation.
* ``upright``: y up along the **object's** up axis as the model predicts it (the decoder's axial
  queries turn about it; trained against the true one), the object standing on y = 0, centred on
  the y axis, the side the photo shows facing +z: a mug photographed from above stands on its base
  in a viewer, on a slicer's bed and in AR. The estimate is coarse: measured against the truth
  (``python -m zsw.bench.upright``, ``bench/results/upright/``), see docs/reconstruct.md. A model
  without that head (ZeroShape's own architecture) stands the mesh up along the camera's up.
* ``camera``: the camera frame itself; vertices project onto the photo with K.

Whatever the frame, ``result.json`` records the motion (``mesh.camera_to_mesh``, 4 x 4) and the
up axis used (``mesh.up``, camera frame), so the photo's camera can be placed beside any of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zsw.errors import ConfigError

__all__ = ["FRAMES", "CAMERA_UP", "FramePose", "frame_pose", "upright_rotation", "mean_up"]

#: output frames of the mesh, the default first
FRAMES = ("gltf", "upright", "camera")
#: the camera's up axis in the camera frame (image rows grow downwards)
CAMERA_UP = np.array([0.0, -1.0, 0.0])
_GLTF = np.diag([1.0, -1.0, -1.0])  # camera -> glTF: 180 degrees about x


@dataclass(frozen=True)
class FramePose:
    """The rigid motion from the camera frame to a mesh's frame: ``out = R @ camera + t``."""

    frame: str
    rotation: np.ndarray  # [3, 3]
    translation: np.ndarray  # [3]

    def apply(self, points: np.ndarray) -> np.ndarray:  # [N, 3] camera -> frame
        p = np.asarray(points, dtype=np.float64)
        return p @ self.rotation.T + self.translation

    def invert(self, points: np.ndarray) -> np.ndarray:  # [N, 3] frame -> camera
        p = np.asarray(points, dtype=np.float64)
        return (p - self.translation) @ self.rotation

    def turn(self, vectors: np.ndarray) -> np.ndarray:  # [N, 3] directions (normals): rotation only
        return np.asarray(vectors, dtype=np.float64) @ self.rotation.T

    def matrix(self) -> np.ndarray:  # [4, 4] homogeneous camera -> frame
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = self.rotation, self.translation
        return m


def _rotation_onto(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # [3, 3]: the smallest turn taking unit a to b
    # Rodrigues about a x b: trimesh.geometry.align_vectors also takes a to b but adds a twist about b,
    # which would turn the photo's side away from +z (tests/test_orient.py checks the heading)
    v, c = np.cross(a, b), float(np.dot(a, b))
    if c < -1.0 + 1e-9:  # opposite: half a turn about any axis across a (x, or z when a lies along x)
        axis = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 0.0, 1.0])
        axis /= np.linalg.norm(axis)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def upright_rotation(up: np.ndarray) -> np.ndarray:  # [3] camera frame -> [3, 3] camera -> upright
    """The rotation from the camera frame to one whose +y is ``up``: glTF's axes, then the smallest
    turn that takes ``up`` onto +y, so the side facing the camera still faces +z (for a camera that
    looks down on an object without rolling, a turn about x by its elevation)."""
    u = np.asarray(up, dtype=np.float64)
    n = np.linalg.norm(u)
    if not np.isfinite(n) or n < 1e-9:
        raise ValueError(f"an up axis needs a direction, got {u.tolist()}")
    g = _GLTF @ (u / n)
    return _rotation_onto(g, np.array([0.0, 1.0, 0.0])) @ _GLTF


def frame_pose(frame: str, camera_vertices: np.ndarray | None = None, up: np.ndarray | None = None) -> FramePose:
    """The motion from the camera frame into ``frame`` (see the module docstring). ``upright``
    turns ``up`` (camera frame; None: the camera's own) onto +y and stands ``camera_vertices``
    [V, 3] on y = 0, centred on the y axis (no vertices: no shift)."""
    if frame == "camera":
        return FramePose(frame, np.eye(3), np.zeros(3))
    if frame == "gltf":
        return FramePose(frame, _GLTF.copy(), np.zeros(3))
    if frame != "upright":
        raise ConfigError(f"frame must be one of {', '.join(FRAMES)}, got {frame!r}")
    R = upright_rotation(CAMERA_UP if up is None else up)
    t = np.zeros(3)
    if camera_vertices is not None and len(camera_vertices):
        v = np.asarray(camera_vertices, dtype=np.float64) @ R.T
        lo, hi = v.min(axis=0), v.max(axis=0)
        t = -np.array([(lo[0] + hi[0]) / 2, lo[1], (lo[2] + hi[2]) / 2])
    return FramePose(frame, R, t)


def mean_up(up, mirrored_up=None) -> np.ndarray | None:  # [B, 3] tensors -> [B, 3] float64 unit, or None
    """The object's up axis per image from the decoder's latents (``DecoderLatents.up``, camera
    axes), averaged with that of the photo's mirror image (``--tta flip``) reflected back through
    x = 0; None for a model that predicts none."""
    if up is None:
        return None
    u = up.detach().float().cpu().numpy().astype(np.float64)
    if mirrored_up is not None:
        u = u + mirrored_up.detach().float().cpu().numpy().astype(np.float64) * np.array([-1.0, 1.0, 1.0])
    n = np.linalg.norm(u, axis=-1, keepdims=True)
    return np.where(n > 1e-9, u / np.maximum(n, 1e-9), CAMERA_UP)
