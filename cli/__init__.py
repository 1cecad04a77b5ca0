"""zsw.cli: the ``zsw`` command line (Typer). Entry point: :data:`zsw.cli.main.app`."""
