"""Pure logic: which slot a request goes to."""

from runner.engine.slots import Slot, SlotState, choose_slot, common_prefix_length


def make(n: int) -> list[Slot]:
    return [Slot(id=i, n_ctx=100, last_used=float(i)) for i in range(n)]


def test_common_prefix_length_long_and_short():
    a = list(range(300))
    assert common_prefix_length(a, a + [1]) == 300
    assert common_prefix_length(a, a[:150] + [-1]) == 150
    assert common_prefix_length([], a) == 0


def test_best_similarity_above_threshold_wins():
    slots = make(3)
    slots[2].tokens = [1, 2, 3, 4, 5, 6]
    slots[1].tokens = [1, 2, 9]
    assert choose_slot(slots, [1, 2, 3, 4, 7, 8], 0.5) is slots[2]


def test_below_threshold_lowest_free_slot_with_a_prompt_cache_else_lru():
    slots = make(4)
    slots[0].state = SlotState.GENERATING
    for slot in slots[1:]:
        slot.tokens = [9, 9]  # every idle slot holds some other text
    slots[3].last_used = -1.0  # the least recently used
    prompt = [1, 2, 3, 4, 5, 6]
    # With a prompt cache the evicted prefix is kept there: the lowest free slot keeps the
    # busy slots contiguous (one ubatch for a step's decode tokens).
    assert choose_slot(slots, prompt, 0.5, keep_prefixes=False) is slots[1]
    # Without one an evicted prefix is lost: an empty slot first, else the least recent.
    assert choose_slot(slots, prompt, 0.5) is slots[3]
    slots[2].tokens = []
    assert choose_slot(slots, prompt, 0.5) is slots[2]
    assert choose_slot(slots, prompt, 0.5, keep_prefixes=False) is slots[1]


def test_busy_slots_are_skipped_and_none_when_all_busy():
    slots = make(2)
    slots[0].tokens = [1, 2, 3]
    slots[0].state = SlotState.GENERATING
    assert choose_slot(slots, [1, 2, 3], 0.1) is slots[1]
    slots[1].state = SlotState.PROMPT
    assert choose_slot(slots, [1, 2, 3], 0.1) is None


def test_cache_off_uses_the_lowest_free_slot():
    slots = make(3)
    slots[0].state = SlotState.PROMPT
    slots[2].tokens = [1, 2, 3]
    slots[2].last_used = -1.0
    assert choose_slot(slots, [1, 2, 3], 0.5, use_cache=False) is slots[1]
