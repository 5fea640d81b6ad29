"""The shared queue of a multi-lane batch (storyboard.scheduler.work_queue): which lane takes
which sentence, warm-model affinity and per-lane eligibility."""

from __future__ import annotations

from storyboard.scheduler.work_queue import Item, WorkQueue

BOTH = frozenset({"a", "b"})


def items(keys: str, lanes: frozenset[str] = BOTH) -> list[Item[str]]:
    """One item per letter: its key is the letter, its value the position and letter."""
    return [Item(n, f"{n}{key}", key, lanes) for n, key in enumerate(keys)]


def drain(queue: WorkQueue[str], lane: str) -> list[str]:
    taken = []
    while (item := queue.take(lane)) is not None:
        taken.append(item.value)
        queue.settle(item)
    return taken


def test_a_lane_keeps_its_key_while_one_is_left_then_takes_the_next_in_order() -> None:
    queue = WorkQueue(items("xyxyxz"))
    assert drain(queue, "a") == ["0x", "2x", "4x", "1y", "3y", "5z"]
    assert queue.finished


def test_two_lanes_take_different_keys_and_keep_them() -> None:
    queue = WorkQueue(items("xyxyxyxy"))
    first_a, first_b = queue.take("a"), queue.take("b")
    assert first_a is not None and first_b is not None
    assert (first_a.key, first_b.key) == ("x", "y")  # b is not sent to a's warm key
    keys_a = [first_a.key]
    keys_b = [first_b.key]
    for _ in range(3):
        for lane, seen in (("a", keys_a), ("b", keys_b)):
            item = queue.take(lane)
            assert item is not None
            seen.append(item.key)
    assert set(keys_a) == {"x"} and set(keys_b) == {"y"}


def test_a_lane_gets_only_what_its_server_can_render() -> None:
    only_b = [Item(0, "0x", "x", frozenset({"b"}))]
    queue = WorkQueue([*only_b, *items("y")])
    taken = queue.take("a")
    assert taken is not None and taken.value == "0y"
    assert queue.take("a") is None
    assert not queue.finished
    assert queue.take("b") == only_b[0]  # it was waiting for b


def test_a_put_back_item_returns_at_its_place_for_another_lane() -> None:
    queue = WorkQueue(items("xxx"))
    taken = queue.take("a")
    assert taken is not None and taken.value == "0x"
    queue.put_back(taken, without="a")
    assert not queue.finished
    assert drain(queue, "b") == ["0x", "1x", "2x"]
    assert queue.finished


def test_lanes_are_stuck_only_when_nothing_is_out_and_nothing_left_fits_them() -> None:
    queue = WorkQueue([Item(0, "0x", "x", frozenset({"b"}))])
    assert queue.stuck_for(["a"])  # only b could render what is left
    assert not queue.stuck_for(["b"])
    taken = queue.take("b")
    assert taken is not None
    queue.put_back(taken)
    assert queue.stuck_for(["a"]) and not queue.stuck_for(["a", "b"])


def test_a_sentence_edited_after_its_claim_is_done_again_once_only() -> None:
    queue = WorkQueue(items("xy"))
    taken = queue.take("a")
    assert taken is not None
    assert queue.first_redo(taken)
    queue.put_back(taken)
    again = queue.take("a")
    assert again is not None and again.value == taken.value
    assert not queue.first_redo(again)  # edited again: it stays stale, dirty for the next run
    other = queue.take("a")
    assert other is not None and queue.first_redo(other)
