"""Nearest neighbours by cosine similarity, a block of rows at a time: no N x N matrix is ever held.

The audit's finders ask "which images look most alike?" of up to 100k cached feature vectors. The
full similarity matrix of 100k images is 40 GB; this module multiplies one block of query rows by all
base rows (a ``block x N`` matrix, sized so it stays near :data:`BLOCK_ENTRIES` floats), keeps each
row's ``k`` best and drops the block. Memory is O(block x N + N x k); time is one matrix product,
which BLAS runs at full speed. Ties are broken by the lower index, so the result is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

BLOCK_ENTRIES = 1 << 23  # floats in one block of similarities (32 MiB), whatever N is


def normalised(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); an all-zero row stays zero (similar to nothing)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def block_rows(n_base: int, entries: int = BLOCK_ENTRIES) -> int:
    """How many query rows one block holds so that ``rows x n_base`` stays near ``entries``."""
    return max(1, min(4096, entries // max(1, n_base)))


def _blocks(n: int, rows: int) -> Iterator[slice]:
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


def _best_of_block(distances: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` smallest negated similarities, best first, the lower index first among equals."""
    if k < distances.shape[1]:
        part = np.argpartition(distances, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(distances.shape[1]), distances.shape).copy()
    values = np.take_along_axis(distances, part, axis=1)
    order = np.lexsort((part, values), axis=1)
    return np.take_along_axis(part, order, axis=1), -np.take_along_axis(values, order, axis=1)


def top_k(queries: np.ndarray, base: np.ndarray, k: int, *, same: bool = False, entries: int = BLOCK_ENTRIES) -> tuple[np.ndarray, np.ndarray]:
    """For each (unit-length) query row, the indices and cosines of its ``k`` nearest base rows.

    ``same``: ``queries`` is ``base`` (a split against itself), so a row is never its own neighbour.
    Returns ``(index, cosine)``, both ``(len(queries), min(k, available))``, best first.
    """
    n_base = base.shape[0]
    k = max(0, min(k, n_base - 1 if same else n_base))
    index = np.zeros((queries.shape[0], k), dtype=np.int64)
    cosine = np.zeros((queries.shape[0], k), dtype=np.float32)
    if k == 0:
        return index, cosine
    for rows in _blocks(queries.shape[0], block_rows(n_base, entries)):
        distances = queries[rows] @ base.T
        np.negative(distances, out=distances)  # in place: one block-sized array, not two
        if same:
            distances[np.arange(distances.shape[0]), np.arange(rows.start, rows.stop)] = np.inf
        index[rows], cosine[rows] = _best_of_block(distances, k)
    return index, cosine
