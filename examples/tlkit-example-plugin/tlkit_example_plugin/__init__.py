"""An example third-party tlkit plugin: one backbone family, one data set loader and one head.

tlkit finds this module through the ``tlkit`` entry point in ``pyproject.toml`` and calls the
three ``@tlkit.hookimpl`` functions below; each hands over a ``register`` callback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tlkit

from tlkit_example_plugin.backbones import STAGE_DIMS, lite0_stage_spec
from tlkit_example_plugin.datasets import labelled_csv_spec
from tlkit_example_plugin.heads import ridge_spec

__version__ = "0.1.0"
tlkit_plugin_api = 2  # the plugin API this was written for: a tlkit that speaks another says so in `tlkit plugins`


@tlkit.hookimpl
def register_backbones(register: Callable[[Any], None]) -> None:
    for stage in STAGE_DIMS:
        register(lite0_stage_spec(stage))


@tlkit.hookimpl
def register_datasets(register: Callable[[Any], None]) -> None:
    register(labelled_csv_spec())


@tlkit.hookimpl
def register_heads(register: Callable[[Any], None]) -> None:
    register(ridge_spec())
