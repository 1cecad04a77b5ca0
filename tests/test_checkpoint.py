from __future__ import annotations

import json
import pickle
import re
import warnings

import pytest
import torch
from safetensors.torch import save_file

from zsw import checkpoint
from zsw.config import to_dict
from zsw.errors import CheckpointError, ConfigError
from zsw.model import build_model


def test_save_load_round_trip(tmp_path):
    model = build_model("tiny").eval()
    path = checkpoint.save(model, tmp_path / "m.safetensors", extra={"recipe": "test"})
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind
    loaded = checkpoint.load(path)
    assert loaded.config == model.config and not loaded.training
    image = torch.rand(1, 3, 224, 224)
    points = torch.rand(1, 100, 3)
    with torch.no_grad():
        a, b = model(image), loaded(image)
        torch.testing.assert_close(model.decode(a, points), loaded.decode(b, points), atol=1e-6, rtol=1e-5)
    for k, v in model.state_dict().items():  # the weights themselves are bit-identical
        assert torch.equal(v, loaded.state_dict()[k]), k
    torch.testing.assert_close(loaded.text.default_embedding, model.text.default_embedding)
    _, cfg, extra = checkpoint.read(path)
    assert extra["recipe"] == "test" and extra["zsw_version"] and cfg.name == "tiny"


def test_load_errors_are_one_line(tmp_path):
    cases = {}
    cases["missing"] = tmp_path / "nope.safetensors"
    (tmp_path / "text.safetensors").write_text("hello")
    cases["not safetensors"] = tmp_path / "text.safetensors"
    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    cases["no config"] = tmp_path / "plain.safetensors"
    expected = {
        "missing": "does not exist",
        "not safetensors": "not a readable safetensors",
        "no config": "not a zsw checkpoint",
    }
    for name, path in cases.items():
        with pytest.raises(CheckpointError) as e:
            checkpoint.load(path)
        assert expected[name] in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_half_precision_weights_load_as_float32_and_bad_metadata_is_one_line(tmp_path):
    """A checkpoint of ``model.half()`` gives the float32 model (fp32 inference crashed inside timm);
    metadata that is not what zsw writes is a CheckpointError naming the file, never a traceback."""
    model = build_model("tiny").eval()
    path = checkpoint.save(model.half(), tmp_path / "half.safetensors")
    loaded = checkpoint.load(path)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    with torch.no_grad():
        loaded(torch.rand(1, 3, 224, 224))
    tensors, cfg, _ = checkpoint.read(path)
    good = {"format": checkpoint.FORMAT, "config": json.dumps(to_dict(cfg))}
    broken_config = json.loads(good["config"])
    broken_config["decoder"]["heads"] = 0
    cases = {
        "extra.safetensors": ({**good, "extra": "{oops"}, "'extra' is not a JSON object"),
        "list.safetensors": ({**good, "extra": "[1]"}, "'extra' is not a JSON object"),
        "heads.safetensors": ({**good, "config": json.dumps(broken_config)}, "decoder.heads must be a number > 0"),
    }
    for name, (meta, fragment) in cases.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / name), metadata=meta)
        with pytest.raises(CheckpointError, match=fragment) as e:
            checkpoint.load(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and "\n" not in str(e.value)


def test_save_errors_are_one_line(tmp_path):
    import numpy as np

    model = build_model("tiny")
    with pytest.raises(CheckpointError, match="is a folder; give a file name such as"):
        checkpoint.save(model, tmp_path)
    with pytest.raises(CheckpointError, match="must be JSON values"):
        checkpoint.save(model, tmp_path / "m.safetensors", extra={"cd": np.float32(0.1)})
    assert not list(tmp_path.iterdir())  # nothing written


def test_load_rejects_tensors_that_do_not_fit(tmp_path):
    model = build_model("tiny")
    path = checkpoint.save(model, tmp_path / "m.safetensors")
    tensors, cfg, _ = checkpoint.read(path)
    tensors["decoder.norm.weight"] = torch.zeros(7)
    del tensors["decoder.norm.bias"]
    save_file(
        tensors,
        str(tmp_path / "bad.safetensors"),
        metadata={"format": checkpoint.FORMAT, "config": json.dumps(to_dict(cfg))},
    )
    with pytest.raises(CheckpointError, match=r"1 missing \(e.g. decoder.norm.bias\); 1 of the wrong shape"):
        checkpoint.load(tmp_path / "bad.safetensors")


def test_convert_fabricated_official_checkpoint_strict(official_state_dict, zeroshape_keys):
    assert len(official_state_dict) == len(zeroshape_keys) == 813
    tensors, report = checkpoint.convert_zeroshape({"graph": official_state_dict, "epoch": 3}, "zeroshape", report=True)
    # every official tensor is accounted for: mapped, or dropped with a reason
    assert len(report.mapped) + len(report.dropped) == 813
    assert set(report.dropped) == {
        f"dpt_depth.pretrained.model.{m}.{p}" for m in ("head", "norm") for p in ("weight", "bias")
    }
    assert report.fresh == [] and report.source == "shape.ckpt"
    model = build_model("zeroshape", device="meta")
    model.load_state_dict(tensors, strict=True, assign=True)
    # values are carried over untouched
    assert torch.equal(
        tensors["decoder.occupancy.layers.2.weight"], official_state_dict["impl_network.impl_mlp.layers.2.weight"]
    )
    assert torch.equal(
        tensors["pixel.intrinsics_head.blocks.1.bn2.running_var"], official_state_dict["intr_head.1.bn2.running_var"]
    )


def test_convert_to_zeroshape_w_lists_new_parts(official_state_dict):
    tensors, report = checkpoint.convert_zeroshape(official_state_dict, "zeroshape-w", report=True)
    conv1 = tensors["encoder.resnet.conv1.weight"]
    assert conv1.shape == (64, 4, 7, 7)
    assert torch.equal(conv1[:, :3], official_state_dict["coord_encoder.encoder.conv1.weight"])
    assert conv1[:, 3].abs().max() == 0
    assert "encoder.resnet.conv1.weight" in report.adapted
    assert "impl_network.point_proj.proj.weight" in report.dropped
    fresh = {".".join(k.split(".")[:2]) for k in report.fresh}
    assert fresh == {
        "pixel.film",
        "pixel.visible_head",
        "pixel.occluder_head",
        "decoder.point_embed",
        "decoder.text_proj",
        "text.default_embedding",
    }
    model = build_model("zeroshape-w", device="meta")
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    assert unexpected == [] and set(missing) == set(report.fresh)


def test_convert_partial_sources(official_state_dict):
    depth_only = {k: v for k, v in official_state_dict.items() if k.startswith(("dpt_depth.", "intr_"))}
    _, report = checkpoint.convert_zeroshape({"graph": depth_only}, "zeroshape", report=True)
    assert report.source == "depth.ckpt" and len(report.mapped) == 390
    omnidata = {
        "module." + k[len("dpt_depth.") :]: v for k, v in official_state_dict.items() if k.startswith("dpt_depth.")
    }
    tensors, report = checkpoint.convert_zeroshape({"model_state_dict": omnidata}, "zeroshape", report=True)
    assert report.source == "omnidata" and all(k.startswith("pixel.") for k in tensors)
    assert not any(k.startswith("pixel.intrinsics_head") for k in tensors)


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ({"graph": {"foo.weight": torch.zeros(3)}}, "not a ZeroShape checkpoint"),
        ({"epoch": 3}, "holds no tensors"),
        ([1, 2, 3], "expected a checkpoint dict"),
        ({"graph": {"impl_network.weird.weight": torch.zeros(3)}}, "have no mapping"),
        ({"graph": {"impl_network.latent_proj.weight": torch.zeros(3, 3)}}, "needs (256, 256)"),
        # one tensor of the ViT: a torn or hand-made file, not a checkpoint to convert
        ({"graph": {"dpt_depth.pretrained.model.cls_token": torch.zeros(1, 1, 768)}}, "only 1 of the"),
    ],
)
def test_converter_errors(bad, fragment):
    with pytest.raises(CheckpointError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        checkpoint.convert_zeroshape(bad, "zeroshape")


def test_convert_official_names_the_file_whatever_is_wrong_inside(tmp_path):
    """The dict's faults (a tensor instead of a dict, no tensors, foreign keys) are said of the
    file given to ``zsw convert zeroshape``; torch's notes on old pickles are not printed."""
    cases = {"tensor.ckpt": torch.zeros(3), "dict.ckpt": {"a": 1}, "foreign.ckpt": {"graph": {"foo": torch.zeros(3)}}}
    for name, content in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(CheckpointError) as e:
            checkpoint.convert_official(tmp_path / name, tmp_path / f"{name}.safetensors")
        assert str(e.value).startswith(f"{tmp_path / name}: ") and "\n" not in str(e.value)
    torch.save({"graph": {"foo": torch.zeros(3)}}, tmp_path / "old.ckpt", pickle_protocol=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would fail this
        with pytest.raises(CheckpointError, match=f"cannot load {re.escape(str(tmp_path / 'old.ckpt'))}"):
            checkpoint.convert_official(tmp_path / "old.ckpt", tmp_path / "old.safetensors")


def test_converter_refuses_non_finite_weights(official_state_dict):
    key = "dpt_depth.pretrained.model.cls_token"
    poisoned = {**official_state_dict, key: torch.full_like(official_state_dict[key], float("nan"))}
    with pytest.raises(CheckpointError, match=f"{key} holds non-finite"):
        checkpoint.convert_zeroshape({"graph": poisoned}, "zeroshape-w")


def test_load_official_refuses_arbitrary_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"graph": {}, "x": Evil()}, f)
    with pytest.raises(CheckpointError, match="weights_only=True") as info:
        checkpoint.load_official(path)
    assert "weights_only=False" not in str(info.value) and "will likely succeed" not in str(info.value)
    (tmp_path / "noise.ckpt").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_official(tmp_path / "noise.ckpt")
    assert "weights_only=False" not in str(info.value)
    good = tmp_path / "good.ckpt"
    import numpy as np

    torch.save({"graph": {"a": torch.ones(2)}, "best_val": np.float64(0.5), "epoch": 2}, good)
    assert torch.equal(checkpoint.load_official(good)["graph"]["a"], torch.ones(2))
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load_official(tmp_path / "missing.ckpt")


def test_convert_official_checks_before_loading_anything(tmp_path):
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"keep me")
    missing = tmp_path / "missing.ckpt"  # never read: the option checks come first
    with pytest.raises(ConfigError, match="--preset must be zeroshape or zeroshape-w, got 'huge'"):
        checkpoint.convert_official(missing, tmp_path / "o.safetensors", "huge")
    with pytest.raises(ConfigError, match="exists; pass --overwrite"):
        checkpoint.convert_official(missing, taken)
    assert taken.read_bytes() == b"keep me"
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.convert_official(missing, taken, overwrite=True)


def test_saving_the_same_weights_twice_gives_the_same_bytes(tmp_path):
    """safetensors writes its header in hash-map order; zsw sorts it, so a checkpoint's content hash
    (which keys reruns) depends on the weights and config only. Any safetensors reader still reads it."""
    from safetensors.torch import load_file

    from zsw import checkpoint
    from zsw.model.zeroshape_w import build_model

    model = build_model("tiny")
    blobs = set()
    for i in range(4):
        path = checkpoint.save(model, tmp_path / f"m{i}.safetensors", extra={"b": 1, "a": [2, 3]})
        blobs.add(path.read_bytes())
    assert len(blobs) == 1
    tensors = load_file(str(tmp_path / "m0.safetensors"))
    assert tensors.keys() == model.state_dict().keys()
    assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items())
    # the bytes of serialising in memory and sorting the header there (zsw's checkpoints until
    # 2026-12-03, whose content hashes key reruns), though the weights now go straight to the file
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(tmp_path / "m0.safetensors"), "pt") as f:
        blob = save(model.state_dict(), metadata=f.metadata())
    n = int.from_bytes(blob[:8], "little")
    assert checkpoint._sorted_header(blob[8 : 8 + n]) + blob[8 + n :] in blobs
    model.decoder.norm.weight.data.add_(1.0)
    assert checkpoint.save(model, tmp_path / "other.safetensors").read_bytes() not in blobs


def test_a_sorted_header_of_another_length_moves_the_weights(tmp_path, monkeypatch):
    """The header is sorted in place; were it ever longer than safetensors' own (padding, escapes),
    the tensor bytes move behind it and the file still reads back exactly."""
    from zsw import checkpoint

    sort = checkpoint._sorted_header

    def longer(header):
        text = sort(header)[8:] + b" " * 8
        return len(text).to_bytes(8, "little") + text

    monkeypatch.setattr(checkpoint, "_sorted_header", longer)
    model = build_model("tiny")
    path = checkpoint.save(model, tmp_path / "m.safetensors")
    loaded = checkpoint.load(path)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
