"""The benchmark harness and ``zsw bench kernels`` (smoke configuration on CPU)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from zsw.bench._harness import BenchRow, add_speedups, append_csv, environment, gpu_slug, measure, read_csv
from zsw.cli.main import app


def _row(provider, p50, dtype="bf16", case="grid"):
    env = environment()
    return BenchRow(
        env.gpu, env.torch, env.triton, env.git_sha, env.timestamp, "op", case, provider, "fwd", dtype, "N=1",
        p50, p50, p50, 1.0, "TFLOP/s", math.nan,
    )  # fmt: skip


def test_speedups_are_ratios_within_matching_rows():
    rows = [_row("torch", 9.0), _row("triton", 3.0), _row("torch", 30.0, "fp32"), _row("triton", 1.0, case="other")]
    add_speedups(rows, "torch")
    add_speedups(rows, "torch", label="torch_fp32", baseline_dtype="fp32", match=("op", "case", "mode", "shape"))
    assert rows[1].speedups == {"torch": 3.0, "torch_fp32": 10.0}
    assert rows[0].speedups == {"torch_fp32": 30.0 / 9.0}  # the bf16 reference against the fp32 one
    assert rows[2].speedups == {} and rows[3].speedups == {}  # no baseline for another case


def test_append_csv_keeps_old_rows_and_unions_columns(tmp_path):
    path = tmp_path / "r.csv"
    first = [_row("torch", 2.0)]
    append_csv(path, first)
    second = [_row("triton", 1.0)]
    add_speedups(first + second, "torch")
    append_csv(path, second)
    rows = read_csv(path)
    assert [r["provider"] for r in rows] == ["torch", "triton"]
    assert rows[0]["speedup_vs_torch"] == "" and float(rows[1]["speedup_vs_torch"]) == 2.0
    assert not list(tmp_path.glob(".r.csv.tmp-*"))  # written through a temporary file, then renamed


def test_a_failing_provider_becomes_a_nan_row():
    def boom():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB")

    row = measure(boom, environment(), op="x", case="c", provider="p", mode="fwd", dtype="fp32", shape="-", work=1.0)
    assert math.isnan(row.p50_ms) and math.isnan(row.throughput)
    assert "OutOfMemoryError" in row.note


def test_gpu_slug_is_file_name_friendly():
    env = environment()
    assert gpu_slug(env.__class__("NVIDIA H100 80GB HBM3", "", "", "", "", "cuda")) == "nvidia-h100-80gb-hbm3"
    assert gpu_slug(env) and all(c.isalnum() or c == "-" for c in gpu_slug(env))


@pytest.mark.slow
def test_bench_kernels_smoke_writes_sane_rows(tmp_path):
    out, summary = tmp_path / "kernels.csv", tmp_path / "kernels.md"
    args = ["bench", "kernels", "--smoke", "--rep-ms", "1", "--out", str(out), "--summary", str(summary)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    seen = {(r["op"], r["provider"], r["mode"]) for r in rows}
    for op in ("point_cross_attention", "occupancy_mlp", "chamfer_distance"):
        assert (op, "torch", "fwd") in seen and (op, "triton", "fwd") in seen
    assert ("point_cross_attention", "triton", "fwd+bwd") in seen
    assert ("occupancy_mlp", "triton-recompute", "fwd+bwd") in seen
    for r in rows:
        assert r["torch"] == torch.__version__ and r["gpu"] and r["git_sha"] and r["timestamp"]
        assert float(r["p50_ms"]) > 0 and float(r["p20_ms"]) <= float(r["p50_ms"]) <= float(r["p80_ms"]), r
        assert float(r["throughput"]) > 0, r
        if r["provider"] == "triton":
            assert float(r["speedup_vs_torch"]) > 0
        # each provider was checked against the reference before it was timed
        if r["op"] == "chamfer_distance" and r["provider"] != "torch":
            assert r["note"].startswith("index mismatches 0/")
        elif r["op"] != "chamfer_distance":
            assert float(r["note"].removeprefix("max err ")) < 1e-4, r
    assert "| target | measured | met |" in summary.read_text()


def test_bench_kernels_rejects_unknown_ops(tmp_path):
    result = CliRunner().invoke(app, ["bench", "kernels", "--ops", "attention,warp", "--out", str(tmp_path / "x.csv")])
    assert result.exit_code == 1
    assert "warp" in result.output


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(stage="joint"), "--stage must be one of pixel, shape, full, got 'joint'"),
        (dict(amp="fp16"), "--amp must be off or bf16, got 'fp16'"),
        (dict(impls=["torch", "cuda"]), "--impl must be torch or triton, got 'cuda'"),
    ],
)
def test_bench_train_run_checks_options_before_measuring(kwargs, fragment, monkeypatch, tmp_path):
    from zsw.bench import train
    from zsw.errors import ConfigError

    monkeypatch.setattr(train, "bench_train_step", lambda *a, **k: pytest.fail("measured despite a bad option"))
    with pytest.raises(ConfigError, match=fragment):
        train.run(out=tmp_path / "x.csv", **kwargs)
    assert not (tmp_path / "x.csv").exists()


def test_bench_train_run_appends_to_the_default_csv(monkeypatch, tmp_path):
    from zsw.bench import train

    calls = []

    def fake_step(preset, batch_size, **kw):
        calls.append((preset, batch_size, kw["impls"], kw["stage"]))
        return [_row(i, 2.0) for i in kw["impls"]]

    monkeypatch.setattr(train, "bench_train_step", fake_step)
    monkeypatch.chdir(tmp_path)
    rows, csv_path = train.run(preset="tiny", batch_size=3, stage="pixel", device="cpu")
    assert calls == [("tiny", 3, ["torch", "triton"], "pixel")]  # both implementations unless told
    assert csv_path == Path("bench/results") / f"{gpu_slug(environment('cpu'))}-train.csv"
    _, same = train.run(impls=["torch"], device="cpu")
    assert same == csv_path and [r["provider"] for r in read_csv(tmp_path / csv_path)] == ["torch", "triton", "torch"]
