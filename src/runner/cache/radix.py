"""Compressed radix tree over token sequences, indexing cached prefix states.

`RadixIndex` maps token sequences (keys) to values (typically KV-state snapshots of
that prefix) and answers "which cached entry best serves this prompt?" in time
proportional to the prompt's length, independent of how many entries are cached.
The design follows SGLang's ``radix_cache.py`` but stores only entries, not KV pages.

Structure: every edge carries a non-empty tuple of tokens; children are keyed by the
first token of their edge. Every non-root node either holds an entry or has at least
two children (path compression), so the tree has at most ``2 * len(index) + 1`` nodes.

The empty sequence is an allowed key: it lives on the root, is a prefix of every
prompt, and is therefore what `longest_prefix` returns when nothing longer matches.

Not thread-safe; callers that share an index across threads must hold a lock.
"""

from __future__ import annotations

import operator
from array import array
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar, cast

__all__ = ["RadixIndex"]

V = TypeVar("V")

# Edge comparison granularity: tuple-slice equality runs in C, so long shared edges are
# checked in chunks and only the chunk containing the mismatch is scanned in Python.
_CHUNK = 64


class _Node(Generic[V]):
    __slots__ = ("edge", "depth", "parent", "children", "has_value", "value", "rep")

    def __init__(self, edge: tuple[int, ...], depth: int, parent: _Node[V] | None) -> None:
        self.edge = edge  # tokens on the edge from `parent` to this node
        self.depth = depth  # key length at this node (sum of edge lengths from the root)
        self.parent = parent
        self.children: dict[int, _Node[V]] = {}
        # Separate flag (not a sentinel value) so that None is a storable value.
        self.has_value = False
        self.value: V | None = None
        # Shortest-key entry node in this subtree; None only for an empty root. Kept
        # up to date on insert/remove so best_match needs no subtree search.
        self.rep: _Node[V] | None = None


def _depth(node: _Node[V] | None) -> int:
    return cast(_Node[V], node).depth


def _as_key(tokens: Sequence[int]) -> tuple[int, ...]:
    # One O(n) copy up front lets every later comparison be a C-level tuple-slice compare
    # against stored edges, whatever sequence type the caller passed.
    if type(tokens) is tuple:
        return tokens
    if isinstance(tokens, (list, tuple, array, range)):
        return tuple(tokens)
    # Anything else (e.g. numpy arrays): coerce elements so stored keys are plain ints.
    return tuple(map(operator.index, tokens))


def _match_len(edge: tuple[int, ...], key: tuple[int, ...], start: int) -> int:
    """Number of leading tokens of `edge` equal to ``key[start:]``."""
    n = min(len(edge), len(key) - start)
    if n == len(edge) and key[start : start + n] == edge:
        return n  # fast path: whole edge matches
    i = 0
    while i < n:
        j = min(i + _CHUNK, n)
        if key[start + i : start + j] != edge[i:j]:
            break
        i = j
    else:
        return n
    while edge[i] == key[start + i]:  # terminates: a mismatch lies within [i, j)
        i += 1
    return i


class RadixIndex(Generic[V]):
    """Map from token sequences to values with prefix-oriented lookups.

    All lookups walk only the nodes on the query's path: O(len(tokens)). Insert is
    O(len(tokens)). Remove is O(len(tokens)) plus, for each ancestor whose cached
    shortest entry was the removed one, a scan of that ancestor's children.
    """

    __slots__ = ("_root", "_len")

    def __init__(self) -> None:
        self._root: _Node[V] = _Node((), 0, None)
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __contains__(self, tokens: object) -> bool:
        try:
            node = self._exact(_as_key(cast(Sequence[int], tokens)))
        except TypeError:  # not a sequence of ints
            return False
        return node is not None

    def __repr__(self) -> str:
        return f"RadixIndex(len={self._len})"

    def clear(self) -> None:
        """Remove all entries."""
        self._root = _Node((), 0, None)
        self._len = 0

    def get(self, tokens: Sequence[int]) -> V | None:
        """Value stored at exactly `tokens`, else None."""
        node = self._exact(_as_key(tokens))
        return None if node is None else node.value

    def insert(self, tokens: Sequence[int], value: V) -> V | None:
        """Store `value` at `tokens`; return the value it replaced, else None."""
        key = _as_key(tokens)
        node, child, m, _ = self._walk(key)
        if child is not None:
            node = self._split(child, m)
        if node.depth < len(key):
            leaf: _Node[V] = _Node(key[node.depth :], len(key), node)
            node.children[key[node.depth]] = leaf
            node = leaf
        if node.has_value:
            old, node.value = node.value, value
            return old
        node.has_value = True
        node.value = value
        self._len += 1
        # The new entry is its own subtree's shortest; ancestors adopt it until one
        # already has an entry at least as short (then all above do too).
        node.rep = node
        a = node.parent
        while a is not None and (a.rep is None or a.rep.depth > node.depth):
            a.rep = node
            a = a.parent
        return None

    def remove(self, tokens: Sequence[int]) -> V | None:
        """Remove the entry at exactly `tokens`; return its value, else None.

        Nodes left without an entry are pruned (leaves) or merged into their only
        child, so the tree stays compressed.
        """
        key = _as_key(tokens)
        gone = self._exact(key)
        if gone is None:
            return None
        old = gone.value
        gone.has_value = False
        gone.value = None
        self._len -= 1

        fix: _Node[V] | None = gone  # lowest surviving node whose subtree held `gone`
        parent = gone.parent
        if parent is not None:
            if not gone.children:
                del parent.children[gone.edge[0]]
                fix = parent
                if parent.parent is not None and not parent.has_value and len(parent.children) == 1:
                    fix = parent.parent
                    self._merge(parent)
            elif len(gone.children) == 1:
                fix = parent
                self._merge(gone)

        # Walk all the way up (no early exit): ties in key length mean an ancestor may
        # point at `gone` even where a descendant on the path picked a different entry.
        while fix is not None:
            if fix.rep is gone:
                if fix.has_value:
                    fix.rep = fix
                else:
                    fix.rep = min((c.rep for c in fix.children.values()), key=_depth, default=None)
            fix = fix.parent
        return old

    def longest_prefix(self, tokens: Sequence[int]) -> tuple[int, V] | None:
        """Entry whose key is the longest prefix of `tokens`, as ``(len(key), value)``."""
        _, _, _, last = self._walk(_as_key(tokens))
        return None if last is None else (last.depth, cast(V, last.value))

    def best_match(self, tokens: Sequence[int]) -> tuple[int, V] | None:
        """Entry sharing the longest common prefix with `tokens`, as ``(common_len, value)``.

        The entry's key may be longer than the common prefix: a state cached for S+A can
        serve S+B for its first ``common_len`` tokens because KV can be truncated after
        restore. Among entries sharing the maximal prefix, the one with the shortest key
        is returned (least restore work wasted). Returns None only when the index is
        empty; if nothing shares a token the result is ``(0, value)`` of some entry, so
        callers that want a useful hit should check ``common_len > 0``.
        """
        node, child, m, _ = self._walk(_as_key(tokens))
        # Every entry below the deepest matched point shares exactly that many tokens,
        # and everything elsewhere shares fewer; rep is the shortest such entry.
        if child is not None:
            rep, common = child.rep, node.depth + m
        else:
            rep, common = node.rep, node.depth
        return None if rep is None else (common, cast(V, rep.value))

    def items(self) -> Iterator[tuple[tuple[int, ...], V]]:
        """Yield ``(key, value)`` pairs in lexicographic key order.

        The index must not be modified while iterating.
        """
        stack: list[tuple[_Node[V], tuple[int, ...]]] = [(self._root, ())]
        while stack:  # iterative: trees can be deeper than the recursion limit
            node, prefix = stack.pop()
            if node.has_value:
                yield prefix, cast(V, node.value)
            for tok in sorted(node.children, reverse=True):  # smallest popped first
                c = node.children[tok]
                stack.append((c, prefix + c.edge))

    def block_hashes(self, block: int) -> set[int]:
        """`prefix_hashes(key, block)` of every key, as one set: a compact summary of the
        block-aligned prefixes this index can serve (a cluster router matches a prompt's
        own `prefix_hashes` against it). Shared prefixes are hashed once."""
        if block < 1:
            raise ValueError("block must be at least 1")
        found: set[int] = set()
        # (node, hash of the aligned prefix above it, tokens since that aligned boundary)
        stack: list[tuple[_Node[V], int, tuple[int, ...]]] = [(self._root, 0, ())]
        while stack:
            node, digest, rest = stack.pop()
            for child in node.children.values():
                tokens = rest + child.edge
                h, i = digest, 0
                while i + block <= len(tokens):
                    h = hash((h, tokens[i : i + block]))
                    found.add(h)
                    i += block
                stack.append((child, h, tokens[i:]))
        return found

    @staticmethod
    def prefix_hashes(tokens: Sequence[int], block: int) -> list[int]:
        """Chained hashes of `tokens`' first 1, 2, ... whole blocks of `block` tokens: entry
        k depends on every token before the end of block k. Deterministic across processes
        (int and tuple hashing do not use the string hash seed)."""
        if block < 1:
            raise ValueError("block must be at least 1")
        key = _as_key(tokens)
        out: list[int] = []
        h = 0
        for i in range(0, len(key) - block + 1, block):
            h = hash((h, key[i : i + block]))
            out.append(h)
        return out

    # -- internals -------------------------------------------------------------------

    def _walk(self, key: tuple[int, ...]) -> tuple[_Node[V], _Node[V] | None, int, _Node[V] | None]:
        """Follow `key` from the root as far as it matches.

        Returns ``(node, child, m, last)``: `node` is the deepest node whose whole path
        matches; if the match continues ``0 < m < len(child.edge)`` tokens into an edge,
        `child` is that edge's node (else None, m == 0); `last` is the deepest entry
        node on the fully matched path (for longest_prefix).
        """
        node = self._root
        last = node if node.has_value else None
        i, n = 0, len(key)
        while i < n:
            child = node.children.get(key[i])
            if child is None:
                break
            m = _match_len(child.edge, key, i)
            if m < len(child.edge):
                return node, child, m, last
            node = child
            i += m
            if node.has_value:
                last = node
        return node, None, 0, last

    def _exact(self, key: tuple[int, ...]) -> _Node[V] | None:
        node, child, _, _ = self._walk(key)
        if child is None and node.depth == len(key) and node.has_value:
            return node
        return None

    def _split(self, child: _Node[V], m: int) -> _Node[V]:
        """Cut `child`'s edge after m tokens; return the new (entry-less) middle node."""
        parent = cast(_Node[V], child.parent)
        mid: _Node[V] = _Node(child.edge[:m], parent.depth + m, parent)
        parent.children[child.edge[0]] = mid
        child.edge = child.edge[m:]
        child.parent = mid
        mid.children[child.edge[0]] = child
        mid.rep = child.rep  # same subtree entries as child
        return mid

    def _merge(self, node: _Node[V]) -> None:
        """Splice out entry-less non-root `node`, joining its edge onto its only child."""
        parent = cast(_Node[V], node.parent)
        (child,) = node.children.values()
        child.edge = node.edge + child.edge
        child.parent = parent
        parent.children[node.edge[0]] = child
        # child.depth and child.rep are unchanged; no rep points at `node` (no entry).
