"""Algorithm 1 orchestration (``zsw.synth.diffuse.synthesize``) with deterministic model doubles:
the IoU filter, retries and failures, the manifest, resume after interruption, shards, outputs.

The doubles follow the real models' contract (batched, seeded, images at the guide's size). The
appearance double draws the object exactly where the control image has depth -- unless the
attempt's seed is marked bad, then it draws nothing -- so every accept/reject below is known in
advance from :func:`zsw.synth.prompts.derive_seed`.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from zsw.data.layout import SampleId, ZeroShapeLayout
from zsw.errors import ConfigError, InputError, OptionError
from zsw.synth.appearance import AppearanceBatch
from zsw.synth.diffuse import CONFIG_FILE, DiffuseConfig, check_resume, finished_samples, synthesize
from zsw.synth.guidance import perturb_guidance
from zsw.synth.prompts import derive_seed
from zsw.synth.tiny import write_toy_renders

MUG0, MUG1, BOX = "mug_o1_0", "mug_o1_1", "box_o2_0"


class FakeAppearance:
    model_ids = {"base_model": "fake/sd15", "controlnet": "fake/depth-cn"}

    def __init__(self, bad_seeds=(), interrupt_at_call=None):
        self.bad_seeds = set(bad_seeds)
        self.interrupt_at_call = interrupt_at_call
        self.seen: list[list[int]] = []

    def __call__(self, guides, controls, prompts, seeds):
        self.seen.append(list(seeds))
        if self.interrupt_at_call == len(self.seen):
            raise KeyboardInterrupt
        images = []
        for guide, control, seed in zip(guides, controls, seeds):
            img = np.full_like(guide, 255)
            if seed not in self.bad_seeds:
                obj = control[..., 0] > 0
                img[obj] = guide[obj] // 2
            images.append(img)
        return AppearanceBatch(images, list(range(551, 0, -50)))


class FakeBackground:
    model_ids = {"background_model": "fake/bg"}

    def __init__(self):
        self.prompts: list[str] = []

    def __call__(self, foregrounds, masks, prompts, seeds):
        self.prompts += prompts
        # deliberately *not* composited: the orchestrator must keep object pixels itself
        return [
            np.random.default_rng(s % 2**32).integers(0, 256, f.shape, dtype=np.uint8)
            for f, s in zip(foregrounds, seeds)
        ]


def _seed(name, attempt, run_seed=0):
    return derive_seed(run_seed, "appearance", name, attempt)


@pytest.fixture
def source(tmp_path):
    write_toy_renders(tmp_path / "src")
    return tmp_path / "src"


def _records(out):
    return list(ZeroShapeLayout(out).read_manifest())


def test_filter_retry_failure_manifest_and_outputs(source, tmp_path):
    out = tmp_path / "out"
    cfg = DiffuseConfig(max_retries=2)
    bad = {_seed(MUG0, 0)} | {_seed(BOX, a) for a in range(3)}  # MUG0 passes on its 2nd try, BOX never
    app, bg = FakeAppearance(bad), FakeBackground()
    report = synthesize(source, out, cfg, app, bg, batch_size=2, save_foreground=True)
    assert (report.accepted, report.failed, report.rejected, report.errors) == (2, 1, 4, 0)

    recs = {r["sample"]: r for r in _records(out)}
    assert sorted(recs) == sorted([MUG0, MUG1, BOX]) and len(_records(out)) == 3
    m0 = recs[MUG0]
    assert m0["status"] == "ok" and m0["retries"] == 1 and m0["seed"] == _seed(MUG0, 1)
    assert [a["iou"] for a in m0["attempts"]] == [0.0, 1.0] and m0["iou"] == 1.0
    assert m0["prompt"] == m0["attempts"][1]["prompt"] and m0["prompt"].endswith(" mug")
    assert m0["background_prompt"] == f"a mug in the {m0['scene']}" and m0["background_prompt"] in bg.prompts
    assert m0["denoising_steps"] == 12 and m0["start_timestep"] == 551
    assert m0["models"] == {"base_model": "fake/sd15", "controlnet": "fake/depth-cn", "background_model": "fake/bg"}
    assert m0["source"] == str((source / "images_processed/mug/mug_o1_0.png").resolve())
    assert set(m0["timings"]) == {"appearance_s", "background_s"}
    b = recs[BOX]
    assert b["status"] == "failed" and b["retries"] == 3 and "below 0.95" in b["reason"]
    assert [a["seed"] for a in b["attempts"]] == [_seed(BOX, a) for a in range(3)]
    assert len({a["prompt"] for a in b["attempts"]} | {a["seed"] for a in b["attempts"]}) >= 4  # new draws

    src, dst = ZeroShapeLayout(source), ZeroShapeLayout(out)
    for name, attempt in ((MUG0, 1), (MUG1, 0)):
        sid = SampleId("mug", "o1", name[-1])
        img, fg = dst.read_image(sid), np.asarray(_png(out / "foreground/mug" / f"{name}.png"))
        mask = src.read_mask(src.mask(sid))
        assert (img[mask] == fg[mask]).all()  # object pixels survive the background exactly
        rng = np.random.default_rng(derive_seed(0, "perturb", name, attempt))
        guide = perturb_guidance(src.read_image(sid), mask, rng, cfg.perturbation)
        assert (fg[mask] == guide[mask] // 2).all()  # the double saw the seeded perturbed render
        assert (img[~mask] != 255).any(axis=-1).mean() > 0.9  # background replaced
        for kind in ("depth", "mask", "intrinsics", "extrinsics"):
            a, c = getattr(src, kind)(sid), getattr(dst, kind)(sid)
            assert a.read_bytes() == c.read_bytes() and os.stat(a).st_ino == os.stat(c).st_ino  # hard link
    sid_box = SampleId("box", "o2", "0")
    assert dst.gt_sdf(SampleId("mug", "o1", "0")).is_file() and dst.pointcloud(SampleId("mug", "o1", "0")).is_file()
    assert not dst.has_view(sid_box) and not dst.gt_sdf(sid_box).exists() and not dst.depth(sid_box).exists()
    assert [s.name for s in dst.read_list("mug", "train")] == [MUG0, MUG1]
    assert dst.read_list("box", "train") == [] and not dst.list_file("box", "train").exists()
    assert (out / CONFIG_FILE).is_file()

    # a rerun has nothing to do: failed renders are final too
    again = FakeAppearance()
    report = synthesize(source, out, cfg, again, FakeBackground())
    assert report.skipped == 3 and again.seen == [] and len(_records(out)) == 3


def _png(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB").copy()


def test_resume_after_interrupted_batch(source, tmp_path):
    out = tmp_path / "out"
    cfg = DiffuseConfig()
    first = FakeAppearance(interrupt_at_call=2)
    with pytest.raises(KeyboardInterrupt):
        synthesize(source, out, cfg, first, FakeBackground(), batch_size=1)
    assert [r["sample"] for r in _records(out)] == [BOX]  # plan order: box, mug 0, mug 1
    assert [s.name for s in ZeroShapeLayout(out).read_list("box", "train")] == [BOX]  # lists kept current

    second = FakeAppearance()
    report = synthesize(source, out, cfg, second, FakeBackground(), batch_size=1)
    assert report.skipped == 1 and report.accepted == 2
    assert [s for call in second.seen for s in call] == [_seed(MUG0, 0), _seed(MUG1, 0)]  # BOX not redone
    names = [r["sample"] for r in _records(out)]
    assert sorted(names) == sorted([BOX, MUG0, MUG1]) and len(names) == 3


def test_samples_name_their_code_and_a_resume_by_other_code_says_so(source, tmp_path, monkeypatch):
    """Each manifest record names the code that synthesized it; resuming a dataset other code
    started (another checkout, an edit within the release) keeps its samples and says how many
    were made by other code."""
    from zsw.io import code_identity
    from zsw.synth import jobs

    out, cfg = tmp_path / "out", DiffuseConfig()
    report = synthesize(source, out, cfg, FakeAppearance(), FakeBackground(), limit=1)
    assert report.notes == [] and [r["zsw_code"] for r in _records(out)] == [code_identity(jobs.SYNTH_PACKAGES)]
    assert synthesize(source, out, cfg, FakeAppearance(), FakeBackground(), limit=1).notes == []

    monkeypatch.setattr(jobs, "code_identity", lambda packages: "other code")
    report = synthesize(source, out, cfg, FakeAppearance(), FakeBackground())
    assert report.skipped == 2 and report.accepted == 1
    assert len(report.notes) == 1 and "2 of the 2 samples" in report.notes[0], report.notes
    assert [r["zsw_code"] for r in _records(out)][-1] == "other code"


def test_resume_after_kill_between_image_and_manifest(source, tmp_path, monkeypatch):
    out = tmp_path / "out"
    original = ZeroShapeLayout.append_manifest

    def dies(self, record):
        raise KeyboardInterrupt

    monkeypatch.setattr(ZeroShapeLayout, "append_manifest", dies)
    with pytest.raises(KeyboardInterrupt):
        synthesize(source, out, DiffuseConfig(), FakeAppearance(), FakeBackground(), batch_size=1)
    assert ZeroShapeLayout(out).has_view(SampleId("box", "o2", "0")) and _records(out) == []
    monkeypatch.setattr(ZeroShapeLayout, "append_manifest", original)

    app = FakeAppearance()
    synthesize(source, out, DiffuseConfig(), app, FakeBackground(), batch_size=3)
    assert _seed(BOX, 0) in app.seen[0]  # image without a record is not done: redone, same seed
    names = [r["sample"] for r in _records(out)]
    assert sorted(names) == sorted([BOX, MUG0, MUG1]) and len(names) == 3


def test_shards_fill_one_folder_without_overlap(source, tmp_path):
    out = tmp_path / "out"
    apps = [FakeAppearance(), FakeAppearance()]
    for i, app in enumerate(apps):
        synthesize(source, out, DiffuseConfig(), app, FakeBackground(), shard=(i, 2))
    seen = [{s for call in a.seen for s in call} for a in apps]
    assert seen[0] == {_seed(BOX, 0), _seed(MUG1, 0)} and seen[1] == {_seed(MUG0, 0)}
    recs = _records(out)
    assert sorted(r["sample"] for r in recs) == sorted([BOX, MUG0, MUG1])
    assert {r["sample"]: r["shard"] for r in recs}[MUG0] == "1/2"
    assert [s.name for s in ZeroShapeLayout(out).read_list("mug", "train")] == [MUG0, MUG1]


def test_unreadable_render_is_recorded_and_retried_later(source, tmp_path):
    out = tmp_path / "out"
    bad = source / "images_processed/mug/mug_o1_1.png"
    good = bad.read_bytes()
    bad.write_bytes(b"not a png")
    report = synthesize(source, out, DiffuseConfig(), FakeAppearance(), FakeBackground())
    assert report.errors == 1 and report.accepted == 2
    (err,) = [r for r in _records(out) if r["status"] == "error"]
    assert err["sample"] == MUG1 and "mug_o1_1.png" in err["reason"]
    assert MUG1 not in finished_samples(ZeroShapeLayout(out))

    bad.write_bytes(good)
    report = synthesize(source, out, DiffuseConfig(), FakeAppearance(), FakeBackground())
    assert report.accepted == 1 and report.skipped == 2
    assert MUG1 in finished_samples(ZeroShapeLayout(out))


def test_sources_not_on_white_are_unsuitable_and_cost_no_diffusion(source, tmp_path):
    out = tmp_path / "out"
    layout = ZeroShapeLayout(source)
    sid = SampleId("mug", "o1", "1")
    img = layout.read_image(sid)
    img[~layout.read_mask(layout.mask(sid))] = 128  # a baked gray background
    layout.write_view(sid, image=img, depth=np.load(layout.depth(sid)), intrinsics=np.eye(3), extrinsics=np.eye(3, 4))
    app = FakeAppearance()
    report = synthesize(source, out, DiffuseConfig(), app, FakeBackground())
    assert (report.unsuitable, report.accepted) == (1, 2)
    assert _seed(MUG1, 0) not in {s for call in app.seen for s in call}
    (rec,) = [r for r in _records(out) if r["sample"] == MUG1]
    assert rec["status"] == "unsuitable" and rec["source_iou"] < 0.95 and "white background" in rec["reason"]
    assert synthesize(source, out, DiffuseConfig(), FakeAppearance(), FakeBackground()).skipped == 3  # final


def test_resume_needs_the_same_generation_settings(source, tmp_path):
    out = tmp_path / "out"
    synthesize(source, out, DiffuseConfig(), FakeAppearance(), FakeBackground(), limit=1)
    assert check_resume(out, DiffuseConfig(base_model="models/sd15", views_per_object=2))  # allowed changes
    with pytest.raises(ConfigError, match="seed=0, now 1"):
        check_resume(out, DiffuseConfig(seed=1))
    with pytest.raises(ConfigError, match="min_iou"):
        synthesize(source, out, DiffuseConfig(min_iou=0.5), FakeAppearance(), FakeBackground())
    assert len(_records(out)) == 1  # limit=1 did one render


def test_resume_needs_the_same_source_renders(source, tmp_path):
    """Other renders with the same sample names would count as done and be listed with the first
    run's images; the same renders at another path (a copied or moved dataset) resume."""
    import shutil

    out = tmp_path / "out"
    synthesize(source, out, DiffuseConfig(), FakeAppearance(), FakeBackground(), limit=1)
    other = tmp_path / "other"
    write_toy_renders(other)
    layout = ZeroShapeLayout(other)
    for sid in layout.samples("train"):  # the same names, other shapes
        np.save(layout.depth(sid), np.load(layout.depth(sid)) * 2)
    with pytest.raises(ConfigError, match=f"synthesized from {source.resolve()}, not --data {other}"):
        synthesize(other, out, DiffuseConfig(), FakeAppearance(), FakeBackground())
    assert len(_records(out)) == 1
    moved = tmp_path / "moved"
    shutil.move(source, moved)
    report = synthesize(moved, out, DiffuseConfig(), FakeAppearance(), FakeBackground())
    assert report.skipped == 1 and report.accepted == 2

    # a source of symlinked images (recorded resolved), nothing accepted yet to compare labels with
    linked, out = tmp_path / "linked", tmp_path / "out2"
    shutil.copytree(moved, linked, ignore=shutil.ignore_patterns("images_processed"))
    for image in (moved / "images_processed").rglob("*.png"):
        (linked / image.relative_to(moved)).parent.mkdir(parents=True, exist_ok=True)
        (linked / image.relative_to(moved)).symlink_to(image)
    failing = FakeAppearance(bad_seeds=[_seed(BOX, a) for a in range(5)])
    synthesize(linked, out, DiffuseConfig(), failing, FakeBackground(), limit=1)
    assert [r["status"] for r in _records(out)] == ["failed"]
    assert synthesize(linked, out, DiffuseConfig(), FakeAppearance(), FakeBackground()).skipped == 1


def test_out_is_a_folder_of_its_own(source, tmp_path):
    """A file, or a folder of other files (another dataset: same sample names), is refused before
    anything is written: diffusion would overwrite its images and relink its labels."""
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OptionError, match="--out .*notes.txt is a file"):
        synthesize(source, tmp_path / "notes.txt", DiffuseConfig(), FakeAppearance(), FakeBackground())
    other = tmp_path / "other"
    write_toy_renders(other)
    before = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="not empty and holds no zsw diffuse output"):
        synthesize(source, other, DiffuseConfig(), FakeAppearance(), FakeBackground())
    assert {p: p.read_bytes() for p in other.rglob("*") if p.is_file()} == before
    with pytest.raises(ConfigError, match="not empty"):
        check_resume(other, DiffuseConfig())  # the job's check before minutes of model loading


def test_bad_arguments(source, tmp_path):
    with pytest.raises(ConfigError, match="differ"):
        synthesize(source, source, DiffuseConfig(), FakeAppearance(), FakeBackground())
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no renders"):
        synthesize(tmp_path / "empty", tmp_path / "o", DiffuseConfig(), FakeAppearance(), FakeBackground())
    with pytest.raises(ConfigError, match="batch-size"):
        synthesize(source, tmp_path / "o", DiffuseConfig(), FakeAppearance(), FakeBackground(), batch_size=0)
    with pytest.raises(ConfigError, match="start_step"):
        DiffuseConfig(start_step=20)
    with pytest.raises(ConfigError, match="min_iou"):
        DiffuseConfig(min_iou=1.5)
    for bad in (dict(background_steps=0), dict(fg_threshold=0), dict(fg_threshold=256)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            DiffuseConfig(**bad)


def test_report_summary_counts_and_rate():
    from zsw.synth.diffuse import SynthReport

    report = SynthReport(total=9, skipped=2, accepted=3, rejected=5, failed=1, unsuitable=1, errors=2, elapsed_s=1.5)
    assert report.summary() == (
        "3 accepted, 1 failed the IoU filter, 1 not on white, 2 already done, 2 unreadable in 1.5 s, 2.000 images/s"
    )
    assert SynthReport(skipped=4).summary().endswith("4 already done, 0 unreadable in 0.0 s")  # no rate without time
