"""Assignment policies on SQLite and PostgreSQL: overlap, cap, shared fraction, seeded order, sides."""
from __future__ import annotations

from collections import Counter

import pytest

from annotation.assignment import AssignmentPolicy
from annotation.store import Store
from db import Database

from store_helpers import (
    DOCTOR,
    assigned,
    items,
    turns,
)


# --- assignment -----------------------------------------------------------------------------------------
def test_overlap_k_gives_every_item_k_annotators_least_annotated_first(database):
    store = Store(database, AssignmentPolicy(overlap=2, batch=4, seed=1))
    all_items = set(items(store, 10))
    a, b, c, d, e, f = (store.register_annotator(n) for n in "abcdef")
    assert store.assign(a, 4) == 4 and store.assign(b, 4) == 4
    assert not set(assigned(store, a)) & set(assigned(store, b))  # b got untouched items first
    store.assign(c, 4)
    assert all_items - set(assigned(store, a)) - set(assigned(store, b)) <= set(assigned(store, c))
    for annotator in (d, e, f):
        store.assign(annotator)
    per_item = Counter(x for who in (a, b, c, d, e, f) for x in assigned(store, who))
    assert per_item == {item: 2 for item in all_items}  # then nothing more: every item has its k
    assert store.assign(store.register_annotator("late")) == 0


def test_a_cap_limits_annotators_per_item_and_a_skip_frees_a_place(database):
    store = Store(database, AssignmentPolicy(overlap=1, cap=3))
    all_items = items(store, 5)
    annotators = [store.register_annotator(n) for n in "abcd"]
    given = [store.assign(a) for a in annotators]
    assert given == [5, 5, 5, 0]
    view = store.next_task(annotators[0])
    store.skip(view.task, "unreadable")
    assert assigned(store, annotators[3]) == []
    assert store.assign(annotators[3]) == 1
    assert set(assigned(store, annotators[3])) <= set(all_items)


def test_a_shared_fraction_goes_to_every_annotator(database):
    store = Store(database, AssignmentPolicy(overlap=1, shared_fraction=0.25, seed=5))
    all_items = set(items(store, 20))
    a, b, c = (store.register_annotator(n) for n in "abc")
    assert store.assign(a) == 20
    assert store.assign(b) == 5 and store.assign(c) == 5
    assert set(assigned(store, b)) == set(assigned(store, c)) < all_items


def test_item_order_is_a_seeded_shuffle_stable_across_calls_and_databases(tmp_path):
    def order(name: str, seed: int, external: str) -> list[str]:
        database = Database(f"sqlite:///{tmp_path / name}.sqlite3")
        store = Store(database, AssignmentPolicy(overlap=3, batch=5, seed=seed))
        for i in (list(range(12)) if name != "reversed" else list(range(12))[::-1]):  # insertion order differs
            store.add_dialogue(turns(i), "Doctor")
        annotator = store.register_annotator("Ada", external_id=external)
        seen = []
        while (view := store.next_task(annotator)) is not None:
            assert store.next_task(annotator).task == view.task  # the same until answered
            seen.append(view.transcript[0]["text"])
            store.submit(view.task, slots=DOCTOR)
        database.close()
        return seen

    first = order("first", seed=1, external="hf:ada")
    assert len(first) == 12 and first != sorted(first)
    assert order("reversed", seed=1, external="hf:ada") == first
    assert order("other-seed", seed=2, external="hf:ada") != first
    assert order("other-annotator", seed=1, external="hf:bo") != first


def test_presentation_side_varies_and_the_transcript_follows_it(database):
    store = Store(database, AssignmentPolicy(overlap=1))
    items(store, 16)
    annotator = store.register_annotator("Ada")
    store.assign(annotator)
    sides = Counter()
    while (view := store.next_task(annotator)) is not None:
        sides[view.agent] += 1
        agent_lines = [t["text"] for t in view.transcript if t["speaker"] == view.agent]
        assert agent_lines[-1] == "Not much."  # the agent's (assistant's) turns carry the agent's letter
        store.submit(view.task, slots=DOCTOR)
    assert set(sides) == {"X", "Y"}


def test_bad_policies_are_refused():
    for kwargs in ({"overlap": 0}, {"overlap": 3, "cap": 2}, {"shared_fraction": 1.5}, {"batch": 0},
                   {"kinds": ("poem",)}):
        with pytest.raises(ValueError):
            AssignmentPolicy(**kwargs)
