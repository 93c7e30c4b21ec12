"""Tests for runner.cache.radix.RadixIndex, through its public API only."""

from __future__ import annotations

import random
from array import array

import pytest

from runner.cache.radix import RadixIndex

# -- helpers -----------------------------------------------------------------------------


def check_consistent(index: RadixIndex) -> None:
    """Every lookup agrees with a brute-force reading of `items()`.

    For each stored key and each of its prefixes `p` (which covers every point where the
    tree could have split or merged an edge): `best_match(p)` shares all of `p` and returns
    one of the shortest keys that extend `p`; stored keys answer `get`, `in` and
    `longest_prefix` exactly.
    """
    items = list(index.items())
    keys = [k for k, _ in items]
    assert keys == sorted(set(keys)), "items are unique and in lexicographic order"
    assert len(index) == len(items)
    shortest: dict[tuple[int, ...], tuple[int, list[object]]] = {}
    for key, value in items:
        assert index.get(key) == value and key in index
        assert index.longest_prefix(key) == (len(key), value)
        for n in range(len(key) + 1):
            best = shortest.get(key[:n])
            if best is None or len(key) < best[0]:
                shortest[key[:n]] = (len(key), [value])
            elif len(key) == best[0]:
                best[1].append(value)
    for prefix, (_, values) in shortest.items():
        got = index.best_match(prefix)
        assert got is not None and got[0] == len(prefix)
        assert any(got[1] is v or got[1] == v for v in values), (prefix, got, values)


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
    check_consistent(idx)


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
    check_consistent(idx)


def test_none_is_a_storable_value():
    idx: RadixIndex[None] = RadixIndex()
    assert idx.insert([5], None) is None
    assert len(idx) == 1
    assert [5] in idx
    assert idx.longest_prefix([5, 6]) == (1, None)
    assert idx.best_match([7]) == (0, None)
    assert idx.remove([5]) is None
    assert len(idx) == 0 and [5] not in idx
    check_consistent(idx)


def test_the_empty_key_is_a_key():
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
    check_consistent(idx)
    assert idx.remove([]) == "root"
    assert [] not in idx and len(idx) == 1
    assert idx.best_match([4]) == (0, "x")
    assert idx.longest_prefix([4]) is None
    check_consistent(idx)


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


# -- structure: splits and merges, seen through lookups -----------------------------------


def test_split_on_divergence_and_merge_back():
    idx: RadixIndex[str] = RadixIndex()
    idx.insert([1, 2, 3, 4], "a")
    idx.insert([1, 2, 5], "b")  # diverges mid-edge
    assert [1, 2] not in idx and idx.longest_prefix([1, 2, 9]) is None
    assert idx.best_match([1, 2, 9]) == (2, "b")  # the shorter of the two branches
    assert idx.best_match([1, 2, 3]) == (3, "a")
    check_consistent(idx)

    assert idx.remove([1, 2, 5]) == "b"
    assert idx.best_match([1, 2, 9]) == (2, "a")
    assert list(idx.items()) == [((1, 2, 3, 4), "a")]
    check_consistent(idx)


def test_split_at_exact_key_end():
    idx: RadixIndex[str] = RadixIndex()
    idx.insert([1, 2, 3, 4], "long")
    idx.insert([1, 2], "short")  # ends mid-edge
    assert idx.get([1, 2]) == "short" and idx.get([1, 2, 3, 4]) == "long"
    assert idx.longest_prefix([1, 2, 3]) == (2, "short")
    assert idx.best_match([1, 2, 3]) == (3, "long")
    check_consistent(idx)

    assert idx.remove([1, 2]) == "short"
    assert idx.longest_prefix([1, 2, 3]) is None
    assert idx.best_match([1, 2]) == (2, "long")
    check_consistent(idx)


def test_extension_below_leaf():
    idx: RadixIndex[str] = RadixIndex()
    idx.insert([1, 2], "a")
    idx.insert([1, 2, 3, 4], "b")
    assert idx.longest_prefix([1, 2, 3, 4, 5]) == (4, "b")
    assert idx.longest_prefix([1, 2, 3]) == (2, "a")
    assert list(idx.items()) == [((1, 2), "a"), ((1, 2, 3, 4), "b")]
    check_consistent(idx)


def test_remove_leaf_prunes_and_merges_parent():
    idx: RadixIndex[str] = RadixIndex()
    for key, v in [([1, 2, 3], "a"), ([1, 2, 4], "b"), ([1, 2, 5, 6], "c")]:
        idx.insert(key, v)
    assert idx.remove([1, 2, 3]) == "a"
    assert idx.best_match([1, 2, 9]) == (2, "b")
    check_consistent(idx)
    assert idx.remove([1, 2, 4]) == "b"
    assert idx.best_match([1, 2, 9]) == (2, "c")
    assert idx.best_match([1, 2, 5]) == (3, "c")
    assert list(idx.items()) == [((1, 2, 5, 6), "c")]
    check_consistent(idx)


def test_remove_internal_entry_with_two_children_keeps_both():
    idx: RadixIndex[str] = RadixIndex()
    idx.insert([1], "p")
    idx.insert([1, 2], "a")
    idx.insert([1, 3], "b")
    assert idx.remove([1]) == "p"
    assert idx.longest_prefix([1, 9]) is None
    common, value = idx.best_match([1, 9]) or (None, None)
    assert common == 1 and value in ("a", "b")
    assert idx.get([1, 2]) == "a" and idx.get([1, 3]) == "b"
    check_consistent(idx)


def test_remove_missing_keys_is_noop():
    idx: RadixIndex[str] = RadixIndex()
    idx.insert([1, 2, 3, 4], "a")
    idx.insert([1, 2, 5], "b")
    before = list(idx.items())
    assert idx.remove([1, 2]) is None  # a branch point, not a key
    assert idx.remove([1, 2, 3]) is None  # ends inside a key
    assert idx.remove([1, 2, 3, 4, 5]) is None  # runs past a key
    assert idx.remove([7]) is None  # no such branch
    assert idx.remove([]) is None  # empty key not stored
    assert list(idx.items()) == before
    assert len(idx) == 2
    check_consistent(idx)


def test_remove_everything_leaves_empty_tree():
    rng = random.Random(7)
    idx: RadixIndex[int] = RadixIndex()
    keys = {tuple(rng.randrange(4) for _ in range(rng.randrange(0, 9))) for _ in range(300)}
    for i, k in enumerate(keys):
        idx.insert(k, i)
    check_consistent(idx)
    order = list(keys)
    rng.shuffle(order)
    for k in order:
        assert idx.remove(k) is not None
        check_consistent(idx)
    assert len(idx) == 0
    assert list(idx.items()) == []
    assert idx.best_match([1, 2]) is None and idx.best_match([]) is None


def test_clear():
    idx: RadixIndex[int] = RadixIndex()
    idx.insert([1, 2], 1)
    idx.insert([], 2)
    idx.clear()
    assert len(idx) == 0 and list(idx.items()) == [] and idx.longest_prefix([1, 2]) is None
    check_consistent(idx)


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
    check_consistent(idx)
    assert idx.remove([1, 2, 8, 8, 8]) == "mid"
    assert idx.best_match([1, 2, 9]) == (2, "long")
    check_consistent(idx)


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
    check_consistent(idx)


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
            check_consistent(idx)
            assert list(idx.items()) == sorted(ref.d.items())

    for k in list(ref.d):
        assert idx.remove(k) == ref.d.pop(k)
    assert len(idx) == 0 and list(idx.items()) == [] and idx.best_match([]) is None
    check_consistent(idx)


# -- scale and depth ---------------------------------------------------------------------


def test_10k_entries_sharing_a_system_prompt():
    rng = random.Random(1234)
    system = [rng.randrange(32000) for _ in range(256)]  # shared system prompt
    idx: RadixIndex[int] = RadixIndex()
    keys: list[tuple[int, ...]] = []
    for i in range(10_000):
        k = tuple(system + [rng.randrange(32000) for _ in range(32)])
        keys.append(k)
        idx.insert(k, i)
    assert len(idx) == len(set(keys))
    for i in rng.sample(range(10_000), 200):
        k = keys[i]
        assert idx.longest_prefix(list(k) + [1, 2, 3]) == (288, i)
        assert idx.get(k) == i
        res = idx.best_match(list(k[:270]) + [-1])
        assert res is not None and res[0] == 270 and keys[res[1]][:270] == k[:270]
        res = idx.best_match(system + [-1])
        assert res is not None and res[0] == 256
    for i, k in enumerate(keys):
        assert idx.remove(k) == i
    assert len(idx) == 0 and list(idx.items()) == []


def test_deep_chain_beyond_recursion_limit():
    # Every key a prefix of the next: a 1,200-deep path. Nothing may recurse.
    n = 1200
    idx: RadixIndex[int] = RadixIndex()
    for i in range(n, 0, -1):  # longest first, so each insert cuts an existing key
        idx.insert(range(i), i)
    assert len(idx) == n
    assert idx.longest_prefix(list(range(n + 5))) == (n, n)
    assert idx.longest_prefix(list(range(700)) + [-1]) == (700, 700)
    assert idx.best_match(list(range(600)) + [-1]) == (600, 600)
    keys = [k for k, _ in idx.items()]
    assert keys == [tuple(range(i)) for i in range(1, n + 1)]
    for i in range(1, n + 1):
        assert idx.remove(range(i)) == i
    assert len(idx) == 0 and list(idx.items()) == []
