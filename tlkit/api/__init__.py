"""The Python front of tlkit: ``tlkit.fit``, ``tlkit.compare`` and ``tlkit.make_recipe`` (re-exported at the top).

It sits beside the CLI, above the engine: both parse what the user gave, call the same
:mod:`tlkit.run` functions and present the answer, the CLI as text, this package as objects
(:mod:`tlkit.api.results`) that render in Jupyter. Nothing here trains, extracts or validates on
its own.
"""
