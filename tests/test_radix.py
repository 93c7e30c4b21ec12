"""Tests for runner.cache.radix.RadixIndex."""

from __future__ import annotations

import random
from array import array

import pytest

from runner.cache.radix import RadixIndex, _Node

# -- helpers -----------------------------------------------------------------------------


def _nodes(index: RadixIndex) -> list[_Node]:
    out, stack = [], [index._root]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(node.children.values())
    return out


def check_invariants(index: RadixIndex) -> None:
    """Assert the structural invariants the lookups rely on."""
    root = index._root
    assert root.edge == () and root.depth == 0 and root.parent is None
    entries = 0
    # Post-order over (node, min entry depth in subtree) to verify `rep`.
    stack: list[tuple[_Node, bool]] = [(root, False)]
    min_depth: dict[int, int | None] = {}
    while stack:
        node, done = stack.pop()
        if not done:
            stack.append((node, True))
            for tok, c in node.children.items():
                assert c.parent is node
                assert len(c.edge) > 0, "non-root edges are non-empty"
                assert c.edge[0] == tok, "children keyed by first edge token"
                assert c.depth == node.depth + len(c.edge)
                stack.append((c, False))
            continue
        if node is not root:
            assert node.has_value or len(node.children) >= 2, "path compression"
        if node.has_value:
            entries += 1
            best = node.depth
        else:
            assert node.value is None
            depths = [min_depth[id(c)] for c in node.children.values()]
            best = min((d for d in depths if d is not None), default=None)
        min_depth[id(node)] = best
        if best is None:
            assert node.rep is None
        else:
            assert node.rep is not None and node.rep.has_value
            assert node.rep.depth == best, "rep is a shortest entry in the subtree"
            # rep must really be inside this subtree
            a = node.rep
            while a is not None and a is not node:
                a = a.parent
            assert a is node
    assert entries == len(index)


def lcp(a, b) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# -- basics ------------------------------------------------------------------------------


def test_empty_index():
    idx: RadixIndex[str] = RadixIndex()
    assert len(idx) == 0
    assert not idx
    assert idx.get([1, 2]) is None
    assert idx.get([]) is None
    assert idx.remove([1]) is None
    assert idx.longest_prefix([1, 2, 3]) is None
    assert idx.best_match([1, 2, 3]) is None
    assert idx.best_match([]) is None
    assert list(idx.items()) == []
    assert [1] not in idx
    assert [] not in idx
    check_invariants(idx)


def test_insert_get_replace():
    idx: RadixIndex[str] = RadixIndex()
    assert idx.insert([1, 2, 3], "a") is None
    assert len(idx) == 1
    assert idx.get([1, 2, 3]) == "a"
    assert idx.get((1, 2, 3)) == "a"
    assert idx.get([1, 2]) is None
    assert idx.get([1, 2, 3, 4]) is None
    assert [1, 2, 3] in idx
    assert [1, 2] not in idx
    assert idx.insert([1, 2, 3], "b") == "a"  # replaced
    assert len(idx) == 1
    assert idx.get([1, 2, 3]) == "b"
    check_invariants(idx)


def test_none_is_a_storable_value():
    idx: RadixIndex[None] = RadixIndex()
    assert idx.insert([5], None) is None
    assert len(idx) == 1
    assert [5] in idx
    assert idx.longest_prefix([5, 6]) == (1, None)
    assert idx.best_match([7]) == (0, None)
    assert idx.remove([5]) is None
    assert len(idx) == 0 and [5] not in idx
    check_invariants(idx)


def test_empty_key_lives_on_root():
    idx: RadixIndex[str] = RadixIndex()
    assert idx.insert([], "root") is None
    assert len(idx) == 1 and [] in idx and idx.get(()) == "root"
    assert idx.longest_prefix([9, 9]) == (0, "root")
    assert idx.longest_prefix([]) == (0, "root")
    assert idx.best_match([9]) == (0, "root")
    idx.insert([1, 2], "x")
    assert idx.longest_prefix([1, 2, 3]) == (2, "x")
    assert idx.longest_prefix([1, 3]) == (0, "root")
    # Shortest key wins a tie at the root: the empty key itself.
    assert idx.best_match([4]) == (0, "root")
    assert idx.best_match([]) == (0, "root")
    assert list(idx.items()) == [((), "root"), ((1, 2), "x")]
    check_invariants(idx)
    assert idx.remove([]) == "root"
    assert [] not in idx and len(idx) == 1
    assert idx.best_match([4]) == (0, "x")
    assert idx.longest_prefix([4]) is None
    check_invariants(idx)


def test_input_sequence_types():
    idx: RadixIndex[int] = RadixIndex()
    idx.insert(array("i", [1, 2, 3]), 1)
    idx.insert(range(10, 14), 2)
    assert idx.get([1, 2, 3]) == 1
    assert idx.get((1, 2, 3)) == 1
    assert idx.get(array("i", [10, 11, 12, 13])) == 2
    assert idx.longest_prefix(range(10, 20)) == (4, 2)
    assert all(type(t) is int for k, _ in idx.items() for t in k)
    assert "abc" not in idx
    assert None not in idx
    assert 5 not in idx


def test_numpy_input():
    np = pytest.importorskip("numpy")
    idx: RadixIndex[str] = RadixIndex()
    idx.insert(np.array([1, 2, 3], dtype=np.int32), "a")
    assert idx.get([1, 2, 3]) == "a"
    assert idx.best_match(np.array([1, 2, 7])) == (2, "a")
    ((key, _),) = idx.items()
    assert key == (1, 2, 3) and all(type(t) is int for t in key)


# -- structure: splits and merges --------------------------------------------------------


def test_split_on_divergence_and_merge_back():
    idx: RadixIndex[str] = RadixIndex()
    idx.insert([1, 2, 3, 4], "a")
    root = idx._root
    assert list(root.children) == [1] and root.children[1].edge == (1, 2, 3, 4)

    idx.insert([1, 2, 5], "b")  # diverges mid-edge -> split
    mid = root.children[1]
    assert mid.edge == (1, 2) and not mid.has_value
    assert {c.edge for c in mid.children.values()} == {(3, 4), (5,)}
    check_invariants(idx)

    assert idx.remove([1, 2, 5]) == "b"  # mid left with one child -> merged
    leaf = root.children[1]
    assert leaf.edge == (1, 2, 3, 4) and leaf.has_value and leaf.parent is root
    assert leaf.children == {}
    check_invariants(idx)


def test_split_at_exact_key_end():
    idx: RadixIndex[str] = RadixIndex()
    idx.insert([1, 2, 3, 4], "long")
    idx.insert([1, 2], "short")  # ends mid-edge -> split, entry on the middle node
    mid = idx._root.children[1]
    assert mid.edge == (1, 2) and mid.has_value and mid.value == "short"
    assert list(mid.children.values())[0].edge == (3, 4)
    check_invariants(idx)

    assert idx.remove([1, 2]) == "short"  # entry-less node with one child -> merged
    assert idx._root.children[1].edge == (1, 2, 3, 4)
    check_invariants(idx)


def test_extension_below_leaf():
    idx: RadixIndex[str] = RadixIndex()
    idx.insert([1, 2], "a")
    idx.insert([1, 2, 3, 4], "b")
    node = idx._root.children[1]
    assert node.edge == (1, 2) and node.value == "a"
    assert node.children[3].edge == (3, 4)
    check_invariants(idx)


def test_remove_leaf_prunes_and_merges_parent():
    idx: RadixIndex[str] = RadixIndex()
    for key, v in [([1, 2, 3], "a"), ([1, 2, 4], "b"), ([1, 2, 5, 6], "c")]:
        idx.insert(key, v)
    assert idx.remove([1, 2, 3]) == "a"  # mid still has two children: stays
    assert idx._root.children[1].edge == (1, 2)
    assert idx.remove([1, 2, 4]) == "b"  # mid now has one child: merged into it
    only = idx._root.children[1]
    assert only.edge == (1, 2, 5, 6) and only.value == "c"
    assert len(_nodes(idx)) == 2
    check_invariants(idx)


def test_remove_internal_entry_with_two_children_keeps_node():
    idx: RadixIndex[str] = RadixIndex()
    idx.insert([1], "p")
    idx.insert([1, 2], "a")
    idx.insert([1, 3], "b")
    assert idx.remove([1]) == "p"
    node = idx._root.children[1]
    assert not node.has_value and len(node.children) == 2
    assert idx.best_match([1, 9]) is not None and idx.best_match([1, 9])[0] == 1
    check_invariants(idx)


def test_remove_missing_keys_is_noop():
    idx: RadixIndex[str] = RadixIndex()
    idx.insert([1, 2, 3, 4], "a")
    idx.insert([1, 2, 5], "b")
    before = [(n.edge, n.has_value) for n in _nodes(idx)]
    assert idx.remove([1, 2]) is None  # internal node without an entry
    assert idx.remove([1, 2, 3]) is None  # ends mid-edge
    assert idx.remove([1, 2, 3, 4, 5]) is None  # runs past a leaf
    assert idx.remove([7]) is None  # no such branch
    assert idx.remove([]) is None  # empty key not stored
    assert [(n.edge, n.has_value) for n in _nodes(idx)] == before
    assert len(idx) == 2
    check_invariants(idx)


def test_remove_everything_leaves_empty_tree():
    rng = random.Random(7)
    idx: RadixIndex[int] = RadixIndex()
    keys = {tuple(rng.randrange(4) for _ in range(rng.randrange(0, 9))) for _ in range(300)}
    for i, k in enumerate(keys):
        idx.insert(k, i)
    check_invariants(idx)
    order = list(keys)
    rng.shuffle(order)
    for k in order:
        assert idx.remove(k) is not None
        check_invariants(idx)
    assert len(idx) == 0
    assert idx._root.children == {} and idx._root.rep is None and not idx._root.has_value
    assert list(idx.items()) == []
    assert idx.best_match([1, 2]) is None


def test_clear():
    idx: RadixIndex[int] = RadixIndex()
    idx.insert([1, 2], 1)
    idx.insert([], 2)
    idx.clear()
    assert len(idx) == 0 and list(idx.items()) == [] and idx.longest_prefix([1, 2]) is None
    check_invariants(idx)


# -- lookups -----------------------------------------------------------------------------


def test_longest_prefix():
    idx: RadixIndex[str] = RadixIndex()
    idx.insert([1, 2], "a")
    idx.insert([1, 2, 3, 4], "b")
    idx.insert([1, 2, 3, 4, 5, 6], "c")
    assert idx.longest_prefix([1]) is None
    assert idx.longest_prefix([1, 2]) == (2, "a")
    assert idx.longest_prefix([1, 2, 3]) == (2, "a")  # [1,2,3,4] is not a prefix
    assert idx.longest_prefix([1, 2, 3, 4]) == (4, "b")
    assert idx.longest_prefix([1, 2, 3, 4, 5]) == (4, "b")
    assert idx.longest_prefix([1, 2, 3, 4, 5, 6, 7, 8]) == (6, "c")
    assert idx.longest_prefix([1, 2, 3, 9]) == (2, "a")
    assert idx.longest_prefix([2]) is None
    assert idx.longest_prefix([]) is None


def test_best_match_longer_entry_serves_shorter_prompt():
    idx: RadixIndex[str] = RadixIndex()
    idx.insert([1, 2, 3, 4], "s+a")
    assert idx.best_match([1, 2, 9, 9]) == (2, "s+a")  # diverges mid-edge
    assert idx.best_match([1, 2]) == (2, "s+a")  # prompt ends mid-edge
    assert idx.best_match([1, 2, 3, 4, 5]) == (4, "s+a")  # entry is a full prefix
    assert idx.best_match([1, 2, 3, 4]) == (4, "s+a")
    assert idx.best_match([7]) == (0, "s+a")  # nothing shared: (0, some entry)
    assert idx.longest_prefix([1, 2, 9, 9]) is None


def test_best_match_prefers_shortest_key_and_repairs_after_remove():
    idx: RadixIndex[str] = RadixIndex()
    idx.insert([1, 2, 3, 4, 5, 6], "long")
    idx.insert([1, 2, 3, 7], "short")
    idx.insert([1, 2, 8, 8, 8], "mid")
    assert idx.best_match([1, 2, 9]) == (2, "short")
    assert idx.best_match([1, 2, 3, 9]) == (3, "short")
    assert idx.best_match([1, 2, 3, 4, 9]) == (4, "long")
    assert idx.remove([1, 2, 3, 7]) == "short"
    assert idx.best_match([1, 2, 9]) == (2, "mid")
    assert idx.best_match([1, 2, 3, 9]) == (3, "long")
    check_invariants(idx)
    assert idx.remove([1, 2, 8, 8, 8]) == "mid"
    assert idx.best_match([1, 2, 9]) == (2, "long")
    check_invariants(idx)


def test_best_match_at_node_with_entry_returns_it():
    idx: RadixIndex[str] = RadixIndex()
    idx.insert([1, 2], "exact")
    idx.insert([1, 2, 3], "below")
    assert idx.best_match([1, 2, 9]) == (2, "exact")
    assert idx.best_match([1, 2]) == (2, "exact")
    assert idx.best_match([1, 2, 3, 9]) == (3, "below")


def test_long_edges_chunked_comparison():
    # Edges longer than the comparison chunk, with mismatches at various offsets.
    base = list(range(1000))
    idx: RadixIndex[str] = RadixIndex()
    idx.insert(base, "base")
    for cut in (1, 63, 64, 65, 127, 128, 500, 999):
        q = base[:cut] + [-1]
        assert idx.best_match(q) == (cut, "base")
        assert idx.longest_prefix(q) is None
    idx.insert(base[:700] + [-5, -6], "fork")
    assert idx.best_match(base[:700] + [-5]) == (701, "fork")
    assert idx.best_match(base[:650]) == (650, "fork")  # shorter key preferred
    assert idx.longest_prefix(base + [1, 2]) == (1000, "base")
    check_invariants(idx)


def test_items_lexicographic_order():
    idx: RadixIndex[int] = RadixIndex()
    keys = [(3,), (1, 2, 3), (1, 2), (), (1, 5), (2, 0, 0), (1, 2, 3, 4)]
    for i, k in enumerate(keys):
        idx.insert(list(k), i)
    got = list(idx.items())
    assert [k for k, _ in got] == sorted(keys)
    assert dict(got) == {k: i for i, k in enumerate(keys)}


# -- randomized property test against a brute-force reference ----------------------------


class BruteForce:
    def __init__(self) -> None:
        self.d: dict[tuple[int, ...], int] = {}

    def longest_prefix(self, q: tuple[int, ...]) -> tuple[int, int] | None:
        best = None
        for k, v in self.d.items():
            if len(k) <= len(q) and q[: len(k)] == k and (best is None or len(k) > best[0]):
                best = (len(k), v)
        return best

    def best_common(self, q: tuple[int, ...]) -> int | None:
        return max((lcp(k, q) for k in self.d), default=None)


@pytest.mark.parametrize("seed", range(8))
def test_random_against_brute_force(seed):
    rng = random.Random(seed)
    alphabet = rng.choice([2, 3, 4])
    max_len = rng.choice([6, 10, 16])

    def rand_key() -> tuple[int, ...]:
        return tuple(rng.randrange(alphabet) for _ in range(rng.randrange(0, max_len + 1)))

    idx: RadixIndex[int] = RadixIndex()
    ref = BruteForce()
    key_of: dict[int, tuple[int, ...]] = {}
    next_val = 0

    for step in range(1500):
        op = rng.random()
        if op < 0.45:
            k = rand_key()
            next_val += 1
            assert idx.insert(list(k), next_val) == ref.d.get(k)
            ref.d[k] = next_val
            key_of[next_val] = k
        elif op < 0.8:
            # Bias removals towards keys that exist.
            k = rng.choice(list(ref.d)) if ref.d and rng.random() < 0.7 else rand_key()
            assert idx.remove(k) == ref.d.pop(k, None)
        else:
            k = rand_key()
            assert idx.get(k) == ref.d.get(k)
            assert (k in idx) == (k in ref.d)
        assert len(idx) == len(ref.d)

        for _ in range(3):
            q = rand_key()
            assert idx.longest_prefix(q) == ref.longest_prefix(q)
            got = idx.best_match(q)
            want = ref.best_common(q)
            if want is None:
                assert got is None
            else:
                assert got is not None
                common, v = got
                assert common == want
                k = key_of[v]
                assert ref.d.get(k) == v, "returned a live entry"
                assert lcp(k, q) == common
                # Ties resolved toward the shortest key among maximal-lcp entries.
                assert len(k) == min(len(kk) for kk in ref.d if lcp(kk, q) == common)

        if step % 25 == 0:
            check_invariants(idx)
            assert list(idx.items()) == sorted(ref.d.items())

    for k in list(ref.d):
        assert idx.remove(k) == ref.d.pop(k)
    assert len(idx) == 0 and idx._root.children == {} and idx._root.rep is None
    check_invariants(idx)


# -- scaling (structural, not timing-based) ----------------------------------------------


class _CountingDict(dict):
    """Children dict that counts every access, to bound the nodes a lookup touches."""

    counter = [0]

    def get(self, *a):
        self.counter[0] += 1
        return super().get(*a)

    def __getitem__(self, k):
        self.counter[0] += 1
        return super().__getitem__(k)

    def __contains__(self, k):
        self.counter[0] += 1
        return super().__contains__(k)

    def __iter__(self):
        raise AssertionError("lookup iterated over a children dict")

    def values(self):
        raise AssertionError("lookup iterated over a children dict")

    def items(self):
        raise AssertionError("lookup iterated over a children dict")

    def keys(self):
        raise AssertionError("lookup iterated over a children dict")


def test_scaling_10k_entries_lookups_touch_only_the_path():
    rng = random.Random(1234)
    system = [rng.randrange(32000) for _ in range(256)]  # shared system prompt
    idx: RadixIndex[int] = RadixIndex()
    keys: list[tuple[int, ...]] = []
    for i in range(10_000):
        k = tuple(system + [rng.randrange(32000) for _ in range(32)])
        keys.append(k)
        idx.insert(k, i)
    assert len(idx) == 10_000
    nodes = _nodes(idx)
    assert len(nodes) <= 2 * len(idx) + 1  # path compression bound
    check_invariants(idx)

    # Swap every children dict for a counting one; lookups may only probe along the path.
    for n in nodes:
        n.children = _CountingDict(n.children)
    counter = _CountingDict.counter

    def probes(fn, q):
        counter[0] = 0
        res = fn(q)
        return res, counter[0]

    for i in rng.sample(range(10_000), 200):
        k = keys[i]
        # Depth in nodes here is at most 4 (root -> system -> [shared first token] -> leaf).
        res, c = probes(idx.longest_prefix, list(k) + [1, 2, 3])
        assert res == (288, i) and c <= 5
        res, c = probes(idx.get, k)
        assert res == i and c <= 5
        res, c = probes(idx.best_match, list(k[:270]) + [-1])
        assert res is not None and res[0] == 270 and c <= 5
        assert keys[res[1]][:270] == k[:270]
        res, c = probes(idx.best_match, system + [-1])
        assert res is not None and res[0] == 256 and c <= 3

    # Removing all entries through the counting dicts still works and empties the tree
    # (removal may scan children to repair cached shortest entries; allow that here).
    for n in _nodes_safe(idx):
        n.children = dict(dict.items(n.children))
    for i, k in enumerate(keys):
        assert idx.remove(k) == i
    assert len(idx) == 0 and idx._root.children == {}


def _nodes_safe(index: RadixIndex) -> list[_Node]:
    out, stack = [], [index._root]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(dict.values(node.children))
    return out


def test_deep_chain_beyond_recursion_limit():
    # Every key a prefix of the next: a 1,200-node-deep path. Nothing may recurse.
    n = 1200
    idx: RadixIndex[int] = RadixIndex()
    for i in range(n, 0, -1):  # longest first, so each insert splits an edge
        idx.insert(range(i), i)
    assert len(idx) == n
    assert len(_nodes(idx)) == n + 1
    check_invariants(idx)
    assert idx.longest_prefix(list(range(n + 5))) == (n, n)
    assert idx.best_match(list(range(600)) + [-1]) == (600, 600)
    keys = [k for k, _ in idx.items()]
    assert keys == [tuple(range(i)) for i in range(1, n + 1)]
    for i in range(1, n + 1):
        assert idx.remove(range(i)) == i
    assert len(idx) == 0 and idx._root.children == {}
