"""Diffusion synthesis building blocks: prompts, seeds, guidance images, the silhouette filter,
planning and shards, VLM answer parsing. No diffusion model runs here."""

from __future__ import annotations

import numpy as np
import pytest

from zsw.data.layout import SampleId, ZeroShapeLayout
from zsw.errors import ConfigError, InputError
from zsw.infer.vlm import VLMCategoryEstimator, parse_category
from zsw.synth import prompts
from zsw.synth.guidance import (
    GuidancePerturbation,
    composite,
    depth_to_control,
    perturb_guidance,
    silhouette,
    silhouette_iou,
)
from zsw.synth.jobs import parse_shard, plan, select_shard

# ---- prompts and seeds -------------------------------------------------------------------------


def test_paper_word_lists():
    assert prompts.COLORS == (
        "red",
        "pink",
        "orange",
        "yellow",
        "green",
        "blue",
        "purple",
        "brown",
        "white",
        "black",
        "gray",
        "",
    )
    assert prompts.MATERIALS == ("metal", "wood", "plastic", "ceramic", "stone", "rubber", "leather", "")


def test_prompt_templates():
    assert prompts.appearance_prompt("chair", "red", "metal") == "a red metal chair"
    assert prompts.appearance_prompt("chair", "", "") == "a chair"
    assert prompts.appearance_prompt("mug", "orange", "") == "an orange mug"
    assert prompts.appearance_prompt("airplane", "", "wood") == "a wood airplane"
    assert prompts.background_prompt("chair", "abbey") == "a chair in the abbey"
    assert prompts.background_prompt("umbrella", "beach") == "an umbrella in the beach"


@pytest.mark.parametrize(
    "category, noun",
    [
        ("03001627", "chair"),
        ("02691156", "airplane"),
        ("bow_(weapon)", "bow"),
        ("teddy_bear", "teddy bear"),
        ("Mug", "mug"),
    ],
)
def test_category_noun(category, noun):
    assert prompts.category_noun(category) == noun


def test_seeds_are_stable_distinct_and_in_range():
    a = prompts.derive_seed(0, "appearance", "chair_o1_0", 0)
    assert a == prompts.derive_seed(0, "appearance", "chair_o1_0", 0)
    others = {
        prompts.derive_seed(1, "appearance", "chair_o1_0", 0),
        prompts.derive_seed(0, "appearance", "chair_o1_0", 1),
        prompts.derive_seed(0, "appearance", "chair_o1_1", 0),
        prompts.derive_seed(0, "background", "chair_o1_0", 0),
    }
    assert a not in others and len(others) == 4
    assert all(0 <= s < 2**63 for s in others | {a})


def test_draws_cover_the_lists_and_follow_the_seed():
    draws = [prompts.draw_appearance("chair", s) for s in range(600)]
    assert {d.color for d in draws} == set(prompts.COLORS)
    assert {d.material for d in draws} == set(prompts.MATERIALS)
    assert all(d.prompt == prompts.appearance_prompt("chair", d.color, d.material) for d in draws)
    assert prompts.draw_appearance("chair", 7) == prompts.draw_appearance("chair", 7)


def test_scene_list_is_packaged():
    scenes = prompts.load_scenes()
    assert len(scenes) == 468 and len(set(scenes)) == 468
    assert all(s == s.strip() and s for s in scenes)
    assert len({prompts.draw_scene(s) for s in range(300)}) > 100


# ---- guidance images and the silhouette filter -------------------------------------------------


def _square(size=32, top=10, left=10, side=10):
    mask = np.zeros((size, size), bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_silhouette_threshold_is_grayscale_below_250():
    img = np.full((2, 3, 3), 255, np.uint8)
    img[0, 0] = 249  # gray 249: foreground
    img[0, 1] = 250  # gray 250: background
    img[0, 2] = (255, 255, 0)  # yellow, gray 226: foreground
    assert silhouette(img).tolist() == [[True, False, True], [False, False, False]]


@pytest.mark.parametrize("shift, expected", [(0, 1.0), (1, 90 / 110), (5, 50 / 150), (10, 0.0)])
def test_silhouette_iou_of_shifted_squares(shift, expected):
    mask = _square()
    img = np.full((32, 32, 3), 255, np.uint8)
    img[_square(left=10 + shift)] = (30, 120, 200)
    assert silhouette_iou(img, mask) == pytest.approx(expected)


def test_silhouette_iou_edge_cases():
    white = np.full((8, 8, 3), 255, np.uint8)
    assert silhouette_iou(white, np.zeros((8, 8), bool)) == 1.0
    assert silhouette_iou(white, np.ones((8, 8), bool)) == 0.0
    with pytest.raises(InputError):
        silhouette_iou(white, np.ones((4, 8), bool))


def test_depth_control_is_inverse_depth_on_black():
    depth = np.zeros((4, 4), np.float32)
    depth[1, 1], depth[1, 2], depth[2, 2] = 1.0, 2.0, 4.0
    ctrl = depth_to_control(depth, floor=0.2)
    assert ctrl.shape == (4, 4, 3) and ctrl.dtype == np.uint8
    assert (ctrl[..., 0] == ctrl[..., 2]).all()
    g = ctrl[..., 0]
    assert g[0, 0] == 0 and g[1, 1] == 255 and g[2, 2] == round(0.2 * 255)  # near white, far at the floor
    assert g[2, 2] < g[1, 2] < g[1, 1]
    assert depth_to_control(np.zeros((3, 3)))[..., 0].max() == 0


def test_perturbation_keeps_background_and_is_seeded():
    mask = _square(side=12)
    img = np.full((32, 32, 3), 255, np.uint8)
    img[mask] = (120, 90, 60)
    cfg = GuidancePerturbation(blur_sigma=0.0)
    a = perturb_guidance(img, mask, np.random.default_rng(1), cfg)
    b = perturb_guidance(img, mask, np.random.default_rng(1), cfg)
    c = perturb_guidance(img, mask, np.random.default_rng(2), cfg)
    assert (a == b).all() and not (a == c).all()
    assert (a[~mask] == 255).all()  # the silhouette guidance stays clean
    diff = np.abs(a[mask].astype(int) - img[mask]).mean()
    assert 0 < diff < 60  # jittered, not replaced
    assert silhouette_iou(a, mask) == 1.0


def test_composite_keeps_object_pixels_exactly():
    rng = np.random.default_rng(0)
    fg = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mask = _square(16, 3, 4, 6)
    out = composite(fg, bg, mask)
    assert (out[mask] == fg[mask]).all() and (out[~mask] == bg[~mask]).all()


# ---- planning and shards -----------------------------------------------------------------------


def _lists_only(root, objects=5, views=7):
    layout = ZeroShapeLayout(root)
    for cat in ("chair", "coffee_table"):
        sids = [SampleId(cat, f"o{o}", str(v)) for o in range(objects) for v in range(views)]
        layout.write_list(cat, "train", sids[: len(sids) - views])
        layout.write_list(cat, "test", sids[len(sids) - views :])
    return layout


def test_plan_orders_all_listed_renders(tmp_path):
    jobs = plan(_lists_only(tmp_path))
    assert len(jobs) == 2 * 5 * 7 and len({j.sid for j in jobs}) == len(jobs)
    assert [j.sid for j in jobs] == sorted(
        (j.sid for j in jobs), key=lambda s: (s.category, s.object, int(s.view))
    )  # views in numeric order
    assert {j.splits for j in jobs} == {("train",), ("test",)}


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_shards_are_disjoint_and_complete(tmp_path, count):
    jobs = plan(_lists_only(tmp_path))
    shards = [select_shard(jobs, i, count) for i in range(count)]
    names = [j.sid.name for s in shards for j in s]
    assert len(names) == len(set(names)) == len(jobs)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_views_per_object_are_evenly_spaced(tmp_path):
    jobs = plan(_lists_only(tmp_path, objects=2, views=10), views_per_object=3)
    by_object = {}
    for j in jobs:
        by_object.setdefault((j.sid.category, j.sid.object), []).append(int(j.sid.view))
    assert len(by_object) == 4 and all(v[0] == 0 and v[-1] == 9 and len(v) == 3 for v in by_object.values())


@pytest.mark.parametrize("text", ["1", "2/2", "-1/2", "a/b", "0/0", "1/2/3"])
def test_bad_shards_are_config_errors(text):
    with pytest.raises(ConfigError, match="shard"):
        parse_shard(text)


def test_good_shard():
    assert parse_shard("3/8") == (3, 8)


# ---- VLM category estimation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, noun",
    [
        ("Chair.", "chair"),
        ("The object is a wooden chair.", "chair"),
        ("a red mug with a handle", "mug"),
        ("  **Lamp**  ", "lamp"),
        ("Assistant: sofa", "sofa"),
        ("This looks like an old bicycle", "bicycle"),
        ("Answer: Table\nbecause it has four legs", "table"),
        ("mug, cup", "mug"),
        ("The salient object is a car.", "car"),
        ("It’s a guitar", "guitar"),
        ("", "object"),
        ("42", "object"),
    ],
)
def test_parse_category(answer, noun):
    assert parse_category(answer) == noun


def test_vlm_estimator_with_an_injected_backend():
    from PIL import Image

    calls = []

    def backend(images, prompt):
        calls.append((len(images), prompt))
        return [f"It is a {im.size[0]}px teapot." if im.size[0] % 2 else "Bottle" for im in images]

    est = VLMCategoryEstimator("fake/vlm", generate=backend, batch_size=2)
    images = [Image.new("RGB", (s, s)) for s in (31, 32, 33, 34, 35)]
    assert est(images) == ["teapot", "bottle", "teapot", "bottle", "teapot"]
    assert [n for n, _ in calls] == [2, 2, 1]  # batched
    assert "one" in calls[0][1].lower() or "single" in calls[0][1].lower()  # asks for one noun
    assert est.last_answers[1] == "Bottle"


def test_vlm_backend_answer_count_is_checked():
    from PIL import Image

    est = VLMCategoryEstimator("fake/vlm", generate=lambda images, prompt: ["chair"])
    with pytest.raises(RuntimeError, match="2 images"):
        est([Image.new("RGB", (8, 8))] * 2)


def test_batch_columns_must_agree_and_pipeline_output_returns_to_8_bits():
    from zsw.synth.guidance import check_batch, unit_to_uint8

    assert check_batch("appearance", [1, 2], "ab", (3, 4)) == 2
    with pytest.raises(InputError, match="appearance batch needs equal non-zero lengths, got 2, 1"):
        check_batch("appearance", [1, 2], [1])
    with pytest.raises(InputError, match="got 0, 0"):
        check_batch("background", [], [])
    img = np.array([[[-0.5, 0.5, 1.5]]], dtype=np.float32).repeat(4, 0).repeat(4, 1)  # out of range on purpose
    out = unit_to_uint8(img, 8)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [0, 128, 255]
