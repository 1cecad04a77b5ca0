"""One import namespace: kernels/, cli/ and bench/ live only inside zsw."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


def _not_ours(spec, repo_root) -> bool:
    """A top-level ``kernels`` that is absent or Hugging Face's (transformers 5.25 on depends on it
    and imports it with its models), never this repository's ``kernels/`` folder."""
    return spec is None or not Path(spec.origin).resolve().is_relative_to(repo_root)


def test_no_top_level_kernels_package_in_tests(repo_root):
    # transformers imports Hugging Face's `kernels`; ours must never answer
    assert _not_ours(importlib.util.find_spec("kernels"), repo_root)
    assert importlib.util.find_spec("cli") is None


def test_no_top_level_kernels_package_outside_repo(tmp_path, repo_root):
    code = "import importlib.util as u, zsw.kernels as k; s = u.find_spec('kernels'); print(s and s.origin, k.__name__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    origin, name = out.stdout.split()
    assert name == "zsw.kernels" and (origin == "None" or not Path(origin).resolve().is_relative_to(repo_root))


def test_python_m_zsw_in_the_checkout_does_not_shadow_hugging_faces_kernels(repo_root):
    """``python -m zsw`` from the repository root put the root on ``sys.path``: transformers' model
    imports then found the repository's ``kernels/`` and failed (``cannot import name
    'CUDAProperties' from 'kernels'``). ``zsw/__main__.py`` takes that entry off, as the ``zsw``
    command never has it."""
    code = (
        "import importlib.util as u, runpy, sys\n"
        "sys.argv = ['zsw', '--version']\n"
        "try:\n    runpy.run_module('zsw', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "s = u.find_spec('kernels'); print(s and s.origin)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True)
    origin = out.stdout.split()[-1]
    assert origin == "None" or not Path(origin).resolve().is_relative_to(repo_root), out.stdout


def _import_kernels_from_the_checkout(repo_root, *flags: str, env=None) -> subprocess.CompletedProcess:
    """``import kernels`` in a Python started in the repository root, which puts the root first on
    ``sys.path`` (as a REPL, a notebook or ``python -c`` there do)."""
    code = "import kernels; print(kernels.__name__, kernels.__file__, getattr(kernels, 'MARK', '-'))"
    return subprocess.run([sys.executable, *flags, "-c", code], cwd=repo_root, capture_output=True, text=True, env=env)


def test_top_level_kernels_from_the_checkout_is_the_one_installed_elsewhere(repo_root, tmp_path):
    """From the repository root the folder is found as a top-level ``kernels``; it hands the import
    over to the ``kernels`` the rest of ``sys.path`` holds (here a stand-in for Hugging Face's
    package, put after the root), so transformers' ``from kernels import ...`` gets that one."""
    fake = tmp_path / "site" / "kernels"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("MARK = 'elsewhere'\nfrom kernels.sub import VALUE\n")
    (fake / "sub.py").write_text("VALUE = 1\n")  # its own submodules resolve inside it
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = _import_kernels_from_the_checkout(repo_root, env=env)
    assert out.returncode == 0, out.stderr
    name, origin, mark = out.stdout.split()
    assert (name, mark) == ("kernels", "elsewhere") and Path(origin).resolve() == (fake / "__init__.py").resolve()


def test_top_level_kernels_from_the_checkout_is_absent_when_nothing_else_has_it(repo_root):
    # -S: no site-packages, so no Hugging Face `kernels` either: the import fails as if the
    # folder were not there, instead of running a second copy of zsw's kernels
    out = _import_kernels_from_the_checkout(repo_root, "-S")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == "ModuleNotFoundError: No module named 'kernels'", out.stderr


def test_hugging_faces_kernels_imports_from_the_checkout_when_installed(repo_root, tmp_path):
    """The real package where it is installed (transformers 5.25 on depends on it): the same
    module from the checkout's root as from anywhere else."""
    where = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; s = u.find_spec('kernels'); print(s and s.origin)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if where == "None":
        pytest.skip("Hugging Face's kernels is not installed (transformers < 5.25)")
    out = _import_kernels_from_the_checkout(repo_root)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.split()[1]).resolve() == Path(where).resolve()


def test_subpackages_resolve_inside_zsw():
    import zsw.bench
    import zsw.cli.main
    import zsw.kernels

    assert zsw.kernels.__name__ == "zsw.kernels"
    assert zsw.kernels.reference.__name__ == "zsw.kernels.reference"
    assert callable(zsw.kernels.point_cross_attention)  # the dispatch, not a submodule
    assert zsw.cli.main.app is not None
    assert zsw.bench.__name__ == "zsw.bench"


@pytest.mark.slow
def test_wheel_contains_remapped_packages(tmp_path, repo_root):
    # packages.find would silently drop the remapped folders; the explicit list must not
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(repo_root),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("zsw-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for required in (
        "zsw/kernels/__init__.py",
        "zsw/kernels/reference.py",
        "zsw/cli/main.py",
        "zsw/bench/__init__.py",
        "zsw/model/zeroshape_w.py",
        "zsw/assets/lvis_categories.txt",
        "zsw/assets/demo/zsw-demo-v7.safetensors",  # the default weights of `zsw reconstruct`
        "zsw/assets/demo/onnx/export.json",  # their ONNX graphs (`--backend auto` on a CPU)
        "zsw/assets/demo/onnx/pixel.onnx",
        "zsw/assets/demo/onnx/encoder.onnx",
        "zsw/assets/demo/onnx/decoder.onnx",
        "zsw/assets/demo/onnx/default_text_embedding.npy",
    ):
        assert required in names, required
    demo = [i for i in zipfile.ZipFile(wheel).infolist() if i.filename.startswith("zsw/assets/demo/")]
    assert sum(i.file_size for i in demo) <= 30 * 2**20  # the default model ships in at most 30 MB
    assert not any(n.startswith(("kernels/", "cli/", "bench/", "tests/")) for n in names)
