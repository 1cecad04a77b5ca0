"""``python -m zsw`` is the same as the ``zsw`` command."""

from zsw.cli.main import main

main()
