"""``zsw env``: versions, devices and the defaults ``auto`` picks here, for bug reports."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from zsw.cli._common import cli_errors

COMMAND = dict(
    help="Print what a bug report needs: zsw's version and code hash, Python, PyTorch's build and the GPUs it "
    "sees, the packages zsw uses (and which optional ones are installed), the packaged model, and what "
    "zsw reconstruct's auto settings (device, backend, precision, test-time augmentation) resolve to here."
    "\n\nExample:\n\n  zsw env\n\n  zsw env --json > env.json",
)


@cli_errors
def env(json_out: Annotated[bool, typer.Option("--json", help="Print it as JSON.")] = False) -> None:
    from zsw.infer.environment import describe_environment

    report = describe_environment()
    typer.echo(json.dumps(report.to_dict(), indent=2) if json_out else "\n".join(report.lines()))
