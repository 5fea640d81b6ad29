"""The shared queue of one batch: every lane pulls its next sentence from it.

Pull-based: a lane asks when it has room (LANE_DEPTH prompts on its server), so a fast lane
takes more and a slow one fewer, and no lane waits behind another. `take` hands a sentence
to exactly one lane.

Warm models: a lane asking for work gets a sentence with the affinity key it rendered last
(same style LoRA and strength, same reference set) while one is left, so ComfyUI neither
re-patches the model nor re-encodes the references; else the first key in storyboard order
that no other lane is working through, else the first left. Order changes only when a
picture is made, never what is stored.

Mixed farm: each item names the lanes that can render it; `take` gives a lane only those.
A dead lane's sentences come back with `put_back` (at their storyboard place), and `wait`
lets an idle lane sleep until work comes back or every sentence is settled. A sentence edited
after its claim comes back once (`first_redo`), to be rendered as edited.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
Key = Hashable


@dataclass(frozen=True)
class Item(Generic[T]):
    order: int  # storyboard position in the batch
    value: T
    key: Key  # affinity: (lora, strength, references)
    lanes: frozenset[str]  # the lanes whose servers have its model and LoRA


class WorkQueue(Generic[T]):
    """Thread-safe; every lane's feeder calls it from its own thread."""

    def __init__(self, items: Iterable[Item[T]]) -> None:
        self._left: list[Item[T]] = sorted(items, key=lambda item: item.order)
        self._out = 0  # taken and not yet settled
        self._working: dict[str, Key] = {}  # lane -> the key it took last
        self._redone: set[int] = set()  # orders of the items done again
        self._cond = threading.Condition()

    def take(self, lane: str, *, key: Key | None = None) -> Item[T] | None:
        """The next sentence for `lane`, or None when none left fits it (now); with `key`,
        only one of that affinity key (a lane taking a group keeps to one model)."""
        with self._cond:
            fits = [
                item
                for item in self._left
                if lane in item.lanes and (key is None or item.key == key)
            ]
            if not fits:
                return None
            current = self._working.get(lane)
            others = {key for name, key in self._working.items() if name != lane}
            chosen = (
                next((i for i in fits if i.key == current), None)
                or next((i for i in fits if i.key not in others), None)
                or fits[0]
            )
            self._left.remove(chosen)
            self._working[lane] = chosen.key
            self._out += 1
            return chosen

    def settle(self, item: Item[T]) -> None:
        """`item` has its outcome (whatever it is): it will not come back."""
        with self._cond:
            self._out -= 1
            self._cond.notify_all()

    def put_back(self, item: Item[T], *, without: str | None = None) -> None:
        """Give a taken item back, for another lane (not `without`, a lane set aside)."""
        with self._cond:
            self._out -= 1
            self._left.append(item)
            self._left.sort(key=lambda i: i.order)
            if without is not None:
                self._working.pop(without, None)
            self._cond.notify_all()

    def first_redo(self, item: Item[T]) -> bool:
        """True the first time `item` is to be done again (its picture made stale by an edit
        after its claim); then the caller puts it back. Once per sentence and batch, so a
        sentence edited over and over cannot hold a lane for the whole batch."""
        with self._cond:
            first = item.order not in self._redone
            self._redone.add(item.order)
            return first

    def forget_lane(self, lane: str) -> None:
        with self._cond:
            self._working.pop(lane, None)

    def drain(self) -> list[Item[T]]:
        """Every item not taken, removed (the batch is ending)."""
        with self._cond:
            left, self._left = self._left, []
            self._cond.notify_all()
            return left

    def stuck_for(self, lanes: Iterable[str]) -> bool:
        """Nothing is out and nothing left fits any of `lanes`: they wait in vain."""
        names = set(lanes)
        with self._cond:
            return self._out == 0 and all(not item.lanes & names for item in self._left)

    @property
    def finished(self) -> bool:
        with self._cond:
            return not self._left and self._out == 0

    def wait(self, timeout_s: float) -> None:
        """Sleep until an item comes back or settles, at most `timeout_s`."""
        with self._cond:
            self._cond.wait(timeout_s)
