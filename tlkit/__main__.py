"""``python -m tlkit`` is the ``tlkit`` command."""

from tlkit.cli.app import main

main()
