from __future__ import annotations

import os

import numpy as np
import pytest

from zsw.data.layout import SampleId, ZeroShapeLayout, load_npy_dict
from zsw.errors import InputError


def test_view_and_object_round_trip(tmp_path):
    layout = ZeroShapeLayout(tmp_path)
    sid = SampleId("coffee_mug", "o7", "3")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
    depth = np.where(rng.random((224, 224)) > 0.5, rng.random((224, 224)) + 1, 0).astype(np.float32)
    K = np.array([[300, 0, 112], [0, 300, 112], [0, 0, 1]], np.float32)
    Rt = np.hstack([np.eye(3), [[0], [0], [2]]]).astype(np.float32)
    assert not layout.has_view(sid)
    layout.write_view(sid, image=image, depth=depth, intrinsics=K, extrinsics=Rt, occluder_mask=depth > 1.5)
    layout.write_object(
        sid, sample_pt=rng.random((50, 3)), sample_sdf=rng.random(50) - 0.5, pointcloud=rng.random((20, 3))
    )
    layout.write_list("coffee_mug", "train", [sid])
    assert layout.has_view(sid) and layout.categories() == ["coffee_mug"]
    assert layout.read_list("coffee_mug", "train") == [sid] and layout.samples("train") == [sid]
    assert np.array_equal(layout.read_image(sid), image)
    assert np.array_equal(np.load(layout.depth(sid)), depth)
    assert np.array_equal(layout.read_mask(layout.mask(sid)), depth > 0)
    assert np.array_equal(layout.read_mask(layout.occluder_mask(sid)), depth > 1.5)
    pts, sdf = layout.read_gt_sdf(sid)
    assert pts.shape == (50, 3) and sdf.shape == (50,)
    # ZeroShape's own loader reads what zsw writes
    assert np.load(layout.gt_sdf(sid), allow_pickle=True).item()["sample_pt"].shape == (50, 3)
    assert not list(tmp_path.rglob(".*tmp*"))


def test_sample_id_parsing():
    assert SampleId.parse("coffee_mug", "coffee_mug_o7_3.png") == SampleId("coffee_mug", "o7", "3")
    with pytest.raises(InputError):
        SampleId.parse("chair", "table_o1_2.png")
    with pytest.raises(InputError):
        SampleId("chair", "o_1", "2")


def test_gt_sdf_reader_refuses_arbitrary_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.npy"
    np.save(path, np.array({"sample_pt": Evil()}, dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="refusing to unpickle"):
        load_npy_dict(path)


def test_manifest_survives_a_torn_line(tmp_path):
    layout = ZeroShapeLayout(tmp_path)
    layout.append_manifest({"image": "a.png"})
    with open(layout.manifest, "a") as f:
        f.write('{"image": "b.pn')  # killed mid-write
    assert list(layout.read_manifest()) == [{"image": "a.png"}]


def test_atomic_writes_get_normal_permissions(tmp_path):
    from zsw import io

    io.atomic_write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~io._UMASK
