"""What the CLI commands share: options, one-line error reporting, the rich progress reporter.

Command modules import only typer and the standard library at top level; torch and friends are
imported inside command bodies so that ``zsw --help`` stays instant.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["cli_errors", "error", "RichReporter", "Weights", "Device", "Precision", "Resolution", "Extraction",
           "Threshold", "Backend", "Engine", "BatchSize", "Reframe", "MinPart", "Smooth", "Faces",
           "Tta", "Carve"]  # fmt: skip

# Options several commands share, declared once (their values are checked by the job's settings).
Weights = Annotated[
    str | None,
    typer.Option(help="Checkpoint (.safetensors). Default: the packaged demo model. 'random:PRESET' = untrained."),
]
Device = Annotated[str | None, typer.Option(help="cuda, cuda:1, cpu ... (default: CUDA if available).")]
Precision = Annotated[str, typer.Option(help="auto (CUDA: bf16, CPU: fp32), fp32, bf16 or fp16 (PyTorch backend).")]
Background = Annotated[
    str,
    typer.Option(
        help="Correct the predicted visible mask with the photo's own background where it shows one "
        "(RGBA transparency, a border of one plain or smoothly graded colour), and on a busy background "
        "cut it again by the object's and its surroundings' colours where the cut agrees with it: auto or never."
    ),
]
Cutout = Annotated[
    str,
    typer.Option(
        help="Remove the photo's background first and go on as with an RGBA file: none, grabcut (built in: what "
        "stands out from the photo's border by its colours), rembg (rembg's default model) or rembg:<model> (u2net, "
        'isnet-general-use, birefnet-general, ...; rembg needs pip install "zsw\\[cutout]").'
    ),
]
Reframe = Annotated[
    str,
    typer.Option(
        help="Cut the model's input around the object, framed as in training: auto (when the photo shows it "
        "small or off centre; a photo where the first look finds none is searched twice closer), always or never."
    ),
]
Tta = Annotated[
    str,
    typer.Option(
        help="Test-time augmentation: flip (average the occupancy with that of the photo mirrored left to right; "
        "twice the grid decoding), flip-pixel (average only the pixel model's outputs with the mirrored photo's), "
        "none, or auto (flip on CUDA, flip-pixel on the CPU)."
    ),
]
Carve = Annotated[
    bool,
    typer.Option(
        help="No surface where the photo shows background: bound the occupancy of points whose projection "
        "neither mask claims (--no-carve: the decoder's field as it is)."
    ),
]
Resolution = Annotated[int, typer.Option(min=8, max=1024, help="Grid cells per axis (N+1 samples).")]
Extraction = Annotated[str, typer.Option(help="fast (coarse to fine) or dense (every grid point).")]
Threshold = Annotated[float, typer.Option(min=0.001, max=0.999, help="Occupancy probability of the surface.")]
Backend = Annotated[
    str,
    typer.Option(
        help="auto (the packaged model on a CPU: its ONNX graphs on ONNX Runtime plus PyTorch's decoder; "
        "otherwise torch), torch, onnxruntime (without --engine: the packaged model's graphs) or tensorrt."
    ),
]
Engine = Annotated[Path | None, typer.Option(help="Folder written by `zsw export` (onnxruntime/tensorrt).")]
BatchSize = Annotated[int, typer.Option(min=1, help="Images per model call.")]
MinPart = Annotated[
    float,
    typer.Option(min=0.0, max=1.0, help="Drop disconnected mesh parts under this fraction of the largest part's area."),
]
Smooth = Annotated[
    int,
    typer.Option(
        min=0,
        max=1000,
        help="Passes of Taubin smoothing (removes the grid's terraces and the hidden side's ridges; "
        "keeps the mesh closed; 0: the marching-cubes surface).",
    ),
]
Color = Annotated[str, typer.Option(help="Vertex colours: photo (from the input photo) or none.")]
Texture = Annotated[
    int,
    typer.Option(
        min=0,
        max=8192,
        help="Bake the photo into a TEXTURE x TEXTURE atlas for mesh.glb, mesh.usdz and mesh.obj (+ mesh.mtl, "
        'material_0.png); 0: vertex colours only. Meant with --faces; needs pip install "zsw\\[texture]".',
    ),
]
Faces = Annotated[
    int | None,
    typer.Option(min=32, help="Decimate each mesh to at most this many triangles (quadric edge collapse)."),
]


def error(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr and return the Exit to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _check_environment() -> None:
    """Settings read from the environment, checked before any work: a typo there is a usage error
    like a typo in an option, not a traceback from the first kernel call."""
    if os.environ.get("ZSW_KERNELS"):
        from zsw.errors import OptionError
        from zsw.kernels import requested_impl

        try:
            requested_impl()
        except ValueError as e:
            raise OptionError(str(e)) from None


def _one_line(e: Exception) -> str:
    """The error's message; for one raised in a DataLoader worker, which PyTorch re-raises with the
    worker's whole traceback as its message, the original message (its last line) alone."""
    text = str(e)
    if "\nOriginal Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    prefix = f"{type(e).__module__}.{type(e).__name__}: "
    return last[len(prefix) :] if last.startswith(prefix) else last


def cli_errors(fn: F) -> F:
    """Turn user-caused errors (:class:`zsw.errors.ZswError`) into one line on stderr and exit 1
    (2 for :class:`~zsw.errors.OptionError`, an invalid option value); an OSError from the
    environment (full disk, read-only folder) into its message and file name; Ctrl-C into exit 130,
    a termination request a job turned into :class:`~zsw.errors.Terminated` into 143.
    Anything else is a bug and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from zsw.errors import OptionError, ZswError

        try:
            _check_environment()
            return fn(*args, **kwargs)
        except OptionError as e:  # a usage error, like typer's own: exit 2
            raise error(str(e), code=2) from None
        except ZswError as e:
            raise error(_one_line(e)) from None
        except OSError as e:  # the environment (full disk, read-only folder, ...): one line
            where = f": {e.filename}" if e.filename else ""
            raise error(f"{e.strerror or e}{where}") from None
        except KeyboardInterrupt as e:
            from zsw.errors import Terminated

            stopped, code = ("terminated", 143) if isinstance(e, Terminated) else ("interrupted", 130)
            if os.environ.get("RANK", "0") == "0":  # a torchrun job says it once, not once per rank
                typer.secho(stopped, fg=typer.colors.YELLOW, err=True)
            sys.stderr.flush()
            raise typer.Exit(code) from None

    return wrapper  # type: ignore[return-value]


class RichReporter:
    """The command line's :class:`zsw.report.Reporter`: messages and a progress bar on stderr.

    ``min_total``: tasks shorter than this show no bar (one image needs none)."""

    def __init__(self, min_total: int = 2):
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.min_total = min_total

    def _line(self, label: str, style: str, text: str) -> None:
        from rich.text import Text

        self.console.print(Text.assemble((label, style), text) if label else Text(text))

    def info(self, text: str) -> None:
        self._line("", "", text)

    def warning(self, text: str) -> None:
        self._line("WARNING: ", "bold yellow", text)

    def error(self, text: str) -> None:
        self._line("error: ", "red", text)

    def summary(self, text: str, ok: bool) -> int:
        """The last line of a command: green when everything worked, red otherwise; returns the
        command's exit status (1: something failed)."""
        self.console.print(text, style="green" if ok else "red", markup=False)
        return 0 if ok else 1

    def progress(self, description: str, total: int | None):
        import contextlib

        from rich import progress as rp

        @contextlib.contextmanager
        def run():
            bar = rp.Progress(rp.SpinnerColumn(), rp.TextColumn("{task.description}"), rp.BarColumn(),
                              rp.MofNCompleteColumn(), rp.TimeElapsedColumn(), console=self.console, transient=True,
                              disable=total is not None and total < self.min_total)  # fmt: skip
            with bar:
                task = bar.add_task(description, total=total)

                def advance(n: int = 1, *, note=None, total=None, completed=None) -> None:
                    fields = dict(description=note, total=total, completed=completed)
                    bar.update(task, advance=n, **{k: v for k, v in fields.items() if v is not None})

                yield advance

        return run()
