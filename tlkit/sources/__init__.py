"""Bytes from strangers, read safely: image folders, archives, shards, weights files, pretrained downloads."""
