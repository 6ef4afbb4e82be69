"""Every composition of the stages: one process, torchrun ranks, ``tlkit compare``; the run directory's write stage."""
