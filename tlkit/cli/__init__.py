"""The ``tlkit`` command: the only module tree that prints. Torch-free at import, so ``tlkit --help`` is instant."""
