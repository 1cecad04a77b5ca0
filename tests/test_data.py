"""Datasets: training reader, augmentation (backgrounds, copy-paste occluders), evaluation sets."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from zsw.data.backgrounds import Backgrounds, composite, is_plain_white, texture_object
from zsw.data.dataset import AugmentConfig, ShapeDataset
from zsw.data.eval_sets import open_eval_set
from zsw.data.layout import SampleId, ZeroShapeLayout
from zsw.data.occluders import Occluder, paste_occluders
from zsw.errors import ConfigError, InputError
from zsw.synth.procedural import ProceduralConfig, generate

NO_AUGMENT = AugmentConfig(occluders=(0, 0), backgrounds="never")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def proc(tmp_path_factory):
    """8 procedural views: 3 train objects, 1 val object (golden-ratio split of 4 objects)."""
    root = tmp_path_factory.getbasetemp() / "zsw-proc-4x2"
    cfg = ProceduralConfig(objects=4, views=2, seed=0, categories=("box", "mug", "chair", "cone"))
    generate(root, cfg, workers=1)  # resumes instantly if another module made it
    return root


def _rot(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return (q * np.sign(np.linalg.det(q))).astype(np.float32)


# --------------------------------------------------------------------------------------------
# training reader
# --------------------------------------------------------------------------------------------


def test_views_at_another_size_than_the_model_are_resampled_with_their_intrinsics(proc):
    """ZeroShape's data are 224 px; a model at 64 px (the tiny preset in tests) resamples depth and
    masks (nearest) and scales K, so the lifted surface is the same object in the same place; the
    maps' size used to be refused sample by sample until the run stopped."""
    full = ShapeDataset(proc, "train", points=64, augment=None)
    small = ShapeDataset(proc, "train", points=64, augment=None, size=64)
    a, b = full[0], small[0]
    assert b["image"].shape == (3, 64, 64) and b["depth"].shape == b["visible_mask"].shape == (1, 64, 64)

    def lift(item) -> np.ndarray:  # the visible surface in the camera frame
        d, K = item["depth"][0].numpy(), item["intrinsics"].numpy()
        v, u = np.nonzero(d > 0)
        z = d[v, u]
        return np.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], axis=1)

    pa, pb = lift(a), lift(b)
    size = np.ptp(pa, axis=0).max()
    assert np.abs(pa.mean(0) - pb.mean(0)).max() < 0.02 * size
    assert np.abs(np.ptp(pa, axis=0) - np.ptp(pb, axis=0)).max() < 0.05 * size
    assert float(b["intrinsics"][0, 0]) == pytest.approx(float(a["intrinsics"][0, 0]) * 64 / 224, rel=1e-5)


def test_masks_of_0_1_labels_are_the_object_not_background(proc, tmp_path):
    """A mask PNG holding 0/1 (another tool's labels) is read as those labels: as coverage 1/255
    the backgrounds of augmentation painted over the object while its depth still said visible."""
    import shutil

    data = shutil.copytree(proc, tmp_path / "data")
    layout = ZeroShapeLayout(data)
    sid = layout.samples("train")[0]
    before = layout.read_alpha(sid)
    with Image.open(layout.mask(sid)) as im:
        labels = (np.asarray(im.convert("L")) > 127).astype(np.uint8)
    Image.fromarray(labels).save(layout.mask(sid))
    assert np.array_equal(layout.read_alpha(sid), (before > 0.5).astype(np.float32))
    assert np.array_equal(layout.read_mask(layout.mask(sid)), labels > 0)


def test_reader_round_trips_written_files(proc):
    ds = ShapeDataset(proc, "train", points=512, augment=None)
    layout = ZeroShapeLayout(proc)
    assert len(ds) == len(layout.samples("train")) == 6
    for i in range(len(ds)):
        item = ds[i]
        lay, sid = ds.sample_id(item["index"])
        image = np.asarray(Image.open(lay.image(sid)).convert("RGB"))
        assert np.array_equal((item["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), image)
        depth = np.load(lay.depth(sid))
        assert np.array_equal(item["depth"][0].numpy(), depth)
        assert np.array_equal(item["visible_mask"][0].numpy() > 0, depth > 0)
        assert not item["occluder_mask"].any() and not item["pseudo_valid"].any()
        assert np.allclose(item["intrinsics"].numpy(), np.load(lay.intrinsics(sid)))
        assert np.allclose(item["extrinsics"].numpy(), np.load(lay.extrinsics(sid)))
        pts, sdf = lay.read_gt_sdf(sid)
        assert item["points"].shape == (512, 3)
        # the query points are a subset of the object's samples, with their SDF and label
        where = {row.tobytes(): k for k, row in enumerate(pts)}
        picked = [where[row.tobytes()] for row in item["points"].numpy()]
        assert len(set(picked)) == 512 and np.array_equal(sdf[picked], item["sdf"].numpy())
        assert np.array_equal(item["occupancy"].numpy(), (item["sdf"].numpy() - 0.003 < 0).astype(np.float32))
        assert item["skipped"] == 0 and item["category"] == sid.category
    # per-item randomness depends on (seed, epoch, index) only
    a, b = ds[0]["points"], ds[0]["points"]
    ds.set_epoch(1)
    assert np.array_equal(a, b) and not np.array_equal(a, ds[0]["points"])


def test_augmented_samples_are_consistent(proc):
    aug = AugmentConfig(occluders=(2, 2), occluder_scale=(0.4, 0.6), backgrounds="always")
    ds = ShapeDataset(proc, "train", points=64, augment=aug, seed=3)
    plain = ShapeDataset(proc, "train", points=64, augment=None)
    occluded = 0
    for i in range(len(ds)):
        item, ref = ds[i], plain[i]
        vis, occ = item["visible_mask"][0] > 0, item["occluder_mask"][0] > 0
        ref_vis = ref["visible_mask"][0] > 0
        assert (vis <= ref_vis).all() and not (vis & occ).any()
        assert bool(((item["depth"][0] > 0) == vis).all())  # depth is the visible depth
        assert bool((item["depth"][0][vis] == ref["depth"][0][vis]).all())
        assert vis.sum() >= 0.3 * ref_vis.sum() - 1  # min_visible
        hidden = ref_vis & ~vis
        assert bool((hidden <= occ).all())  # whatever got hidden is under an occluder
        occluded += int(hidden.any())
        outside = ~ref_vis & ~occ
        assert (item["image"][:, outside] - ref["image"][:, outside]).abs().mean() > 0.02  # new background
    assert occluded >= len(ds) // 2
    # the same item twice: identical (deterministic augmentation)
    assert np.array_equal(ds[1]["image"].numpy(), ds[1]["image"].numpy())


def test_paste_occluders_updates_masks_and_depth():
    rng = np.random.default_rng(0)
    H = W = 64
    image = np.full((H, W, 3), 200, np.uint8)
    visible = np.zeros((H, W), bool)
    visible[16:48, 16:48] = True
    depth = np.where(visible, 2.0, 0.0).astype(np.float32)
    occ_img = np.zeros((20, 20, 3), np.uint8)
    occ_img[..., 0] = 255
    alpha = np.zeros((20, 20), np.float32)
    alpha[2:18, 2:18] = 1.0
    occ = Occluder.from_render(np.where(alpha[..., None] > 0, occ_img, 255).astype(np.uint8), alpha)
    assert occ.alpha.shape == (16, 16) and np.allclose(occ.rgb[..., 0], 255)  # un-premultiplied from white
    out = paste_occluders(image, visible, depth, [occ, occ], rng, scale=(0.4, 0.5), min_visible=0.2)
    assert len(out.placements) >= 1
    assert not (out.visible & out.occluder).any() and (out.visible <= visible).all()
    assert np.array_equal(out.depth > 0, out.visible) and np.all(out.depth[out.visible] == 2.0)
    assert np.array_equal(visible & ~out.visible, visible & out.occluder)
    red = (out.image[..., 0] == 255) & (out.image[..., 1] == 0)
    assert np.array_equal(red, out.occluder)  # solid occluder pixels carry its colour
    # a paste that would hide too much is dropped
    big = Occluder(rgb=np.zeros((64, 64, 3), np.float32), alpha=np.ones((64, 64), np.float32))
    none = paste_occluders(image, visible, depth, [big], rng, scale=(1.0, 1.0), min_visible=0.9)
    assert none.placements == [] and np.array_equal(none.visible, visible)


def test_backgrounds_and_compositing(tmp_path):
    rng = np.random.default_rng(0)
    bgs = Backgrounds(("solid", "gradient", "noise"))
    for _ in range(6):
        bg = bgs.sample(rng, 32)
        assert bg.shape == (32, 32, 3) and bg.dtype == np.uint8
    # the composite is exact for an object premultiplied over white
    color, alpha = np.array([10.0, 100.0, 200.0]), np.array([[0.0, 0.25], [1.0, 0.5]])
    over_white = alpha[..., None] * color + (1 - alpha[..., None]) * 255
    bg = np.full((2, 2, 3), 40, np.uint8)
    out = composite(over_white.round().astype(np.uint8), alpha, bg)
    expected = alpha[..., None] * color + (1 - alpha[..., None]) * 40
    assert np.abs(out.astype(float) - expected).max() <= 1
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    white = np.where(mask[..., None], 30, 255).astype(np.uint8)
    assert is_plain_white(white, mask) and not is_plain_white(bgs.sample(rng, 32), mask)
    # photos from a folder; an unreadable one is skipped with a warning
    folder = tmp_path / "bg"
    folder.mkdir()
    Image.fromarray(np.full((40, 60, 3), 77, np.uint8)).save(folder / "a.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    photos = Backgrounds(("image",), folder)
    outs = [photos.sample(np.random.default_rng(s), 16) for s in range(8)]
    assert any((o == 77).all() for o in outs) and photos.skipped >= 1
    with pytest.raises(ConfigError, match="needs a folder"):
        Backgrounds(("image",))
    with pytest.raises(ConfigError, match=r"a\.png is a file, not a folder of images"):
        Backgrounds(("image",), folder / "a.png")
    with pytest.raises(ConfigError, match=r"nowhere does not exist"):
        Backgrounds(("image",), folder / "nowhere")


def test_texture_object_prints_on_the_object_only():
    rng = np.random.default_rng(0)
    alpha = np.zeros((32, 32), np.float32)
    alpha[8:24, 8:24] = 1.0
    alpha[7, 8:24] = 0.5  # an antialiased edge
    color = np.array([150.0, 120.0, 60.0])
    image = (alpha[..., None] * color + (1 - alpha[..., None]) * 255).round().astype(np.uint8)
    texture = rng.integers(64, 192, (32, 32, 3)).astype(np.uint8)  # gains 0.5-1.5: no clipping
    out = texture_object(image, alpha, texture, 1.0)
    assert (out[alpha == 0] == 255).all()  # the white around the object is untouched
    inside = alpha == 1
    assert out[inside].std(0).min() > 10 and image[inside].std(0).max() == 0  # flat -> textured
    assert np.abs(out[inside].mean(0) - color).max() < 2  # the object's colour on average
    assert np.array_equal(texture_object(image, alpha, texture, 0.0), image)


def test_without_appearance_the_geometry_is_augmented_alike_and_the_image_is_left_as_read(proc):
    """``with_appearance=False`` (stage shape) skips the colour work and nothing else: with no colour
    options on, the two modes draw the same numbers and give the same depth, masks, K and points
    (the occluders' silhouettes land in the same places); with every colour option on, the image is
    the view as read while the occluders still cut the masks."""
    import torch

    geometry = ("depth", "visible_mask", "occluder_mask", "intrinsics", "points", "occupancy")
    plain = ShapeDataset(proc, "train", points=32, augment=None)
    shapes_only = AugmentConfig(occluders=(1, 2), backgrounds="never", zoom_out=0.5)
    colours = ShapeDataset(proc, "train", points=32, augment=shapes_only, seed=5)
    silhouettes = ShapeDataset(proc, "train", points=32, augment=shapes_only, seed=5, with_appearance=False)
    occluded = 0
    for i in range(len(plain)):
        a, b = colours[i], silhouettes[i]
        for key in geometry:
            assert torch.equal(a[key], b[key]), key
        occluded += int(b["occluder_mask"].any())
    assert occluded >= len(plain) // 2

    everything = AugmentConfig(occluders=(1, 2), backgrounds="always", object_texture=1.0, color_jitter=0.5)
    shape_stage = ShapeDataset(proc, "train", points=32, augment=everything, seed=5, with_appearance=False)
    full_stage = ShapeDataset(proc, "train", points=32, augment=everything, seed=5)
    occluded = 0
    for i in range(len(plain)):
        item, ref = shape_stage[i], plain[i]
        assert torch.equal(item["image"], ref["image"])  # no background, texture, jitter or occluder colour
        assert not torch.equal(full_stage[i]["image"], ref["image"])
        vis, occ = item["visible_mask"][0] > 0, item["occluder_mask"][0] > 0
        assert bool((vis <= (ref["visible_mask"][0] > 0)).all()) and not bool((vis & occ).any())
        assert bool(((item["depth"][0] > 0) == vis).all())
        occluded += int(occ.any())
    assert occluded >= len(plain) // 2
    with pytest.raises(ValueError, match="without colours"):
        piece = Occluder.from_render(None, np.ones((4, 4), np.float32))
        paste_occluders(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), bool), np.ones((8, 8), np.float32),
                        [piece], np.random.default_rng(0))  # fmt: skip


def test_object_texture_augmentation(proc):
    def object_std(texture: float) -> float:
        aug = AugmentConfig(occluders=(0, 0), backgrounds="never", object_texture=texture)
        ds = ShapeDataset(proc, "train", points=16, augment=aug, seed=0)
        stds = []
        for i in range(len(ds)):
            item = ds[i]
            image, mask = item["image"].permute(1, 2, 0).numpy(), item["visible_mask"][0].numpy() > 0.5
            assert image[~mask].mean() > 0.97  # still over white: only the object changed
            stds.append(float(image[mask].std(0).mean()))
        return float(np.mean(stds))

    assert object_std(1.0) > object_std(0.0) * 1.3
    with pytest.raises(ConfigError, match="object_texture"):
        AugmentConfig(object_texture=1.5)


def test_zoom_out_shows_the_same_surface_smaller(proc):
    """augment.zoom_out shrinks the render into the frame with K following it: the visible surface
    lifted from the zoomed depth and K is the one lifted from the original (same centroid and
    extent to within the resampling), the mask covers ~zoom^2 of its area, and with zoom_out 0
    the samples are the unzoomed ones (the option draws nothing from the rng)."""
    import torch

    from zsw.model.geometry import unproject_depth

    plain = ShapeDataset(proc, "train", points=16, augment=NO_AUGMENT, seed=0)
    zoomed = ShapeDataset(proc, "train", points=16, seed=0,
                          augment=AugmentConfig(occluders=(0, 0), backgrounds="never", zoom_out=1.0,
                                                zoom_range=(0.5, 0.5)))  # fmt: skip
    off = ShapeDataset(proc, "train", points=16, seed=0,
                       augment=AugmentConfig(occluders=(0, 0), backgrounds="never", zoom_out=0.0))  # fmt: skip

    def surface(item) -> np.ndarray:
        pts = unproject_depth(item["depth"][None], item["intrinsics"][None].float())[0]
        return pts[item["visible_mask"].reshape(-1) > 0.5].numpy()

    for i in range(len(plain)):
        a, b = plain[i], zoomed[i]
        assert torch.equal(off[i]["image"], a["image"]) and torch.equal(off[i]["intrinsics"], a["intrinsics"])
        pa, pb = surface(a), surface(b)
        extent = float(np.ptp(pa, axis=0).max())
        assert np.abs(pa.mean(0) - pb.mean(0)).max() < 0.03 * extent
        assert abs(float(np.ptp(pb, axis=0).max()) - extent) < 0.06 * extent
        ratio = float(b["visible_mask"].sum() / a["visible_mask"].sum())
        assert 0.2 < ratio < 0.3, ratio  # zoom 0.5: a quarter of the pixels
        assert torch.allclose(b["intrinsics"][:2, :2], a["intrinsics"][:2, :2] * 0.5)
        # the frame around the shrunk render is white, outside the object
        outside = b["visible_mask"][0] < 0.5
        assert float(b["image"].permute(1, 2, 0)[outside].mean()) > 0.97
    with pytest.raises(ConfigError, match="zoom_out"):
        AugmentConfig(zoom_out=2.0)
    with pytest.raises(ConfigError, match="zoom_range"):
        AugmentConfig(zoom_range=(0.8, 0.5))


def test_corrupt_samples_are_skipped_and_counted(proc, tmp_path, caplog):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(proc, root)
    layout = ZeroShapeLayout(root)
    sids = layout.samples("train")
    layout.depth(sids[0]).write_bytes(b"garbage")  # corrupt
    layout.intrinsics(sids[1]).unlink()  # missing
    ds = ShapeDataset(root, "train", points=16, augment=None)
    with caplog.at_level(logging.WARNING):
        first = ds[0]
    assert first["skipped"] == 2 and first["index"] == 2 and ds.skipped == 2
    assert "skipping unreadable sample" in caplog.text and sids[0].name in caplog.text
    # every sample broken: one clear error instead of an endless search
    for sid in sids:
        layout.depth(sid).write_bytes(b"garbage")
    with pytest.raises(Exception, match="consecutive samples"):
        ShapeDataset(root, "train", points=16, augment=None)[0]


def test_dataset_errors(tmp_path, proc):
    from zsw.data.dataset import expand_roots

    with pytest.raises(ConfigError, match="does not exist"):
        ShapeDataset(tmp_path / "missing", "train")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"dataset folder .*file is a file"):
        expand_roots(tmp_path / "file")
    # the same dataset twice (`--data d --data d`, or a folder and its dataset): refused, not counted twice
    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "p").symlink_to(proc)
    assert expand_roots([proc]) == [proc] and expand_roots([tmp_path / "sets"]) == [tmp_path / "sets" / "p"]
    for roots in ([proc, proc], [proc, tmp_path / "sets"]):
        with pytest.raises(ConfigError, match="is given twice .* its samples would count twice"):
            expand_roots(roots)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a dataset"):
        ShapeDataset(tmp_path / "empty", "train")
    with pytest.raises(ConfigError, match="backgrounds"):
        AugmentConfig(backgrounds="sometimes")


# --------------------------------------------------------------------------------------------
# evaluation sets
# --------------------------------------------------------------------------------------------


def _save_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _save_npy(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def test_pix3d_reader_on_a_fabricated_folder(tmp_path, caplog):
    rng = np.random.default_rng(0)
    root = tmp_path / "Pix3D"
    (root / "lists").mkdir(parents=True)
    (root / "lists" / "chair_test.txt").write_text("0001\n0002\n0003\n")
    (root / "lists" / "sofa_test.txt").write_text("0007\n")
    expected = {}
    for cat, name in [("chair", "0001"), ("chair", "0002"), ("chair", "0003"), ("sofa", "0007")]:
        h, w = 90, 120  # not square, not 224: resized like ZeroShape
        rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        mask[20:70, 30:100] = 255
        R = _rot(rng)
        pc = rng.normal(size=(50, 3)).astype(np.float32)
        model = f"model/{cat}/IKEA_{name}/model.obj"
        ann = {"img": f"img/{cat}/{name}.png", "mask": f"mask/{cat}/{name}.png", "focal_length": 35.0,
               "cam_position": [0, 0, 2], "rot_mat": R.tolist(), "trans_mat": [0, 0, 1.78], "model": model,
               "bbox": [30, 20, 100, 70]}  # fmt: skip
        (root / "annotation" / cat).mkdir(parents=True, exist_ok=True)
        (root / "annotation" / cat / f"{name}.json").write_text(json.dumps(ann))
        if name == "0003":
            continue  # its image and point cloud are missing
        _save_png(root / "img_processed" / cat / f"{name}.png", rgb)
        _save_png(root / "mask_processed" / cat / f"{name}.png", mask)
        _save_npy(root / "pointclouds" / cat / f"IKEA_{name}" / "model.npy", pc)
        expected[f"{cat}_{name}"] = (rgb, mask, R, pc)
    with caplog.at_level(logging.WARNING):
        ds = open_eval_set(root, "pix3d")
    assert len(ds) == 3 and ds.missing == 1 and "chair/0003" in caplog.text.replace("chair_0003", "chair/0003")
    for sample in ds:
        rgb, mask, R, pc = expected[sample.name]
        assert sample.image.shape == (224, 224, 3) and sample.image.dtype == np.uint8
        assert sample.mask.shape == (224, 224) and sample.mask.dtype == bool
        assert sample.intrinsics is None
        # mask = resized alpha > 0.5; outside it the image is white
        rgba = Image.merge("RGBA", (*Image.fromarray(rgb).split(), Image.fromarray(mask)))
        alpha = np.asarray(rgba.resize((224, 224), Image.Resampling.BICUBIC))[..., 3]
        assert np.array_equal(sample.mask, alpha / 255.0 > 0.5)
        assert (sample.image[~sample.mask] == 255).all()
        # GT points: rotated by R, then x and y negated (ZeroShape's Pix3D convention)
        want = pc @ R.T
        want[:, :2] *= -1
        assert np.allclose(sample.gt_points, want, atol=1e-5)
    assert sorted(s.category for s in ds) == ["chair", "chair", "sofa"]
    # a corrupt image: indexing names the file, iterating skips and counts it
    (root / "img_processed" / "sofa" / "0007.png").write_bytes(b"broken")
    ds = open_eval_set(root, "pix3d")
    idx = ds.names().index("sofa_0007")
    with pytest.raises(InputError, match="sofa_0007"):
        ds[idx]
    assert len(list(ds)) == 2 and ds.skipped == 2


@pytest.mark.parametrize("fmt", ["ocrtoc", "omniobject3d"])
def test_scanned_object_readers(tmp_path, fmt):
    rng = np.random.default_rng(1)
    root = tmp_path / fmt
    depth_dir = "depth_np" if fmt == "ocrtoc" else "depth"
    names = [f"mustard_bottle_{k}" for k in range(7)]
    (root / "lists").mkdir(parents=True)
    (root / "lists" / "bottle_test.list").write_text("".join(f"{n}.png\n" for n in names))
    pc = rng.normal(size=(30, 3)).astype(np.float32)
    _save_npy(root / "pointclouds" / "bottle" / "mustard_bottle.npy", pc)
    rots = {}
    for k, n in enumerate(names):
        depth = np.zeros((224, 224), np.float32)
        depth[50:150, 60:160] = 1.5
        if k == 0:
            depth[100, 100] = np.nan  # a hole in a scan: object, as ZeroShape counts it (depth != 0)
        _save_npy(root / depth_dir / "bottle" / f"{n}.npy", depth)
        _save_png(root / "images_processed" / "bottle" / f"{n}.png", rng.integers(0, 255, (224, 224, 3), np.uint8))
        rots[n] = _rot(rng)
        _save_npy(root / "camera_data" / "extr" / "bottle" / f"{n}.npy", np.hstack([rots[n], [[0], [0], [1]]]))
    ds = open_eval_set(root, fmt)
    # OCRTOC evaluates every 5th line of the list (ZeroShape), OmniObject3D every line; a name
    # carries its category (one object name can sit in two categories, and resuming goes by name)
    want = names[::5] if fmt == "ocrtoc" else names
    assert ds.names() == [f"bottle_{n}" for n in want]
    assert len(list(ds)) == len(want) and ds.skipped == 0
    for s in ds:
        assert s.mask.sum() == 100 * 100 and (s.image[~s.mask] == 255).all()
        assert np.allclose(s.gt_points, pc @ rots[s.name.removeprefix("bottle_")].T, atol=1e-5)


def test_procedural_and_zeroshape_layout_readers(proc, tmp_path):
    # the generated data: test split empty here (4 objects), so read val explicitly
    ds = open_eval_set(proc, "procedural", split="val")
    layout = ZeroShapeLayout(proc)
    assert ds.names() == [s.name for s in layout.samples("val")]
    for s in ds:
        sid = SampleId.parse(s.category, s.name + ".png")
        assert np.array_equal(s.image, layout.read_image(sid))
        assert np.array_equal(s.mask, np.load(layout.depth(sid)) > 0)
        Rt = np.load(layout.extrinsics(sid))
        assert np.allclose(s.gt_points, np.load(layout.pointcloud(sid)) @ Rt[:, :3].T, atol=1e-5)
        assert np.allclose(s.intrinsics, np.load(layout.intrinsics(sid)))
    # ZeroShape's synthetic layout: its val lists, at most 10 views per category by default
    zs = open_eval_set(proc, "zeroshape", max_per_category=1)
    assert len(zs) == 1 and zs.names()[0] in ds.names()
    assert open_eval_set(proc, "zeroshape").names() == ds.names()  # one val object of 2 views here
    both = tmp_path / "both"
    shutil.copytree(proc, both)
    for f in (both / "lists").glob("*_val.list"):  # a test list beside val: ZeroShape reads val
        f.with_name(f.name.replace("_val", "_test")).write_text(f.read_text().splitlines()[0] + "\n")
    assert open_eval_set(both, "zeroshape").names() == ds.names()
    with pytest.raises(ConfigError, match="unknown evaluation format"):
        open_eval_set(proc, "shapenet")
    (tmp_path / "lists").mkdir()
    with pytest.raises(ConfigError, match=r"has no test lists \(lists/<category>_test.list\)"):
        open_eval_set(tmp_path, "ocrtoc")


def test_pseudo_depth_is_read_and_invalidated_by_augmentation(proc, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(proc, root)
    layout = ZeroShapeLayout(root)
    for k, sid in enumerate(layout.samples("train")):
        layout.write_pseudo_depth(sid, np.full((224, 224), 1.0 + k, np.float32))
    plain = ShapeDataset(root, "train", points=16, augment=None)
    item = plain[2]
    assert item["pseudo_valid"].all() and (item["pseudo_depth"] == 3.0).all()
    # occluders pasted over the image invalidate the pseudo-depth under them, nowhere else
    occl = ShapeDataset(root, "train", points=16, augment=AugmentConfig(occluders=(2, 2), backgrounds="never"))
    for i in range(len(occl)):
        item = occl[i]
        valid, occluder = item["pseudo_valid"][0] > 0, item["occluder_mask"][0] > 0
        assert np.array_equal(valid.numpy(), ~occluder.numpy())
    # a new background makes the image a different one: no pseudo-depth at all
    bg = ShapeDataset(root, "train", points=16, augment=AugmentConfig(occluders=(0, 0), backgrounds="always"))
    assert not bg[0]["pseudo_valid"].any()


def test_a_visible_mask_of_another_size_than_its_depth_is_refused(tmp_path):
    """Maps are resampled to the model's size only when they match their view's depth: a visible
    mask of some other size is a bad file, not something to stretch."""
    cfg = ProceduralConfig(objects=1, views=1, seed=0, size=64, categories=("box",), split_fractions=(1, 0, 0),
                           bake_splits=("train",))  # fmt: skip
    generate(tmp_path / "p", cfg, workers=1)
    layout = ZeroShapeLayout(tmp_path / "p")
    sid = layout.samples("train")[0]
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(layout.visible_mask(sid))
    ds = ShapeDataset(tmp_path / "p", "train", size=64, augment=None, with_shape=False)
    with pytest.raises(InputError, match=r"visible mask of box_00000_00 has shape \(10, 12\)"):
        ds._read(0)


# --------------------------------------------------------------------------------------------
# the loader's fast paths against the plain computations they replace (bench/results/loader.md)
# --------------------------------------------------------------------------------------------


def test_is_plain_white_matches_the_scipy_dilation_it_replaces():
    from scipy.ndimage import binary_dilation

    def reference(image, mask, tol=3.0):
        outside = ~np.asarray(mask, dtype=bool)
        if outside.sum() < 16:
            return False
        outside &= ~binary_dilation(~outside, iterations=1)
        if outside.sum() < 16:
            return False
        return float(255.0 - image[outside].astype(np.float32).mean()) < tol

    rng = np.random.default_rng(0)
    answers = set()
    for k in range(60):
        size = int(rng.integers(6, 40))
        mask = rng.random((size, size)) < rng.uniform(0, 1.05)  # from nothing to everything, touching borders
        image = np.full((size, size, 3), 255, np.uint8)
        image[mask] = rng.integers(0, 256, (int(mask.sum()), 3))
        image = np.clip(image.astype(int) - rng.integers(0, int(rng.integers(1, 12)), image.shape), 0, 255)
        image = image.astype(np.uint8)  # off-white around the object: some within the tolerance, some not
        got = is_plain_white(image, mask)
        assert got == reference(image, mask), k
        answers.add(got)
    assert answers == {True, False}


def test_color_jitter_and_texture_are_the_step_by_step_formulas_to_rounding():
    """color_jitter runs brightness, contrast, saturation and gains as one affine map, and
    texture_object in float32 by channel: the images of the step-by-step computations (float64)
    within one level, from the same random numbers."""
    from scipy.ndimage import gaussian_filter

    from zsw.data.dataset import color_jitter

    def jitter_reference(image, strength, rng):
        x = image.astype(np.float64) / 255.0

        def amount():
            return float(rng.uniform(1 - strength, 1 + strength))

        x = x * amount()
        x = (x - x.mean()) * amount() + x.mean()
        gray = x.mean(axis=2, keepdims=True)
        x = (x - gray) * amount() + gray
        x = x * rng.uniform(1 - strength / 2, 1 + strength / 2, size=3)
        if rng.random() < 1 / 3:
            x = gaussian_filter(x, sigma=(rng.uniform(0.3, 1.2), rng.uniform(0.3, 1.2), 0))
        if rng.random() < 1 / 3:
            x = x + rng.normal(0, rng.uniform(0.005, 0.03), size=x.shape)
        return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)

    def texture_reference(image, alpha, texture, strength):
        a = np.clip(alpha, 0, 1)[..., None].astype(np.float64)
        t = texture.astype(np.float64) + 1.0
        inside = alpha > 0.5
        mean = t[inside].mean(0) if inside.any() else t.reshape(-1, 3).mean(0)
        out = (image - (1 - a) * 255.0) * (1.0 + strength * (t / mean - 1.0)) + (1 - a) * 255.0
        return np.clip(out, 0, 255).round().astype(np.uint8)

    bg = Backgrounds(("noise", "photo"))
    for seed in range(12):
        rng = np.random.default_rng(seed)
        image, texture = bg.sample(rng, 48), bg.sample(rng, 48)
        yy, xx = np.mgrid[:48, :48]
        alpha = np.clip(12 - np.hypot(yy - 24, xx - 20), 0, 1).astype(np.float32)  # a disc, antialiased
        on_white = composite(image, alpha, np.full_like(image, 255))
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        got, want = color_jitter(image, 0.3, a), jitter_reference(image, 0.3, b)
        assert got.dtype == np.uint8 and got.shape == image.shape and a.random() == b.random()  # same draws
        assert np.abs(got.astype(int) - want).max() <= 1
        got = texture_object(on_white, alpha, texture, 0.7)
        assert np.abs(got.astype(int) - texture_reference(on_white, alpha, texture, 0.7)).max() <= 1


def test_load_npy_reads_what_np_load_reads(tmp_path):
    from zsw.data.layout import load_npy

    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.float64(2.5), np.zeros(0), np.ones((2, 3, 4), ">f8"),
              np.array([True, False]), np.arange(5, dtype=np.uint8), np.asfortranarray(np.ones((3, 4))),
              np.zeros(2, [("a", "<f4")]), np.arange(6.0).reshape(2, 3)[:, ::2]]  # fmt: skip
    for k, a in enumerate(arrays):
        np.save(tmp_path / f"{k}.npy", a)
        got = load_npy(tmp_path / f"{k}.npy")
        assert got.dtype == a.dtype and got.shape == a.shape and np.array_equal(got, a) and got.flags.writeable
    (tmp_path / "cut.npy").write_bytes((tmp_path / "0.npy").read_bytes()[:-4])
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for name in ("cut", "pickled", "missing"):
        with pytest.raises(InputError, match=name):
            load_npy(tmp_path / f"{name}.npy")


def test_query_points_are_distinct_and_uniform():
    from zsw.data.dataset import _draw

    rng = np.random.default_rng(0)
    candidates = np.arange(100, 300)
    counts = np.zeros(300)
    for _ in range(400):
        pick = _draw(candidates, 50, rng)
        assert len(set(pick.tolist())) == 50 and pick.min() >= 100
        counts[pick] += 1
    assert np.abs(counts[100:] / (400 * 50 / 200) - 1).max() < 0.35  # each drawn ~100 times
    assert len(_draw(candidates, 500, rng)) == 500  # more than there are: with replacement
