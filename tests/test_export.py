"""Deployment: ONNX export of the tiny model through the CLI, onnx.checker, ONNX Runtime parity with
eager PyTorch and with the torch backend (down to the meshes of `zsw reconstruct`), engine
fingerprints, and one-line errors.

The export (about 30 s on two cores) runs once per module; every other test reads its directory.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import torch
from typer.testing import CliRunner

from zsw.cli.main import app
from zsw.errors import CheckpointError, ConfigError, InputError, ZswError

runner = CliRunner()
CHUNK = 700  # points per decoder call: small, so the parity tests cross chunk boundaries


def _one_line_error(result, code: int = 1) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from zsw import checkpoint
    from zsw.model import build_model

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    with torch.no_grad():  # non-trivial mask and intrinsics heads (they start at zero)
        for p in (*model.pixel.film.parameters(), *model.pixel.intrinsics_head.proj.parameters()):
            p.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    checkpoint.save(model, path)
    return path


@pytest.fixture(scope="module")
def onnx_dir(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny-onnx"
    args = ["export", "--weights", str(tiny_checkpoint), "--out", str(out), "--points-chunk", str(CHUNK)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "decoder.onnx" in result.output and "max |onnxruntime - eager|" in result.output
    return out


# --------------------------------------------------------------------------------------------
# the three graphs
# --------------------------------------------------------------------------------------------


def _zeroshape_like_tiny():
    from zsw.config import get_model_config, replace

    tiny = get_model_config("tiny")
    return replace(
        tiny,
        name="tiny-zeroshape",
        pixel=replace(tiny.pixel, mask_heads=False),
        encoder=replace(tiny.encoder, in_channels=3),
        decoder=replace(tiny.decoder, point_embed="linear"),
        text=replace(tiny.text, enabled=False),
    )


@pytest.mark.parametrize("variant", ["zeroshape-w", "zeroshape"])
def test_graph_modules_compute_what_the_model_computes(variant):
    from zsw.config import get_model_config
    from zsw.export.graphs import example_inputs, graph_modules, resolve_shape
    from zsw.model import DecoderLatents, build_model

    cfg = get_model_config("tiny") if variant == "zeroshape-w" else _zeroshape_like_tiny()
    model = build_model(cfg).eval()
    modules = graph_modules(model)
    inputs = example_inputs(model, batch=2, points=50)
    with torch.no_grad():
        outs = {name: modules[name](*inputs[name]) for name in modules}
        pix = model.pixel(*inputs["pixel"])
        latents = model.decoder.encode(model.encoder(inputs["encoder"][0]), *inputs["encoder"][1:])
        kv = [tuple(outs["encoder"][2 * i : 2 * i + 2]) for i in range(cfg.decoder.blocks)]
        query_text = outs["encoder"][-1] if variant == "zeroshape-w" else None
        logits = model.decoder.decode(DecoderLatents(kv=kv, text=query_text), inputs["decoder"][0])
    # the same arithmetic, though not always the same bits: MKL's kernels can round differently
    # with the operands' alignment (seen on an AMD EPYC: 3.6e-7 on the decoder's logits)
    same = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # noqa: E731
    for got, want in [(outs["pixel"][0], pix.depth), (outs["pixel"][1], pix.intrinsics),
                      (outs["encoder"][0], latents.kv[0][0]), (outs["decoder"][0], logits)]:  # fmt: skip
        same(got, want)
    for name, module in modules.items():
        sizes = {"batch": 2, "points": 50}
        assert [tuple(o.shape) for o in outs[name]] == [resolve_shape(t, sizes) for t in module.spec.outputs]
        assert [tuple(x.shape) for x in inputs[name]] == [resolve_shape(t, sizes) for t in module.spec.inputs]
    if variant == "zeroshape":  # no text anywhere, no mask heads: image in, depth and K out
        assert modules["pixel"].spec.input_names == ["image"]
        assert modules["pixel"].spec.output_names == ["depth", "intrinsics"]
        assert "query_text" not in modules["decoder"].spec.input_names
    half = graph_modules(model, "fp16")["decoder"]
    assert half.model.decoder.latent_proj.weight.dtype == torch.float16
    assert model.decoder.latent_proj.weight.dtype == torch.float32  # the model itself is untouched
    assert half(*inputs["decoder"])[0].dtype == torch.float32  # float32 I/O


# --------------------------------------------------------------------------------------------
# the export directory
# --------------------------------------------------------------------------------------------


def test_manifest_records_interface_precision_checksums_and_parity(onnx_dir):
    from zsw import __version__
    from zsw.config import get_model_config
    from zsw.export.graphs import graph_specs
    from zsw.export.manifest import EXPORT_PACKAGES, read_manifest, sha256_file
    from zsw.io import code_identity

    manifest = read_manifest(onnx_dir)
    data = manifest.data
    assert data["zsw_version"] == __version__ and data["zsw_code"] == code_identity(EXPORT_PACKAGES)
    assert data["precision"] == "fp32" and data["io_dtype"] == "float32"
    assert data["onnx"]["opset"] == 18 and data["batch"] == 1 and data["points_chunk"] == CHUNK
    assert manifest.config == get_model_config("tiny")
    specs = graph_specs(manifest.config)
    assert manifest.spec("decoder").inputs[0].shape == ("batch", "points", 3)
    assert manifest.spec("decoder").outputs[0].shape == ("batch", "points")
    assert [t.name for t in specs["encoder"].outputs] == [
        "latent_k0",
        "latent_v0",
        "latent_k1",
        "latent_v1",
        "query_text",
    ]
    for name, graph in data["graphs"].items():
        assert sha256_file(onnx_dir / graph["file"]) == graph["sha256"]
        v = graph["validation"]
        assert v["passed"] and v["batches"] == [1, 3]
        assert set(v["max_abs_error"]) == {t.name for t in specs[name].outputs}
        assert max(v["max_abs_error"].values()) <= 1e-4, (name, v["max_abs_error"])
    emb = manifest.default_text_embedding()
    assert emb.shape == (512,) and abs(emb.norm().item() - 1) < 1e-5
    umask = os.umask(0)
    os.umask(umask)
    for name in ("export.json", "default_text_embedding.npy"):  # as readable as the .onnx files
        assert (onnx_dir / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_graphs_pass_the_checker_with_symbolic_batch_and_points(onnx_dir):
    import onnx

    from zsw.export.manifest import read_manifest

    manifest = read_manifest(onnx_dir)
    for name in ("pixel", "encoder", "decoder"):
        path = onnx_dir / f"{name}.onnx"
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path), load_external_data=False)
        assert model.opset_import[0].version == 18
        for value, spec in zip(model.graph.input, manifest.spec(name).inputs):
            dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            assert tuple(dims) == spec.shape, (name, value.name, dims)
    decoder = onnx.load(str(onnx_dir / "decoder.onnx"))
    assert [d.dim_param for d in decoder.graph.output[0].type.tensor_type.shape.dim] == ["batch", "points"]


# --------------------------------------------------------------------------------------------
# the ONNX Runtime backend against the torch backend
# --------------------------------------------------------------------------------------------


def test_onnxruntime_backend_reconstructs_like_the_torch_backend(onnx_dir, tiny_checkpoint):
    from zsw.infer.backend import load_backend, predict

    ort = load_backend("onnxruntime", engine=onnx_dir, device="cpu")
    ref = load_backend("torch", weights=tiny_checkpoint, device="cpu")
    assert ort.name == "onnxruntime" and ort.config == ref.config and ort.device == torch.device("cpu")
    # ONNX Runtime's threads must not spin after a run: PyTorch work follows every call and would compete
    options = ort.sessions["pixel"].get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    image = torch.rand(2, 3, 224, 224)
    a, b = predict(ort, image), predict(ref, image)
    for field in ("depth", "intrinsics", "visible_mask_logits", "occluder_mask_logits", "visible_points"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), atol=1e-4, rtol=1e-4, msg=field)
    assert torch.equal(a.visible_mask, b.visible_mask)
    points = torch.rand(2, 2 * CHUNK + 123, 3) * 3 - 1.5  # three decoder calls, the last one partial
    with torch.no_grad():  # the torch backend's decode tracks gradients otherwise
        got, want = ort.decode(a.latents, points), ref.decode(b.latents, points)
    assert got.shape == (2, points.shape[1])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # a user mask replaces the predicted one exactly as in the torch backend
    mask = torch.zeros(2, 1, 224, 224)
    mask[:, :, 60:170, 50:180] = 1
    a, b = predict(ort, image, mask=mask), predict(ref, image, mask=mask)
    torch.testing.assert_close(a.latents.kv[1][0], b.latents.kv[1][0], atol=1e-4, rtol=1e-4)
    assert ort.decode(a.latents, points[:, :0]).shape == (2, 0)


@pytest.mark.slow
def test_zsw_reconstruct_with_onnxruntime_gives_the_torch_mesh(onnx_dir, tiny_checkpoint, repo_root, tmp_path):
    import trimesh

    from zsw.eval.metrics import chamfer_fscore, normalize_pc, sample_surface

    image = repo_root / "examples" / "armchair.png"
    common = ["reconstruct", str(image), "--resolution", "24", "--extraction", "dense", "--device", "cpu"]
    common += ["--format", "ply", "--no-preview"]
    backends = {
        "onnxruntime": ["--backend", "onnxruntime", "--engine", str(onnx_dir)],
        "torch": ["--weights", str(tiny_checkpoint)],
    }
    points = {}
    for name, args in backends.items():
        result = runner.invoke(app, [*common, *args, "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        record = json.loads((tmp_path / name / "armchair" / "result.json").read_text())
        assert record["model"]["backend"] == name
        mesh = trimesh.load(tmp_path / name / "armchair" / "mesh.ply", force="mesh")
        assert len(mesh.faces) > 500  # a real surface, not an empty grid
        points[name] = normalize_pc(sample_surface(mesh, 10000, seed=0))
    assert chamfer_fscore(points["onnxruntime"], points["torch"])["fscore@0.01"] >= 0.99


@pytest.mark.slow
def test_demo_model_exports_and_runs_on_onnxruntime(tmp_path):
    """The packaged demo model, through the TorchScript exporter (the fallback; the dynamo exporter
    is covered on the tiny model above)."""
    from zsw import checkpoint
    from zsw.export.onnx import export_onnx
    from zsw.infer.backend import load_backend, predict
    from zsw.infer.weights import demo_weights

    model = checkpoint.load(demo_weights())  # shipped in the package (tests/test_packaging.py)
    manifest = export_onnx(model, tmp_path / "demo", exporter="torchscript", points_chunk=4096)
    for graph in manifest.data["graphs"].values():
        v = graph["validation"]
        assert v["passed"] and all(e <= 1e-4 * max(1, v["max_abs_reference"][k]) for k, e in v["max_abs_error"].items())
    ort = load_backend("onnxruntime", engine=tmp_path / "demo", device="cpu")
    ref = load_backend("torch", weights=model, device="cpu")
    torch.manual_seed(0)
    image = torch.rand(1, 3, 224, 224)
    a, b = predict(ort, image), predict(ref, image)
    torch.testing.assert_close(a.latents.up, b.latents.up, atol=1e-4, rtol=0)
    points = torch.rand(1, 5000, 3) * 3 - 1.5
    with torch.no_grad():
        want = ref.decode(b.latents, points)
    # the decoder graph on the same latents: PyTorch's numbers
    torch.testing.assert_close(ort.decode(b.latents, points), want, atol=1e-3, rtol=1e-3)
    # the whole path: the up axis differs in its 5th decimal, and an axially turned query that lands
    # on a mask's edge samples the surface map on its other side, so a few points move more
    err = (ort.decode(a.latents, points) - want).abs()
    assert int((err > 1e-3 + 1e-3 * want.abs()).sum()) <= 5 and float(err.max()) < 0.05, float(err.max())


def test_token_features_and_silhouette_distance_export_and_run_on_onnxruntime(tmp_path):
    """The decoder inputs the two options add (the token map from the encoder graph, the distance
    map beside the surface map) reach the ONNX graphs, and ONNX Runtime decodes what PyTorch does."""
    from zsw.config import get_model_config, replace
    from zsw.export.onnx import export_onnx
    from zsw.infer.backend import load_backend, predict
    from zsw.model import build_model

    tiny = get_model_config("tiny")
    options = dict(pixel_aligned=True, mirror_queries=True, silhouette_distance=True, token_features=8)
    torch.manual_seed(0)
    model = build_model(replace(tiny, name="tiny-options", decoder=replace(tiny.decoder, **options))).eval()
    manifest = export_onnx(model, tmp_path / "options", exporter="torchscript", points_chunk=2048)
    assert manifest.spec("decoder").input_names[-2:] == ["view_distance", "token_map"]
    assert manifest.spec("encoder").output_names[-1] == "token_map"
    assert all(graph["validation"]["passed"] for graph in manifest.data["graphs"].values())
    ort = load_backend("onnxruntime", engine=tmp_path / "options", device="cpu")
    ref = load_backend("torch", weights=model, device="cpu")
    image = torch.rand(1, 3, 224, 224)
    a, b = predict(ort, image), predict(ref, image)
    assert a.latents.token_map.shape == (1, 8, 14, 14)
    points = torch.rand(1, 3000, 3) * 3 - 1.5
    with torch.no_grad():
        want = ref.decode(b.latents, points)
    torch.testing.assert_close(ort.decode(a.latents, points), want, atol=1e-3, rtol=1e-3)


def test_onnxruntime_backend_rejects_bad_inputs_in_one_line(onnx_dir):
    from zsw.infer.backend import load_backend

    ort = load_backend("onnxruntime", engine=onnx_dir, device="cpu")
    with pytest.raises(InputError, match=r"image must be a tensor \[B, 3, 224, 224\]"):
        ort.pixel(torch.rand(1, 3, 200, 200), None)
    latents = ort.encode(torch.zeros(1, 4, 224, 224), None)
    with pytest.raises(InputError, match=r"points must be a tensor \[B=1, N, 3\]"):
        ort.decode(latents, torch.zeros(2, 10, 3))
    with pytest.raises(InputError, match="text has batch 2"):
        ort.pixel(torch.rand(1, 3, 224, 224), torch.zeros(2, 512))


def test_damaged_or_missing_export_is_refused(onnx_dir, tmp_path):
    from zsw.export.backends import load_runtime_backend

    with pytest.raises(CheckpointError, match="does not exist"):
        load_runtime_backend("onnxruntime", tmp_path / "nowhere", "cpu")
    with pytest.raises(CheckpointError, match="no export.json"):
        load_runtime_backend("onnxruntime", tmp_path, "cpu")
    copy = tmp_path / "copy"
    shutil.copytree(onnx_dir, copy)
    with open(copy / "decoder.onnx", "r+b") as f:  # flip one byte of the weights
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(CheckpointError, match="decoder.onnx does not match the sha256") as e:
        load_runtime_backend("onnxruntime", copy, "cpu")
    # the advice is a command that works: the recorded weights, this folder, --overwrite
    weights = json.loads((copy / "export.json").read_text())["source"]["weights"]
    assert f"`zsw export --weights {weights} --out {copy} --overwrite`" in str(e.value)
    data = json.loads((copy / "export.json").read_text())
    data["model"]["decoder"]["heads"] = 4
    (copy / "export.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="interface does not match the model config"):
        load_runtime_backend("onnxruntime", copy, "cpu")


def test_the_advice_for_a_damaged_export_of_the_packaged_model_is_a_command_that_works(tmp_path):
    """The packaged model is recorded as `demo:<file>`, which --weights does not take: the command
    given to write the export again says `--weights demo`."""
    from zsw.export.backends import load_runtime_backend
    from zsw.infer.weights import demo_engine, resolve_weights

    copy = tmp_path / "demo"
    shutil.copytree(demo_engine(), copy)
    (copy / "encoder.onnx").unlink()
    with pytest.raises(CheckpointError, match="encoder.onnx is listed in .* but missing") as e:
        load_runtime_backend("onnxruntime", copy, "cpu")
    assert f"`zsw export --weights demo --out {copy} --overwrite`" in str(e.value)
    assert resolve_weights("demo")[1].startswith("demo:")  # what `--weights demo` records


def test_an_export_path_that_is_a_file_is_not_said_to_be_missing(tmp_path):
    from zsw.export.backends import load_runtime_backend

    (tmp_path / "export.json").write_text("{}")  # e.g. --engine DIR/export.json
    with pytest.raises(CheckpointError, match=r"export.json is a file; an export is the directory"):
        load_runtime_backend("onnxruntime", tmp_path / "export.json", "cpu")


def test_part_latencies_compare_backends_in_one_run(onnx_dir, tiny_checkpoint):
    from zsw.bench.profile import compare

    rows = compare(onnx_dir, tiny_checkpoint, backends=("onnxruntime",), device="cpu", warmup=0, iters=1)
    assert [(r["backend"], r["part"]) for r in rows] == [
        (b, p) for b in ("torch", "onnxruntime") for p in ("pixel", "encode", "decode")
    ]
    assert all(r["ms"] > 0 for r in rows)
    assert all(r["ratio_to_torch"] == 1 for r in rows if r["backend"] == "torch")


def test_part_latencies_of_the_packaged_model_by_its_weights_name():
    """`--weights demo` (and random:PRESET, as docs/export.md's GPU commands give it) name weights as
    `zsw export` does, and the packaged model's pixel-aligned decoder gets the view it decodes with."""
    from zsw.bench.profile import compare
    from zsw.infer.weights import demo_engine

    rows = compare(demo_engine(), "demo", backends=("onnxruntime",), device="cpu", warmup=0, iters=1)
    assert {(r["backend"], r["part"]) for r in rows if r["ms"] > 0} == {
        (b, p) for b in ("torch", "onnxruntime") for p in ("pixel", "encode", "decode")
    }


# --------------------------------------------------------------------------------------------
# precision from the graph's dtypes
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fp16_decoder_graph_computes_in_half_with_float32_io(tiny_checkpoint, tmp_path):
    import onnx

    from zsw import checkpoint
    from zsw.export.graphs import example_inputs, graph_modules
    from zsw.export.onnx import TOLERANCE, check_graph, export_graph, onnxruntime_session, validate_graph

    model = checkpoint.load(tiny_checkpoint)
    module = graph_modules(model, "fp16")["decoder"]
    path = tmp_path / "decoder.onnx"
    export_graph(module, example_inputs(model, 2, 1000)["decoder"], path)
    check_graph(path)
    graph = onnx.load(str(path)).graph
    types = {i.data_type for i in graph.initializer if len(i.dims) == 2}  # the Linear weights
    assert types == {onnx.TensorProto.FLOAT16}
    assert {v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)} == {onnx.TensorProto.FLOAT}
    cases = [example_inputs(model, b, 777, seed=b)["decoder"] for b in (1, 3)]
    result = validate_graph(onnxruntime_session(path), module.spec, graph_modules(model)["decoder"], cases, "fp16")
    assert result["passed"], result
    # not bit-exact: the graph really computes in half precision
    assert 1e-6 < result["max_abs_error"]["logits"] <= TOLERANCE["fp16"] * max(1, result["max_abs_reference"]["logits"])


def test_engines_are_built_over_an_onnx_export_only_of_the_weights_asked_for(tmp_path):
    """`--format tensorrt --weights W` builds engines from the ONNX export in --out only if it came
    from W: the packaged model (`demo`) and random presets are weights too, and a checkpoint that
    does not exist is an error rather than 'any export will do'."""
    from zsw.export.jobs import ExportSettings, _reusable_onnx
    from zsw.export.manifest import EXPORT_PACKAGES, read_manifest, settings_mismatch
    from zsw.infer.weights import demo_engine
    from zsw.io import code_identity

    out = tmp_path / "demo"
    shutil.copytree(demo_engine(), out)  # exported from the packaged weights
    shipped = json.loads((out / "export.json").read_text())  # as if this code had exported it
    (out / "export.json").write_text(json.dumps({**shipped, "zsw_code": code_identity(EXPORT_PACKAGES)}))
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"other weights")

    def reused(weights):
        return _reusable_onnx(out, ExportSettings(format="tensorrt", weights=weights, points_chunk=65536)) is not None

    assert reused(None) and reused("demo")
    opset = ExportSettings(format="tensorrt", points_chunk=65536, opset=17)  # the graphs have opset 18
    with pytest.raises(ConfigError, match=r"cannot be reused \(its graphs have opset 18, not 17\); pass --weights"):
        _reusable_onnx(out, opset)
    assert not reused("random:tiny") and not reused(str(other))
    with pytest.raises(CheckpointError, match="typo.safetensors does not exist"):
        reused(str(tmp_path / "typo.safetensors"))
    data = json.loads((out / "export.json").read_text())
    data["source"] = {"weights": "random:tiny"}  # an export of a random preset is known by its label
    (out / "export.json").write_text(json.dumps(data))
    assert reused("random:tiny") and not reused("random:zeroshape") and not reused("demo")
    # the same rule for torch-tensorrt programs added to an export
    why = settings_mismatch(read_manifest(out), "fp32", 1, 65536, {"weights": "random:small"})
    assert why == "it was exported from other weights (random:tiny)"
    # graphs other zsw code traced are not extended: the model code may have changed since
    data["zsw_code"] = "other"
    (out / "export.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"cannot be reused \(it was exported by other zsw code "):
        reused(None)
    assert not reused("random:tiny")
    data["zsw_version"] = "0.0.9"
    (out / "export.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"cannot be reused \(it was exported by zsw 0.0.9, not "):
        reused(None)
    assert not reused("random:tiny")


# --------------------------------------------------------------------------------------------
# TensorRT fingerprints (no GPU needed: fabricated)
# --------------------------------------------------------------------------------------------


def _fabricated_engines(onnx_dir, tmp_path, fingerprint: dict):
    copy = tmp_path / "engines"
    shutil.copytree(onnx_dir, copy)
    data = json.loads((copy / "export.json").read_text())
    engines = {}
    for name in ("pixel", "encoder", "decoder"):
        (copy / f"{name}.fp32.plan").write_bytes(b"not a real plan")
        engines[name] = {"file": f"{name}.fp32.plan", "sha256": None, "onnx_sha256": data["graphs"][name]["sha256"]}
    data["tensorrt"] = {"fingerprint": fingerprint, "workspace_bytes": 1 << 30, "engines": engines}
    (copy / "export.json").write_text(json.dumps(data))
    return copy


A100 = {"gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0", "tensorrt": "10.3.0", "precision": "fp32"}
H100 = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "tensorrt": "11.1.0", "precision": "fp32"}


def test_engine_built_for_another_gpu_and_tensorrt_is_refused(onnx_dir, tmp_path, monkeypatch):
    from zsw.export import tensorrt as trt_export
    from zsw.export.backends import load_runtime_backend
    from zsw.export.fingerprint import EngineFingerprint

    engines = _fabricated_engines(onnx_dir, tmp_path, A100)
    here = EngineFingerprint.from_dict(H100)
    monkeypatch.setattr(trt_export, "current_fingerprint", lambda precision, device=None: here)
    with pytest.raises(CheckpointError) as e:
        load_runtime_backend("tensorrt", engines, "cuda")
    message = str(e.value)
    assert "\n" not in message and "pixel.fp32.plan" in message
    assert "TensorRT 10.3.0 (this machine has 11.1.0)" in message
    assert "compute capability 8.0" in message and "zsw export --format tensorrt" in message


def _failed(entry: dict) -> dict:
    validation = {"max_abs_error": {"logits": 0.5}, "max_abs_reference": {"logits": 3.0}, "tolerance": 0.001}
    return {**entry, "validation": {**validation, "passed": False}}


def test_engines_or_programs_that_failed_validation_are_not_run(tmp_path):
    """A build whose comparison failed records its engines (to show the errors) and exits 1; a
    backend must not then run them as if it had worked."""
    from zsw.export.backends import load_runtime_backend
    from zsw.infer.weights import demo_engine

    engines = _fabricated_engines(demo_engine(), tmp_path, H100)
    data = json.loads((engines / "export.json").read_text())
    data["tensorrt"]["engines"]["decoder"] = _failed(data["tensorrt"]["engines"]["decoder"])
    (engines / "export.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError) as e:
        load_runtime_backend("tensorrt", engines, "cuda")
    assert str(e.value) == (
        f"the decoder engine in {engines} failed its validation (0.5 on logits, tolerance 0.001 relative); "
        f"rebuild it with `zsw export --format tensorrt --out {engines}`"
    )
    programs = {g: _failed({"file": f"{g}.fp16.ep", "sha256": None}) for g in ("pixel", "encoder", "decoder")}
    del data["tensorrt"]
    data["torch_tensorrt"] = {"torch_tensorrt": "2.14.0", "fingerprint": H100, "programs": programs}
    (engines / "export.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"the pixel program .* --format torch-tensorrt --weights demo --out"):
        load_runtime_backend("tensorrt", engines, "cuda")


def test_a_rerun_of_the_engine_build_rebuilds_the_engines_that_failed_validation(tmp_path, monkeypatch):
    """The rebuild the refusal above advises must rebuild: a valid engine is reused, a failed one
    is built again (TensorRT's tactic choice varies from build to build). TensorRT is faked."""
    import contextlib
    import types

    from zsw.export import tensorrt as trt_export
    from zsw.export.fingerprint import EngineFingerprint
    from zsw.export.manifest import sha256_file
    from zsw.infer.weights import demo_engine

    engines = _fabricated_engines(demo_engine(), tmp_path, H100)
    data = json.loads((engines / "export.json").read_text())
    for entry in data["tensorrt"]["engines"].values():
        entry["sha256"] = sha256_file(engines / entry["file"])
        entry["validation"] = {"passed": True}
    data["tensorrt"]["engines"]["encoder"] = _failed(data["tensorrt"]["engines"]["encoder"])
    (engines / "export.json").write_text(json.dumps(data))
    built = []

    def build_engine(onnx_path, plan_path, profiles, precision, workspace_bytes):
        built.append(plan_path.name)
        plan_path.write_bytes(b"another plan")
        return {"build_s": 0.0, "strongly_typed": True}

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=H100["tensorrt"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    monkeypatch.setattr(trt_export, "current_fingerprint", lambda *a, **k: EngineFingerprint.from_dict(H100))
    monkeypatch.setattr(trt_export, "build_engine", build_engine)
    manifest = trt_export.build_engines(engines, validate=False)
    assert built == ["encoder.fp32.plan"]
    assert "validation" not in manifest.data["tensorrt"]["engines"]["encoder"]


def test_fingerprint_rules():
    from zsw.export.fingerprint import EngineFingerprint, check_fingerprint

    built = EngineFingerprint.from_dict(H100)
    check_fingerprint(built, built, "e.plan")  # same machine: accepted silently
    other_model = EngineFingerprint("NVIDIA H100 PCIe", "9.0", "11.1.0", "fp32")
    with pytest.warns(UserWarning, match="rebuild it here for best speed"):
        check_fingerprint(built, other_model, "e.plan")
    with pytest.raises(CheckpointError, match=r"TensorRT 11\.1\.0 \(this machine has 11\.2\.0\)"):
        check_fingerprint(built, EngineFingerprint(built.gpu, "9.0", "11.2.0", "fp32"), "e.plan")
    with pytest.raises(CheckpointError, match="invalid engine fingerprint"):
        EngineFingerprint.from_dict({"gpu": "x"})


def test_engine_profiles_pin_the_decoder_chunk():
    from zsw.config import get_model_config
    from zsw.export.graphs import graph_specs
    from zsw.export.tensorrt import engine_profiles

    specs = graph_specs(get_model_config("tiny"))
    decoder = engine_profiles(specs["decoder"], batch=4, points_chunk=65536)
    assert decoder["points"] == [[1, 65536, 3], [4, 65536, 3], [4, 65536, 3]]
    assert decoder["latent_k0"][0] == [1, 2, 197, 32] and decoder["latent_k0"][2] == [4, 2, 197, 32]
    assert engine_profiles(specs["pixel"], 1, 8)["image"] == [[1, 3, 224, 224]] * 3


# --------------------------------------------------------------------------------------------
# one-line errors
# --------------------------------------------------------------------------------------------


def test_export_cli_errors_are_one_line(onnx_dir, tiny_checkpoint, tmp_path):
    weights = ["--weights", str(tiny_checkpoint)]
    line = _one_line_error(runner.invoke(app, ["export", *weights, "--out", str(onnx_dir)]))
    assert "already holds a zsw export; pass --overwrite" in line
    line = _one_line_error(
        runner.invoke(app, ["export", *weights, "--out", str(tmp_path / "a"), "--precision", "bf16"]), code=2
    )
    assert "bf16 ONNX graphs are not supported" in line and "torch-tensorrt" in line
    assert not (tmp_path / "a").exists()
    result = runner.invoke(app, ["export", *weights, "--out", str(tmp_path / "b"), "--format", "tflite"])
    assert "--format must be one of onnx, tensorrt, torch-tensorrt" in _one_line_error(result, code=2)
    # no --weights: the packaged model, the same one `zsw reconstruct` uses
    from zsw.export.jobs import _load_weights
    from zsw.infer.weights import demo_weights
    from zsw.io import sha256_file
    from zsw.report import Reporter

    model, source = _load_weights(None, Reporter())
    # recorded by name, not by this machine's path to it
    assert source == {"weights": f"demo:{demo_weights().name}", "sha256": sha256_file(demo_weights())}
    line = _one_line_error(runner.invoke(app, ["export", "--weights", str(tmp_path / "no.safetensors"), "--out", "x"]))
    assert "does not exist" in line


def test_a_second_export_into_a_folder_in_use_stops_in_one_line(tiny_checkpoint, tmp_path):
    """Two exports into one folder at once: the second took the first's staging folder for a killed
    run's leftover and deleted it, failing the first ("No such file or directory: .staging-*/pixel.onnx")
    or mixing its graphs with the other's manifest. The folder is locked for the run: the second stops
    before anything loads, naming the first, and leaves the folder as it was."""
    import fcntl

    out = tmp_path / "e"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)  # what the first export holds
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for fmt in ("onnx", "tensorrt"):  # tensorrt: engines over the folder's ONNX export, which is being made
            args = ["export", "--weights", str(tiny_checkpoint), "--out", str(out), "--format", fmt, "--overwrite"]
            line = _one_line_error(runner.invoke(app, args))
            assert f"another process is writing to {out} (pid {os.getpid()}" in line, line
            assert line.endswith("stop it or choose another --out") and not any(out.iterdir())
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "option, value, says",
    [
        ("--format", "tflite", "--format must be one of onnx, tensorrt, torch-tensorrt, got 'tflite'"),
        ("--precision", "fp8", "--precision must be one of fp32, fp16, bf16, got 'fp8'"),
        ("--precision", "bf16", "--precision bf16: bf16 ONNX graphs are not supported"),
        ("--exporter", "jit", "--exporter must be one of dynamo, torchscript, got 'jit'"),
        ("--opset", "12", "--opset: 12 is not between 17 and 25"),
        ("--batch", "0", "--batch: 0 is not between 1 and 1024"),
        ("--points-chunk", "0", "--points-chunk: 0 is not a positive number"),
        ("--workspace-gib", "0", "--workspace-gib: 0.0 is not a positive number"),
    ],
)
def test_a_bad_option_is_a_usage_error_naming_it_before_anything_loads(option, value, says, tmp_path):
    """Exit 2 like typer's own usage errors, with the option's name, and before the weights (here a
    file that does not exist) or the format's packages are looked at."""
    args = ["export", "--weights", str(tmp_path / "no.safetensors"), "--out", str(tmp_path / "o"), option, value]
    formats = [[]] if option == "--format" else [["--format", "onnx"], ["--format", "torch-tensorrt"]]
    if value == "bf16":  # bf16 is for torch-tensorrt only
        formats = [["--format", "onnx"], ["--format", "tensorrt"]]
    for fmt in formats:  # the same checks whatever the format
        line = _one_line_error(runner.invoke(app, [*args, *fmt]), code=2)
        assert says in line, line
    assert not (tmp_path / "o").exists()


def test_a_bad_out_folder_is_refused_before_the_weights_load(tmp_path):
    """The weights given do not exist: each error below comes first, so nothing was loaded."""
    args = ["export", "--weights", str(tmp_path / "no.safetensors"), "--out"]
    (tmp_path / "file").write_text("not a folder")
    line = _one_line_error(runner.invoke(app, [*args, str(tmp_path / "file")]), code=2)
    assert f"--out {tmp_path / 'file'} is a file, not a folder" in line
    line = _one_line_error(runner.invoke(app, [*args, str(tmp_path / "file" / "sub")]), code=2)
    assert f"is under {tmp_path / 'file'}, which is a file" in line
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "export.json").write_text("{}")
    line = _one_line_error(runner.invoke(app, [*args, str(tmp_path / "done")]))
    assert "already holds a zsw export; pass --overwrite" in line
    assert (tmp_path / "file").read_text() == "not a folder" and os.listdir(tmp_path / "done") == ["export.json"]


def test_missing_extras_name_the_extra(onnx_dir, tiny_checkpoint, tmp_path, monkeypatch):
    from zsw.export.backends import load_runtime_backend

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    with pytest.raises(
        ZswError, match=r'the onnxruntime backend needs the `onnxruntime` package.*pip install "zsw\[export\]"'
    ):
        load_runtime_backend("onnxruntime", onnx_dir, "cpu")
    monkeypatch.setitem(sys.modules, "onnx", None)
    result = runner.invoke(app, ["export", "--weights", str(tiny_checkpoint), "--out", str(tmp_path / "o")])
    assert 'pip install "zsw[export]"' in _one_line_error(result)
    for module, fmt in (("tensorrt", "tensorrt"), ("torch_tensorrt", "torch-tensorrt")):
        monkeypatch.setitem(sys.modules, module, None)
        result = runner.invoke(app, ["export", "--out", str(tmp_path / "t"), "--format", fmt])
        assert 'pip install "zsw[trt]"' in _one_line_error(result)


@pytest.mark.parametrize(
    "module, error, quoted, dist, extra",
    [
        # the first non-blank line, as zsw.errors.reason quotes it (not empty brackets)
        ("tensorrt", ImportError("\n  libnvinfer.so.10: cannot open shared object file\n  (loaded from tensorrt)"),
         "libnvinfer.so.10: cannot open shared object file", "tensorrt", "trt"),
        # torch-tensorrt installed without TensorRT's libraries raises FileNotFoundError on import
        ("torch_tensorrt", FileNotFoundError("Could not find libnvinfer.so.10\n  Search paths: ['/usr/lib']"),
         "Could not find libnvinfer.so.10", "torch-tensorrt", "trt"),
    ],
)  # fmt: skip
def test_a_package_that_cannot_be_imported_is_one_line_naming_the_extra(
    module, error, quoted, dist, extra, monkeypatch
):
    """A package that is missing, or installed without its native libraries: one line quoting the
    cause and naming the extra to install, not a traceback."""
    from zsw.export import deps

    real = deps.importlib.import_module

    def fail(name, *args, **kwargs):
        if name != module:
            return real(name, *args, **kwargs)
        raise error

    monkeypatch.setattr(deps.importlib, "import_module", fail)
    with pytest.raises(ZswError) as e:
        deps.require(module, f"--format {dist}")
    message = str(e.value)
    assert "\n" not in message and f"needs the `{dist}` package, which cannot be imported ({quoted});" in message
    assert message.endswith(f'install it with: pip install "zsw[{extra}]"')


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_tensorrt_backend_without_a_gpu_says_so(onnx_dir, tmp_path):
    from zsw.export.backends import load_runtime_backend

    engines = _fabricated_engines(onnx_dir, tmp_path, H100)
    with pytest.raises(ConfigError, match="runs on a CUDA device, not on the CPU"):
        load_runtime_backend("tensorrt", engines, "cpu")
    with pytest.raises(ZswError, match=r'GPU|pip install "zsw\[trt\]"') as e:
        load_runtime_backend("tensorrt", engines, "cuda")
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="holds no TensorRT engines"):
        load_runtime_backend("tensorrt", onnx_dir, "cuda")


# --------------------------------------------------------------------------------------------
# GPU: TensorRT engines and torch-tensorrt programs
# --------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.slow
def test_tensorrt_engines_match_onnxruntime(onnx_dir, tmp_path):
    pytest.importorskip("tensorrt", reason='TensorRT is not installed (pip install "zsw[trt]")')
    from zsw.export.manifest import read_manifest
    from zsw.export.tensorrt import build_engines
    from zsw.infer.backend import load_backend, predict

    copy = tmp_path / "trt"
    shutil.copytree(onnx_dir, copy)
    manifest = build_engines(copy, workspace_gib=1)
    section = manifest.data["tensorrt"]
    assert section["fingerprint"]["compute_capability"] == "{}.{}".format(*torch.cuda.get_device_capability())
    for engine in section["engines"].values():
        assert engine["validation"]["passed"], engine["validation"]
    again = build_engines(copy, workspace_gib=1, validate=False)  # resumes: nothing rebuilt
    assert again.data["tensorrt"]["engines"]["pixel"]["sha256"] == section["engines"]["pixel"]["sha256"]
    trt = load_backend("tensorrt", engine=copy, device="cuda")
    ort = load_backend("onnxruntime", engine=read_manifest(copy).root, device="cpu")
    image = torch.rand(1, 3, 224, 224)
    a, b = predict(trt, image.cuda()), predict(ort, image)
    torch.testing.assert_close(a.depth.cpu(), b.depth, atol=1e-3, rtol=1e-3)
    points = torch.rand(1, CHUNK + 5, 3) * 3 - 1.5
    torch.testing.assert_close(
        trt.decode(a.latents, points.cuda()).cpu(), ort.decode(b.latents, points), atol=2e-3, rtol=2e-3
    )


@pytest.mark.gpu
@pytest.mark.slow
def test_torch_tensorrt_programs_match_eager(tiny_checkpoint, tmp_path):
    pytest.importorskip("torch_tensorrt", reason='torch-tensorrt is not installed (pip install "zsw[trt]")')
    from zsw import checkpoint
    from zsw.export.torch_tensorrt import compile_torch_tensorrt
    from zsw.infer.backend import load_backend, predict

    model = checkpoint.load(tiny_checkpoint)
    manifest = compile_torch_tensorrt(model, tmp_path / "tt", precision="fp16", points_chunk=4096)
    for program in manifest.data["torch_tensorrt"]["programs"].values():
        assert program["validation"]["passed"], program["validation"]
    backend = load_backend("tensorrt", engine=tmp_path / "tt", device="cuda")
    assert backend.name == "torch-tensorrt"
    ref = load_backend("torch", weights=model, device="cuda")
    image = torch.rand(1, 3, 224, 224, device="cuda")
    a, b = predict(backend, image), predict(ref, image)
    torch.testing.assert_close(a.depth, b.depth, atol=2e-2, rtol=2e-2)
