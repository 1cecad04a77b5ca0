"""``zsw synthesize diffuse`` / ``pseudo-depth`` end to end: 3 procedural renders
(``zsw.synth.procedural``) through tiny random diffusers and transformers models saved to disk --
the real loading, scheduling and pipeline code, with noise for images.

Tiny models run faster on one thread, and do not fight the other processes for the cores.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from zsw.cli.main import app
from zsw.data.layout import SampleId, ZeroShapeLayout

runner = CliRunner()
NAMES = ["box_00001_00", "cylinder_00002_00", "sphere_00000_00"]  # plan order (category, object, view)
CATS = ("box", "cylinder", "sphere")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    from zsw.synth.tiny import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def renders(tmp_path_factory):
    """Three procedural renders (one view each of a sphere, a box and a cylinder) on white."""
    from zsw.synth.procedural import ProceduralConfig, generate

    root = tmp_path_factory.mktemp("procedural") / "src"
    cfg = ProceduralConfig(
        objects=3,
        views=1,
        split_fractions=(1, 0, 0),
        surface_points=256,
        near_samples=512,
        uniform_samples=256,
        mesh_resolution=32,
    )
    generate(root, cfg)
    return root


def _sid(name):
    return SampleId(*name.rsplit("_", 2))


def test_renders_pass_their_own_silhouette_filter(renders):
    from zsw.synth.guidance import silhouette_iou

    layout = ZeroShapeLayout(renders)
    assert sorted(s.name for s in layout.samples("train")) == NAMES
    for name in NAMES:
        sid = _sid(name)
        assert silhouette_iou(layout.read_image(sid), layout.read_mask(layout.mask(sid))) >= 0.99


def _diffuse(tiny, src, out, *extra, env=None, device="cpu"):
    args = [
        "synthesize",
        "diffuse",
        "--data",
        str(src),
        "--out",
        str(out),
        "--base-model",
        str(tiny.base_model),
        "--controlnet",
        str(tiny.controlnet),
        "--background-model",
        str(tiny.background_model),
        "--resolution",
        "32",
        "--device",
        device,
        *extra,
    ]
    return runner.invoke(app, args, env=env)


def _records(out):
    return list(ZeroShapeLayout(out).read_manifest())


@pytest.mark.slow
def test_diffuse_end_to_end(tiny, renders, tmp_path):
    out = tmp_path / "wild"
    result = _diffuse(tiny, renders, out, "--min-iou", "0", "--batch-size", "3", "--save-foreground")
    assert result.exit_code == 0, result.output
    assert "3 accepted" in result.output

    recs = _records(out)
    assert sorted(r["sample"] for r in recs) == NAMES and {r["status"] for r in recs} == {"ok"}
    for r in recs:
        assert r["denoising_steps"] == 12 and r["start_timestep"] == 551  # injected at DDIM step 8 of 20
        assert r["models"]["controlnet"] == str(tiny.controlnet)
        assert r["models"]["background_model"] == str(tiny.background_model)
        assert r["retries"] == 0 and r["prompt"] == r["attempts"][0]["prompt"]
    src, dst = ZeroShapeLayout(renders), ZeroShapeLayout(out)
    for name in NAMES:
        sid = _sid(name)
        img = dst.read_image(sid)
        mask = src.read_mask(src.mask(sid))
        fg = _read(out / "foreground" / sid.category, name)
        assert img.shape == (224, 224, 3)
        assert (img[mask] == fg[mask]).all()  # object pixels survive background generation exactly
        assert not (img == src.read_image(sid)).all()
        assert np.array_equal(np.load(dst.depth(sid)), np.load(src.depth(sid)))
    assert sorted(s.name for c in CATS for s in dst.read_list(c, "train")) == NAMES

    mtimes = {n: dst.image(_sid(n)).stat().st_mtime_ns for n in NAMES}
    again = _diffuse(tiny, renders, out, "--min-iou", "0", "--batch-size", "3")
    assert again.exit_code == 0, again.output
    assert "0 accepted" in again.output and "3 already done" in again.output
    assert len(_records(out)) == 3
    assert mtimes == {n: dst.image(_sid(n)).stat().st_mtime_ns for n in NAMES}


def _read(folder, name):
    from PIL import Image

    with Image.open(folder / f"{name}.png") as im:
        return np.asarray(im.convert("RGB")).copy()


@pytest.mark.slow
def test_diffuse_shards_and_resume_after_interrupt(tiny, renders, tmp_path, monkeypatch):
    out = tmp_path / "wild"
    original = ZeroShapeLayout.append_manifest
    calls = []

    def killed_after_first(self, record):
        calls.append(record["sample"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        original(self, record)

    monkeypatch.setattr(ZeroShapeLayout, "append_manifest", killed_after_first)
    first = _diffuse(tiny, renders, out, "--min-iou", "0", "--shard", "0/2")
    assert first.exit_code == 130 and "interrupted" in first.output
    monkeypatch.setattr(ZeroShapeLayout, "append_manifest", original)
    assert [r["sample"] for r in _records(out)] == [NAMES[0]]

    resumed = _diffuse(tiny, renders, out, "--min-iou", "0", "--shard", "0/2")
    assert resumed.exit_code == 0, resumed.output
    assert "1 accepted" in resumed.output and "1 already done" in resumed.output
    other = _diffuse(tiny, renders, out, "--min-iou", "0", "--shard", "1/2")
    assert other.exit_code == 0 and "1 accepted" in other.output

    recs = _records(out)
    assert sorted(r["sample"] for r in recs) == NAMES and len(recs) == 3  # complete, no duplicates
    assert {r["sample"]: r["shard"] for r in recs} == {NAMES[0]: "0/2", NAMES[2]: "0/2", NAMES[1]: "1/2"}
    dst = ZeroShapeLayout(out)
    assert sorted(s.name for c in CATS for s in dst.read_list(c, "train")) == NAMES


def test_a_second_process_on_a_shard_in_use_stops_while_other_shards_run(tiny, renders, tmp_path):
    """The same diffuse or pseudo-depth command started twice would write the same files and
    append the shard's manifest twice: the second stops in one line naming the first (here this
    process holds the shard's lock, as the first run would); another shard goes ahead meanwhile."""
    from zsw.locks import lock_file

    out = tmp_path / "wild"
    with lock_file(out / "shard-0-of-2"):
        busy = _diffuse(tiny, renders, out, "--min-iou", "0", "--shard", "0/2")
        assert busy.exit_code == 1, busy.output
        assert f"another process is writing to {out / 'shard-0-of-2'}" in busy.output
        assert "choose another --out or --shard" in busy.output
        assert not _records(out)  # stopped before any work
        other = _diffuse(tiny, renders, out, "--min-iou", "0", "--shard", "1/2")
        assert other.exit_code == 0 and "1 accepted" in other.output, other.output
    assert not list(out.glob(".shard-*.lock"))  # released: the other shard's lock file went with its run

    data = tmp_path / "data"
    shutil.copytree(renders, data)
    args = ["synthesize", "pseudo-depth", "--data", str(data), "--model", str(tiny.depth_model)]
    with lock_file(data / "pseudo_depth" / "shard-0-of-1"):
        busy = runner.invoke(app, args)
        assert busy.exit_code == 1 and "choose another --shard" in busy.output, busy.output
        assert not list((data / "pseudo_depth").rglob("*.npy"))
    done = runner.invoke(app, args)
    assert done.exit_code == 0 and "3 written" in done.output, done.output
    assert not list((data / "pseudo_depth").glob(".shard-*.lock"))


def test_diffuse_filter_rejects_and_records_failures(tiny, renders, tmp_path):
    out = tmp_path / "wild"
    result = _diffuse(tiny, renders, out, "--min-iou", "1.0", "--max-retries", "1", "--batch-size", "3")
    assert result.exit_code == 0, result.output
    assert "0 accepted, 3 failed" in result.output
    recs = _records(out)
    assert {r["status"] for r in recs} == {"failed"} and len(recs) == 3
    for r in recs:
        assert len(r["attempts"]) == 2 and r["attempts"][0]["seed"] != r["attempts"][1]["seed"]
        assert all(a["iou"] < 1.0 for a in r["attempts"])
    assert not (out / "images_processed").exists()


def test_background_model_keeps_object_pixels(tiny):
    from zsw.synth.background import ObjectAwareBackground

    bg = ObjectAwareBackground.from_pretrained(str(tiny.background_model), resolution=32, steps=4)
    rng = np.random.default_rng(0)
    fgs = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(2)]
    masks = [np.zeros((48, 48), bool) for _ in range(2)]
    masks[0][10:30, 5:40] = True
    masks[1][20:47, 20:47] = True
    outs = bg(fgs, masks, ["a mug in the kitchen", "a box in the abbey"], [1, 2])
    for out, fg, m in zip(outs, fgs, masks):
        assert out.shape == fg.shape and (out[m] == fg[m]).all()
        assert (out[~m] != fg[~m]).any(axis=-1).mean() > 0.9


def test_appearance_starts_at_step_8_of_20(tiny):
    import types

    from diffusers import DDIMScheduler, StableDiffusionControlNetImg2ImgPipeline

    from zsw.synth.appearance import ControlNetAppearance, strength_for_start_step

    model = ControlNetAppearance.from_pretrained(str(tiny.base_model), str(tiny.controlnet), resolution=32)
    assert isinstance(model.pipe.scheduler, DDIMScheduler)
    guide = np.full((40, 40, 3), 200, np.uint8)
    batch = model([guide, guide], [guide, guide], ["a red mug", "a box"], [3, 4])
    assert len(batch.timesteps) == 12 and batch.timesteps[0] == 551 and batch.timesteps[-1] == 1
    assert [im.shape for im in batch.images] == [(40, 40, 3)] * 2
    assert not np.array_equal(batch.images[0], batch.images[1])  # per-sample generators

    # the strength rule against diffusers' own timestep selection, for every schedule up to 40 steps
    shim = types.SimpleNamespace(scheduler=DDIMScheduler(steps_offset=1))
    for steps in range(1, 41):
        shim.scheduler.set_timesteps(steps)
        for start in range(steps):
            strength = strength_for_start_step(steps, start)
            _, n = StableDiffusionControlNetImg2ImgPipeline.get_timesteps(shim, steps, strength, "cpu")
            assert n == steps - start, (steps, start)


def test_unloadable_models_fail_at_start_with_one_line(tiny, renders, tmp_path):
    out = tmp_path / "wild"
    result = runner.invoke(
        app,
        ["synthesize", "diffuse", "--data", str(renders), "--out", str(out), "--controlnet", str(tmp_path / "nope")],
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    line = result.output.strip().splitlines()[-1]
    assert (
        line.startswith("error: --controlnet")
        and "no such folder" in line
        and "hf download lllyasviel/control_v11f1p_sd15_depth" in line
    )
    assert not out.exists()

    result = _diffuse(tiny, renders, out, "--background-model", "nobody/no-such-model", env={"HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 1 and "Traceback" not in result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: cannot load the object-aware background model 'nobody/no-such-model'")
    assert "hf download nobody/no-such-model --local-dir models/no-such-model" in line
    assert not (out / "manifest.jsonl").exists()


def test_an_out_that_cannot_be_written_fails_before_the_models_load(renders, tmp_path):
    """No minutes of model loading (here: default hub ids, offline) before a bad --out is named."""
    (tmp_path / "notes.txt").write_text("mine")
    base = ["synthesize", "diffuse", "--data", str(renders), "--device", "cpu"]
    for out, fragment, code in [(tmp_path / "notes.txt", "is a file", 2), (renders.parent, "not empty", 1)]:
        result = runner.invoke(app, [*base, "--out", str(out)], env={"HF_HUB_OFFLINE": "1"})
        assert result.exit_code == code and "Traceback" not in result.output
        assert "loading models" not in result.output, result.output
        last = result.output.strip().splitlines()[-1]
        assert last.startswith(f"error: --out {out}") and fragment in last, result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_bad_options_are_one_line_errors(tiny, renders, tmp_path):
    cases = [
        (["--shard", "3/2"], "--shard"),
        (["--dtype", "fp8"], "--dtype"),
        (["--batch-size", "0"], "--batch-size"),
        (["--start-step", "25"], "start_step"),
    ]
    for extra, needle in cases:
        result = _diffuse(tiny, renders, tmp_path / "o", *extra)
        assert result.exit_code == 1 and needle in result.output, (extra, result.output)
    result = _diffuse(tiny, tmp_path / "missing", tmp_path / "o")
    assert result.exit_code == 1 and "missing" in result.output


def test_pseudo_depth_end_to_end(tiny, renders, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(renders, data)
    args = ["synthesize", "pseudo-depth", "--data", str(data), "--model", str(tiny.depth_model), "--batch-size", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 written" in result.output
    layout = ZeroShapeLayout(data)
    for name in NAMES:
        sid = _sid(name)
        d = np.load(layout.pseudo_depth(sid))
        assert d.shape == (224, 224) and d.dtype == np.float32
        assert np.isfinite(d).all() and d.min() >= 0 and d.std() > 0
    first = np.load(layout.pseudo_depth(_sid(NAMES[0])))

    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "0 written, 3 already present" in again.output
    forced = runner.invoke(app, [*args, "--overwrite", "--batch-size", "3"])
    assert forced.exit_code == 0 and "3 written" in forced.output
    assert np.allclose(np.load(layout.pseudo_depth(_sid(NAMES[0]))), first, atol=1e-5)  # batch-invariant

    missing = runner.invoke(app, ["synthesize", "pseudo-depth", "--data", str(data), "--model", str(tmp_path / "x")])
    assert missing.exit_code == 1 and "--model" in missing.output


def test_vlm_estimator_load_failure_is_one_line(monkeypatch):
    from zsw.errors import ConfigError
    from zsw.infer.vlm import VLMCategoryEstimator

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="hf download nobody/no-such-vlm") as e:
        VLMCategoryEstimator("nobody/no-such-vlm", device="cpu")
    assert "\n" not in str(e.value)
    assert "pass `--prompt vlm:models/no-such-vlm`" in str(e.value)  # the option's own syntax
    with pytest.raises(ConfigError, match=r"^--prompt vlm:\./nowhere: no such folder"):
        VLMCategoryEstimator("./nowhere", device="cpu")


def test_a_folder_holding_another_model_is_not_offered_as_a_download_target(tmp_path):
    """A folder that exists but holds something else: the advice downloads elsewhere (models/...),
    never into the user's folder, which may hold another model."""
    from zsw.errors import ConfigError
    from zsw.hub import load_pretrained

    other = tmp_path / "sd15"
    other.mkdir()
    (other / "model_index.json").write_text("{}")

    def loader(source, **kwargs):
        raise OSError(f"{source} has no config.json")

    with pytest.raises(ConfigError) as e:
        load_pretrained(loader, other, what="depth ControlNet", option="--controlnet", default_id="org/cn-depth")
    text = str(e.value)
    assert "hf download org/cn-depth --local-dir models/cn-depth" in text
    assert "pass `--controlnet models/cn-depth`" in text
    assert f"--local-dir {other}" not in text


def test_a_hub_model_without_a_network_fails_at_once(monkeypatch):
    """No HF_HUB_OFFLINE, no cache, no hub: the cache is tried, the hub probed, one line at once
    (this took minutes of download retries before)."""
    import zsw.hub
    from zsw.errors import ConfigError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(zsw.hub, "hub_unreachable", lambda timeout=3.0: "no route")
    calls = []

    def loader(source, **kwargs):
        calls.append(kwargs.get("local_files_only", False))
        raise OSError(f"{source} is not in the cache")

    with pytest.raises(ConfigError, match="not in the Hugging Face cache .* hub is unreachable \\(no route\\)"):
        zsw.hub.load_pretrained(loader, "nobody/no-such-vlm", what="thing", option="--prompt vlm:{}")
    assert calls == [True]  # never an online attempt


@pytest.mark.parametrize("offline", [True, False])
def test_a_hub_model_that_cannot_load_is_one_line_that_gives_advice_that_applies(offline, monkeypatch):
    """Offline already: the advice does not say to set HF_HUB_OFFLINE; and huggingface_hub's
    deprecation warning, which diffusers' loaders raise, does not print two lines before the error."""
    import warnings

    import zsw.hub
    from zsw.errors import ConfigError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1") if offline else monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(zsw.hub, "hub_unreachable", lambda timeout=3.0: None)

    def loader(source, **kwargs):
        warnings.warn("The `local_dir_use_symlinks` argument is deprecated and ignored", UserWarning, stacklevel=2)
        raise OSError(f"{source} does not appear to have a file named config.json.")

    with warnings.catch_warnings(record=True) as shown, pytest.raises(ConfigError) as e:
        warnings.simplefilter("always")
        zsw.hub.load_pretrained(loader, "org/cn-depth", what="depth ControlNet", option="--controlnet")
    assert not shown
    assert "put it in the Hugging Face cache (HF_HOME)" in str(e.value) and "\n" not in str(e.value)
    assert ("set HF_HUB_OFFLINE=1" in str(e.value)) is not offline


def test_help_states_the_config_defaults():
    from zsw.synth.diffuse import DiffuseConfig

    result = runner.invoke(app, ["synthesize", "diffuse", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    cfg = DiffuseConfig()
    for name in ("seed", "min_iou", "max_retries", "base_model", "controlnet", "background_model", "steps"):
        assert f"(default: {getattr(cfg, name)})" in text, name
    assert f"(default: {cfg.start_step})" in text and f"(default: {cfg.resolution})" in text


@pytest.mark.gpu
def test_diffuse_on_gpu_in_half_precision(tiny, renders, tmp_path):
    out = tmp_path / "wild"
    result = _diffuse(tiny, renders, out, "--min-iou", "0", "--batch-size", "3", "--dtype", "fp16", device="cuda")
    assert result.exit_code == 0, result.output
    assert "3 accepted" in result.output and "images/s" in result.output
    assert {r["denoising_steps"] for r in _records(out)} == {12}


def test_vlm_estimator_default_backend_on_a_tiny_llava(tmp_path):
    from PIL import Image

    from zsw.infer.vlm import VLMCategoryEstimator
    from zsw.synth.tiny import TINY_VLM_WORDS, build_tiny_vlm

    path = build_tiny_vlm(tmp_path / "vlm")
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 30), (28, 28), (50, 20))
    ]
    batched = VLMCategoryEstimator(str(path), device="cpu", batch_size=3)
    nouns = batched(images)
    assert len(nouns) == 3 and all(n in TINY_VLM_WORDS for n in nouns), batched.last_answers
    assert all(0 < len(a.split()) <= 8 for a in batched.last_answers)  # greedy, max_new_tokens, new tokens only
    single = VLMCategoryEstimator(str(path), device="cpu", batch_size=1)
    assert single(images) == nouns and single.last_answers == batched.last_answers  # batching changes nothing
