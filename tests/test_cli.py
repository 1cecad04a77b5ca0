from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from zsw.cli.main import app

runner = CliRunner()

COMMANDS = [
    "reconstruct",
    "train",
    "eval",
    "export",
    "synthesize procedural",
    "synthesize meshes",
    "synthesize diffuse",
    "synthesize pseudo-depth",
    "bench kernels",
    "bench train",
    "bench reconstruct",
    "convert zeroshape",
    "env",
]


def test_root_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("reconstruct", "train", "synthesize", "eval", "bench", "export", "convert", "env"):
        assert name in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "zsw " + command.split()[0] in result.output


def test_help_is_fast_and_imports_no_torch():
    code = "import sys; from zsw.cli.main import app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_console_script_runs_the_app_and_freezes_the_heap_on_the_way_out():
    """``zsw`` (and ``python -m zsw``) is :func:`zsw.cli.main.main`: the app's exit code, and a
    frozen heap afterwards, so the interpreter's final collections skip torch's objects."""
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "zsw"]
    assert script.value == "zsw.cli.main:main"
    code = (
        "import gc, sys; from zsw.cli.main import main; sys.argv = ['zsw', '--version']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    print(e.code, gc.get_freeze_count() > 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["0", "True"]
    bad = subprocess.run([sys.executable, "-m", "zsw", "no-such-command"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no-such-command" in bad.stderr
    # a usage error is one line, like zsw's own errors (not click's usage block in a box)
    for args, fragment in ((["reconstruct", "x.png", "--resolution", "0"], "'--resolution'"),
                           (["reconstruct", "x.png", "--cutout", "photoshop"], "--cutout: unknown remover"),
                           (["eval"], "Missing option '--data'")):  # fmt: skip
        bad = subprocess.run([sys.executable, "-m", "zsw", *args], capture_output=True, text=True)
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
    # a group without a command still shows its help
    group = subprocess.run([sys.executable, "-m", "zsw", "bench"], capture_output=True, text=True)
    assert "zsw bench [OPTIONS] COMMAND" in group.stdout + group.stderr


def test_env_reports_what_a_run_here_would_resolve_and_which_packages_are_missing(monkeypatch):
    """`zsw env` (and --json): the auto settings come from the functions a reconstruction uses, so
    they are what `zsw reconstruct` records here; a package that is not installed says so."""
    import json
    from importlib import metadata

    from zsw.hub import resolve_device
    from zsw.infer.settings import resolve_tta
    from zsw.infer.weights import resolve_backend

    real = metadata.version

    def without_xatlas(name):
        if name == "xatlas":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", without_xatlas)
    monkeypatch.setenv("ZSW_CACHE_DIR", "/tmp/zsw-cache")
    result = runner.invoke(app, ["env", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    device = resolve_device(None)
    assert report["defaults"]["device"] == device
    assert report["defaults"]["backend"] == resolve_backend("auto", None, None, device, "auto")
    assert report["defaults"]["tta"] == resolve_tta("auto", device)
    assert report["defaults"]["cuda_graphs"] is (device.startswith("cuda") and report["defaults"]["backend"] == "torch")
    assert report["packages"]["xatlas"] is None and report["packages"]["torch"] == torch.__version__.split("+")[0]
    assert len(report["devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    text = runner.invoke(app, ["env"])
    assert text.exit_code == 0
    assert any(line.split()[:3] == ["xatlas", "not", "installed"] for line in text.output.splitlines())
    assert f"--backend {report['defaults']['backend']}" in text.output
    assert report["variables"]["ZSW_CACHE_DIR"] == "/tmp/zsw-cache" and "ZSW_CACHE_DIR=/tmp/zsw-cache" in text.output


def test_commands_stay_thin():
    """Issue 13: a command parses its options, builds the job's settings, makes one call and prints;
    anything longer belongs in the job. Signatures count, so long help texts go in constants."""
    too_long = [
        f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in sorted((Path(__file__).parents[1] / "cli").glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 40
    ]
    assert not too_long, too_long


def test_version():
    from zsw import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == __version__


@pytest.mark.slow
def test_convert_zeroshape_end_to_end(official_state_dict, memory_path):
    from zsw import checkpoint

    src = memory_path / "shape.ckpt"
    torch.save({"graph": official_state_dict, "epoch": 14, "iter": 1000}, src)
    out = memory_path / "zs.safetensors"
    result = runner.invoke(app, ["convert", "zeroshape", str(src), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "mapped 809 tensors, dropped 4" in result.output
    model = checkpoint.load(out)
    assert model.config.name == "zeroshape"
    assert torch.equal(
        model.state_dict()["decoder.latent_proj.weight"], official_state_dict["impl_network.latent_proj.weight"]
    )

    again = runner.invoke(app, ["convert", "zeroshape", str(src), "-o", str(out)])
    assert again.exit_code == 1 and "--overwrite" in again.output

    # the paper's starting point: ZeroShape's depth.ckpt onto zeroshape-w (the rest fresh; the
    # whole shape.ckpt's keys onto zeroshape-w: test_checkpoint, in memory and on the meta device)
    depth_src, out_w = memory_path / "depth.ckpt", memory_path / "zsw.safetensors"
    depth_only = {k: v for k, v in official_state_dict.items() if k.startswith(("dpt_depth.", "intr_"))}
    torch.save({"graph": depth_only}, depth_src)
    result = runner.invoke(app, ["convert", "zeroshape", str(depth_src), "-o", str(out_w), "--preset", "zeroshape-w"])
    assert result.exit_code == 0, result.output
    assert "mapped 390 tensors" in result.output and "initialised fresh: " in result.output, result.output
    tensors, cfg, extra = checkpoint.read(out_w)
    assert cfg.name == "zeroshape-w"
    assert extra["converted_from"] == str(depth_src) and extra["source_kind"] == "depth.ckpt"
    key = next(k for k in depth_only if k.startswith("dpt_depth.") and depth_only[k].ndim == 4)
    mapped = checkpoint.convert_zeroshape({"graph": depth_only}, "zeroshape-w", report=True)[1].mapped
    assert torch.equal(tensors[mapped[key]], depth_only[key])
    # the prompt's default embedding was filled (a fixed random unit vector without --clip), not left at zero
    assert torch.linalg.vector_norm(tensors["text.default_embedding"].float()).item() == pytest.approx(1.0, abs=1e-3)


def test_convert_bad_inputs_one_line(tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    for args, fragment in [
        ([str(tmp_path / "missing.ckpt")], "does not exist"),
        ([str(text)], "weights_only=True"),
        ([str(text), "--preset", "huge"], "--preset must be zeroshape or zeroshape-w"),
    ]:
        result = runner.invoke(app, ["convert", "zeroshape", *args, "-o", str(tmp_path / "o.safetensors")])
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.output


def test_mesh_defaults_agree():
    """`--min-part` and `--smooth` are spelled in the commands' signatures (the CLI imports nothing
    heavy at start-up); their defaults must stay the library's, so `zsw reconstruct`, the Python API
    and the app write the mesh `zsw eval` scores."""
    import inspect

    from zsw.app import _settings
    from zsw.cli.evaluate import evaluate
    from zsw.cli.reconstruct import reconstruct
    from zsw.eval.jobs import EvalJobSettings
    from zsw.infer.reconstruct import Reconstructor
    from zsw.infer.reconstruct import reconstruct as api
    from zsw.infer.settings import MIN_PART, SMOOTH, ReconstructSettings

    for command in (evaluate, reconstruct):
        params = inspect.signature(command).parameters
        assert params["min_part"].default == MIN_PART, command.__name__
        assert params["smooth"].default == SMOOTH, command.__name__
    # every option that changes the mesh has the same default in both commands (the backend too:
    # on a CPU `auto` runs the packaged model's ONNX graphs, and eval scores what users get)
    ev, rec = inspect.signature(evaluate).parameters, inspect.signature(reconstruct).parameters
    shared = ("backend", "precision", "reframe", "background", "cutout", "tta", "carve", "faces", "resolution",
              "extraction", "threshold")  # fmt: skip
    assert {k: ev[k].default for k in shared} == {k: rec[k].default for k in shared}
    assert EvalJobSettings(format="procedural").backend == ReconstructSettings().backend
    for settings in (ReconstructSettings(), EvalJobSettings(format="procedural")):
        assert (settings.min_part, settings.smooth) == (MIN_PART, SMOOTH)
    for function in (api, Reconstructor.__init__, _settings):
        assert inspect.signature(function).parameters["smooth"].default == SMOOTH, function.__qualname__


def test_help_texts_keep_their_brackets():
    """Rich reads an unescaped ``[word]`` in a help text as markup and prints nothing for it
    (``pip install "zsw[texture]"`` came out as ``pip install "zsw"``): escape it as ``\\[word]``."""
    import re

    import typer.main

    markup = re.compile(r"(?<!\\)\[[a-z][a-z0-9_-]*\]")
    found = []

    def walk(command, path):
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        found.extend(f"{path}: {m}" for text in texts for m in markup.findall(text))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "zsw")
    assert not found, found
    out = runner.invoke(app, ["reconstruct", "--help"], terminal_width=400).output
    assert "zsw[texture]" in out and "zsw[cutout]" in out


@pytest.mark.parametrize(
    "command",
    [
        "reconstruct examples/toy.png -o {out}",
        "eval --data nowhere --format procedural --out {out}/results.json",
        "synthesize procedural --out {out}/set --objects 1",
        "train --config configs/tiny-cpu.yaml --data nowhere --out {out}/run",
    ],
)
@pytest.mark.parametrize("blocker", ["file", "link"])
def test_an_output_under_a_file_is_refused_before_any_work(repo_root, tmp_path, monkeypatch, command, blocker):
    """Not a bare 'File exists' after the work (reconstruct failed every photo, eval loaded its
    model), nor, under a link to a folder that does not exist (an unmounted drive's), a command
    that spun for ever making it."""
    monkeypatch.chdir(repo_root)
    if blocker == "file":
        (tmp_path / "afile").write_text("not a folder")
    else:
        (tmp_path / "afile").symlink_to(tmp_path / "unmounted" / "drive")
    result = runner.invoke(app, command.format(out=tmp_path / "afile").split())
    why = "a file, not a folder" if blocker == "file" else "a link to a folder that does not exist"
    assert result.exit_code == 2 and "afile" in result.output and why in result.output, result.output


@pytest.mark.parametrize(
    "options, fragment",
    [
        (["--precision", "fp16", "--device", "cpu"], "--precision fp16 needs a CUDA device"),
        (["--backend", "tensorrt"], "needs --engine DIR"),
        (["--engine", "somewhere"], "--engine is for the onnxruntime and tensorrt backends"),
    ],
)
def test_option_combinations_that_cannot_run_are_usage_errors(repo_root, tmp_path, options, fragment):
    """Exit 2, as for any invalid option (the docs' promise), not 1 as for a failed photo."""
    result = runner.invoke(app, ["reconstruct", str(repo_root / "examples" / "toy.png"), "-o", str(tmp_path), *options])
    assert result.exit_code == 2 and fragment in result.output, result.output


@pytest.mark.parametrize("command", ["reconstruct", "eval"])
def test_a_typo_in_zsw_kernels_is_a_usage_error_before_any_work(repo_root, tmp_path, monkeypatch, command):
    """ZSW_KERNELS is an option read from the environment: a bad value is one line and exit 2."""
    monkeypatch.setenv("ZSW_KERNELS", "bogus")
    args = {"reconstruct": [str(repo_root / "examples" / "toy.png"), "-o", str(tmp_path / "o")],
            "eval": ["--data", str(tmp_path), "--format", "procedural", "--out", str(tmp_path / "e.json")]}  # fmt: skip
    result = runner.invoke(app, [command, *args[command]])
    assert result.exit_code == 2 and "ZSW_KERNELS must be one of" in result.output, result.output
    assert not (tmp_path / "o").exists()  # refused before the output folder was made


def test_an_error_raised_in_a_dataloader_worker_is_one_line():
    """PyTorch re-raises a worker's exception with the worker's traceback as its message: the CLI
    prints the original message only, as for any user error."""
    import torch
    from torch.utils.data import DataLoader

    from zsw.cli._common import _one_line
    from zsw.errors import InputError

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise InputError("32 consecutive samples of data/x are unreadable (last: depth.npy)")

    with pytest.raises(InputError) as e:
        next(iter(DataLoader(Broken(), num_workers=1)))
    assert "\n" in str(e.value)  # what PyTorch does
    assert _one_line(e.value) == "32 consecutive samples of data/x are unreadable (last: depth.npy)"
    assert _one_line(InputError("plain")) == "plain"
