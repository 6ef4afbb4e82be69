"""Read YAML the way a recipe needs it: safe, bounded, unambiguous.

``yaml.safe_load`` runs no code, but three things still go wrong with it on hostile or careless
input, and each is refused here while the document is *composed*, before anything walks the data:

- **Alias bombs.** Anchors and aliases let 1.7 KB of text stand for 10**9 nodes ("billion laughs").
  PyYAML builds such a document quickly (aliases share objects), and the hang comes later, in the
  first code that walks it. The composed node graph is measured as the tree it expands to, and a
  document over :data:`MAX_NODES` nodes, or one whose alias contains itself, is refused.
- **Duplicate keys.** YAML says keys are unique; PyYAML keeps the last silently, so a recipe with two
  ``lr:`` lines uses one of them without a word. A duplicate is an error naming its line.
- **Scientific notation.** YAML 1.1 reads ``1e3`` and ``1e-3`` as strings (a float needs a dot);
  YAML 1.2 and every person read numbers. They are floats here, so ``epochs: 1e3`` means 1000.

Errors are :class:`yaml.MarkedYAMLError` subclasses carrying the position, so callers that already
turn YAML errors into one line (``tlkit.recipe.loader.read_yaml``) report these the same way.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_NODES = 100_000  # a recipe has a few dozen nodes; a bomb expands to billions
_FLOAT_TAG = "tag:yaml.org,2002:float"
# YAML 1.2 core-schema numbers with an exponent and no dot (those with a dot are floats already).
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")


class YAMLLimitError(yaml.MarkedYAMLError):
    """A document that is too large once its aliases are expanded, or that contains itself."""


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping that gives the same key twice."""


def expanded_size(root: Node, limit: int = MAX_NODES) -> int:
    """The number of nodes ``root`` stands for with every alias expanded, counted up to ``limit + 1``.

    Shared nodes are measured once and their size reused, so the count costs time linear in the
    composed graph, however large the expansion. Raises :class:`YAMLLimitError` for a node that
    contains itself (``a: &a [*a]``), which would expand without end.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    # Iterative post-order walk: a deep document must not exhaust Python's stack here.
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            active.discard(key)
            sizes[key] = min(limit + 1, 1 + sum(sizes[id(c)] for c in _children(node)))
            continue
        if key in sizes:
            continue
        if key in active:
            raise YAMLLimitError(None, None, "an alias refers to a node that contains it, so it would expand without end", node.start_mark)
        active.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


class BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with an alias-expansion budget, unique keys and ``1e3`` as a number."""

    max_nodes = MAX_NODES

    def get_single_node(self) -> Node | None:  # type: ignore[override]
        node = super().get_single_node()
        if node is not None:
            size = expanded_size(node, self.max_nodes)
            if size > self.max_nodes:
                raise YAMLLimitError(
                    None, None, f"the document expands to more than {self.max_nodes} nodes through its aliases (an alias bomb?)", node.start_mark
                )
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:  # type: ignore[override]
        seen: dict[Any, Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # complex keys are refused later (keys must be strings); merges may repeat keys by design
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    first = seen[key].start_mark.line + 1
                    raise DuplicateKeyError(
                        None, None, f"duplicate key {key!r} (first given on line {first}; a key may appear once)", key_node.start_mark
                    )
                seen[key] = key_node
            except TypeError:
                continue  # an unhashable key: SafeConstructor reports it
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


BoundedSafeLoader.add_implicit_resolver(_FLOAT_TAG, _EXPONENT_FLOAT, list("-+0123456789"))


def safe_load(text: str | bytes, *, max_nodes: int = MAX_NODES) -> Any:
    """Like ``yaml.safe_load`` (no code, plain data only), refusing alias bombs and duplicate keys."""
    loader = BoundedSafeLoader(text)
    loader.max_nodes = max_nodes
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
