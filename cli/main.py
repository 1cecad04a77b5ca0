"""The ``zsw`` command: one Typer app, one module per command (group)."""

from __future__ import annotations

import gc
import sys

import typer

from zsw.cli import bench, convert, env, evaluate, export, reconstruct, synthesize, train

app = typer.Typer(
    name="zsw",
    help="ZeroShape-W: a 3D mesh from one photo of an object in the wild.\n\n"
    "Example: zsw reconstruct photo.jpg -o out/",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

app.command("reconstruct", **reconstruct.COMMAND)(reconstruct.reconstruct)
app.command("train", **train.COMMAND)(train.train)
app.add_typer(synthesize.app, name="synthesize")
app.command("eval", **evaluate.COMMAND)(evaluate.evaluate)
app.add_typer(bench.app, name="bench")
app.command("export", **export.COMMAND)(export.export)
app.add_typer(convert.app, name="convert")
app.command("app", **reconstruct.APP_COMMAND)(reconstruct.app)
app.command("env", **env.COMMAND)(env.env)


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the zsw version and exit.")) -> None:
    if version:
        from zsw import __version__

        typer.echo(__version__)
        raise typer.Exit()


def main() -> None:
    """The ``zsw`` console script (and ``python -m zsw``): the app, then a quick shutdown.

    Freezing the heap on the way out spares the interpreter's final garbage collections, which
    walk every object torch, scipy and trimesh created at import (about 0.4 s of a 4.7 s
    ``zsw reconstruct`` on a 2-core CPU; ``bench/results/cpu-reconstruct-whole-process.md``).
    Nothing is lost: atexit handlers and the flushing of stdout and stderr still run, and zsw's
    files are complete and renamed into place before a command returns.
    """
    try:
        sys.exit(_run())
    finally:
        gc.freeze()


def _run() -> int:
    """The app's exit code. A usage error (an option out of range, a missing argument, an unknown
    command) is one line, like zsw's own errors, instead of click's usage block in a box; running
    a group without a command still shows its help."""
    try:
        code = app(prog_name="zsw", standalone_mode=False)
    except typer.Abort:  # Ctrl-C at a prompt, or EOF
        typer.echo("aborted", err=True)
        return 1
    except Exception as e:
        # click's exceptions, whether typer vendors click (>= 0.20) or uses the package: by name
        kinds = {c.__name__ for c in type(e).__mro__}
        if "ClickException" not in kinds:
            raise
        if "NoArgsIsHelpError" in kinds:
            from typer import rich_utils

            rich_utils.rich_format_error(e)
        else:
            ctx = getattr(e, "ctx", None)
            where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            typer.echo(f"error: {e.format_message()}{where}", err=True)
        return e.exit_code
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    main()
