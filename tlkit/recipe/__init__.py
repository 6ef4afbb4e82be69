"""Recipes: YAML read safely, ``--set`` overrides applied, every key validated before any image is opened."""
