"""Vertex colours from the photo (zsw.infer.color) on an analytic scene: a cube facing the camera,
red on its left half and blue on its right in the photo, on a white background."""

import numpy as np
import pytest
import trimesh
from scipy.ndimage import binary_dilation, binary_erosion

from zsw.infer.color import CLAY, _bilinear, photo_colors

S, F, H, Z = 64, 80.0, 0.25, 1.0  # image side, focal length, the cube's half side, its centre's depth
K = np.array([[F, 0, (S - 1) / 2], [0, F, (S - 1) / 2], [0, 0, 1]])
RED, BLUE, GREEN = (200, 30, 30), (30, 30, 200), (30, 200, 30)


def cube():
    mesh = trimesh.creation.box(extents=(2 * H,) * 3)
    for _ in range(4):
        mesh = mesh.subdivide()
    return np.asarray(mesh.vertices) + [0, 0, Z], np.asarray(mesh.faces)


def scene(occluded: bool = False, spill: int = 0):
    """The photo and the cube's visible silhouette (its front face: the camera sees no other);
    ``occluded``: a green occluder hides the lower half (image rows below the centre), which the
    visible mask leaves out; ``spill``: the mask reaches this many pixels past the object, onto
    the background and the occluder, as predicted masks do."""
    u, v = np.meshgrid(np.arange(S), np.arange(S))
    half = F * H / (Z - H)
    silhouette = (np.abs(u - K[0, 2]) < half) & (np.abs(v - K[1, 2]) < half)
    photo = np.full((S, S, 3), 255, np.uint8)
    photo[silhouette & (u < K[0, 2])] = RED
    photo[silhouette & (u >= K[0, 2])] = BLUE
    visible = silhouette.copy()
    if occluded:
        lower = v > K[1, 2]
        photo[lower & silhouette] = GREEN
        visible &= ~lower
    if spill:
        visible = binary_dilation(visible, iterations=spill)
    return photo, visible


@pytest.mark.parametrize("occluded", [False, True])
def test_no_vertex_takes_the_background_or_the_occluder(occluded):
    vertices, faces = cube()
    photo, visible = scene(occluded, spill=1)
    colors = photo_colors(vertices, faces, photo, K, visible)
    assert colors.seen.any() and (~colors.seen).any()
    # the object's colours and their blends have green 30; white or the occluder mixed in raise it
    assert colors.rgb[:, 1].max() < 60
    # the rule before (nearest seen vertex, mask rim included) fails this
    before = photo_colors(vertices, faces, photo, K, visible, erode=0, blur=0)
    assert before.rgb[:, 1].max() > 60


def test_the_hidden_back_takes_the_colour_in_front_of_it():
    vertices, faces = cube()
    photo, visible = scene()
    colors = photo_colors(vertices, faces, photo, K, visible)
    back = vertices[:, 2] > Z + H - 1e-6  # the back face: never seen
    assert not colors.seen[back].any()
    rgb, x = colors.rgb.astype(int), vertices[:, 0]
    # red stays red behind the red half, blue behind the blue; blended only near the seam
    assert (rgb[back & (x < -0.05), 0] > rgb[back & (x < -0.05), 2]).all()
    assert (rgb[back & (x > 0.05), 2] > rgb[back & (x > 0.05), 0]).all()
    assert (rgb[back & (x < -0.15), 0] > rgb[back & (x < -0.15), 2] + 100).all()
    assert (rgb[back & (x > 0.15), 2] > rgb[back & (x > 0.15), 0] + 100).all()


def test_seen_vertices_keep_the_photo_sharp():
    vertices, faces = cube()
    photo, visible = scene()
    rng = np.random.default_rng(0)
    photo = np.where(visible[..., None], rng.integers(0, 256, photo.shape), 255).astype(np.uint8)
    colors = photo_colors(vertices, faces, photo, K, visible)
    s = colors.seen
    u = F * vertices[s, 0] / vertices[s, 2] + K[0, 2]
    v = F * vertices[s, 1] / vertices[s, 2] + K[1, 2]
    expected = _bilinear(photo, u, v, binary_erosion(visible))  # the mask's rim left out
    np.testing.assert_allclose(colors.rgb[s], np.clip(np.rint(expected), 0, 255), atol=1)  # float rounding
    # the front face is seen but for its rim (the mask's outer pixel), nothing else is
    front = vertices[:, 2] < Z - H + 1e-6
    inner = front & (np.abs(vertices[:, :2]) < H - 0.02).all(axis=1)
    assert s[inner].all() and not s[~front].any()


def test_a_part_out_of_view_takes_the_nearest_colour_and_no_mask_leaves_clay():
    vertices, faces = cube()
    photo, visible = scene()
    far = vertices + [2.0, 0, 0]  # a second cube beside the first, projecting outside the image
    both_v = np.concatenate([vertices, far])
    both_f = np.concatenate([faces, faces + len(vertices)])
    colors = photo_colors(both_v, both_f, photo, K, visible)
    out = np.arange(len(both_v)) >= len(vertices)
    assert not colors.seen[out].any()
    assert (colors.rgb[out].astype(int)[:, 2] > 150).all()  # the blue right half is nearest
    empty = photo_colors(vertices, faces, photo, K, np.zeros_like(visible))
    assert not empty.seen.any() and (empty.rgb == CLAY).all()


def test_the_colour_bench_tells_object_colours_from_the_rest():
    from zsw.bench.vertex_colors import palette_distances

    photo, visible = scene(occluded=True)
    d_obj, d_other = palette_distances(photo, visible, np.array([RED, BLUE, GREEN, (255, 255, 255)]))
    wrong = d_other + 10 < d_obj
    assert wrong.tolist() == [False, False, True, True]
