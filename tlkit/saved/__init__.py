"""A finished run directory, written and read back: the model it holds, its exports, its feature export, its splits."""
