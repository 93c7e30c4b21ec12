"""State checkpoints of recurrent sequences (engine/checkpoints.py): which snapshot a cut
goes back to, and which ones are kept."""

from __future__ import annotations

from runner.engine.checkpoints import Checkpoints


def test_best_is_the_newest_at_or_below_the_cut() -> None:
    cps = Checkpoints()
    for pos in (16, 32, 48):
        cps.add(0, pos, bytes([pos]))
    assert cps.best(0, 47) == (32, bytes([32]))
    assert cps.best(0, 48) == (48, bytes([48]))
    assert cps.best(0, 15) is None
    assert cps.best(1, 100) is None  # another sequence has none


def test_cuts_and_clears_forget_later_snapshots() -> None:
    cps = Checkpoints()
    for pos in (16, 32, 48):
        cps.add(0, pos, b"x")
    cps.add(1, 16, b"y")
    cps.keep_up_to(0, 40)
    assert cps.positions(0) == [16, 32]
    cps.add(0, 16, b"z")  # the sequence was recomputed from 16: what followed is stale
    assert cps.positions(0) == [16] and cps.best(0, 16) == (16, b"z")
    cps.drop(0)
    assert cps.positions(0) == [] and cps.positions(1) == [16]


def test_thinning_keeps_the_bound_the_ends_and_an_even_spacing() -> None:
    cps = Checkpoints(limit=4)
    for pos in range(16, 16 * 21, 16):
        cps.add(0, pos, b"s" * 10)
    kept = cps.positions(0)
    assert len(kept) == 4 and kept[0] == 16 and kept[-1] == 320
    gaps = [b - a for a, b in zip(kept, kept[1:], strict=False)]
    assert max(gaps) <= 2 * min(gaps) + 16
    assert cps.nbytes() == 40


def test_room_for_one_keeps_the_newest() -> None:
    cps = Checkpoints(limit=1)
    for pos in (16, 32, 48):
        cps.add(0, pos, b"s")
    assert cps.positions(0) == [48]


def test_a_copied_sequence_takes_the_snapshots_along() -> None:
    cps = Checkpoints()
    cps.add(0, 16, b"a")
    cps.add(1, 32, b"b")
    cps.copy(0, 1)
    assert cps.positions(1) == [16] and cps.best(1, 40) == (16, b"a")
    cps.add(1, 32, b"c")
    assert cps.positions(0) == [16]  # the lists are separate
