"""``python -m tlkit`` is the ``tlkit`` command."""

from tlkit.cli import main

main()
