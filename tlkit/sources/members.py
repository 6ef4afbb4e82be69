"""Images that are not files of their own, streamed from wherever they sit: tar shards or Arrow/Parquet tables.

A :class:`~tlkit.contract.specs.ShardMember`'s ``shard`` says which: a ``.arrow`` or ``.parquet`` file is a
table (:mod:`tlkit.sources.image_tables`), anything else a tar shard (:mod:`tlkit.sources.shards`). Both
yield :class:`~tlkit.sources.shards.ShardGroup` records, so extraction decodes them the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from tlkit.sources import image_tables, shards
from tlkit.sources.shards import ShardGroup


def stream(urls: Sequence[str], *, wanted: Callable[[str, str], bool] | None = None) -> Iterator[ShardGroup]:
    """The wanted members of ``urls`` in order, each container read front to back by its own reader."""
    for url in urls:
        reader = image_tables.stream if image_tables.is_table(url) else shards.stream
        yield from reader([url], wanted=wanted)
