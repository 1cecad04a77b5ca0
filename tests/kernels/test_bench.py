"""The benchmark harness and ``zsw bench kernels`` (smoke configuration on CPU)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from zsw import kernels as kernels_mod
from zsw.bench._harness import (
    INTERPRETER_NOTE,
    BenchRow,
    add_speedups,
    append_csv,
    environment,
    gpu_slug,
    measure,
    read_csv,
)
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
def test_bench_kernels_smoke_writes_sane_rows(tmp_path, monkeypatch):
    from zsw.bench import kernels

    # the decoder's breakdown has its own tests (below): here it would double the time of the smoke
    monkeypatch.setattr(kernels, "_breakdowns", lambda *a: [])
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
        check, *rest = r["note"].split("; ")
        if r["op"] == "chamfer_distance" and r["provider"] != "torch":
            assert check.startswith("index mismatches 0/")
        elif r["op"] != "chamfer_distance":
            assert float(check.removeprefix("max err ")) < 1e-4, r
        # interpreter timings say so in the CSV (without a GPU the Triton kernels are interpreted)
        assert (rest == [INTERPRETER_NOTE]) == (r["provider"].startswith("triton") and not torch.cuda.is_available())
    assert "| target | measured | met |" in summary.read_text()


def test_bench_kernels_rejects_unknown_ops(tmp_path):
    result = CliRunner().invoke(app, ["bench", "kernels", "--ops", "attention,warp", "--out", str(tmp_path / "x.csv")])
    assert result.exit_code == 2  # a usage error
    assert "warp" in result.output


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(stage="joint"), "--stage must be one of pixel, shape, full, got 'joint'"),
        (dict(amp="fp16"), "--amp must be off or bf16, got 'fp16'"),
        (dict(impls=["torch", "cuda"]), "--impl must be torch, triton or auto, got 'cuda'"),
        (dict(preset="nosuch"), "--preset: unknown model preset 'nosuch'"),
    ],
)
def test_bench_train_run_checks_options_before_measuring(kwargs, fragment, monkeypatch, tmp_path):
    from zsw.bench import train
    from zsw.errors import OptionError

    monkeypatch.setattr(train, "bench_train_step", lambda *a, **k: pytest.fail("measured despite a bad option"))
    with pytest.raises(OptionError, match=fragment):  # usage errors: the CLI exits 2
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


# --- the bench commands check what they can before measuring (nothing is measured in these tests) ---

_MEASURE = {"kernels": ("kernels", "run"), "train": ("train", "bench_train_step"),
            "reconstruct": ("reconstruct", "bench_reconstruct")}  # fmt: skip
_ARGS = {"kernels": ["--ops", "mlp"], "train": ["--device", "cpu"], "reconstruct": ["--weights", "random:tiny"]}


def _no_measuring(monkeypatch, command):
    import importlib

    module, name = _MEASURE[command]
    mod = importlib.import_module(f"zsw.bench.{module}")
    monkeypatch.setattr(mod, name, lambda *a, **k: pytest.fail("measured before the options were checked"))


def _one_line_usage_error(result, *fragments, one_line=True):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    # typer's own checks (min=) print a usage panel under CliRunner, a line in a terminal
    assert not one_line or len(result.output.strip().splitlines()) == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


_OUTPUT_CASES = [
    ("--out", "folder", "is a folder"),
    ("--out", "a_file/b.csv", "a_file is a file"),
    ("--out", "notes.md", "is not a CSV of bench rows (expected the columns gpu, torch,"),
    ("--summary", "folder", "is a folder"),
    ("--summary", "a_file/s.md", "a_file is a file"),
]


@pytest.mark.parametrize(
    "command, option, target, fragment",
    [
        (command, *case)
        for command in ("kernels", "train", "reconstruct")
        for case in _OUTPUT_CASES
        if not (command == "train" and case[0] == "--summary")  # bench train writes no summary
    ],
)
def test_bench_checks_its_outputs_before_measuring(command, option, target, fragment, monkeypatch, tmp_path):
    _no_measuring(monkeypatch, command)
    monkeypatch.chdir(tmp_path)
    Path("folder").mkdir()
    Path("a_file").write_text("x")
    notes = "# notes\nhello, world\nfoo\n"
    Path("notes.md").write_text(notes)
    args = ["bench", command, *_ARGS[command], option, target]
    result = CliRunner().invoke(app, args if option == "--out" else [*args, "--out", "b.csv"])
    _one_line_usage_error(result, f"{option}", fragment)
    assert Path("notes.md").read_text() == notes and not Path("b.csv").exists()


def test_append_csv_never_clobbers_a_file_of_something_else(tmp_path):
    from zsw.errors import InputError

    path = tmp_path / "notes.md"
    path.write_text("# notes\nhello, world\nfoo\n")
    with pytest.raises(InputError, match="is not a CSV of bench rows"):
        append_csv(path, [_row("torch", 1.0)])
    assert path.read_text() == "# notes\nhello, world\nfoo\n"
    empty = tmp_path / "empty.csv"
    empty.touch()
    append_csv(empty, [_row("torch", 1.0)])  # an empty file holds nothing to keep
    assert [r["provider"] for r in read_csv(empty)] == ["torch"]


@pytest.mark.parametrize(
    "command, args, fragment",
    [
        ("train", ["--stage", "bogus"], "--stage"),
        ("train", ["--amp", "fp16"], "--amp"),
        ("train", ["--impl", "bogus"], "--impl"),
        ("train", ["--preset", "nosuch"], "--preset"),
        ("kernels", ["--rep-ms", "0"], "--rep-ms"),
        ("kernels", ["--rep-ms", "-5"], "--rep-ms"),
        ("kernels", ["--model", "nosuchpreset"], "--model"),
        ("kernels", ["--ops", "warp"], "--ops"),
    ],
)
def test_bench_option_values_are_usage_errors(command, args, fragment, monkeypatch, tmp_path):
    _no_measuring(monkeypatch, command)
    result = CliRunner().invoke(app, ["bench", command, *_ARGS[command], *args, "--out", str(tmp_path / "b.csv")])
    _one_line_usage_error(result, fragment, one_line=args[0] != "--rep-ms")
    assert not (tmp_path / "b.csv").exists()


def test_bench_reconstruct_refuses_triton_kernels_it_cannot_run(monkeypatch, tmp_path):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # a CPU without the interpreter
    _no_measuring(monkeypatch, "reconstruct")
    args = ["bench", "reconstruct", "--weights", "random:tiny", "--device", "cpu", "--kernels", "triton"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b.csv")])
    _one_line_usage_error(result, "--kernels triton cannot run on cpu", "TRITON_INTERPRET=1")
    assert not (tmp_path / "b.csv").exists()


def test_bench_kernels_on_the_interpreter_says_so(monkeypatch, tmp_path):
    """Without a GPU: a warning on the terminal, the note in the CSV, and a title naming the smoke
    shapes that ran (not the --model, whose shapes did not run)."""
    from zsw.bench import kernels

    def fake_jobs(jobs, rows, env, *_):
        rows += [_row(job.provider, 2.0) for job in jobs]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("COLUMNS", "200")  # the table's title on one line
    monkeypatch.setattr(kernels, "_run_jobs", fake_jobs)
    out = tmp_path / "k.csv"
    result = CliRunner().invoke(app, ["bench", "kernels", "--ops", "mlp", "--model", "zeroshape-w", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "WARNING: the Triton kernels run under the Triton interpreter" in result.output
    assert "(smoke shapes of tiny, Triton interpreter)" in result.output and "(zeroshape-w)" not in result.output
    notes = {r["provider"]: r["note"] for r in read_csv(out)}
    assert notes == {"torch": "", "triton": INTERPRETER_NOTE, "triton-recompute": INTERPRETER_NOTE}


@pytest.mark.parametrize("interpreter", ["1", "0"])
def test_bench_train_rows_of_interpreted_triton_say_so(interpreter, monkeypatch):
    """Under a user's TRITON_INTERPRET=1 the Triton row of `zsw bench train` times the interpreter:
    its note says so in the CSV as `bench kernels`' rows do; the PyTorch row, and any row without
    the interpreter, carry no such note."""
    from zsw.bench import train

    monkeypatch.setenv("TRITON_INTERPRET", interpreter)
    monkeypatch.setattr(train, "_step_fn", lambda *a: lambda: None)
    monkeypatch.setattr(kernels_mod, "resolve_impl", lambda name, impl, dev: impl)
    rows = train.bench_train_step("tiny", 1, impls=("torch", "triton"), device="cpu", rep_ms=1)
    notes = {r.provider: r.note for r in rows}
    assert (INTERPRETER_NOTE in notes["triton"]) == (interpreter == "1")
    assert INTERPRETER_NOTE not in notes["torch"]


def test_bench_reconstruct_rows_of_interpreted_triton_say_so(monkeypatch, tmp_path):
    """`zsw bench reconstruct --kernels triton` on the interpreter: the Triton rows' notes say so;
    `auto` on a CPU runs the CPU paths, not Triton, and its rows say nothing."""
    from zsw.bench import reconstruct

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(reconstruct, "_one_run", lambda *a: ({s: 1e-3 for s in reconstruct.STAGES}, 10))
    out = tmp_path / "r.csv"
    args = ["bench", "reconstruct", "--weights", "random:tiny", "--device", "cpu", "--kernels", "triton", "--kernels",
            "auto", "--extraction", "fast", "--repeats", "1", "--no-shapes", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    notes = {(r["provider"], INTERPRETER_NOTE in r["note"]) for r in read_csv(out)}
    assert notes == {("torch:triton", True), ("torch:auto", False)}


@pytest.mark.slow
def test_decoder_breakdown_times_the_attention_and_the_mlp():
    """One decode of the tiny decoder split into its parts (CUDA events on a GPU, the wall clock on
    the interpreter) and its top kernels (CPU: operators); the parts never overlap, so with `other`
    they add up to the total."""
    from zsw.bench import kernels

    device = "cuda" if torch.cuda.is_available() else "cpu"
    b = kernels.decoder_breakdown("tiny", "triton", kernels.BREAKDOWN_SMOKE, device)
    parts = {p.name: p for p in b.parts}
    chunks = math.ceil(kernels.BREAKDOWN_SMOKE.points / kernels.BREAKDOWN_SMOKE.chunk)
    assert b.total_ms > 0
    for name in ("block 0 attention", "block 1 attention", "block 0 feed-forward", "occupancy MLP"):
        assert parts[name].ms > 0 and parts[name].calls == chunks, parts[name]
        assert parts[name].profiler_ms > 0, parts[name]  # the same part under torch.profiler
    assert parts["encode (latents, once per image)"].calls == 1  # its blocks' norms are not counted again
    assert all(p.ms >= 0 for p in b.parts) and list(parts)[-1] == "other"
    assert math.isclose(sum(p.ms for p in b.parts), b.total_ms, rel_tol=1e-6) or parts["other"].ms == 0
    assert 0 < len(b.top) <= kernels.BREAKDOWN_TOP and all(t.ms >= 0 and t.calls > 0 for t in b.top)
    top = " ".join(t.name for t in b.top)
    assert "occ_mlp_fwd" in top and "point_attn_fwd" in top, top  # custom ops (CPU) or kernels (GPU)
    text = b.markdown()
    assert text.startswith("## Decoder breakdown: smoke") and "| block 0 attention |" in text
    assert "| occupancy MLP |" in text and "| total |" in text


def test_bench_kernels_appends_the_decoder_breakdown_to_the_summary(monkeypatch, tmp_path):
    from zsw.bench import kernels

    def fake_breakdown(model, impl, case, device, top=kernels.BREAKDOWN_TOP):
        part = kernels.BreakdownItem("block 0 attention", 2.0, 1, 2.5)
        top = [kernels.BreakdownItem(f"{impl}_kernel", 1.5, 3)]
        return kernels.DecoderBreakdown(model, case.name, case.shape, impl, device, 3.0, [part], top)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(kernels, "_run_jobs", lambda jobs, rows, *_: rows.extend(_row(j.provider, 2.0) for j in jobs))
    monkeypatch.setattr(kernels, "decoder_breakdown", fake_breakdown)
    out, summary = tmp_path / "k.csv", tmp_path / "k.md"
    args = ["bench", "kernels", "--ops", "decoder", "--out", str(out), "--summary", str(summary)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = summary.read_text()
    assert "| target | measured | met |" in text
    for impl in ("triton", "torch"):
        assert f"## Decoder breakdown: smoke (points=256 chunk=128), {impl}, tiny, cpu" in text
        assert f"| `{impl}_kernel` | 1.500 | 3 |" in text
    assert "| block 0 attention | 2.000 | 66.7% | 1 | 2.500 |" in text
    assert "Decoder breakdown" in result.output  # reported on the terminal too
